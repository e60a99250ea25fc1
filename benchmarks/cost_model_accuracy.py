"""How well the cost model predicts the latency of whole models on this machine.

Run: python benchmarks/cost_model_accuracy.py [--target cpu] [--budget 1.0] [--rounds 3]
     [--only NAME ...] [--json /tmp/cost_model_accuracy.json]

Evaluation specs: the example zoo at small input sizes, plus seeded random MLPs, CNNs and
transformers (generated here, so the set is the same on every run). None of them is a
calibration micro-benchmark (`nlc.calibrate.micro`, one op each): those fit the target, these
whole models evaluate it. Each spec is built with nlc (model.onnx, exported once and cached
under --cache), timed with onnxruntime on the target's `threads` as `nlc calibrate` times
its micro-benchmarks (`best_of_rounds`: the median of repeated runs in each of --rounds
passes over all specs, the least of those medians), and predicted with
`analyze(graph, target, dims).latency`.

Prints a table per spec and the summary: Spearman rank correlation, median absolute %
error, share of predictions within +-10% and +-20%, the median signed error (the bias), the
same per family, and the figures with the median of the round medians instead; writes all
of it to --json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import statistics
import sys
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import yaml

import nlc
from nlc.analysis.cost import analyze
from nlc.calibrate.micro import MICROS
from nlc.calibrate.timing import best_of_rounds, onnx_runner
from nlc.targets import load_target

ROOT = Path(__file__).resolve().parent.parent
GOALS = {"spearman": 0.95, "median_abs_error_pct": 15.0, "within_20_pct": 80.0}
FAMILIES = ("zoo", "mlp", "cnn", "transformer")


@dataclass
class Case:
    name: str
    family: str  # one of FAMILIES
    doc: dict[str, Any]
    dims: dict[str, int]


# -- the evaluation specs -------------------------------------------------------------------------


def _example(name: str, image: int | None = None, **params) -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / "examples" / f"{name}.yaml").read_text())
    doc["params"] = {**doc.get("params", {}), **params}
    if image is not None:  # the CNNs fix 224 x 224 in their input shape
        shape = doc["inputs"]["x"]["shape"]
        doc["inputs"]["x"]["shape"] = [*shape[:2], image, image]
    return doc


def zoo_cases() -> list[Case]:
    rows = [
        ("cnn_digits", {}, {"B": 1}),
        ("cnn_digits", {}, {"B": 256}),
        ("mlp_digits", {}, {"B": 1}),
        ("mlp_digits", {}, {"B": 1024}),
        ("resnet18", {"image": 112}, {"B": 1}),
        ("resnet18", {"image": 224}, {"B": 1}),
        ("resnet50", {"image": 112}, {"B": 1}),
        ("mobilenet_v2", {"image": 96}, {"B": 2}),
        ("mobilenet_v2", {"image": 160}, {"B": 1}),
        ("vit_b16", {"image": 64}, {"B": 1}),
        ("vit_b16", {"image": 112}, {"B": 2}),
        ("gpt2_small", {"layers": 4}, {"B": 1, "T": 32}),
        ("llama_tiny", {}, {"B": 1, "T": 64}),
        ("llama_tiny", {}, {"B": 4, "T": 128}),
        ("spectral_lm", {}, {"B": 1, "T": 128}),
    ]
    cases = []
    for name, params, dims in rows:
        label = "_".join([name, *(f"{k}{v}" for k, v in {**params, **dims}.items())])
        cases.append(Case(label, "zoo", _example(name, **params), dims))
    return cases


def _doc(name: str, inputs: dict, blocks: dict, graph: list) -> dict[str, Any]:
    return {"nlc": 1, "name": name, "inputs": inputs, "blocks": blocks, "graph": graph}


def random_mlp(rng: random.Random, i: int) -> Case:
    width = rng.choice([64, 128, 256, 512, 1024, 2048])
    layer = [{"op": "linear", "name": "fc", "out": width}, rng.choice(["relu", "gelu", "silu"])]
    if rng.random() < 0.4:
        layer.append({"op": "layernorm", "name": "norm"})
    graph = [
        {"op": "layer", "name": "body", "repeat": rng.randint(1, 6)},
        {"op": "linear", "name": "head", "out": rng.choice([10, 100, 1000])},
    ]
    inputs = {"x": {"shape": ["B", rng.choice([32, 128, 784])]}}
    doc = _doc(f"mlp{i}", inputs, {"layer": {"graph": layer}}, graph)
    return Case(doc["name"], "mlp", doc, {"B": rng.choice([1, 16, 128, 512])})


def random_cnn(rng: random.Random, i: int) -> Case:
    act = rng.choice(["relu", "relu6", "hardswish"])
    conv_bn = [
        {"op": "conv2d", "name": "conv", "out": "${c}", "kernel": 3, "stride": "${s}",
         "padding": 1, "bias": False},
        {"op": "batchnorm2d", "name": "bn"},
        act,
    ]  # fmt: skip
    residual = [
        {"op": "conv_bn", "name": "a", "c": "${c}"},
        {"op": "conv2d", "name": "b", "out": "${c}", "kernel": 3, "padding": 1, "bias": False},
        {"op": "batchnorm2d", "name": "bn"},
        {"op": "add", "in": ["x", "bn"]},
        act,
    ]
    separable = [
        {"op": "conv2d", "name": "dw", "out": "${c}", "kernel": 3, "padding": 1,
         "groups": "${c}", "bias": False},
        {"op": "batchnorm2d", "name": "bn1"},
        act,
        {"op": "conv2d", "name": "pw", "out": "${c}", "kernel": 1, "bias": False},
        {"op": "batchnorm2d", "name": "bn2"},
    ]  # fmt: skip
    blocks = {
        "conv_bn": {"params": {"c": "int", "s": 1}, "graph": conv_bn},
        "residual": {"params": {"c": "int"}, "graph": residual},
        "separable": {"params": {"c": "int"}, "graph": separable},
    }
    c = rng.choice([16, 32, 64])
    graph: list[Any] = [{"op": "conv_bn", "name": "stem", "c": c}]
    for stage in range(rng.randint(1, 3)):
        if stage:
            c *= 2
            graph.append({"op": "conv_bn", "name": f"down{stage}", "c": c, "s": 2})
        kind = rng.choice(["residual", "separable", "conv_bn"])
        graph.append({"op": kind, "name": f"stage{stage}", "c": c, "repeat": rng.randint(1, 2)})
    if rng.random() < 0.5:
        graph.append({"op": "maxpool2d", "kernel": 2})
    graph += ["global_avgpool", {"op": "linear", "name": "head", "out": 10}]
    size = rng.choice([16, 32, 64])
    used = {n["op"] for n in graph if isinstance(n, dict)} | {"conv_bn"}
    doc = _doc(
        f"cnn{i}",
        {"x": {"shape": ["B", 3, size, size]}},
        {k: v for k, v in blocks.items() if k in used},
        graph,
    )
    return Case(doc["name"], "cnn", doc, {"B": rng.choice([1, 4, 16])})


def random_transformer(rng: random.Random, i: int) -> Case:
    dim = rng.choice([64, 128, 256, 384])
    heads = rng.choice([h for h in (2, 4, 8) if dim % h == 0 and (dim // h) % 2 == 0])
    norm = rng.choice(["layernorm", "rmsnorm"])
    attn: dict[str, Any] = {"op": "attention", "name": "attn", "heads": heads}
    attn |= {"causal": rng.random() < 0.5, "rope": rng.random() < 0.4}
    if rng.random() < 0.3:
        attn["kv_heads"] = heads // 2
    if rng.random() < 0.5:
        mlp = [{"op": "gated_mlp", "name": "mlp", "hidden": 8 * dim // 3 // 16 * 16}]
    else:
        mlp = [
            {"op": "linear", "name": "fc", "out": 4 * dim},
            {"op": "gelu", "approximate": rng.choice(["none", "tanh"])},
            {"op": "linear", "name": "mlp", "out": dim},
        ]
    layer = [
        {"op": norm, "name": "n1"},
        attn,
        {"op": "add", "name": "res", "in": ["x", "attn"]},
        {"op": norm, "name": "n2"},
        *mlp,
        {"op": "add", "in": ["res", "mlp"]},
    ]
    vocab = rng.choice([512, 2048, 8192])
    graph = [
        {"op": "embedding", "name": "emb", "num": vocab, "dim": dim},
        {"op": "pos_embedding", "name": "pos", "num": 512},
        {"op": "layer", "name": "body", "repeat": rng.randint(1, 4)},
        {"op": norm, "name": "final"},
        {"op": "linear", "name": "head", "out": vocab, "bias": False},
    ]
    doc = _doc(
        f"transformer{i}",
        {"ids": {"shape": ["B", "T"], "dtype": "i64"}},
        {"layer": {"graph": layer}},
        graph,
    )
    dims = {"B": rng.choice([1, 2, 4]), "T": rng.choice([16, 64, 128, 256])}
    return Case(doc["name"], "transformer", doc, dims)


def evaluation_cases(per_family: int = 8, seed: int = 0) -> list[Case]:
    rng = random.Random(seed)
    cases = zoo_cases()
    for make in (random_mlp, random_cnn, random_transformer):
        cases += [make(rng, i) for i in range(per_family)]
    return cases


# -- build, measure, predict ----------------------------------------------------------------------


def built(case: Case, cache: Path) -> Path:
    """The package folder of the case's spec, built once (model.onnx unverified: only its
    speed matters here, and the build tests check the export)."""
    text = yaml.safe_dump(case.doc, sort_keys=False)
    folder = cache / hashlib.sha256(text.encode()).hexdigest()[:16]
    if not (folder / "pkg" / "model.onnx").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "spec.yaml").write_text(text)
        nlc.build(folder / "spec.yaml", folder / "pkg", onnx=True, verify=False)
    return folder


def spearman(a: list[float], b: list[float]) -> float:
    ranks = [np.argsort(np.argsort(x)) for x in (a, b)]
    return float(np.corrcoef(*ranks)[0, 1])


def summary(rows: list[dict[str, Any]], measured: str = "measured_s") -> dict[str, float]:
    """The accuracy figures of predictions against the `measured` times of the rows."""
    errors = [100 * (r["predicted_s"] - r[measured]) / r[measured] for r in rows]
    absolute = [abs(e) for e in errors]
    return {
        "specs": len(rows),
        "spearman": spearman([r["predicted_s"] for r in rows], [r[measured] for r in rows]),
        "median_abs_error_pct": statistics.median(absolute),
        "median_error_pct": statistics.median(errors),  # the bias: below 0 is optimistic
        "within_10_pct": 100 * sum(e <= 10 for e in absolute) / len(rows),
        "within_20_pct": 100 * sum(e <= 20 for e in absolute) / len(rows),
    }


def measure(cases: list[Case], target, cache: Path, budget: float, rounds: int) -> list[dict]:
    """Build, time and predict every case: one row each."""
    runners, graphs = {}, {}
    for case in cases:
        folder = built(case, cache)
        _, graphs[case.name] = nlc.load(folder / "spec.yaml")
        path = folder / "pkg" / "model.onnx"
        runners[case.name] = onnx_runner(path, graphs[case.name], case.dims, target.threads)
        print(f"built {case.name}", file=sys.stderr)
    medians = best_of_rounds(runners, budget * rounds * len(cases), rounds)
    rows = []
    for case in cases:
        predicted = analyze(graphs[case.name], target, case.dims).latency
        measured = min(medians[case.name])
        rows.append(
            {
                "spec": case.name,
                "family": case.family,
                "dims": case.dims,
                "predicted_s": predicted,
                "measured_s": measured,
                "median_of_rounds_s": statistics.median(medians[case.name]),
                "round_medians_s": medians[case.name],
                "error_pct": 100 * (predicted - measured) / measured,
            }
        )
    return rows


def report(target, rows: list[dict], split: dict[str, Any]) -> dict[str, Any]:
    print(f"{'spec':40} {'family':12} {'predicted ms':>13} {'measured ms':>12} {'error':>8}")
    for r in rows:
        print(
            f"{r['spec']:40} {r['family']:12} {r['predicted_s'] * 1e3:13.3f} "
            f"{r['measured_s'] * 1e3:12.3f} {r['error_pct']:+7.1f}%"
        )
    result = summary(rows)
    by_family = {f: [r for r in rows if r["family"] == f] for f in FAMILIES}
    families = {f: summary(family) for f, family in by_family.items() if family}
    print(
        f"\nfit: {split['fit']['timings']} timings of {len(split['fit']['micro_benchmarks'])} "
        f"one-op micro-benchmarks (nlc.calibrate.micro); evaluated: {len(rows)} whole models "
        f"({', '.join(f'{n} {f}' for f, n in split['evaluation'].items())}), none of them fitted"
    )
    print(
        f"{result['specs']} specs on {target.name} ({target.runtime}, "
        f"{target.threads or 'all'} thread(s)): Spearman {result['spearman']:.3f} "
        f"(goal >= {GOALS['spearman']}), median |error| {result['median_abs_error_pct']:.1f}% "
        f"(goal <= {GOALS['median_abs_error_pct']}%), within 10%: {result['within_10_pct']:.0f}%, "
        f"within 20%: {result['within_20_pct']:.0f}% (goal >= {GOALS['within_20_pct']}%), "
        f"median signed error {result['median_error_pct']:+.1f}%"
    )
    for family, figures in families.items():
        print(
            f"  {family:12} {figures['specs']:2} specs: median |error| "
            f"{figures['median_abs_error_pct']:.1f}%, within 20%: {figures['within_20_pct']:.0f}%"
        )
    rounds = summary(rows, "median_of_rounds_s")
    print(
        f"with the median instead of the best of the round medians: Spearman "
        f"{rounds['spearman']:.3f}, median |error| {rounds['median_abs_error_pct']:.1f}%, "
        f"within 20%: {rounds['within_20_pct']:.0f}%"
    )
    return {"summary": result, "by_family": families, "median_of_rounds_summary": rounds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", default="cpu", help="built-in name or target file")
    parser.add_argument("--budget", type=float, default=1.0, help="seconds per spec per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", nargs="*", help="case names to run (default: all)")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/nlc_accuracy_cache"))
    parser.add_argument("--json", type=Path, default=Path("/tmp/cost_model_accuracy.json"))
    args = parser.parse_args()
    target = load_target(args.target)
    if target.runtime != "onnxruntime":
        sys.exit(
            f"target {target.name} describes {target.runtime}; this benchmark runs onnxruntime"
        )
    cases = [c for c in evaluation_cases() if not args.only or c.name in args.only]
    split = {
        "fit": {
            "micro_benchmarks": [m.name for m in MICROS],
            "timings": sum(len(m.sizes) for m in MICROS),
        },
        "evaluation": {f: sum(c.family == f for c in cases) for f in FAMILIES},
    }
    rows = measure(cases, target, args.cache, args.budget, args.rounds)
    figures = report(target, rows, split)
    result = {
        "target": target.model_dump(exclude_none=True),
        "onnxruntime": version("onnxruntime"),
        "command": " ".join(["python", *sys.argv]),
        "split": split,
        **figures,
        "specs": rows,
    }
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
