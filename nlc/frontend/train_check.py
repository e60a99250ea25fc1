"""Check a spec's `train:` section against its model and resolve its defaults.

Everything that can be known before training is checked here, with the spec's line and column:
the task against the model's input and output, the data source's keys, the tokenizer against
the vocabulary, metric names, block names. `check_data` adds what needs the data files.
"""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path
from typing import Any

from nlc.errors import NlcError, did_you_mean
from nlc.frontend.load import Spec
from nlc.frontend.train_ast import GroupSpec, OptimizerSpec, TokenizerSpec, TrainSpec
from nlc.ir import Graph
from nlc.ir.types import TensorType

_FLOAT, _INT = ("f32", "f16", "bf16", "f64"), ("i64", "i32")
_TOPK = re.compile(r"top([1-9][0-9]*)\Z")
# The validation metrics of each task beside `val_loss`, and the extra ones a spec may list.
_OWN = {"classification": ["accuracy"], "regression": ["mae", "rmse"], "lm": ["perplexity"]}
_OWN["mlm"] = _OWN["lm"]
_FILE_SOURCES = ("arrays", "tokens", "csv", "text")
# LoRA's adapter parameters (`lora_linear`): what a LoRA model trains, and LoRA+'s B matrices.
ADAPTERS = ["*.lora_A", "*.lora_B"]
_DISTILL_TASKS = ("classification", "lm")
_SOURCES_OF = {
    "classification": ("digits", "synthetic", "arrays", "csv"),
    "regression": ("synthetic", "arrays", "csv"),
    "lm": ("synthetic", "tokens", "text"),
    "mlm": ("synthetic", "tokens", "text"),
}


def resolve_train(spec: Spec, graph: Graph) -> TrainSpec:
    """The spec's train section with every default that depends on the model filled in."""
    train = spec.ast.train
    assert train is not None
    x, out = _single_io(spec, graph)
    task, data = train.task, train.data
    _check_task(spec, train, x, out)
    if data.source not in _SOURCES_OF[task]:
        raise NlcError(
            f"data source {data.source!r} does not fit task {task!r}",
            data.at("source"),
            f"task {task} reads {', '.join(_SOURCES_OF[task])}",
        )
    _check_paths(train)
    num_outputs = out.shape[-1]
    updates: dict[str, Any] = {}
    if train.epochs is None and train.steps is None:
        updates["epochs"] = 10
    elif train.epochs is not None and train.steps is not None:
        raise NlcError(
            "train gives both `epochs` and `steps`",
            train.key_at("steps"),
            "keep one: training runs for a number of epochs or of optimizer steps",
        )
    data_updates: dict[str, Any] = {}
    if task in ("lm", "mlm"):
        data_updates["seq_len"] = _seq_len(spec, train, x)
    if data.source == "text":
        data_updates["tokenizer"] = _tokenizer(train, num_outputs)
    elif data.tokenizer is not None:
        raise NlcError(
            f"a tokenizer needs a text corpus, but the data source is {data.source!r}",
            data.key_at("tokenizer"),
            "use `source: text` with `path:` naming the corpus, or remove `tokenizer:`",
        )
    if data_updates:
        updates["data"] = data.model_copy(update=data_updates)
    updates["loss"] = train.loss.model_copy(update={"kind": _loss_kind(train)})
    logged = _check_metrics(train, num_outputs)
    if train.early_stopping is not None:
        updates["early_stopping"] = _early_stopping(train, logged)
    _check_optimizer(train)
    if train.distill is not None:
        _check_distill(spec, train, out)
    _check_blocks(spec, train)
    if train.batch_size % train.accumulate:
        raise NlcError(
            f"batch_size {train.batch_size} is not a multiple of accumulate {train.accumulate}",
            train.at("batch_size"),
            "the batch is split into `accumulate` equal micro-batches",
        )
    return train.model_copy(update=updates)


def _single_io(spec: Spec, graph: Graph) -> tuple[TensorType, TensorType]:
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise NlcError(
            f"training needs a model with one input and one output, this one has "
            f"{len(graph.inputs)} and {len(graph.outputs)}",
            spec.ast.key_at("train"),
            "the generated train.py feeds one tensor in and computes the loss on one output",
        )
    (name, value), x = next(iter(graph.outputs.items())), graph.inputs[0].type
    out = graph.type_of(value)
    if not isinstance(out.shape[-1], int):
        raise NlcError(
            f"output {name!r} has a symbolic last dim ({out.shape[-1]}): the number of classes "
            "or targets must be fixed",
            spec.ast.at("outputs"),
            "end the model with e.g. `{op: linear, out: 10}`",
        )
    return x, out


