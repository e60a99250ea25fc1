"""Issue 6's CNN acceptance on examples/resnet_digits.yaml (residual basic blocks on 8x8 digits):
50% structured channel pruning, and Tucker-2 / CP at `rank: auto` for the cpu target, each
fine-tuned from the trained dense model, with onnxruntime CPU latency measured before/after.

    .venv/bin/python benchmarks/compress_cnn.py [--out runs/compress_cnn] [--epochs 5]

Every training is an `nlc train` command, printed before it runs, so each figure can be re-run
by hand: the dense model (skipped when OUT/dense has finished), then for each compression
`nlc train SPEC --weights OUT/dense --pass P --set train.epochs=E -o OUT/<name>`. The
fine-tuned weights are then built into the compressed package (verified under onnxruntime
against PyTorch), whose compression report measures the dense and the compressed model side by
side. `rank: auto` measures on this host (`measure: auto` with the `cpu` target), so two runs
of it may decide differently: the package is built from the decisions the fine-tuning run
recorded (RUN/package/passes.json), each factorized layer at its rank, and each is timed again
alone (its input and the layer, exported to ONNX), dense against factorized, next to the times
the pass decided on. The pass is also run once more on the dense weights, to time it. Writes
OUT/results.json and prints the tables of benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "examples" / "resnet_digits.yaml"
NLC = [str(Path(sys.executable).parent / "nlc")]  # the venv's console script
COMPRESSIONS = {
    "channels": "channels:amount=0.5",
    "tucker": "tucker:rank=auto,max_error=0.7,min_speedup=1.1",
    "cp": "cp:rank=auto,max_error=0.7,min_speedup=1.1",
}
DECOMPOSITIONS = ("tucker", "cp")
LAYER_BUDGET_S = 1.5  # measuring time per factorized layer, dense and factorized together


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "compress_cnn")
    parser.add_argument("--epochs", type=int, default=5, help="fine-tuning epochs")
    parser.add_argument("--only", nargs="*", choices=list(COMPRESSIONS), default=None)
    args = parser.parse_args()
    dense = args.out / "dense"
    if not _finished(dense):
        _run([*NLC, "train", str(SPEC), "-o", str(dense)])
    results: dict[str, Any] = {"dense": {"val_accuracy": _accuracy(dense)}}
    for name in args.only or COMPRESSIONS:
        tuned = args.out / name
        step = COMPRESSIONS[name]
        if not _finished(tuned):
            epochs = f"train.epochs={args.epochs}"
            _run([*NLC, "train", str(SPEC), "--weights", str(dense), "--pass", step,
                  "--set", epochs, "-o", str(tuned)])  # fmt: skip
        results[name] = {"pass": step, **_build(dense, tuned, step, args.out / f"{name}_build")}
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    print(_markdown(results))


def _run(cmd: list[str]) -> None:
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def _finished(run: Path) -> bool:
    summary = run / "summary.json"
    return summary.is_file() and json.loads(summary.read_text())["status"] != "failed"


def _accuracy(run: Path) -> float:
    return json.loads((run / "summary.json").read_text())["best"]["value"]


def _build(dense: Path, tuned: Path, step: str, out: Path) -> dict[str, Any]:
    """Build the fine-tuned weights into the compressed package (the graph the fine-tuning
    trained: the pass again, or for a decomposition its recorded decisions), and time its
    layers."""
    from nlc.api import load_trained, write_build
    from nlc.frontend.load import parse_passes
    from nlc.weights import check_weights, read_weights

    decided = json.loads((tuned / "package" / "passes.json").read_text())
    name = parse_passes([step])[0][0]
    steps = _replay(decided) if name in DECOMPOSITIONS else parse_passes([step])
    spec, graph, _ = load_trained(SPEC, dense, None, steps)
    weights = read_weights(tuned)
    check_weights(weights, graph, f"the weights of {tuned}")
    write_build(spec, graph, out, weights=weights)
    report = json.loads((out / "compression.json").read_text())
    result = {
        "val_accuracy": _accuracy(tuned),
        "params": [graph.meta["dense"].num_params(), graph.num_params()],
        "measured_ms": [report["measured"]["before_ms"], report["measured"]["after_ms"]],
    }
    if name in DECOMPOSITIONS:
        start = time.perf_counter()
        load_trained(SPEC, dense, None, parse_passes([step]))
        result["auto_seconds"] = round(time.perf_counter() - start, 1)
        result["layers"] = _layers(spec, graph, decided)
        result["dense_layers"] = {r["node"]: r["skipped"] for r in decided if "skipped" in r}
    return result


def _replay(decided: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """The recorded decisions as passes at explicit ranks, one per factorized layer (one ALS or
    HOOI iteration: the fine-tuned weights replace the factors)."""
    return [
        (r["pass"], {"rank": r["rank"], "select": r["node"], "n_iter_max": 1})
        for r in decided
        if "op_after" in r
    ]


def _layers(spec, graph, decided: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each factorized layer: its rank and error, the microseconds the pass decided on (cost
    model and, where it measured, onnxruntime), and dense and factorized timed again here
    (onnxruntime CPU, 1 thread, B=1, side by side)."""
    from nlc.calibrate.timing import REPORT_THREADS, best_of_rounds, onnx_runner
    from nlc.emit import write_package
    from nlc.emit.onnx import ONNX_FILE, export_onnx
    from nlc.passes.auto import node_alone

    dense = graph.meta["dense"]
    rows = []
    for row in decided:
        if "skipped" in row:
            continue
        name = row["node"]
        runs = {}
        with tempfile.TemporaryDirectory() as tmp:
            for kind, g in (("dense", dense), ("factorized", graph)):
                alone = node_alone(g, g.nodes[name])
                alone.name = f"layer_{kind}"
                folder = write_package(
                    alone, spec, Path(tmp) / kind, lambda f, a=alone: export_onnx(f, a, None, False)
                )
                runs[kind] = onnx_runner(folder / ONNX_FILE, alone, {"B": 1}, REPORT_THREADS)
            medians = best_of_rounds(runs, LAYER_BUDGET_S)
        measured = {k: round(min(v) * 1e6, 2) for k, v in medians.items()}
        rows.append(
            {
                "node": name,
                "rank": row["rank"],
                "error": row.get("error"),
                "timing": row["timing"],
                "predicted_us": [
                    row.get("predicted_dense_us", row["dense_us"]),
                    row.get("predicted_factorized_us", row["factorized_us"]),
                ],
                "decided_us": [row["dense_us"], row["factorized_us"]],
                "measured_us": [measured["dense"], measured["factorized"]],
            }
        )
    return rows


