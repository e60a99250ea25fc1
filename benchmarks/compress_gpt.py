"""Compression of the small GPT trained on the corpus: validation perplexity, size and speed.

The runs come from `nlc train` (see benchmarks/README.md for the exact commands):

    nlc train examples/pipelines/gpt_text.yaml -o runs/gpt
    nlc train examples/pipelines/gpt_text.yaml -o runs/gpt_svd --weights runs/gpt \
        --pass "svd:rank=0.5,select=[h.*.fc, h.*.proj]" --set train.epochs=4 \
        --set train.optimizer.lr=5e-4

Run: python benchmarks/compress_gpt.py --base runs/gpt [--svd runs/gpt_svd] [--threads 1]

Every perplexity is measured here, on the base run's validation split (its split.json and
tokens.bin), as the token mean of the cross-entropy, which is what train.py logs:
- dense: the base run's best checkpoint;
- svd: the fine-tuned run's package weights (the SVD of the trained weights, before fine-tuning)
  and its best checkpoint (after);
- int8: the base model built with `--quantize int8-dynamic`: model.onnx (fp32) and
  model.int8.onnx in onnxruntime, with the latency the build measured (quantize.json).
A compressed run must have tokenized the corpus exactly as the base run did (same tokens.bin):
the script checks it, since its BPE tokenizer is trained again on the same split.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from nlc.api import compress, load_trained, write_build
from nlc.calibrate.timing import onnx_runner, report_latency
from nlc.emit.onnx import ONNX_FILE, imported_package
from nlc.emit.quantize import QUANT_FILE, REPORT_FILE
from nlc.frontend import load_spec, lower
from nlc.frontend.load import parse_passes
from nlc.passes import run_passes
from nlc.weights import WEIGHTS_FILE, read_weights

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "examples/pipelines/gpt_text.yaml"
BATCH = 32
FULL = {"B": 1, "T": 128}  # the training context: latency where the model is used

Forward = Callable[[torch.Tensor], torch.Tensor]  # token ids [B, T] -> logits [B, T, V]


def validation_set(run: Path):
    """The run's validation dataset, from its own generated data module."""
    config = json.loads((run / "config.json").read_text())
    with imported_package(run / "package", package_name(run)) as package:
        data = __import__(f"{package.__name__}.data", fromlist=["datasets"])
        script = __import__(f"{package.__name__}.train", fromlist=["namespace"])
        _, val, _ = data.datasets(script.namespace(config), SPEC.parent, run)
    return val


def perplexity(forward: Forward, val) -> float:
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(val), BATCH):
            xs, ys = zip(*(val[i] for i in range(start, min(start + BATCH, len(val)))), strict=True)
            x, y = torch.stack(xs), torch.stack(ys)
            logits = forward(x)
            total += F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum").item()
            count += y.numel()
    return math.exp(total / count)


def package_name(run: Path) -> str:
    return json.loads((run / "env.json").read_text())["package"]


def torch_forward(run: Path, state: dict[str, torch.Tensor], package_dir: Path | None = None):
    """The model of the run's package (or of another build of it) with `state` loaded."""
    with imported_package(package_dir or run / "package", package_name(run)) as package:
        model = package.Model().eval()
    model.load_state_dict(state)
    return model


def onnx_forward(path: Path, threads: int) -> Forward:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0].name
    return lambda x: torch.from_numpy(session.run(None, {feed: x.numpy()})[0])


def same_tokens(a: Path, b: Path) -> None:
    ta, tb = (np.fromfile(r / "tokens.bin", dtype=np.uint8) for r in (a, b))
    if not np.array_equal(ta, tb):
        raise SystemExit(f"{b} tokenized the corpus differently from {a}: not comparable")


def count(state: dict[str, torch.Tensor]) -> int:
    """Parameters, a tied tensor (the LM head is the embedding table) counted once."""
    return sum({v.data_ptr(): v.numel() for v in state.values()}.values())


def size(state: dict[str, torch.Tensor]) -> int:
    """Bytes of the stored weights (4-bit codes packed two to a byte), ties counted once."""
    return sum({v.data_ptr(): v.numel() * v.element_size() for v in state.values()}.values())


