"""Pre-flight checks of a train section's data files, before any training process starts."""

from __future__ import annotations

import csv
import math
import zipfile
from pathlib import Path

import numpy as np

from nlc.errors import NlcError, did_you_mean
from nlc.frontend.load import Spec
from nlc.frontend.train_ast import TrainSpec

DIGITS_SAMPLES = 1797  # scikit-learn's load_digits


def check_data(spec: Spec) -> None:
    """Raise NlcError, at the spec's line, if a data file is missing or malformed, or if the
    training split holds less than one batch."""
    train = spec.ast.train
    assert train is not None
    count = _samples(train, spec.data_root)
    if count is None:  # a BPE corpus: its token count is known once trained (data.py checks)
        return
    kept, what = count
    if train.batch_size > kept:
        raise NlcError(
            f"batch_size {train.batch_size} is larger than the training split "
            f"({kept} {what} after holding out val={train.data.val})",
            train.at("batch_size"),
            f"use batch_size <= {kept}, or more data",
        )


def _kept(total: int, val: float) -> int:
    """What the training split keeps: data.py holds out ceil(total * val)."""
    return total - math.ceil(total * val)


def _samples(train: TrainSpec, root: Path) -> tuple[int, str] | None:
    """The training split's sample count, and what a sample is; None where only tokenizing
    the corpus would tell."""
    data = train.data
    if data.source in ("digits", "synthetic", "arrays", "csv"):
        total = _sample_count(train, root)
        return _kept(total, data.val), f"of {total} samples"
    path = _existing(train, root, data.path, "path")
    seq_len = data.seq_len
    assert seq_len is not None
    units = _token_count(train, path)
    if units is None:
        return None
    kept = _kept(units, data.val)
    return (kept - 1) // seq_len, f"windows of {seq_len} tokens in {kept} of {units} tokens"


def _sample_count(train: TrainSpec, root: Path) -> int:
    data = train.data
    if data.source == "digits":
        return DIGITS_SAMPLES
    if data.source == "synthetic":
        return data.size
    if data.source == "arrays":
        return _arrays(train, root)
    return _csv(train, _existing(train, root, data.path, "path"))


def _token_count(train: TrainSpec, path: Path) -> int | None:
    """Tokens of a token file or a byte- or character-tokenized corpus."""
    data = train.data
    if data.source == "tokens":
        size = path.stat().st_size
        item = np.dtype(data.dtype).itemsize
        if size % item:
            raise NlcError(
                f"token file {data.path!r} has {size} bytes, not a multiple of {data.dtype}'s "
                f"{item}",
                data.at("dtype"),
                "set `dtype:` to the integer type the file was written with",
            )
        return size // item
    tokenizer = data.tokenizer
    if tokenizer is not None and tokenizer.kind == "bpe":
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise NlcError(
            f"corpus {data.path!r} is not UTF-8 text (byte {e.start}: {e.reason})",
            data.at("path"),
            "convert the file to UTF-8",
        ) from None
    return len(text.encode()) if tokenizer is not None and tokenizer.kind == "byte" else len(text)


def _existing(train: TrainSpec, root: Path, rel: str | None, key: str) -> Path:
    assert rel is not None
    path = root / rel
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise NlcError(
            f"data file {rel!r} {what}",
            train.data.at(key),
            f"data paths are relative to the spec file: looked for {path}",
        )
    return path


def _arrays(train: TrainSpec, root: Path) -> int:
    data = train.data
    if data.x.endswith(".npy") and data.y.endswith(".npy"):
        lengths = [
            np.load(_existing(train, root, data.x, "x"), mmap_mode="r").shape[0],
            np.load(_existing(train, root, data.y, "y"), mmap_mode="r").shape[0],
        ]
    else:
        path = _existing(train, root, data.path, "path")
        try:
            with np.load(path, allow_pickle=False) as arrays:
                for key in ("x", "y"):
                    name = getattr(data, key)
                    if name not in arrays.files:
                        raise NlcError(
                            f"{data.path!r} has no array {name!r} (it has: "
                            f"{', '.join(arrays.files)})",
                            data.at(key) if key in data.model_fields_set else data.at("path"),
                            did_you_mean(name, arrays.files) or f"set `{key}:` to one of them",
                        )
                lengths = [len(arrays[data.x]), len(arrays[data.y])]
        except (zipfile.BadZipFile, ValueError, OSError) as e:
            raise NlcError(
                f"{data.path!r} is not a readable .npz file ({e})",
                data.at("path"),
                "write it with numpy.savez(path, x=..., y=...)",
            ) from None
    if lengths[0] != lengths[1]:
        raise NlcError(
            f"the inputs have {lengths[0]} samples but the targets {lengths[1]}",
            data.at("path") or data.at("x"),
            "x and y must have one row per sample",
        )
    return lengths[0]


def _csv(train: TrainSpec, path: Path) -> int:
    data = train.data
    with path.open(newline="", encoding="utf-8") as f:
        rows = csv.reader(f)
        header = next(rows, None)
        if not header:
            raise NlcError(
                f"{data.path!r} is empty", data.at("path"), "a csv source needs a header row"
            )
        if data.target is not None and data.target not in header:
            raise NlcError(
                f"{data.path!r} has no column {data.target!r}",
                data.at("target"),
                did_you_mean(data.target, header) or f"its columns: {', '.join(header)}",
            )
        return sum(1 for row in rows if row)
