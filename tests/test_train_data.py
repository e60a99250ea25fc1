"""The generated data.py and generate.py: every data source, splits, tokenizers and sampling.

Each test renders the templates into a fresh package (data.py, generate.py for LMs, and for
generation a tiny hand-written model.py), checks that they are lint-clean, and runs them.
"""

from __future__ import annotations

import importlib
import itertools
import json
import math
import os
import pickle
import shutil
import subprocess
import sys
import tracemalloc
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from ruff.__main__ import find_ruff_bin

from nlc.emit.render import format_python, render
from nlc.frontend.train_ast import TrainSpec

CORPUS = Path(__file__).resolve().parent.parent / "examples" / "data" / "paradise_lost.txt"
LINT = ["check", "--isolated", "--select", "E,F,I,B,UP", "--line-length", "100", "--quiet"]
_names = itertools.count()


def resolved(task: str = "classification", batch_size: int = 8, **data: Any) -> TrainSpec:
    """A train section as the frontend's resolution leaves it (loss kind and epochs set)."""
    loss = "mse" if task == "regression" else "cross_entropy"
    return TrainSpec.model_validate(
        {"task": task, "data": data, "loss": {"kind": loss}, "epochs": 1, "batch_size": batch_size}
    )


def namespace(value: Any) -> Any:
    """CONFIG as train.py hands it to data.py: nested SimpleNamespaces."""
    if isinstance(value, dict):
        return SimpleNamespace(**{k: namespace(v) for k, v in value.items()})
    return value


def render_file(template: str, train: TrainSpec, shape: list[int], num_outputs: int) -> str:
    lm = train.task in ("lm", "mlm")
    context = {
        "name": "pkg",
        "version": "0.0.0",
        "config": repr(train.model_dump(mode="json")),
        "train": train,
        "input": {"name": "x", "shape": shape, "dtype": "int64" if lm else "float32"},
        "num_outputs": num_outputs,
        "checkpoint_modules": [],
    }
    return format_python(render(f"train/{template}.py.j2", **context), f"{template}.py")