def lora_rows(args, val, dense_ppl: float) -> list[tuple]:
    """The LoRA run before and after `lora_merge`: the merged dense model must compute what
    the adapted one does; its perplexity is the adapted model's."""
    summary = json.loads((args.lora / "summary.json").read_text())["parameters"]
    spec = load_spec(SPEC)
    graph, _ = compress(spec, lower(spec), None, parse_passes([args.lora_pass]))
    adapted = read_weights(args.lora)
    _, merged, _ = run_passes(graph, adapted, [("lora_merge", {})])
    x = torch.stack([val[i][0] for i in range(8)])
    a, m = torch_forward(args.lora, adapted), torch_forward(args.base, merged)
    with torch.no_grad():
        diff = (a(x) - m(x)).abs().max().item()
    trainable = f"{summary['trainable']:,} of {summary['total']:,} trainable"
    return [
        ("lora fine-tune", count(adapted), perplexity(a, val), trainable),
        ("lora merged", count(merged), perplexity(m, val), f"max |merged - adapted| {diff:.1e}"),
    ]


def nf4_rows(args, val, base: dict[str, torch.Tensor], tmp: Path) -> list[tuple]:
    """NF4 weight-only of the trained weights: perplexity in PyTorch and in onnxruntime (its
    4-bit kernels), bytes against the dense weights."""
    spec, graph, weights = load_trained(SPEC, args.base, passes=parse_passes([args.nf4_pass]))
    out = write_build(spec, graph, tmp / "nf4", weights=weights)
    torch_ppl = perplexity(torch_forward(args.base, weights, out), val)
    onnx_ppl = perplexity(onnx_forward(out / ONNX_FILE, args.threads), val)
    ratio = f"weight bytes {size(base):,} -> {size(weights):,} ({size(base) / size(weights):.2f}x)"
    return [
        (f"{args.nf4_pass} (PyTorch)", count(weights), torch_ppl, ratio),
        (f"{args.nf4_pass} (onnxruntime)", count(weights), onnx_ppl, ""),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=Path, required=True, help="the trained dense run")
    parser.add_argument("--svd", type=Path, help="a run fine-tuned after svd")
    parser.add_argument("--lora", type=Path, help="a run fine-tuned with LoRA adapters")
    parser.add_argument("--lora-pass", default="lora:rank=4,select=h.*", help="its --pass")
    parser.add_argument("--nf4-pass", default="nf4", help="the weight-only pass to measure")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    val = validation_set(args.base)
    base = read_weights(args.base)
    dense = perplexity(torch_forward(args.base, base), val)
    rows = [("dense (PyTorch)", count(base), dense, "")]

    if args.svd:
        same_tokens(args.base, args.svd)
        before = torch.load(args.svd / "package" / WEIGHTS_FILE, weights_only=True)
        after = read_weights(args.svd)
        for label, state in (("svd 50% MLP, no fine-tune", before), ("svd + fine-tune", after)):
            ppl = perplexity(torch_forward(args.svd, state), val)
            rows.append((label, count(state), ppl, ""))

    if args.lora:
        same_tokens(args.base, args.lora)
        rows += lora_rows(args, val, dense)

    with tempfile.TemporaryDirectory() as tmp:
        rows += nf4_rows(args, val, base, Path(tmp))
        spec, graph, weights = load_trained(SPEC, args.base)
        out = write_build(spec, graph, Path(tmp) / "int8", weights=weights, quantize="int8-dynamic")
        report = json.loads((out / REPORT_FILE).read_text())
        files = {"fp32": out / ONNX_FILE, "int8": out / QUANT_FILE}
        runs = {k: onnx_runner(f, graph, FULL, args.threads) for k, f in files.items()}
        full, small = report_latency(runs, budget_s=3.0), report["latency"]
        for key, file in files.items():
            ppl = perplexity(onnx_forward(file, args.threads), val)
            note = (
                f"{full[key + '_ms']:.2f} ms at B=1, T=128; {small[key + '_ms']:.2f} ms at "
                f"{small['sizes']}; {report['bytes'][key]:,} bytes"
            )
            rows.append((f"{key} ONNX", count(base), ppl, note))
        speedup = full["fp32_ms"] / full["int8_ms"]
        print(f"int8 dynamic: {speedup:.2f}x faster at B=1, T=128, {report['size_ratio']}x smaller")

    print("\n| model | parameters | val perplexity | vs dense | notes |\n|---|---|---|---|---|")
    for label, params, ppl, note in rows:
        print(f"| {label} | {params:,} | {ppl:.2f} | {ppl / dense:.3f} | {note} |")


if __name__ == "__main__":
    main()
