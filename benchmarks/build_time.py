"""Time `nlc.build` (library call, no ONNX export) on the examples and generated N-layer specs.

Run: python benchmarks/build_time.py [--repeats 5] [--sizes 125 250 500 1000 2000] [--profile]

Each build writes into a fresh temporary folder; the figure is the median of `--repeats` runs
after one warm-up build (imports, Jinja template compilation). Generated specs are deep MLPs
(one layer = linear + relu) in three shapes, so both lowering paths are exercised:

  repeat  one block called once with `repeat: N` (an nn.ModuleList loop)
  blocks  N named top-level calls of the same block (N attributes sharing one class)
  flat    N named top-level linear nodes, each followed by a bare `relu` (auto-named)

Growth is checked on CPU time (this process plus the ruff subprocesses), which other load on a
shared machine disturbs far less than wall time: the ratio t(N) / t(previous N) (2.0 is linear
for doubling sizes) and the least-squares slope of log(time) on log(N) (1.0 is linear), over all
sizes and over the largest three; a slope above 1.15 is flagged as super-linear. `--profile`
prints a cProfile of the largest flat build.
"""

from __future__ import annotations

import argparse
import cProfile
import math
import pstats
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml

import nlc

ROOT = Path(__file__).resolve().parent.parent
SUPER_LINEAR_SLOPE = 1.15
WIDTH = 64


def repeat_spec(n: int) -> dict:
    return {
        "nlc": 1,
        "name": f"mlp_repeat_{n}",
        "inputs": {"x": {"shape": ["B", WIDTH]}},
        "blocks": {"layer": {"graph": [{"op": "linear", "name": "fc", "out": WIDTH}, "relu"]}},
        "graph": [{"op": "layer", "name": "body", "repeat": n}],
    }


def blocks_spec(n: int) -> dict:
    spec = repeat_spec(n)
    spec["name"] = f"mlp_blocks_{n}"
    spec["graph"] = [{"op": "layer", "name": f"layer{i}"} for i in range(n)]
    return spec


def flat_spec(n: int) -> dict:
    graph: list = []
    for i in range(n):
        graph += [{"op": "linear", "name": f"fc{i}", "out": WIDTH}, "relu"]
    return {
        "nlc": 1,
        "name": f"mlp_flat_{n}",
        "inputs": {"x": {"shape": ["B", WIDTH]}},
        "graph": graph,
    }


GENERATORS: dict[str, Callable[[int], dict]] = {
    "repeat": repeat_spec,
    "blocks": blocks_spec,
    "flat": flat_spec,
}


def write_spec(spec: dict, folder: Path) -> Path:
    path = folder / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the ruff formatter)."""
    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def time_build(spec_path: Path, repeats: int) -> tuple[float, float]:
    """Median wall and CPU seconds of `repeats` builds into fresh folders, after one warm-up."""
    wall, cpu = [], []
    with tempfile.TemporaryDirectory(prefix="nlc-bench-") as tmp:
        for i in range(repeats + 1):
            start, start_cpu = time.perf_counter(), cpu_seconds()
            nlc.build(spec_path, Path(tmp) / str(i), onnx=False)
            wall.append(time.perf_counter() - start)
            cpu.append(cpu_seconds() - start_cpu)
    return statistics.median(wall[1:]), statistics.median(cpu[1:])


def log_slope(sizes: list[int], times: list[float]) -> float:
    """Least-squares slope of log(time) against log(size): 1.0 for linear growth."""
    xs, ys = [math.log(s) for s in sizes], [math.log(t) for t in times]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mx) ** 2 for x in xs
    )


def bench_examples(repeats: int) -> None:
    print(f"## examples (median of {repeats} builds)\n")
    print("| spec | IR nodes | wall s | CPU s |")
    print("|---|---:|---:|---:|")
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        nodes = len(nlc.check(path).nodes)
        wall, cpu = time_build(path, repeats)
        print(f"| {path.name} | {nodes} | {wall:.3f} | {cpu:.3f} |", flush=True)


def bench_scaling(sizes: list[int], repeats: int, folder: Path) -> None:
    print(f"\n## generated MLPs, one layer = linear + relu (median of {repeats} builds)\n")
    print("| shape | N layers | wall s | CPU s | CPU ms / layer | CPU t(N) / t(prev N) |")
    print("|---|---:|---:|---:|---:|---:|")
    for shape, make in GENERATORS.items():
        cpus = []
        for n in sizes:
            wall, cpu = time_build(write_spec(make(n), folder), repeats)
            ratio = f"{cpu / cpus[-1]:.2f}" if cpus else ""
            cpus.append(cpu)
            row = f"| {shape} | {n} | {wall:.3f} | {cpu:.3f} | {1000 * cpu / n:.2f} | {ratio} |"
            print(row, flush=True)
        slope, tail = log_slope(sizes, cpus), log_slope(sizes[-3:], cpus[-3:])
        verdict = "SUPER-LINEAR" if max(slope, tail) > SUPER_LINEAR_SLOPE else "linear"
        print(f"| {shape} | slope {slope:.2f}, largest 3: {tail:.2f}: {verdict} | | | | |")


def profile_build(spec_path: Path, top: int = 25) -> None:
    with tempfile.TemporaryDirectory(prefix="nlc-prof-") as tmp:
        profiler = cProfile.Profile()
        profiler.runcall(nlc.build, spec_path, Path(tmp) / "out", onnx=False)
    print(f"\n## cProfile of {spec_path.name}, by cumulative then own time\n")
    stats = pstats.Stats(profiler, stream=sys.stdout).strip_dirs()
    stats.sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sizes", type=int, nargs="+", default=[125, 250, 500, 1000, 2000])
    parser.add_argument("--profile", action="store_true", help="cProfile the largest flat build")
    parser.add_argument("--skip-examples", action="store_true")
    args = parser.parse_args()
    print(f"nlc {nlc.__version__}, Python {sys.version.split()[0]}\n")
    if not args.skip_examples:
        bench_examples(args.repeats)
    with tempfile.TemporaryDirectory(prefix="nlc-specs-") as tmp:
        bench_scaling(args.sizes, args.repeats, Path(tmp))
        if args.profile:
            profile_build(write_spec(flat_spec(max(args.sizes)), Path(tmp)))


if __name__ == "__main__":
    main()