def lint(*paths: Path) -> None:
    result = subprocess.run(
        [find_ruff_bin(), *LINT, *map(str, paths)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


class Case:
    """A generated package with its data module, the data root (the test's folder) and a run."""

    def __init__(
        self,
        folder: Path,
        train: TrainSpec,
        shape: list[int],
        num_outputs: int,
        model: str | None = None,
    ) -> None:
        self.name = f"nlc_train_data_{next(_names)}"
        package = folder / "packages" / self.name
        package.mkdir(parents=True)
        templates = ["data", "generate"] if train.task in ("lm", "mlm") else ["data"]
        for template in templates:
            text = render_file(template, train, shape, num_outputs)
            (package / f"{template}.py").write_text(text)
        lint(*(package / f"{t}.py" for t in templates))
        (package / "__init__.py").write_text("")
        if model is not None:
            (package / "model.py").write_text(model)
        self.train, self.root, self.run = train, folder, folder / "run"
        self.run.mkdir()
        self.cfg = namespace(train.model_dump(mode="json"))
        self.data = self.module("data")

    def module(self, name: str) -> ModuleType:
        sys.path.insert(0, str(self.root / "packages"))
        try:
            return importlib.import_module(f"{self.name}.{name}")
        finally:
            sys.path.pop(0)

    def load(self, run: Path | None = None) -> tuple[Any, Any, dict]:
        """prepare, then datasets, as train.py calls them."""
        run = run or self.run
        run.mkdir(exist_ok=True)
        self.data.prepare(self.cfg, self.root, run)
        return self.data.datasets(self.cfg, self.root, run)


@pytest.fixture
def make(tmp_path: Path):
    folders = itertools.count()

    def make(train: TrainSpec, shape: list[int], num_outputs: int, model: str | None = None):
        folder = tmp_path / f"case{next(folders)}"
        folder.mkdir()
        return Case(folder, train, shape, num_outputs, model)

    return make


def items(dataset: Any) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*(dataset[i] for i in range(len(dataset))), strict=True)
    return torch.stack(xs), torch.stack(ys)


def unigram_perplexity(tokens: np.ndarray) -> float:
    _, counts = np.unique(tokens, return_counts=True)
    p = counts / counts.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


COMBINATIONS = [
    ("digits", "classification", None),
    ("synthetic", "classification", None),
    ("synthetic", "regression", None),
    ("synthetic", "lm", None),
    ("synthetic", "mlm", None),
    ("arrays", "classification", None),
    ("arrays", "regression", None),
    ("csv", "classification", None),
    ("csv", "regression", None),
    ("tokens", "lm", None),
    ("tokens", "mlm", None),
    *(("text", task, kind) for kind in ("byte", "char", "bpe") for task in ("lm", "mlm")),
]


@pytest.mark.parametrize(("source", "task", "kind"), COMBINATIONS)
def test_every_source_renders_lint_clean(
    source: str, task: str, kind: str | None, tmp_path: Path
) -> None:
    lm = task in ("lm", "mlm")
    data: dict[str, Any] = {"source": source}
    if lm:
        data["seq_len"] = 16
    if kind:
        data["tokenizer"] = {"kind": kind, "vocab_size": 300}
    train = resolved(task, **data)
    templates = ["data", "generate"] if lm else ["data"]
    for template in templates:
        text = render_file(template, train, [16] if lm else [1, 8, 8], 300 if lm else 10)
        assert text == render_file(template, train, [16] if lm else [1, 8, 8], 300 if lm else 10)
        (tmp_path / f"{template}.py").write_text(text)
    lint(*(tmp_path / f"{t}.py" for t in templates))
    code = (tmp_path / "data.py").read_text()
    # Only the chosen source's code: e.g. no tokenizers import unless BPE, no csv unless csv.
    assert ("from tokenizers" in code) == (kind == "bpe")
    assert ("import csv" in code) == (source == "csv")
    assert ("load_digits" in code) == (source == "digits")
    assert ("def load_tokenizer" in code) == lm


# Sample sources.


def test_digits(make) -> None:
    case = make(resolved(), [1, 8, 8], 10)
    train, val, info = case.load()
    assert info == {"train_samples": 1797 - 180, "val_samples": 180}
    x, y = items(train)
    assert x.shape == (1617, 1, 8, 8) and x.dtype == torch.float32
    assert y.shape == (1617,) and y.dtype == torch.int64
    assert 0 <= x.min() and x.max() <= 1 and set(y.tolist()) == set(range(10))
    assert make(resolved(), [64], 10).load()[0][0][0].shape == (64,)


def test_digits_shape_mismatch(make) -> None:
    with pytest.raises(SystemExit, match=r"8x8 = 64 pixels.*\(3, 8, 8\) \(192 values\)"):
        make(resolved(), [3, 8, 8], 10).load()


def test_split_is_random_reproducible_and_kept(make) -> None:
    case = make(resolved(source="synthetic", size=100), [4], 3)
    train, val, _ = case.load(case.root / "a")
    split = json.loads((case.root / "a" / "split.json").read_text())
    assert sorted(split["train"] + split["val"]) == list(range(100)) and len(val) == 10
    assert split["val"] != list(range(90, 100))  # a random split, not the tail
    case.load(case.root / "b")
    assert (case.root / "b" / "split.json").read_text() == (case.root / "a/split.json").read_text()
    case.cfg.data.split_seed = 1
    case.load(case.root / "c")
    assert json.loads((case.root / "c" / "split.json").read_text())["val"] != split["val"]
    # A second prepare (a resumed run) keeps the split even if the config changed since.
    case.cfg.data.val = 0.5
    before = (case.root / "a" / "split.json").read_text()
    _, val, info = case.load(case.root / "a")
    assert (case.root / "a" / "split.json").read_text() == before
    assert len(val) == info["val_samples"] == 10


def test_val_zero_gives_an_empty_validation_set(make) -> None:
    train, val, info = make(resolved(source="synthetic", size=64, val=0), [4], 3).load()
    assert len(train) == 64 and len(val) == 0 and info["val_samples"] == 0


def test_too_few_samples_for_a_batch(make) -> None:
    case = make(resolved(batch_size=64, source="synthetic", size=50), [4], 3)
    with pytest.raises(SystemExit, match="has 45 samples, fewer than one batch of 64"):
        case.load()


def test_datasets_needs_prepare(make) -> None:
    case = make(resolved(source="synthetic", size=64), [4], 3)
    with pytest.raises(SystemExit, match="split.json is missing"):
        case.data.datasets(case.cfg, case.root, case.run)


def test_synthetic_classification_is_deterministic_and_learnable(make) -> None:
    from sklearn.linear_model import LogisticRegression

    case = make(resolved(source="synthetic", size=1024), [2, 8], 4)
    train, val, info = case.load()
    x, y = items(train)
    assert x.shape == (921, 2, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(items(case.load(case.root / "again")[0])[0], x)
    assert set(y.tolist()) == {0, 1, 2, 3}
    val_x, val_y = items(val)
    model = LogisticRegression(max_iter=1000).fit(x.flatten(1).numpy(), y.numpy())
    assert model.score(val_x.flatten(1).numpy(), val_y.numpy()) > 0.85


def test_synthetic_regression_is_a_noisy_linear_function(make) -> None:
    train, _, _ = make(resolved("regression", source="synthetic", size=512), [6], 3).load()
    x, y = items(train)
    assert y.shape == (len(train), 3) and y.dtype == torch.float32
    assert 0.3 < y.std() < 3
    weights = torch.linalg.lstsq(x, y).solution
    assert (x @ weights - y).std() < 0.02


@pytest.mark.parametrize("task", ["lm", "mlm"])
def test_synthetic_tokens_beat_the_unigram_baseline(make, task: str) -> None:
    train, val, info = make(
        resolved(task, source="synthetic", size=256, seq_len=16), [16], 40
    ).load()
    x, y = items(train)
    assert x.shape == y.shape == (len(train), 16) and x.dtype == y.dtype == torch.int64
    if task == "lm":
        assert torch.equal(x[:, 1:], y[:, :-1])
        tokens = torch.cat([x, y[:, -1:]], dim=1).numpy()
        assert "mask_id" not in info
    else:
        assert torch.equal(x, y) and x.max() < info["mask_id"] == 39
        tokens = x.numpy()
    assert info["vocab_size"] == 40 and info["val_samples"] == len(val) == 26
    assert info["unigram_perplexity"] == pytest.approx(unigram_perplexity(tokens))
    # The next token given the previous one is far more predictable than its frequency.
    pairs = tokens[:, :-1] * 40 + tokens[:, 1:]
    bigram = unigram_perplexity(pairs) / unigram_perplexity(tokens[:, :-1])
    assert bigram < 4 and info["unigram_perplexity"] > 4 * bigram


def test_arrays_npz(make) -> None:
    rng = np.random.default_rng(0)
    case = make(resolved(source="arrays", path="d.npz", x="inputs", y="labels"), [1, 4, 4], 5)
    np.savez(case.root / "d.npz", inputs=rng.random((40, 16)), labels=rng.integers(5, size=40))
    train, val, info = case.load()
    x, y = train[0]
    assert x.shape == (1, 4, 4) and x.dtype == torch.float32
    assert y.shape == () and y.dtype == torch.int64 and info["val_samples"] == 4


def test_arrays_npy_files_are_memory_mapped(make) -> None:
    case = make(resolved("regression", source="arrays", x="x.npy", y="y.npy"), [3, 2], 2)
    x = np.arange(30 * 6, dtype=np.float64).reshape(30, 6)
    np.save(case.root / "x.npy", x)
    np.save(case.root / "y.npy", x[:, :2])
    train, _, _ = case.load()
    assert isinstance(train.dataset.x, np.memmap)
    index = train.indices[0]
    x0, y0 = train[0]
    assert x0.dtype == torch.float32 and torch.equal(x0, torch.tensor(x[index]).float().view(3, 2))
    assert y0.dtype == torch.float32 and torch.equal(y0, torch.tensor(x[index, :2]).float())


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ([0, 1, 5, 2], "label 5 of sample 2 is not a class id 0..4"),
        ([0, -1, 1, 2], "label -1 of sample 1"),
        ([0.0, 1.5, 1.0, 2.0], "label 1.5 of sample 1"),
    ],
)
def test_arrays_bad_label(make, labels: list[float], message: str) -> None:
    case = make(resolved(source="arrays", path="d.npz"), [2], 5)
    np.savez(case.root / "d.npz", x=np.zeros((4, 2)), y=np.array(labels))
    with pytest.raises(SystemExit, match=message):
        case.load()


