"""The `train:` section and pipeline files: loading, overrides, resolved defaults, the checks
that need the model or the data, and the printers (broken specs are in tests/errors/)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

import nlc
from nlc.errors import NlcError
from nlc.frontend.fmt import convert_file, format_file
from nlc.train.data_check import check_data
from nlc.train.runs import Run, differing, find_runs, table

EXAMPLES = Path(__file__).parents[1] / "examples"
PIPELINES = EXAMPLES / "pipelines"
MLP = {
    "nlc": 1,
    "name": "m",
    "params": {"width": 16},
    "inputs": {"x": {"shape": ["B", 1, 8, 8]}},
    "graph": ["flatten", {"op": "linear", "out": "${width}"}, "relu", {"op": "linear", "out": 10}],
}
LM = {
    "nlc": 1,
    "name": "lm",
    "inputs": {"ids": {"shape": ["B", "T"], "dtype": "i64"}},
    "graph": [
        {"op": "embedding", "num": 300, "dim": 16},
        {"op": "pos_embedding", "num": 64},
        {"op": "linear", "out": 300},
    ],
}


def _write(folder: Path, name: str, doc: dict) -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _train(folder: Path, doc: dict, train: dict, overrides: dict | None = None):
    spec, _ = nlc.load(_write(folder, "spec.yaml", {**doc, "train": train}), overrides)
    return spec


def test_defaults_resolve_against_the_model(tmp_path: Path):
    train = _train(tmp_path, MLP, {}).ast.train
    assert (train.epochs, train.steps, train.loss.kind) == (10, None, "cross_entropy")
    lm = _train(
        tmp_path, LM, {"task": "lm", "data": {"source": "text", "path": "c.txt", "seq_len": 32}}
    ).ast.train
    assert lm.data.tokenizer.kind == "bpe" and lm.data.tokenizer.vocab_size == 300
    stop = _train(tmp_path, MLP, {"early_stopping": {"metric": "val_accuracy"}}).ast.train
    assert stop.early_stopping.mode == "max"
    stop = _train(tmp_path, MLP, {"early_stopping": {"metric": "val_loss"}}).ast.train
    assert stop.early_stopping.mode == "min"


def test_seq_len_is_checked_by_lowering_the_model_at_that_length(tmp_path: Path):
    data = {"source": "synthetic", "seq_len": 64}
    assert _train(tmp_path, LM, {"task": "lm", "data": data}).ast.train.data.seq_len == 64
    with pytest.raises(NlcError, match="at data.seq_len 65: pos_embedding: 65 positions"):
        _train(tmp_path, LM, {"task": "lm", "data": {**data, "seq_len": 65}})


def test_byte_tokenizer_needs_room_for_every_byte_and_the_mask(tmp_path: Path):
    data = {"source": "text", "path": "c.txt", "seq_len": 32, "tokenizer": {"kind": "byte"}}
    assert _train(tmp_path, LM, {"task": "mlm", "data": data}).ast.train.data.tokenizer.vocab_size
    small = {
        **LM,
        "graph": [{**LM["graph"][0], "num": 256}, LM["graph"][1], {"op": "linear", "out": 256}],
    }
    with pytest.raises(NlcError, match="needs 257 token ids"):
        _train(tmp_path, small, {"task": "mlm", "data": data})


def test_set_reaches_nested_train_settings_and_params(tmp_path: Path):
    spec = _train(
        tmp_path,
        MLP,
        {"optimizer": {"name": "sgd"}},
        {"train.optimizer.lr": 0.5, "train.schedule.name": "cosine", "width": 8},
    )
    train = spec.ast.train
    assert (train.optimizer.name, train.optimizer.lr, train.schedule.name) == ("sgd", 0.5, "cosine")
    assert spec.ast.params["width"] == 8


def test_pipeline_file_in_both_forms_resolves_to_the_same_spec():
    yaml_spec, yaml_graph = nlc.load(PIPELINES / "gpt_text.yaml")
    dsl_spec, dsl_graph = nlc.load(PIPELINES / "gpt_text.nlc")
    assert yaml_spec.ast.name == dsl_spec.ast.name == "gpt_text"
    assert yaml_spec.ast.train.model_dump() == dsl_spec.ast.train.model_dump()
    assert yaml_graph.num_params() == dsl_graph.num_params() == 2_197_632
    assert yaml_spec.data_root == PIPELINES  # data paths are relative to the pipeline
    assert yaml_spec.ast.train.data.tokenizer.vocab_size == 2048


def test_pipeline_params_then_set_win_over_the_model_defaults(tmp_path: Path):
    model = _write(tmp_path, "model.yaml", MLP)
    pipe = {"nlc": 1, "model": {"spec": model.name, "params": {"width": 4}}, "name": "p"}
    path = _write(tmp_path, "pipe.yaml", pipe)
    spec, graph = nlc.load(path)
    assert (graph.name, spec.ast.params["width"], spec.ast.train.epochs) == ("p", 4, 10)
    spec, _ = nlc.load(path, {"width": 32, "train.epochs": 2})
    assert (spec.ast.params["width"], spec.ast.train.epochs) == (32, 2)
    assert spec.data["train"] == {"epochs": 2}  # spec.yaml of the build: as given


def test_pipeline_cannot_name_a_pipeline(tmp_path: Path):
    _write(tmp_path, "model.yaml", MLP)
    _write(tmp_path, "a.yaml", {"nlc": 1, "model": "model.yaml"})
    path = _write(tmp_path, "b.yaml", {"nlc": 1, "model": "a.yaml"})
    with pytest.raises(NlcError, match="is a pipeline file, not a model spec"):
        nlc.load(path)


def test_data_checks_need_the_files(tmp_path: Path):
    np.savez(tmp_path / "d.npz", x=np.zeros((100, 64), np.float32), y=np.zeros(100, np.int64))
    train = {"data": {"source": "arrays", "path": "d.npz"}, "batch_size": 90}
    check_data(_train(tmp_path, MLP, train))  # 90 of 100 kept after val=0.1
    with pytest.raises(NlcError, match="batch_size 91 is larger than the training split"):
        check_data(_train(tmp_path, MLP, {**train, "batch_size": 91}))
    with pytest.raises(NlcError, match="has no array 'inputs'") as e:
        check_data(_train(tmp_path, MLP, {**train, "data": {**train["data"], "x": "inputs"}}))
    assert e.value.loc.line > 1
    np.savez(tmp_path / "d.npz", x=np.zeros((100, 64)), y=np.zeros(99))
    with pytest.raises(NlcError, match="100 samples but the targets 99"):
        check_data(_train(tmp_path, MLP, train))
    (tmp_path / "t.bin").write_bytes(b"\0" * 7)
    tokens = {"task": "lm", "data": {"source": "tokens", "path": "t.bin", "seq_len": 8}}
    with pytest.raises(NlcError, match="not a multiple of uint16's 2"):
        check_data(_train(tmp_path, LM, tokens))


def test_printers_keep_the_train_section_and_its_comments(tmp_path: Path):
    source = tmp_path / "spec.yaml"
    text = yaml.safe_dump(MLP, sort_keys=False) + (
        "train:  # how\n  epochs: 3\n  # the optimizer\n  optimizer: {name: sgd, lr: 0.1}\n"
    )
    source.write_text(text)
    format_file(source)
    assert "  # the optimizer\n  optimizer: {name: sgd, lr: 0.1}\n" in source.read_text()
    dsl, back = tmp_path / "spec.nlc", tmp_path / "back.yaml"
    convert_file(source, dsl)
    assert 'optimizer: {name: "sgd", lr: 0.1},' in dsl.read_text()
    convert_file(dsl, back)
    assert nlc.load(back)[0].ast.train.model_dump() == nlc.load(source)[0].ast.train.model_dump()
    assert back.read_text().count("#") == 2


def test_runs_table_shows_what_differs(tmp_path: Path):
    for name, lr, acc in (("a", 0.1, 0.9), ("b", 0.2, 0.95)):
        run = tmp_path / name
        run.mkdir()
        (run / "config.json").write_text(f'{{"optimizer": {{"lr": {lr}}}, "seed": 0}}')
        summary = {"status": "completed", "steps": 10, "final": {"val_accuracy": acc}}
        (run / "summary.json").write_text(json.dumps(summary))
    runs = find_runs(tmp_path)
    assert [r.path.name for r in runs] == ["a", "b"]
    assert differing(runs) == ["optimizer.lr"]
    rows = table(runs, tmp_path)
    assert list(rows[1])[-1] == "optimizer.lr" and rows[1]["optimizer.lr"] == "0.2"
    assert rows[0]["val_accuracy"] == "0.9" and rows[0]["status"] == "completed"
    assert differing([Run(Path("x"), {"a": [1]}, {}), Run(Path("y"), {"a": [1]}, {})]) == []