def _check_task(spec: Spec, train: TrainSpec, x: TensorType, out: TensorType) -> None:
    task = train.task
    lm = task in ("lm", "mlm")
    want_in = "an integer [B, T] token input (dtype i64)" if lm else "a float input"
    if (x.dtype in _INT and len(x.shape) == 2) != lm or (not lm and x.dtype not in _FLOAT):
        raise NlcError(
            f"task {task!r} needs {want_in}; the model's input is {x}",
            train.at("task"),
            "lm and mlm train token models; classification and regression take float inputs",
        )
    rank = 3 if lm else 2
    if len(out.shape) != rank:
        want = {"classification": "[B, classes]", "regression": "[B, targets]"}.get(
            task, "[B, T, vocab] logits"
        )
        raise NlcError(
            f"task {task!r} needs a {want} output; the model's output is {out}",
            train.at("task"),
            "end the model with a linear layer giving one value per class, target or token",
        )
    if not lm:
        for i, d in enumerate(x.shape[1:], 1):
            if not isinstance(d, int):
                raise NlcError(
                    f"input dim {i} ({d}) is symbolic: training needs a fixed sample shape",
                    spec.ast.at("inputs"),
                    "give the input its sizes, e.g. `shape: [B, 1, 8, 8]`",
                )


def _check_paths(train: TrainSpec) -> None:
    data = train.data
    npy = data.x.endswith(".npy") and data.y.endswith(".npy")
    needs = data.source in _FILE_SOURCES and not (data.source == "arrays" and npy)
    if needs and data.path is None:
        example = {"arrays": "data.npz", "tokens": "tokens.bin", "csv": "data.csv"}
        raise NlcError(
            f"data source {data.source!r} needs `path:`",
            data.at("source"),
            f"e.g. `path: {example.get(data.source, 'corpus.txt')}` (relative to the spec file)",
        )
    if data.path is not None and not needs:
        raise NlcError(
            f"data source {data.source!r} reads no file, but `path:` is given",
            data.key_at("path"),
            "remove `path:`, or choose a source that reads files: " + ", ".join(_FILE_SOURCES),
        )


def _seq_len(spec: Spec, train: TrainSpec, x: TensorType) -> int:
    """Tokens per sample; the model is lowered again at that length so that its shape rules
    (a positional embedding's size, say) check it."""
    given, fixed = train.data.seq_len, x.shape[1]
    if given is None and not isinstance(fixed, int):
        raise NlcError(
            f"task {train.task!r} needs the sequence length: the input's {fixed} is symbolic",
            train.data.loc or train.loc,
            "add `seq_len:` under `data:`, e.g. `data: {seq_len: 128, ...}`",
        )
    seq_len = given if given is not None else fixed
    if isinstance(fixed, int):
        if fixed != seq_len:
            raise NlcError(
                f"data.seq_len {seq_len} differs from the input's fixed length {fixed}",
                train.data.at("seq_len"),
                "remove seq_len, or make the input [B, T] with T symbolic",
            )
        return seq_len
    from nlc.frontend.lower import lower

    name, tensor = next(iter(spec.ast.inputs.items()))
    shape = [tensor.shape[0], seq_len, *tensor.shape[2:]]
    inputs = {name: tensor.model_copy(update={"shape": shape})}
    ast = spec.ast.model_copy(update={"inputs": inputs, "train": None})
    try:
        lower(Spec(ast, spec.path, spec.data, spec.root))
    except NlcError as e:
        raise NlcError(
            f"at data.seq_len {seq_len}: {e.message}",
            e.loc,
            (e.hint + ", or lower data.seq_len") if e.hint else "lower data.seq_len",
        ) from None
    return seq_len


def _tokenizer(train: TrainSpec, vocab: int) -> TokenizerSpec:
    tok = train.data.tokenizer or TokenizerSpec()
    loc = train.data.at("tokenizer")
    reserved = 1 if train.task == "mlm" else 0  # the mask token
    if tok.kind == "byte":
        need = 256 + reserved
        if vocab < need:
            raise NlcError(
                f"a byte tokenizer needs {need} token ids, but the model's vocabulary is {vocab}",
                loc,
                f"set the model's vocabulary to {need}, or use a bpe tokenizer",
            )
        return tok.model_copy(update={"vocab_size": need})
    size = tok.vocab_size if tok.vocab_size is not None else vocab
    if size > vocab:
        raise NlcError(
            f"tokenizer vocab_size {size} exceeds the model's vocabulary ({vocab} outputs)",
            train.data.tokenizer.at("vocab_size") if train.data.tokenizer else loc,
            f"use vocab_size <= {vocab}, or enlarge the model's embedding and output",
        )
    return tok.model_copy(update={"vocab_size": size})