def test_arrays_errors(make) -> None:
    case = make(resolved(source="arrays", path="d.npz", y="targets"), [2], 5)
    with pytest.raises(SystemExit, match="d.npz: no such file"):
        case.load()
    np.savez(case.root / "d.npz", x=np.zeros((4, 3)), y=np.zeros(4))
    with pytest.raises(SystemExit, match="no array 'targets': it has x, y"):
        case.load()
    case.cfg.data.y = "y"
    with pytest.raises(SystemExit, match=r"samples of shape \(3,\) \(3 values\)"):
        case.load()


# CSV.


def write_csv(case: Case, text: str) -> None:
    (case.root / "t.csv").write_text(text)


def test_csv_named_classes(make) -> None:
    case = make(resolved(batch_size=2, source="csv", path="t.csv", val=0), [2], 3)
    write_csv(case, "a,b,kind\n1,2,dog\n\n3,4,cat\n5,6.5,bird\n7,8,cat\n")
    train, _, _ = case.load()
    labels = json.loads((case.run / "labels.json").read_text())
    assert labels == {"column": "kind", "classes": ["bird", "cat", "dog"]}
    x, y = items(train)
    assert x.tolist() == [[1, 2], [3, 4], [5, 6.5], [7, 8]] and y.tolist() == [2, 1, 0, 1]


