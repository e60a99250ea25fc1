"""Hardware targets: the figures of a device that the cost model needs, read from YAML.

A built-in target is `targets/<name>.yaml`; a user passes a path to their own file. Every figure
is a plain number with its source in a comment of the file, so a new device is a new file.
The efficiency factors and the launch overhead are what a calibration run fits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from nlc.errors import NlcError, did_you_mean
from nlc.frontend.load import validate
from nlc.frontend.spec_item import SpecItem
from nlc.frontend.yaml_source import load_yaml
from nlc.ops.base import OpClass
from nlc.resources import data_dir

TargetDtype = Literal["f32", "f16", "bf16", "i8"]
# Op classes that run on the matrix units (tensor cores; AVX-512 dot products on a CPU).
MATRIX_CLASSES = frozenset({"matmul", "conv", "attention"})
# Op classes with an efficiency factor (views cost nothing).
COSTED_CLASSES = tuple(c for c in get_args(OpClass) if c != "view")


class Peaks(BaseModel):
    """Dense peak throughput in TFLOP/s (TOPS for i8) per dtype; `*_tensor` is the rate of the
    matrix units with f32 accumulation, the others the vector (non-tensor) rate."""

    model_config = ConfigDict(extra="forbid")
    f32: float = Field(gt=0)
    f16: float | None = Field(default=None, gt=0)
    f16_tensor: float | None = Field(default=None, gt=0)
    bf16: float | None = Field(default=None, gt=0)
    bf16_tensor: float | None = Field(default=None, gt=0)
    i8: float | None = Field(default=None, gt=0)
    i8_tensor: float | None = Field(default=None, gt=0)


class Target(SpecItem):
    """A device: peak rates, memory system, launch overhead and achievable efficiencies."""

    name: str = ""  # defaults to the file name
    description: str = ""
    kind: Literal["gpu", "cpu"]
    peak_tflops: Peaks
    memory_bandwidth_gbs: float = Field(gt=0, description="DRAM bandwidth, 10^9 bytes/s")
    memory_gib: float = Field(gt=0, description="memory capacity, GiB")
    reserved_gib: float = Field(ge=0, description="memory tensors cannot use (driver, runtime)")
    cache_mib: float = Field(gt=0, description="last-level cache, MiB")
    cache_bandwidth_gbs: float | None = Field(
        default=None, gt=0, description="last-level cache bandwidth, 10^9 bytes/s (None: free)"
    )
    memory_efficiency: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="fraction of the bandwidths memory-bound kernels reach (None: per op class,"
        " the class's efficiency)",
    )
    launch_overhead_us: float = Field(ge=0, description="per kernel launch, microseconds")
    overlap: float = Field(
        default=1, ge=0, le=1, description="compute hiding memory traffic: 1 full, 0 none"
    )
    call_overhead_us: float = Field(default=0, ge=0, description="per forward pass, microseconds")
    node_overhead_us: dict[str, float] = Field(
        default_factory=dict,
        description="per node of an op class, on top of its launches: the glue a runtime runs"
        " around a composite op (onnxruntime runs attention as dozens of small nodes)",
    )
    dtypes: list[TargetDtype] = Field(min_length=1, description="dtypes it computes natively")
    efficiency: dict[str, float] = Field(
        description="per op class, the fraction of its roofline bound that kernels reach"
    )
    calibrated: bool = Field(default=False, description="efficiencies fitted to measurements")
    runtime: Literal["pytorch", "onnxruntime"] = Field(
        default="pytorch", description="what runs the model: eager PyTorch or onnxruntime"
    )
    threads: int | None = Field(default=None, gt=0, description="CPU threads (None: all)")

    def peak_flops(self, dtype: str, op_class: str) -> float:
        """FLOP/s of `op_class` in `dtype`: matrix-unit classes use the `*_tensor` rate where the
        device has one; the rest use the dtype's vector rate, or the f32 rate when it has none
        (PyTorch computes elementwise half-precision math in f32)."""
        peaks = self.peak_tflops
        rate = getattr(peaks, f"{dtype}_tensor", None) if op_class in MATRIX_CLASSES else None
        return (rate or getattr(peaks, dtype) or peaks.f32) * 1e12

    def require(self, dtype: str) -> None:
        if dtype not in self.dtypes:
            raise NlcError(
                f"target {self.name} does not support {dtype}",
                None,
                f"{self.name} computes in {', '.join(self.dtypes)}",
            )

    @property
    def half_dtype(self) -> str | None:
        """The dtype of mixed-precision training: bf16 where supported, else f16."""
        return next((d for d in ("bf16", "f16") if d in self.dtypes), None)

    @property
    def capacity_bytes(self) -> int:
        return int((self.memory_gib - self.reserved_gib) * 2**30)

    @property
    def cache_bytes(self) -> int:
        return int(self.cache_mib * 2**20)


def builtin_targets() -> list[str]:
    return sorted(p.stem for p in data_dir("targets").glob("*.yaml"))


def load_target(name_or_path: str | Path) -> Target:
    """A built-in target by name (`rx580`) or a target file by path."""
    text = str(name_or_path)
    path = Path(text)
    if path.suffix not in (".yaml", ".yml"):
        if text not in builtin_targets():
            raise NlcError(
                f"unknown target {text!r}",
                None,
                did_you_mean(text, builtin_targets())
                or f"built-in targets: {', '.join(builtin_targets())}; or a path to a .yaml file",
            )
        path = data_dir("targets") / f"{text}.yaml"
    elif not path.is_file():
        raise NlcError(f"target file {text} does not exist", None, "check the path")
    data, pos = load_yaml(path, str(path))
    if not isinstance(data, dict):
        raise NlcError(
            f"the target file {path} is not a mapping",
            pos.value(()),
            "a target file maps figures to values, e.g. `kind: gpu`; see targets/rx580.yaml",
        )
    target = validate(Target, data, pos)
    target.name = target.name or path.stem
    _check_dtypes(target)
    _check_efficiency(target)
    return target


def _check_dtypes(t: Target) -> None:
    """Every listed dtype has a peak rate, and every rate given is for a listed dtype."""
    peaks = t.peak_tflops
    for i, dtype in enumerate(t.dtypes):
        if not (getattr(peaks, dtype) or getattr(peaks, f"{dtype}_tensor", None)):
            raise NlcError(
                f"dtype {dtype} is listed but peak_tflops gives no rate for it",
                t.at("dtypes", i),
                f"add `{dtype}:` or `{dtype}_tensor:` under peak_tflops, or drop {dtype}",
            )
    for key, value in peaks:
        dtype = key.removesuffix("_tensor")
        if value is not None and dtype not in t.dtypes:
            raise NlcError(
                f"peak_tflops.{key} is given but {dtype} is not in dtypes",
                t.key_at("peak_tflops", key),
                f"add {dtype} to `dtypes:` or remove peak_tflops.{key}",
            )


def _check_efficiency(t: Target) -> None:
    """One factor in (0, 1] per op class; node overheads only for op classes."""
    for key in t.node_overhead_us:
        if key not in COSTED_CLASSES:
            raise NlcError(
                f"node_overhead_us: unknown op class {key!r}",
                t.key_at("node_overhead_us", key),
                did_you_mean(key, COSTED_CLASSES) or f"op classes: {', '.join(COSTED_CLASSES)}",
            )
    for key, value in t.efficiency.items():
        if key not in COSTED_CLASSES:
            raise NlcError(
                f"efficiency: unknown op class {key!r}",
                t.key_at("efficiency", key),
                did_you_mean(key, COSTED_CLASSES) or f"op classes: {', '.join(COSTED_CLASSES)}",
            )
        if not 0 < value <= 1:
            raise NlcError(
                f"efficiency.{key} must be in (0, 1], got {value}",
                t.at("efficiency", key),
                "a fraction of the roofline bound, e.g. 0.6",
            )
    missing = [c for c in COSTED_CLASSES if c not in t.efficiency]
    if missing:
        raise NlcError(
            f"efficiency has no factor for {', '.join(missing)}",
            t.key_at("efficiency"),
            f"add e.g. `{missing[0]}: 0.5` (the fraction of its roofline bound it reaches)",
        )