def _loss_kind(train: TrainSpec) -> str:
    kind, task = train.loss.kind, train.task
    fits = ("mse", "l1") if task == "regression" else ("cross_entropy",)
    if kind is not None and kind not in fits:
        raise NlcError(
            f"loss {kind!r} does not fit task {task!r}",
            train.loss.at("kind"),
            f"task {task} takes {' or '.join(fits)}",
        )
    if train.loss.label_smoothing and fits[0] != "cross_entropy":
        raise NlcError(
            "label_smoothing applies to cross-entropy, not to a regression loss",
            train.loss.key_at("label_smoothing"),
            "remove label_smoothing",
        )
    return kind or fits[0]


def _check_metrics(train: TrainSpec, num_outputs: int) -> list[str]:
    """The validation metrics train.py logs, `val_loss` first."""
    own = _OWN[train.task]
    extra = ["top5 (any topK)"] if train.task == "classification" else []
    for i, name in enumerate(train.metrics):
        top = _TOPK.match(name)
        if name in own or (top and train.task == "classification"):
            if top and not 1 < int(top.group(1)) <= num_outputs:
                raise NlcError(
                    f"metric {name!r}: k must be between 2 and the {num_outputs} classes",
                    train.at("metrics", i),
                    "e.g. top5",
                )
            continue
        raise NlcError(
            f"unknown metric {name!r} for task {train.task!r}",
            train.at("metrics", i),
            did_you_mean(name, own) or f"task {train.task} logs {', '.join(own + extra)}",
        )
    return ["val_loss"] + [f"val_{m}" for m in dict.fromkeys(own + train.metrics)]


def _early_stopping(train: TrainSpec, logged: list[str]):
    stop = train.early_stopping
    assert stop is not None
    if stop.metric not in logged:
        raise NlcError(
            f"early_stopping watches {stop.metric!r}, which is not logged",
            stop.at("metric"),
            did_you_mean(stop.metric, logged) or f"logged: {', '.join(logged)}",
        )
    mode = stop.mode
    if mode == "auto":
        mode = "max" if stop.metric.startswith(("val_accuracy", "val_top")) else "min"
    return stop.model_copy(update={"mode": mode})


def _check_optimizer(train: TrainSpec) -> None:
    opt = train.optimizer
    for key in ("momentum", "nesterov"):
        if key in opt.model_fields_set and opt.name != "sgd":
            raise NlcError(
                f"`{key}` is an sgd setting, but the optimizer is {opt.name!r}",
                opt.key_at(key),
                "remove it, or use `name: sgd` (adam-style optimizers take `betas`)",
            )
    if opt.nesterov and opt.momentum == 0:
        raise NlcError("nesterov needs momentum > 0", opt.at("nesterov"), "e.g. momentum: 0.9")
    for i, beta in enumerate(opt.betas):
        if not 0 <= beta < 1:
            raise NlcError(
                f"betas[{i}] must be in [0, 1), got {beta}",
                opt.at("betas", i),
                "e.g. betas: [0.9, 0.999]",
            )


def _check_blocks(spec: Spec, train: TrainSpec) -> None:
    names = train.grad_checkpointing
    if isinstance(names, bool):
        return
    for i, name in enumerate(names):
        if name not in spec.ast.blocks:
            raise NlcError(
                f"grad_checkpointing names {name!r}, which is not a block of the model",
                train.at("grad_checkpointing", i),
                did_you_mean(name, spec.ast.blocks)
                or f"blocks: {', '.join(spec.ast.blocks) or 'none'}",
            )


def has_lora(graph: Graph) -> bool:
    return any(node.op == "lora_linear" for node in graph)


def resolve_parameters(train: TrainSpec, graph: Graph) -> TrainSpec:
    """The settings that name parameters, checked against the graph *after* the passes (a
    `lora` pass adds the adapters; a decomposition renames weights): `trainable:` globs must
    match, and LoRA+ becomes a parameter group of the B matrices."""
    _check_trainable(train, graph)
    if train.optimizer.lora_plus_ratio is None:
        return train
    return train.model_copy(update={"optimizer": _lora_plus(train.optimizer, graph)})


def _check_trainable(train: TrainSpec, graph: Graph) -> None:
    names = [name for name, _ in graph.parameters()]
    for i, glob in enumerate(train.trainable or []):
        if not any(fnmatch.fnmatchcase(name, glob) for name in names):
            raise NlcError(
                f"trainable: {glob!r} matches no parameter of the model",
                train.at("trainable", i),
                did_you_mean(glob, names)
                or f"parameters are named node.param, e.g. {', '.join(names[:3])}",
            )


