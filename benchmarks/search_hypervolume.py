"""Hypervolume of the fronts that `nlc search` strategies reach with the same trial budget.

Run: python benchmarks/search_hypervolume.py [--spec examples/search_cnn_digits.yaml]
     [--strategies evolution nsga2 random] [--seeds 0 1 2] [--trials N] [--workers 1]
     [--out build/search_hv]

Each (strategy, seed) is one study of the spec (its own folder under --out, so a rerun
continues unfinished studies and reuses finished ones). Fronts are compared by hypervolume
against one reference point for all of them: the nadir of their combined front, moved out by
a tenth of its range. Prints per-run figures and, per strategy, the mean and standard
deviation over the seeds; writes the same to OUT/hypervolume.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from optuna.trial import TrialState

from nlc.search import study as studies
from nlc.search.pareto import front, hypervolume, minimized

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=ROOT / "examples/search_cnn_digits.yaml")
    parser.add_argument("--strategies", nargs="+", default=["evolution", "nsga2", "random"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--trials", type=int, help="trials per study (default: the spec's)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "build/search_hv")
    args = parser.parse_args()

    runs = {}
    for seed in args.seeds:  # seed-major: partial results cover every strategy early
        for strategy in args.strategies:
            settings = {"strategy": strategy, "seed": seed}
            if args.trials:
                settings["trials"] = args.trials
            out = args.out / f"{strategy}-{seed}"
            setup = studies.make_setup(args.spec, {}, settings, out, None)
            start = time.monotonic()
            study = studies.run(setup, args.workers, lambda line: None)
            _, _, goals = studies.load(setup)
            done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            points = [minimized(t.values, goals.directions) for t in done]
            runs[(strategy, seed)] = points
            print(
                f"{strategy} seed {seed}: {len(points)} complete, {time.monotonic() - start:.0f} s"
            )
    # Reference point: the nadir of all studies' combined front, moved out by a tenth of the
    # front's range (Ishibuchi et al. 2018); the worst value observed anywhere would let one
    # failed training stretch the scale and drown the differences between fronts.
    everything = [p for points in runs.values() for p in points]
    union = [everything[i] for i in front(everything)]
    nadir = [max(p[k] for p in union) for k in range(len(union[0]))]
    ideal = [min(p[k] for p in union) for k in range(len(union[0]))]
    reference = tuple(n + 0.1 * (n - i) for n, i in zip(nadir, ideal, strict=True))
    rows = {}
    for (strategy, seed), points in runs.items():
        volume = hypervolume([points[i] for i in front(points)], reference)
        rows.setdefault(strategy, []).append({"seed": seed, "hypervolume": volume})
    print(f"reference point (minimized objectives): {reference}")
    print("| strategy | hypervolume mean | std | per seed |")
    print("|---|---|---|---|")
    for strategy, results in rows.items():
        volumes = [r["hypervolume"] for r in results]
        spread = statistics.stdev(volumes) if len(volumes) > 1 else 0.0
        each = ", ".join(f"{v:.4g}" for v in volumes)
        print(f"| {strategy} | {statistics.mean(volumes):.4g} | {spread:.2g} | {each} |")
    report = {"reference": reference, "runs": rows}
    (args.out / "hypervolume.json").write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