def test_csv_integer_classes_and_target_column(make) -> None:
    case = make(resolved(batch_size=2, source="csv", path="t.csv", target="y", val=0), [2], 3)
    write_csv(case, "y,a,b\n2,1,2\n0,3,4\n")
    x, y = items(case.load()[0])
    assert not (case.run / "labels.json").exists()
    assert x.tolist() == [[1, 2], [3, 4]] and y.tolist() == [2, 0]
    write_csv(case, "y,a,b\n2,1,2\n3,3,4\n")
    with pytest.raises(SystemExit, match=r"t.csv:3: the target '3' is not a class id 0..2"):
        case.load()


def test_csv_regression(make) -> None:
    case = make(resolved("regression", batch_size=1, source="csv", path="t.csv", val=0), [1], 1)
    write_csv(case, "a,price\n1,2.5\n3,-1e3\n")
    x, y = items(case.load()[0])
    assert y.dtype == torch.float32 and y.tolist() == [[2.5], [-1000.0]]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a,b,c\n1,2,0\n1,x,1\n", r"t.csv:3: the column 'b' holds 'x', which is not a number"),
        ("a,b,c\n1,,0\n", r"t.csv:2: the column 'b' holds '', which is not a number"),
        ("a,b,c\n1,nan,0\n", r"the column 'b' holds 'nan'"),
        ("1,2,0\n3,4,1\n", r"t.csv:1: the first line must be a header"),
        ("a,b,c\n1,2\n", r"t.csv:2: 2 fields, but the header has 3"),
    ],
)
def test_csv_errors(make, text: str, message: str) -> None:
    case = make(resolved(batch_size=1, source="csv", path="t.csv", val=0), [2], 3)
    write_csv(case, text)
    with pytest.raises(SystemExit, match=message):
        case.load()