def _markdown(results: dict[str, Any]) -> str:
    base = results["dense"]["val_accuracy"]
    out = [
        f"| compression | parameters | onnxruntime CPU latency | val accuracy (dense {base:.4f}) |",
        "|---|---:|---:|---:|",
    ]
    for name, r in results.items():
        if name == "dense":
            continue
        (p0, p1), (t0, t1), acc = r["params"], r["measured_ms"], r["val_accuracy"]
        out.append(
            f"| `{r['pass']}` | {p0:,} -> {p1:,} ({p0 / p1:.2f}x) | {t0:.4f} -> {t1:.4f} ms "
            f"({t0 / t1:.2f}x) | {acc:.4f} ({100 * (acc - base):+.2f} points) |"
        )
    for r in results.values():
        if "layers" not in r:
            continue
        out += ["", f"`{r['pass']}` (the pass took {r['auto_seconds']} s), per layer (B=1, us):"]
        out += [
            "",
            "| layer | rank | weight error | predicted dense -> fact. | pass measured | "
            "measured again |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for row in r["layers"]:
            (pd, pf), (dd, df), (md, mf) = (
                row["predicted_us"],
                row["decided_us"],
                row["measured_us"],
            )
            out.append(
                f"| {row['node']} | {row['rank']} | {row['error']:.3f} | {pd} -> {pf} | "
                f"{dd} -> {df} ({dd / df:.2f}x) | {md} -> {mf} ({md / mf:.2f}x) |"
            )
        for node, why in r["dense_layers"].items():
            out.append(f"| {node} | dense | | | {why} | |")
    return "\n".join(out)


if __name__ == "__main__":
    main()
