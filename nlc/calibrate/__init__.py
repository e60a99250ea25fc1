"""Calibration: time the micro-benchmarks on this machine, fit the target's efficiencies,
bandwidths and overheads to the times, and write the calibrated target file.

`calibrate` does it all; `measure` and `fit.fit` are its two halves, separate so that the fit
can be tested on synthetic times. Torch and onnxruntime are imported only when measuring.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Sequence
from datetime import date
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import yaml

from nlc.analysis.cost import analyze
from nlc.api import build, load
from nlc.calibrate.fit import Sample, fit, knobs, log_error
from nlc.calibrate.micro import MICROS, Micro
from nlc.errors import NlcError, did_you_mean
from nlc.resources import data_dir
from nlc.targets import Target, builtin_targets, load_target

DEFAULT_BUDGET_S = 40.0  # seconds of timing in all; exporting the micro-benchmarks adds ~25 s
RUNTIME_PACKAGES = {"onnxruntime": "onnxruntime", "pytorch": "torch"}


def measure(
    target: Target,
    micros: Sequence[Micro] = MICROS,
    budget_s: float = DEFAULT_BUDGET_S,
    log: Callable[[str], None] = lambda _: None,
) -> list[Sample]:
    """Build each micro-benchmark with nlc and time it at each of its sizes on the runtime and
    threads of `target`, for about `budget_s` in all (`best_of_rounds`); analyse each on
    `target`, whose figures the fit then changes."""
    from nlc.calibrate.timing import best_of_rounds, onnx_runner, torch_runner

    onnx = target.runtime == "onnxruntime"
    runs, costs = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for micro in micros:
            folder = Path(tmp) / micro.name
            folder.mkdir()
            (folder / "spec.yaml").write_text(yaml.safe_dump(micro.doc, sort_keys=False))
            package = build(folder / "spec.yaml", folder / "pkg", onnx=onnx, verify=False)
            _, graph = load(folder / "spec.yaml")
            for dims in micro.sizes:
                name = " ".join([micro.name, *(f"{k}={v}" for k, v in dims.items())])
                costs[name] = analyze(graph, target, dims)
                if onnx:
                    runs[name] = onnx_runner(package / "model.onnx", graph, dims, target.threads)
                else:
                    runs[name] = torch_runner(package, graph, dims, target.threads)
            log(f"built {micro.name}")
        log(f"timing {len(runs)} runs of {len(micros)} micro-benchmarks, about {budget_s:.0f} s")
        medians = best_of_rounds(runs, budget_s)
    for name, times in medians.items():
        log(f"{name}: {' '.join(f'{t * 1e6:.1f}' for t in times)} us, best of {len(times)}")
    return [Sample(name, costs[name], min(times)) for name, times in medians.items()]


def calibrate(
    base: str | Path,
    out: Path,
    budget_s: float = DEFAULT_BUDGET_S,
    threads: int | None = None,
    runtime: str = "onnxruntime",
    micros: Sequence[Micro] = MICROS,
    log: Callable[[str], None] = lambda _: None,
) -> Target:
    """Time the micro-benchmarks with `runtime` on `threads` (None: all cores), fit the
    figures of the target `base` (a built-in name or a file) to them, and write the result to
    `out`. Peaks, capacities and the cache size stay as `base` gives them. Bandwidths are
    fitted as reached (memory_efficiency 1), as a fit cannot tell a slower memory from a
    lower fraction of it. Returns the written target."""
    if runtime not in RUNTIME_PACKAGES:
        raise NlcError(
            f"unknown runtime {runtime!r}",
            None,
            did_you_mean(runtime, RUNTIME_PACKAGES) or f"choose {' or '.join(RUNTIME_PACKAGES)}",
        )
    if threads is not None and threads < 1:
        raise NlcError(f"threads must be at least 1, got {threads}", None, "e.g. --threads 1")
    start = load_target(base).model_copy(
        update={"runtime": runtime, "threads": threads, "memory_efficiency": 1.0}
    )
    if start.cache_bandwidth_gbs is None:  # a first guess for the fit to move
        start = start.model_copy(update={"cache_bandwidth_gbs": 4 * start.memory_bandwidth_gbs})
    samples = measure(start, micros, budget_s, log)
    fitted = fit(start, samples).model_copy(update={"calibrated": True, "name": out.stem})
    for knob in knobs(samples):  # four digits are more than the measurements support
        fitted = knob.set(fitted, float(f"{knob.get(fitted):.4g}"))
    errors = sorted(abs(math.expm1(log_error(fitted, s))) for s in samples)
    note = (
        f"CALIBRATED by `nlc calibrate` on {date.today()}: {runtime} {_version(runtime)}, "
        f"{threads or 'all'} thread(s); {len(samples)} timings of {len(micros)} "
        f"micro-benchmarks (nlc.calibrate.micro), fit median |error| "
        f"{100 * errors[len(errors) // 2]:.1f}%, largest {100 * errors[-1]:.0f}%. The "
        f"efficiencies are fractions of the peaks above, the bandwidths the ones reached."
    )
    write_target(fitted, out, [*_comments(base), *_wrap(note)])
    return fitted


def write_target(target: Target, path: Path, comments: Sequence[str] = ()) -> None:
    """Write `target` as a target file, fields in declaration order, under the `comments`
    lines."""
    data = _plain(target.model_dump(exclude_none=True))
    header = "".join(f"# {line}".rstrip() + "\n" for line in comments)
    path.write_text(header + yaml.safe_dump(data, sort_keys=False, width=100), encoding="utf-8")


def _plain(value):
    """Whole floats as ints (`memory_gib: 24`, not `24.0`)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _wrap(text: str, width: int = 97) -> list[str]:
    """`text` in lines of at most `width` characters (a longer word gets a line of its own)."""
    lines, line = [], ""
    for word in text.split(" "):
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return [*lines, line]


def _comments(base: str | Path) -> list[str]:
    """The leading comment lines of the base target file (its sources), minus an earlier
    calibration's note."""
    name = str(base)
    path = data_dir("targets") / f"{name}.yaml" if name in builtin_targets() else Path(base)
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:].strip())
    text = "\n".join(lines).split("CALIBRATED by")[0].rstrip()
    return text.split("\n") if text else []


def _version(runtime: str) -> str:
    try:
        return version(RUNTIME_PACKAGES[runtime])
    except PackageNotFoundError:
        return "(version unknown)"