def test_csv_unknown_target_column(make) -> None:
    case = make(resolved(source="csv", path="t.csv", target="label"), [2], 3)
    write_csv(case, "a,b,c\n1,2,0\n")
    with pytest.raises(SystemExit, match="no column 'label': it has a, b, c"):
        case.load()


# Token files.


def test_token_windows_split_by_ranges(make) -> None:
    case = make(resolved("lm", source="tokens", path="t.bin", seq_len=8, val=0.2), [8], 50)
    tokens = np.random.default_rng(0).integers(50, size=1000).astype(np.uint16)
    tokens.tofile(case.root / "t.bin")
    train, val, info = case.load()
    assert json.loads((case.run / "split.json").read_text()) == {
        "tokens": 1000,
        "train": [0, 800],
        "val": [800, 1000],
    }
    assert len(train) == info["train_samples"] == 99 and len(val) == 24
    x, y = train[3]
    assert x.dtype == torch.int64 and x.tolist() == tokens[24:32].tolist()
    assert y.tolist() == tokens[25:33].tolist()
    assert val[0][0].tolist() == tokens[800:808].tolist()
    assert info["unigram_perplexity"] == pytest.approx(unigram_perplexity(tokens[:800]))
    assert info["vocab_size"] == 50
    with pytest.raises(IndexError):
        train[99]
    # DataLoader workers get a copy without the open memory map, and open their own.
    copy = pickle.loads(pickle.dumps(train))
    assert copy.tokens is None and copy[3][0].tolist() == x.tolist()


def test_token_windows_mlm_reserve_the_last_id_for_mask(make) -> None:
    case = make(resolved("mlm", source="tokens", path="t.bin", seq_len=8, val=0.2), [8], 50)
    tokens = np.arange(1000, dtype=np.uint16) % 49
    tokens.tofile(case.root / "t.bin")
    train, val, info = case.load()
    assert len(train) == 100 and len(val) == 25 and info["mask_id"] == 49
    x, y = train[2]
    assert torch.equal(x, y) and x.tolist() == tokens[16:24].tolist()
    tokens[5] = 49
    tokens.tofile(case.root / "t.bin")
    with pytest.raises(SystemExit, match=r"token id 49, outside the vocabulary 0..48 .*\[MASK\]"):
        case.data.datasets(case.cfg, case.root, case.run)


def test_token_file_errors(make) -> None:
    case = make(resolved("lm", source="tokens", path="t.bin", seq_len=8), [8], 50)
    (case.root / "t.bin").write_bytes(b"\0" * 1001)
    with pytest.raises(SystemExit, match="1001 bytes, not a whole non-zero number of uint16"):
        case.load()
    np.full(1000, 60, dtype=np.uint16).tofile(case.root / "t.bin")
    with pytest.raises(SystemExit, match=r"token id 60, outside the vocabulary 0..49"):
        case.load()
    np.zeros(50, dtype=np.uint16).tofile(case.root / "t.bin")
    with pytest.raises(SystemExit, match="splits 1000 tokens, but .* holds 50"):
        case.load()
    case.cfg.batch_size = 64
    with pytest.raises(SystemExit, match="has 5 samples, fewer than one batch of 64"):
        case.load(case.root / "new")  # 45 training tokens: 5 windows of 9
    case.cfg.batch_size = 2
    with pytest.raises(SystemExit, match="has 5 tokens, fewer than one sample of 9"):
        case.load(case.root / "new")


