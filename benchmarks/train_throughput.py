"""Training throughput of the generated train.py against a minimal hand-written PyTorch loop.

Run: python benchmarks/train_throughput.py [--threads 1] [--rounds 5] [--only cnn|gpt]

Two specs, each built with `nlc` into a temporary folder: examples/cnn_digits.yaml on
scikit-learn's digits (its train section replaced by the defaults), and a small GPT-style decoder
(examples/gpt2_small.yaml with 2 layers of width 64, 256 tokens, context 64) on synthetic token
sequences. Each round runs, in two fresh child processes and in alternating order, the generated
script (`python -m <name>.train`) and the hand-written loop: the same `Model` class imported from
the generated package, the same training set (the package's own data module), AdamW with the
same settings, the same batch size, and nothing else:

    for x, y in DataLoader(train_set, batch_size, shuffle=True, drop_last=True):
        loss = cross_entropy(model(x), y); loss.backward(); opt.step(); opt.zero_grad()

Only steady-state steps count. The script's samples/s come from its metrics.jsonl (each line
covers `log_every` steps and leaves out evaluation time); its first WARMUP_LINES lines are
skipped. The loop skips the same number of steps and times as many as the script's counted
lines cover. Both use `--threads` intra-op threads (OMP_NUM_THREADS for the child). The table
gives the median over rounds of each and the ratio script / loop (target: at least 0.95).
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch.utils.data import DataLoader

import nlc
from nlc.emit.package import write_package

ROOT = Path(__file__).resolve().parent.parent
WARMUP_LINES = 2
LOG_EVERY = 10

CNN = yaml.safe_load((ROOT / "examples/cnn_digits.yaml").read_text())
CNN["train"] = {"epochs": 12, "batch_size": 64, "log_every": LOG_EVERY}

GPT = copy.deepcopy(yaml.safe_load((ROOT / "examples/gpt2_small.yaml").read_text()))
GPT.update(name="gpt_bench", targets=[], dims={})
GPT["params"] |= {"vocab": 256, "context": 64, "dim": 64, "heads": 4, "layers": 2}
GPT["train"] = {
    "task": "lm",
    "data": {"source": "synthetic", "size": 1024, "seq_len": 64},
    "epochs": 6,
    "batch_size": 16,
    "log_every": LOG_EVERY,
}
SPECS = {"cnn": CNN, "gpt": GPT}


def build(doc: dict[str, Any], folder: Path) -> tuple[Path, str]:
    """Write `doc` as a spec and build its package; the package root and name."""
    doc = {k: v for k, v in doc.items() if v not in ([], {})}
    path = folder / f"{doc['name']}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    spec, graph = nlc.load(path)
    return write_package(graph, spec, folder / doc["name"]), graph.name


def child(root: Path, threads: int, *command: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": str(threads)}
    subprocess.run([sys.executable, *command], env=env, check=True, capture_output=True)


def script_throughput(root: Path, name: str, run: Path, threads: int) -> tuple[float, int]:
    """Steady samples/s of the generated script, and how many steps that covers."""
    child(root, threads, "-m", f"{name}.train", "--run", str(run))
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steady = [r for r in lines if "samples_per_s" in r][WARMUP_LINES:]
    samples = LOG_EVERY * json.loads((run / "config.json").read_text())["batch_size"]
    seconds = sum(samples / r["samples_per_s"] for r in steady)
    return samples * len(steady) / seconds, LOG_EVERY * len(steady)


def loop_throughput(root: Path, name: str, run: Path, steps: int, threads: int) -> float:
    child(root, threads, __file__, "--loop", name, str(run), str(steps))
    return json.loads((run / "loop.json").read_text())["samples_per_s"]


def loop(name: str, run: Path, steps: int) -> None:
    """The minimal loop (in a child process with the package importable): its steady
    samples/s over `steps` steps after the script's warm-up, into run/loop.json."""
    package = importlib.import_module(name)
    data = importlib.import_module(f"{name}.data")
    train = importlib.import_module(f"{name}.train")
    cfg = train.namespace(train.CONFIG)
    run.mkdir(parents=True)
    data.prepare(cfg, Path("."), run)
    train_set, _, _ = data.datasets(cfg, Path("."), run)
    torch.manual_seed(0)
    model = package.Model()
    model.train()
    opt = cfg.optimizer
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=opt.lr, betas=tuple(opt.betas), eps=opt.eps, weight_decay=0.0
    )
    loader = DataLoader(train_set, batch_size=cfg.batch_size, shuffle=True, drop_last=True)
    warmup, done, start = WARMUP_LINES * LOG_EVERY, 0, 0.0
    while done < warmup + steps:
        for x, y in loader:
            out = model(x)
            loss = F.cross_entropy(out.flatten(0, -2), y.flatten())
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            done += 1
            if done == warmup:
                start = time.perf_counter()
            elif done == warmup + steps:
                break
    speed = steps * cfg.batch_size / (time.perf_counter() - start)
    (run / "loop.json").write_text(json.dumps({"samples_per_s": speed}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", choices=sorted(SPECS))
    parser.add_argument("--loop", nargs=3, metavar=("NAME", "RUN", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.loop:
        name, run, steps = args.loop
        loop(name, Path(run), int(steps))
        return
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.rounds} rounds")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for key, doc in SPECS.items():
            if args.only and key != args.only:
                continue
            root, name = build(doc, Path(tmp))
            # The steps the script's steady lines cover, from one untimed run.
            _, steps = script_throughput(root, name, Path(tmp) / f"{key}-first", args.threads)
            script, hand = [], []
            for i in range(args.rounds):
                run = Path(tmp) / f"{key}-{i}"
                for kind in ("script", "loop") if i % 2 == 0 else ("loop", "script"):
                    if kind == "script":
                        script.append(script_throughput(root, name, run, args.threads)[0])
                    else:
                        hand.append(loop_throughput(root, name, run / "loop", steps, args.threads))
                print(f"  {key} round {i}: script {script[-1]:.0f}, loop {hand[-1]:.0f} samples/s")
            rows.append((key, steps, statistics.median(script), statistics.median(hand)))
    print()
    print("| model | steps timed | script samples/s | loop samples/s | script / loop |")
    print("|---|---:|---:|---:|---:|")
    for key, steps, script_speed, loop_speed in rows:
        ratio = script_speed / loop_speed
        print(f"| {key} | {steps} | {script_speed:.0f} | {loop_speed:.0f} | {ratio:.3f} |")


if __name__ == "__main__":
    main()
