"""The `train:` section of a spec (or of a pipeline file): how the model is trained.

Every field has a default, so `train: {}` trains a classifier on scikit-learn's digits. The
generated `train.py` embeds the resolved section as its `CONFIG`, key for key.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from nlc.frontend.pass_ast import PassSpec
from nlc.frontend.search_ast import SearchSpec
from nlc.frontend.spec_item import SpecItem

Task = Literal["classification", "regression", "lm", "mlm"]
Source = Literal["digits", "synthetic", "arrays", "tokens", "csv", "text"]


class TokenizerSpec(SpecItem):
    """How a text corpus becomes tokens."""

    noun, example = "tokenizer", "{kind: bpe, vocab_size: 2048}"

    kind: Literal["byte", "char", "bpe"] = Field(
        "bpe", description="byte-level (256 ids), characters of the corpus, or BPE trained on it"
    )
    vocab_size: int | None = Field(
        None, ge=2, description="BPE vocabulary size (default: the model's output size)"
    )


class DataSpec(SpecItem):
    """Where the samples come from and how they are split."""

    noun, example = "data section", "{source: digits, val: 0.1}"

    source: Source = Field("digits", description="digits: scikit-learn's 8x8 digits")
    path: str | None = Field(
        None,
        description="file for arrays (.npz), tokens (flat binary), csv and text sources, "
        "relative to the spec file",
    )
    x: str = Field("x", description="arrays: the npz key (or a .npy path) of the inputs")
    y: str = Field("y", description="arrays: the npz key (or a .npy path) of the targets")
    target: str | None = Field(None, description="csv: the target column (default: the last)")
    dtype: Literal["uint8", "uint16", "uint32", "int32", "int64"] = Field(
        "uint16", description="tokens: the integer type of the token file"
    )
    size: int = Field(2048, gt=0, description="synthetic: number of samples")
    seq_len: int | None = Field(
        None, gt=1, description="lm/mlm: tokens per sample (default: the input's fixed length)"
    )
    tokenizer: TokenizerSpec | None = Field(None, description="text: how to tokenize the corpus")
    val: float = Field(0.1, ge=0, lt=1, description="fraction held out for validation")
    split_seed: int = Field(0, description="seed of the train/validation split")
    workers: int = Field(0, ge=0, description="DataLoader worker processes")
    prefetch: int = Field(2, ge=1, description="batches each worker loads ahead")


class GroupSpec(SpecItem):
    """A parameter group: parameters whose qualified names match `params`."""

    noun, example = "parameter group", "{params: 'head.*', lr_scale: 10}"

    params: str = Field(description="glob on qualified parameter names, e.g. 'head.*'")
    lr_scale: float = Field(1.0, gt=0, description="multiplies the group's learning rate")
    weight_decay: float | None = Field(None, ge=0, description="the group's own weight decay")


class OptimizerSpec(SpecItem):
    """The optimizer and its parameter groups."""

    noun, example = "optimizer", "{name: adamw, lr: 3e-4, weight_decay: 0.1}"

    name: Literal["adamw", "adam", "sgd", "lion"] = Field("adamw", description="the algorithm")
    lr: float = Field(1e-3, gt=0, description="peak learning rate")
    weight_decay: float = Field(0.0, ge=0, description="decoupled for adamw and lion")
    betas: tuple[float, float] = Field((0.9, 0.999), description="adam, adamw and lion")
    eps: float = Field(1e-8, gt=0, description="adam and adamw")
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd only")
    nesterov: bool = Field(False, description="sgd only")
    no_decay: list[Literal["bias", "norm", "embedding"]] = Field(
        ["bias", "norm"], description="parameters exempt from weight decay"
    )
    groups: list[GroupSpec] = Field(
        [], description="learning-rate multipliers for parameters matching a name glob"
    )
    lora_plus_ratio: float | None = Field(
        None,
        gt=0,
        description="LoRA+ (Hayou et al. 2024): the LoRA B matrices train at lr x this ratio "
        "(e.g. 16)",
    )


class ScheduleSpec(SpecItem):
    """The learning-rate schedule, per optimizer step."""

    noun, example = "schedule", "{name: cosine, warmup: 100}"

    name: Literal["constant", "linear", "cosine", "onecycle", "polynomial"] = Field(
        "constant", description="the shape after warm-up, down to final_lr"
    )
    warmup: float = Field(
        0, ge=0, description="warm-up steps, or a fraction of all steps if below 1"
    )
    final_lr: float = Field(0.0, ge=0, le=1, description="final LR as a fraction of `lr`")
    power: float = Field(1.0, gt=0, description="polynomial: the exponent")


class LossSpec(SpecItem):
    """The loss; its kind follows the task unless given."""

    noun, example = "loss", "{label_smoothing: 0.1}"

    kind: Literal["cross_entropy", "mse", "l1"] | None = Field(
        None, description="default: cross_entropy, or mse for regression"
    )
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="cross_entropy only")


class EarlyStoppingSpec(SpecItem):
    """Stop when a validation metric stops improving."""

    noun, example = "early stopping", "{metric: val_accuracy, patience: 5}"

    metric: str = Field("val_loss", description="a logged validation metric")
    patience: int = Field(5, ge=1, description="evaluations without improvement")
    min_delta: float = Field(0.0, ge=0, description="the least change that counts")
    mode: Literal["min", "max", "auto"] = Field(
        "auto", description="auto: max for accuracy and topK, min for the others"
    )


class CheckpointSpec(SpecItem):
    """What is written to `checkpoints/`: always `last.pt` and `best.pt`."""

    noun, example = "checkpoint section", "{every: 500, keep_last: 3}"

    every: int | None = Field(None, gt=0, description="also write step-N.pt every N steps")
    keep_last: int = Field(3, ge=1, description="step checkpoints kept")


class TrackingSpec(SpecItem):
    """Optional experiment trackers beside metrics.jsonl."""

    noun, example = "tracking section", "{tensorboard: true}"

    tensorboard: bool = Field(False, description="event files in the run's tensorboard/")
    mlflow: bool | str = Field(False, description="true (a file store in the run) or a URI")


class DistillSpec(SpecItem):
    """Knowledge distillation (Hinton et al. 2015) from a trained teacher: the loss is
    (1 - alpha) task loss + alpha T^2 KL(softmax(teacher / T) || softmax(student / T))."""

    noun, example = "distill section", "{teacher: runs/big, temperature: 4.0, alpha: 0.5}"

    teacher: str = Field(
        description="an `nlc train` run folder, or a spec file (then `weights:` too), "
        "relative to the spec file"
    )
    weights: str | None = Field(
        None, description="a spec teacher's trained weights (a .pt file or a run folder)"
    )
    temperature: float = Field(4.0, gt=0, description="softens both distributions")
    alpha: float = Field(0.5, ge=0, le=1, description="weight of the distillation term")


class IterativeSpec(SpecItem):
    """Compression in steps: the passes' amounts grow step by step, with fine-tuning between."""

    noun, example = "iterative section", "{steps: 3, epochs: 2, schedule: cubic}"

    steps: int = Field(2, ge=1, description="compression steps, each followed by fine-tuning")
    epochs: int | None = Field(
        None, gt=0, description="fine-tuning epochs per step (default: the train section's length)"
    )
    schedule: Literal["linear", "cubic"] = Field(
        "linear",
        description="amount after step i of n: target x i / n (linear), or "
        "target x (1 - (1 - i / n)^3) (cubic, Zhu & Gupta 2017)",
    )