def test_token_file_is_memory_mapped_not_read(make) -> None:
    """A 1 GiB (sparse) token file: datasets() reads a bounded prefix, items read windows."""
    case = make(resolved("lm", source="tokens", path="big.bin", seq_len=64, val=0.01), [64], 50)
    size = 1 << 30
    with (case.root / "big.bin").open("wb") as file:
        file.truncate(size)  # zeros, without writing them
        file.seek(size - 40)
        file.write(np.array([7, 99], dtype=np.uint16).tobytes())  # an id past the vocabulary
    tracemalloc.start()
    try:
        train, val, info = case.load()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < size / 4
    tokens = size // 2
    assert info["train_samples"] == len(train) == (tokens - math.ceil(tokens / 100) - 1) // 64
    assert info["unigram_perplexity"] == pytest.approx(1.0)
    assert val[0][0].sum() == 0
    with pytest.raises(ValueError, match="token id 99 .* outside the vocabulary 0..49"):
        val[len(val) - 1]


# Text corpora and tokenizers.


def text_case(make, task: str, kind: str, vocab_size: int, corpus: str, **data: Any) -> Case:
    tokenizer = {"kind": kind, "vocab_size": vocab_size}
    spec = resolved(task, source="text", path="c.txt", seq_len=16, tokenizer=tokenizer, **data)
    case = make(spec, [16], vocab_size)
    (case.root / "c.txt").write_text(corpus, encoding="utf-8")
    return case


@pytest.mark.parametrize("task", ["lm", "mlm"])
def test_byte_tokenizer(make, task: str) -> None:
    corpus = "Héllo wörld, ünïcode ✓\n" * 200
    case = text_case(make, task, "byte", 257 if task == "mlm" else 256, corpus)
    train, val, info = case.load()
    tokenizer = case.data.load_tokenizer(case.run)
    assert tokenizer.decode(tokenizer.encode(corpus)) == corpus
    encoded = corpus.encode()
    split = json.loads((case.run / "split.json").read_text())
    cut = split["characters"]["train"][1]
    assert cut == len(corpus) - len(corpus) // 10
    assert split["train"][1] == len(corpus[:cut].encode())
    stored = np.fromfile(case.run / "tokens.bin", dtype=np.uint16)
    assert stored.tolist() == list(encoded)
    assert train[0][0].tolist() == list(encoded[:16])
    assert info["vocab_size"] == (257 if task == "mlm" else 256)
    assert info.get("mask_id") == (256 if task == "mlm" else None)


@pytest.mark.parametrize("task", ["lm", "mlm"])
def test_char_tokenizer(make, task: str) -> None:
    corpus = "abc cab\n" * 100 + "zz"  # z only in the validation tail
    case = text_case(make, task, "char", 8, corpus)
    _, val, info = case.load()
    tokenizer = case.data.load_tokenizer(case.run)
    assert json.loads((case.run / "tokenizer.json").read_text()) == {"characters": "\n abc"}
    assert tokenizer.encode("ab\n") == [3, 4, 1]
    assert tokenizer.decode(tokenizer.encode("abc cab\n")) == "abc cab\n"
    assert tokenizer.encode("az") == [3, 0] and tokenizer.decode([3, 0]) == "a\ufffd"
    assert val[len(val) - 1][1][-1] == 0  # the final z, unknown to the tokenizer
    assert info["vocab_size"] == (7 if task == "mlm" else 6)
    if task == "mlm":
        assert info["mask_id"] == 6 and tokenizer.decode([3, 6]) == "a"


def test_char_vocabulary_must_fit(make) -> None:
    case = text_case(make, "lm", "char", 5, "abcdefgh\n" * 100)
    with pytest.raises(SystemExit, match="9 distinct characters: 10 ids .* vocabulary of 5"):
        case.load()