def _lora_plus(opt: OptimizerSpec, graph: Graph) -> OptimizerSpec:
    """LoRA+ as a parameter group of the B matrices, first so that it wins over the others."""
    if not has_lora(graph):
        raise NlcError(
            "lora_plus_ratio needs LoRA adapters, and the model has no lora_linear layer",
            opt.key_at("lora_plus_ratio"),
            "add the lora pass (`passes: [{pass: lora, rank: 8}]`), or remove lora_plus_ratio",
        )
    group = GroupSpec(params=ADAPTERS[1], lr_scale=opt.lora_plus_ratio)
    return opt.model_copy(update={"groups": [group, *opt.groups]})


def teacher_paths(spec: Spec, train: TrainSpec) -> tuple[Path, Path]:
    """The teacher's spec file and weights (a .pt file or a run folder) of `train.distill`,
    checked to exist: a run folder's are its package's spec.yaml and the folder itself."""
    distill = train.distill
    assert distill is not None
    teacher = spec.data_root / distill.teacher
    if teacher.is_dir():
        if distill.weights is not None:
            raise NlcError(
                "a run-folder teacher brings its own weights: `weights:` is for a spec teacher",
                distill.key_at("weights"),
                "remove `weights:`",
            )
        found = [teacher / "checkpoints" / n for n in ("best.pt", "last.pt")]
        if not (teacher / "package" / "spec.yaml").is_file() or not any(f.is_file() for f in found):
            raise NlcError(
                f"teacher {distill.teacher!r} is a folder but not a trained `nlc train` run "
                "(no package/spec.yaml and checkpoints/best.pt)",
                distill.at("teacher"),
                f"the path is relative to the spec file: looked in {teacher}",
            )
        return teacher / "package" / "spec.yaml", teacher
    if not teacher.is_file():
        raise NlcError(
            f"teacher {distill.teacher!r} does not exist",
            distill.at("teacher"),
            f"give a run folder of `nlc train` or a spec file, relative to the spec file: "
            f"looked for {teacher}",
        )
    if distill.weights is None:
        raise NlcError(
            f"teacher {distill.teacher!r} is a spec file: its trained weights are needed too",
            distill.at("teacher"),
            "add `weights: runs/teacher` (a run folder or a .pt file), or name the teacher's "
            "run folder instead",
        )
    weights = spec.data_root / distill.weights
    if not weights.exists():
        raise NlcError(
            f"teacher weights {distill.weights!r} do not exist",
            distill.at("weights"),
            f"the path is relative to the spec file: looked for {weights}",
        )
    return teacher, weights


def _check_distill(spec: Spec, train: TrainSpec, out: TensorType) -> None:
    """The teacher exists, and its output has the student's shape (logits to compare)."""
    distill = train.distill
    assert distill is not None
    if train.task not in _DISTILL_TASKS:
        raise NlcError(
            f"distillation compares logits: task {train.task!r} has none to compare",
            train.key_at("distill"),
            f"distill a model of task {' or '.join(_DISTILL_TASKS)}",
        )
    teacher_spec, _ = teacher_paths(spec, train)
    from nlc.frontend.load import load_spec
    from nlc.frontend.lower import lower

    try:
        loaded = load_spec(teacher_spec)
        loaded.ast.train = None  # its own training settings do not matter here
        graph = lower(loaded)
    except NlcError as e:
        raise NlcError(
            f"teacher {distill.teacher!r}: {e.message}", distill.at("teacher"), e.hint
        ) from None
    if len(graph.outputs) != 1:
        raise NlcError(
            f"teacher {distill.teacher!r} has {len(graph.outputs)} outputs, the student one",
            distill.at("teacher"),
            "distill from a model with one output",
        )
    theirs = graph.type_of(next(iter(graph.outputs.values())))
    if not _same_shape(theirs.shape, out.shape):
        raise NlcError(
            f"the teacher's output {theirs} (of {teacher_spec}) does not match the student's "
            f"{out} ({spec.ast.name})",
            distill.at("teacher"),
            "teacher and student must give logits of the same shape: same classes or vocabulary",
        )


def _same_shape(a: tuple, b: tuple) -> bool:
    """Equal ranks and equal fixed sizes (symbolic dims, the batch say, match anything)."""
    return len(a) == len(b) and all(
        x == y for x, y in zip(a, b, strict=True) if isinstance(x, int) and isinstance(y, int)
    )