class TrainSpec(SpecItem):
    """How the model is trained."""

    noun, example = "train section", "{epochs: 20, optimizer: {lr: 3e-3}}"

    task: Task = Field(
        "classification",
        description="what the loss and metrics are; lm = next token, mlm = masked tokens",
    )
    data: DataSpec = Field(DataSpec(), description="the samples and their split")
    loss: LossSpec = Field(LossSpec(), description="the loss (its kind follows the task)")
    metrics: list[str] = Field(
        [], description="extra metrics: top5 (any topK), mae, rmse; the task's own come free"
    )
    mask_rate: float = Field(0.15, gt=0, lt=1, description="mlm: fraction of tokens masked")
    epochs: int | None = Field(None, gt=0, description="default 10 unless `steps` is given")
    steps: int | None = Field(None, gt=0, description="optimizer steps (instead of epochs)")
    batch_size: int = Field(64, gt=0, description="global batch per optimizer step")
    optimizer: OptimizerSpec = Field(OptimizerSpec(), description="optimizer and its groups")
    schedule: ScheduleSpec = Field(ScheduleSpec(), description="learning-rate schedule")
    precision: Literal["fp32", "fp16", "bf16", "auto"] = Field(
        "fp32", description="auto: bf16 on GPUs that have it, else fp16 on GPUs, else fp32"
    )
    accumulate: int = Field(1, gt=0, description="micro-batches per optimizer step")
    clip_grad: float | None = Field(None, gt=0, description="max global gradient norm")
    grad_checkpointing: bool | list[str] = Field(
        False, description="recompute activations of every block (true) or of the named blocks"
    )
    compile: bool = Field(False, description="torch.compile the model")
    seed: int = Field(0, description="seed of Python, NumPy and torch RNGs and of the order")
    deterministic: bool = Field(False, description="torch deterministic algorithms")
    eval_every: Literal["epoch"] | int = Field("epoch", description="'epoch' or every N steps")
    log_every: int = Field(10, gt=0, description="steps between metrics.jsonl lines")
    early_stopping: EarlyStoppingSpec | None = Field(
        None, description="stop when a validation metric stops improving"
    )
    checkpoint: CheckpointSpec = Field(CheckpointSpec(), description="step checkpoints")
    tracking: TrackingSpec = Field(TrackingSpec(), description="TensorBoard and MLflow")
    distributed: Literal["ddp", "fsdp"] = Field(
        "ddp", description="how torchrun workers share the model"
    )
    trainable: list[str] | None = Field(
        None,
        description="globs on qualified parameter names that train; the others are frozen "
        "(LoRA adapters always train; default: all, or only the adapters of a LoRA model)",
    )
    distill: DistillSpec | None = Field(None, description="learn from a trained teacher too")
    iterative: IterativeSpec | None = Field(
        None, description="a pipeline's passes in steps with fine-tuning between (`nlc train`)"
    )


class ModelRef(SpecItem):
    """The model spec a pipeline file trains, with param overrides."""

    noun, example = "model reference", "{spec: gpt2_small.yaml, params: {layers: 2}}"

    spec: str = Field(description="path of the model spec, relative to the pipeline file")
    params: dict[str, int | float | bool | str] = Field(
        {}, description="values for the model's params, as `--set` gives them"
    )

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"spec": data} if isinstance(data, str) else data


class PipelineSpec(SpecItem):
    """A pipeline file: a model spec by path and how to train it."""

    noun = "pipeline"

    nlc: Literal[1]
    model: ModelRef
    name: str | None = Field(None, description="package name (default: the model's name)")
    passes: list[PassSpec] = Field(
        [], description="passes applied after the model spec's own, before training"
    )
    train: TrainSpec = TrainSpec()
    search: SearchSpec | None = Field(
        None, description="what `nlc search` optimises over the pipeline's choices"
    )