def test_bpe_trains_on_the_training_part_and_is_reused(make) -> None:
    corpus = CORPUS.read_text(encoding="utf-8")[:50_000]
    case = text_case(make, "lm", "bpe", 512, corpus)
    train, val, info = case.load()
    tokenizer = case.data.load_tokenizer(case.run)
    assert (case.run / "tokenizer.json").exists() and info["vocab_size"] == 512
    for text in (corpus, "Of Mans First Disobedience, Ω ünseen ✓ 🐍\n  spaces"):
        assert tokenizer.decode(tokenizer.encode(text)) == text
    split = json.loads((case.run / "split.json").read_text())
    cut = split["characters"]["train"][1]
    stored = np.fromfile(case.run / "tokens.bin", dtype=np.uint16)
    assert tokenizer.decode(stored[: split["train"][1]].tolist()) == corpus[:cut]
    assert tokenizer.decode(stored[split["val"][0] :].tolist()) == corpus[cut:]
    assert len(tokenizer.encode(corpus)) < len(corpus) / 1.8  # 256 merges learned
    assert info["unigram_perplexity"] == pytest.approx(
        unigram_perplexity(stored[: split["train"][1]])
    )
    # The tokenizer is fit on the training part only: the tail's words are not merged in.
    only_train = text_case(make, "lm", "bpe", 512, corpus[:cut])
    only_train.cfg.data.val = 0
    only_train.load()
    assert (only_train.run / "tokenizer.json").read_text() == (
        case.run / "tokenizer.json"
    ).read_text()
    # A run folder that has a tokenizer.json keeps it, trained to another size here.
    other = text_case(make, "lm", "bpe", 512, corpus)
    shutil.copy(case.run / "tokenizer.json", other.run / "tokenizer.json")
    other.cfg.data.tokenizer.vocab_size = 300
    _, _, other_info = other.load()
    assert other_info["vocab_size"] == 512


def test_bpe_mlm_has_a_mask_token(make) -> None:
    corpus = CORPUS.read_text(encoding="utf-8")[:20_000]
    case = text_case(make, "mlm", "bpe", 300, corpus)
    _, _, info = case.load()
    tokenizer = case.data.load_tokenizer(case.run)
    assert info["vocab_size"] == 300 and info["mask_id"] == tokenizer.mask_id is not None
    assert tokenizer.decode([*tokenizer.encode("Paradise"), tokenizer.mask_id]) == "Paradise"


def test_bpe_vocabulary_must_hold_the_bytes(make) -> None:
    case = text_case(make, "lm", "bpe", 200, "some text\n" * 100)
    with pytest.raises(SystemExit, match="size 200 must hold the 256 bytes"):
        case.load()


def test_text_errors(make) -> None:
    case = text_case(make, "lm", "byte", 256, "")
    with pytest.raises(SystemExit, match="c.txt is empty"):
        case.load()
    (case.root / "c.txt").write_bytes(b"\xff\xfe bad")
    with pytest.raises(SystemExit, match="c.txt is not UTF-8 text"):
        case.load()
    with pytest.raises(SystemExit, match="tokenizer.json is missing"):
        text_case(make, "lm", "char", 64, "x").data.load_tokenizer(Path("nowhere"))


# generate.py


def bigram_model(vocab_size: int, seq_len: int) -> str:
    """A model whose next-token logits depend on the last token only; it refuses contexts longer
    than seq_len, to check that generation crops them."""
    return f"""import torch
from torch import nn


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Embedding({vocab_size}, {vocab_size})

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        assert ids.shape[1] <= {seq_len}, ids.shape
        return self.table(ids)
"""


def generation_case(make, task: str = "lm") -> Case:
    """A run of a bigram model over 20 token ids (synthetic data), with only last.pt."""
    case = make(resolved(task, source="synthetic", seq_len=8), [8], 20, bigram_model(20, 8))
    torch.manual_seed(0)
    model = case.module("model").Model()
    (case.run / "checkpoints").mkdir()
    torch.save({"model": model.state_dict()}, case.run / "checkpoints" / "last.pt")
    (case.run / "config.json").write_text(json.dumps(case.train.model_dump(mode="json")))
    case.table = model.table.weight.detach()
    return case


def generate(case: Case, capsys, *args: str) -> str:
    case.module("generate").main(["--run", str(case.run), *args])
    return capsys.readouterr().out.rstrip("\n")


