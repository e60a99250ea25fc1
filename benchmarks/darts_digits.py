"""DARTS on digits against random architectures of the same space (issue 7's acceptance).

Run: python benchmarks/darts_digits.py [--random 8] [--seed 0] [--epochs 3] [--train-seeds 0 1]
     [--threads 1] [--out DIR]

The space is examples/search_darts_digits.yaml (four op choices of five options, 625 points).
DARTS (`nlc.search.darts.derive`, the example's `search.darts` settings) derives one
architecture; `--random` architectures are drawn uniformly from the space with `--seed`. Each
is then trained from scratch by `nlc train` on its concrete spec (`Space.yaml`) with the
spec's train section, shortened to `--epochs` (every architecture of this space reaches about
99% on digits after the spec's 10 epochs, which leaves one validation digit between them),
once per `--train-seeds` seed: the same epochs, batch size, optimizer and data split for all.
The table gives each architecture's final validation accuracy and loss, averaged over the
seeds, then the DARTS architecture against the median of the random ones (accuracy, then loss).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPACE = ROOT / "examples" / "search_darts_digits.yaml"


def train(space, point: dict, folder: Path, epochs: int, seed: int) -> tuple[float, float, float]:
    """Final validation accuracy and loss, and wall time, of `nlc train` on the point's
    concrete spec."""
    folder.mkdir(parents=True)
    spec = folder / "spec.yaml"
    spec.write_text(space.yaml(point, folder))
    start = time.perf_counter()
    nlc = Path(sys.executable).parent / "nlc"
    options = ["--set", f"train.epochs={epochs}", "--set", f"train.seed={seed}"]
    subprocess.run(
        [str(nlc), "train", str(spec), "-o", str(folder / "run"), *options],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    final = json.loads((folder / "run" / "summary.json").read_text())["final"]
    return final["val_accuracy"], final["val_loss"], time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--random", type=int, default=8, help="random architectures (K)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random draws")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs of each")
    parser.add_argument("--train-seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--out", type=Path, help="keep the runs here (default: a temp folder)")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    from nlc.search.darts import derive
    from nlc.search.space import load_space

    torch.set_num_threads(args.threads)
    space = load_space(SPACE)
    assert space is not None
    out = args.out or Path(tempfile.mkdtemp(prefix="darts_digits_"))
    start = time.perf_counter()
    derived = derive(space, out / "darts")
    search_s = time.perf_counter() - start
    rng = random.Random(args.seed)
    points = [("darts", derived)] + [(f"random {i}", space.sample(rng)) for i in range(args.random)]
    rows = []
    for i, (label, point) in enumerate(points):
        runs = [
            train(space, point, out / f"arch{i}" / f"seed{seed}", args.epochs, seed)
            for seed in args.train_seeds
        ]
        accuracy, loss, seconds = (statistics.mean(r[k] for r in runs) for k in range(3))
        ops = " ".join(str(point[d.name]) for d in space.active(point))
        rows.append((label, ops, accuracy, loss, seconds))
    print(f"DARTS search (supernet, {space.search.darts.epochs} epochs): {search_s:.0f} s")
    print(f"each architecture: {args.epochs} epochs, training seeds {args.train_seeds}")
    print(
        "| architecture | ops | val accuracy | val loss | train wall s |\n|---|---|---:|---:|---:|"
    )
    for label, ops, accuracy, loss, seconds in rows:
        print(f"| {label} | {ops} | {accuracy:.4f} | {loss:.4f} | {seconds:.0f} |")
    # The median random architecture, ranked by accuracy and then by loss (lower is better).
    ranked = sorted(rows[1:], key=lambda r: (r[2], -r[3]))
    median = ranked[len(ranked) // 2]  # the upper median when K is even
    verdict = "beats" if (rows[0][2], -rows[0][3]) > (median[2], -median[3]) else "does not beat"
    print(
        f"DARTS ({rows[0][2]:.4f}, loss {rows[0][3]:.4f}) {verdict} the median random "
        f"architecture ({median[2]:.4f}, loss {median[3]:.4f}; K={args.random}, "
        f"random best {max(r[2] for r in rows[1:]):.4f})"
    )


if __name__ == "__main__":
    main()