def test_generate_greedy_follows_the_likeliest_tokens(make, capsys) -> None:
    case = generation_case(make)
    out = generate(case, capsys, "--prompt", "3 1 4 1 5 9 2 6 5 3", "--temperature", "0")
    ids = [int(i) for i in out.split()]
    assert ids[:10] == [3, 1, 4, 1, 5, 9, 2, 6, 5, 3] and len(ids) == 210
    for previous, token in itertools.pairwise(ids[9:]):
        assert token == int(case.table[previous].argmax())
    # top-k 1, or a top-p below the likeliest token's probability, leave the greedy token only.
    short = ["--prompt", "3", "--max-tokens", "30"]
    greedy = generate(case, capsys, *short, "--temperature", "0")
    assert generate(case, capsys, *short, "--temperature", "2", "--top-k", "1") == greedy
    assert generate(case, capsys, *short, "--top-k", "0", "--top-p", "0.01") == greedy


def test_generate_sampling_is_seeded(make, capsys) -> None:
    case = generation_case(make)
    first, again, other = (
        generate(case, capsys, "--prompt", "7", "--max-tokens", "40", "--seed", seed)
        for seed in ("0", "0", "1")
    )
    assert first == again and first != other and len(first.split()) == 41
    greedy = generate(case, capsys, "--prompt", "7", "--max-tokens", "40", "--temperature", "0")
    assert first != greedy  # sampling at temperature 0.8 over a flat-ish table


def test_generate_checkpoint_choice(make, capsys) -> None:
    case = generation_case(make)
    main = case.module("generate").main
    main(["--run", str(case.run), "--prompt", "1", "--max-tokens", "1"])
    assert "best.pt does not exist: using last.pt" in capsys.readouterr().err
    shutil.copy(case.run / "checkpoints" / "last.pt", case.run / "checkpoints" / "best.pt")
    main(["--run", str(case.run), "--prompt", "1", "--max-tokens", "1"])
    assert capsys.readouterr().err == ""
    with pytest.raises(SystemExit, match="nope.pt: no such checkpoint"):
        generate(case, capsys, "--prompt", "1", "--checkpoint", str(case.root / "nope.pt"))
    with pytest.raises(SystemExit, match="the prompt is empty"):
        generate(case, capsys, "--prompt", "")
    with pytest.raises(SystemExit, match="token id 20 is outside the vocabulary 0..19"):
        generate(case, capsys, "--prompt", "20")


def test_generate_mlm_predicts_an_appended_mask(make, capsys) -> None:
    case = generation_case(make, "mlm")
    out = generate(case, capsys, "--prompt", "", "--temperature", "0", "--max-tokens", "12")
    # A bigram table sees only the [MASK] (id 19) at the end: it always picks the same token.
    row = case.table[19].clone()
    row[19] = float("-inf")
    assert out.split() == [str(int(row.argmax()))] * 12


def test_generate_text(make, capsys) -> None:
    spec = resolved("lm", source="text", path="c.txt", seq_len=8, tokenizer={"kind": "byte"})
    case = make(spec, [8], 256, bigram_model(256, 8))
    (case.root / "c.txt").write_text("some text\n" * 10)
    case.load()
    torch.save({"model": case.module("model").Model().state_dict()}, case.run / "last.pt")
    (case.run / "config.json").write_text(json.dumps(spec.model_dump(mode="json")))
    args = ["--prompt", "Héllo", "--checkpoint", str(case.run / "last.pt"), "--max-tokens", "20"]
    out = generate(case, capsys, *args)
    assert out.startswith("Héllo") and len(out.encode()) >= len("Héllo".encode())
    # The same as a script.
    script = subprocess.run(
        [sys.executable, "-m", f"{case.name}.generate", "--run", str(case.run), *args],
        cwd=case.root / "packages",
        capture_output=True,
        check=True,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
    )
    assert script.stdout.decode().rstrip("\n") == out
