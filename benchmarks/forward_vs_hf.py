"""Forward latency of nlc's GPT-2 small and ResNet-50 against HuggingFace transformers, on CPU.

Run: pip install -e ".[bench]"; python benchmarks/forward_vs_hf.py [--threads N] [--rounds R]

All models live in the same process, run in eval mode under `torch.inference_mode()` with the
same thread count, and hold the same weights: HF's randomly initialised weights are copied into
ours (GPT-2's Conv1D weights transposed) and the outputs are compared before any timing, so the
comparison is apples to apples. GPT-2 is also timed against HF configured with the fused tanh
GELU that ours uses, which isolates the activation. Each case is warmed up, then timed for R
rounds; a round times one forward of each model, rotating which goes first, to cancel drift.
Reported, for wall time and for the process's CPU time: median and quartiles per model, the
ratio of medians ours / HF, and the median and quartiles of the per-round ratios (paired, so
less sensitive to machine-wide slowdowns). On a shared machine, trust CPU time at --threads 1.
`--profile` adds a torch.profiler table per model and case.
"""

from __future__ import annotations

import argparse
import importlib
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import transformers
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel, ResNetConfig, ResNetForImageClassification

import nlc

ROOT = Path(__file__).resolve().parent.parent
GPT2_SHAPES = [(1, 128), (4, 256)]  # (batch, sequence length)
RESNET_BATCHES = [1, 8]
# CPU time (all threads of the process) next to wall time: with one thread it is barely touched
# by other processes competing for the cores, which can stretch wall time by tens of percent.
CLOCKS = {"wall": time.perf_counter, "CPU": time.process_time}


def build_ours(spec: str, folder: Path) -> nn.Module:
    """Compile an example spec and import its `Model` from the generated package."""
    name = Path(spec).stem
    nlc.build(ROOT / "examples" / spec, folder / name, onnx=False)
    sys.path.insert(0, str(folder / name))
    return importlib.import_module(name).Model()


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # tied parameters are yielded once


# -- mapping HF state_dict names onto ours ------------------------------------------------------

_GPT2_BLOCK = {
    "attn.qkv": "attn.c_attn",
    "attn.out": "attn.c_proj",
    "fc": "mlp.c_fc",
    "proj": "mlp.c_proj",
}


def gpt2_name(ours: str) -> str:
    """`h.3.attn.qkv.weight` -> `transformer.h.3.attn.c_attn.weight`."""
    if ours.startswith("lm_head."):
        return ours
    m = re.fullmatch(r"h\.(\d+)\.(.+)\.(weight|bias)", ours)
    if m:
        layer, module, tensor = m.groups()
        return f"transformer.h.{layer}.{_GPT2_BLOCK.get(module, module)}.{tensor}"
    return f"transformer.{ours}"


def resnet_name(ours: str) -> str:
    """`layer2_rest.1.bn3.running_mean` -> `...stages.1.layers.2.layer.2.normalization...`."""
    m = re.fullmatch(r"(conv|bn)1\.(.+)", ours)
    if m:
        kind, tensor = m.groups()
        return f"resnet.embedder.embedder.{_resnet_part(kind)}.{tensor}"
    if ours.startswith("fc."):
        return "classifier.1." + ours.removeprefix("fc.")
    m = re.fullmatch(r"layer(\d)(?:_rest\.(\d+))?\.(conv|bn|proj)(\d|_bn)?\.(.+)", ours)
    if not m:
        raise KeyError(ours)
    stage, rest, kind, idx, tensor = m.groups()
    block = f"resnet.encoder.stages.{int(stage) - 1}.layers.{0 if rest is None else int(rest) + 1}"
    if kind == "proj":
        return f"{block}.shortcut.{_resnet_part('bn' if idx else 'conv')}.{tensor}"
    return f"{block}.layer.{int(idx) - 1}.{_resnet_part(kind)}.{tensor}"


def _resnet_part(kind: str) -> str:
    return "convolution" if kind == "conv" else "normalization"


def copy_weights(ours: nn.Module, hf: nn.Module, name_of: Callable[[str], str]) -> None:
    """Load HF's tensors into ours; Conv1D (GPT-2) stores weights as [in, out], hence `.t()`."""
    theirs = hf.state_dict()
    state = {}
    for key in ours.state_dict():
        hf_key = name_of(key)
        owner = hf.get_submodule(hf_key.rsplit(".", 1)[0])
        tensor = theirs[hf_key]
        state[key] = tensor.t() if type(owner).__name__ == "Conv1D" else tensor
    ours.load_state_dict(state, strict=True)


# -- the models -----------------------------------------------------------------------------------


def check_resnet50(config: ResNetConfig) -> None:
    """HF's ResNetConfig() must describe torchvision's ResNet-50 v1.5, as our spec does."""
    expected = {
        "layer_type": "bottleneck",
        "depths": [3, 4, 6, 3],
        "hidden_sizes": [256, 512, 1024, 2048],
        "embedding_size": 64,
        "downsample_in_bottleneck": False,  # stride in the 3x3 conv: v1.5
        "num_labels": 1000,
    }
    got = {k: getattr(config, k) for k in expected}
    got = {k: list(v) if isinstance(v, tuple) else v for k, v in got.items()}
    if got != expected:
        raise SystemExit(f"HF ResNetConfig is not ResNet-50 v1.5: {got} != {expected}")


def gpt2_models(folder: Path) -> tuple[nn.Module, nn.Module, nn.Module]:
    """Ours, HF's default GPT-2 (gelu_new, a composite of pointwise ops), and HF's GPT-2 with
    the fused tanh GELU ours uses, to separate the activation from the rest; same weights."""
    hf = GPT2LMHeadModel(GPT2Config())
    hf_tanh = GPT2LMHeadModel(GPT2Config(activation_function="gelu_pytorch_tanh"))
    hf_tanh.load_state_dict(hf.state_dict())
    ours = build_ours("gpt2_small.yaml", folder)
    copy_weights(ours, hf, gpt2_name)
    return ours, hf, hf_tanh


def resnet_models(folder: Path) -> tuple[nn.Module, nn.Module]:
    config = ResNetConfig(num_labels=1000)  # the default config has 2 labels
    check_resnet50(config)
    hf = ResNetForImageClassification(config)
    ours = build_ours("resnet50.yaml", folder)
    copy_weights(ours, hf, resnet_name)
    return ours, hf


# -- timing ---------------------------------------------------------------------------------------


def interleaved(
    fns: dict[str, Callable[[], object]], rounds: int, warmup: int
) -> dict[str, dict[str, list[float]]]:
    """Wall and CPU seconds per call of each function; round r starts at the r-th function."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    names = list(fns)
    times = {clock: {name: [] for name in names} for clock in CLOCKS}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = {clock: read() for clock, read in CLOCKS.items()}
            fns[name]()
            for clock, read in CLOCKS.items():
                times[clock][name].append(read() - start[clock])
    return times


def quartiles(xs: list[float]) -> tuple[float, float, float]:
    q1, q2, q3 = statistics.quantiles(xs, n=4)
    return q1, q2, q3


def agreement(ours_out: torch.Tensor, hf_out: torch.Tensor) -> str:
    diff = (ours_out - hf_out).abs().max().item()
    scale = hf_out.abs().max().item()
    return f"max |ours - HF| = {diff:.2e} (max |HF| = {scale:.2e})"


def run_case(label: str, fns: dict[str, Callable[[], object]], args) -> None:
    """Time `ours` and each HF variant of `fns` together; a row per HF variant and clock."""
    for clock, times in interleaved(fns, args.rounds, args.warmup).items():
        ours = times.pop("ours")
        o1, mo, o3 = quartiles(ours)
        for name, ref in times.items():
            h1, mh, h3 = quartiles(ref)
            p1, mp, p3 = quartiles([a / b for a, b in zip(ours, ref, strict=True)])
            print(
                f"| {label} | {name} | {clock} | {1e3 * mo:.1f} [{1e3 * o1:.1f}, {1e3 * o3:.1f}] "
                f"| {1e3 * mh:.1f} [{1e3 * h1:.1f}, {1e3 * h3:.1f}] | {mo / mh:.3f} | "
                f"{mp:.3f} [{p1:.3f}, {p3:.3f}] |",
                flush=True,
            )
    if args.profile:
        for name, fn in fns.items():
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                fn()
            print(f"\ntorch.profiler, {name}, {label}:\n")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


def time_cases(cases: list[tuple[str, dict[str, Callable[[], object]]]], args) -> None:
    print(
        f"\n{args.rounds} rotated rounds after {args.warmup} warm-up calls; ms: median [Q1, Q3]\n"
    )
    print(
        "| case | HF model | clock | ours ms | HF ms | ours / HF (medians) | per-round ours / HF |"
    )
    print("|---|---|---|---:|---:|---:|---:|")
    with torch.inference_mode():
        for label, fns in cases:
            run_case(label, fns, args)


def bench_gpt2(folder: Path, args) -> None:
    ours, hf, hf_tanh = (m.eval() for m in gpt2_models(folder))
    print(f"\n## GPT-2 small: parameters ours {num_params(ours):,}, HF {num_params(hf):,}")
    print(f"HF attention implementation: {hf.config._attn_implementation}")
    gen = torch.Generator().manual_seed(0)
    cases = []
    for batch, seq in GPT2_SHAPES:
        ids = torch.randint(0, hf.config.vocab_size, (batch, seq), generator=gen)
        fns = {
            "ours": lambda ids=ids: ours(ids),
            "HF GPT2LMHeadModel": lambda ids=ids: hf(ids, use_cache=False).logits,
            "HF, gelu_pytorch_tanh": lambda ids=ids: hf_tanh(ids, use_cache=False).logits,
        }
        with torch.inference_mode():
            outs = {name: fn() for name, fn in fns.items()}
        for name in list(fns)[1:]:
            print(f"B={batch} T={seq}, {name}: {agreement(outs['ours'], outs[name])}")
        cases.append((f"GPT-2 B={batch} T={seq}", fns))
    time_cases(cases, args)


def bench_resnet(folder: Path, args) -> None:
    ours, hf = (m.eval() for m in resnet_models(folder))
    print(f"\n## ResNet-50: parameters ours {num_params(ours):,}, HF {num_params(hf):,}")
    gen = torch.Generator().manual_seed(0)
    cases = []
    for batch in RESNET_BATCHES:
        x = torch.randn(batch, 3, 224, 224, generator=gen)
        fns = {
            "ours": lambda x=x: ours(x),
            "HF ResNetForImageClassification": lambda x=x: hf(x).logits,
        }
        with torch.inference_mode():
            ours_out, hf_out = (fn() for fn in fns.values())
        print(f"B={batch}: {agreement(ours_out, hf_out)}")
        cases.append((f"ResNet-50 B={batch} 224x224", fns))
    time_cases(cases, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--only", choices=["gpt2", "resnet"])
    parser.add_argument("--profile", action="store_true", help="print torch.profiler tables")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"{torch.get_num_threads()} threads, nlc {nlc.__version__}"
    )
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="nlc-fwd-") as tmp:
        if args.only != "resnet":
            bench_gpt2(Path(tmp), args)
        if args.only != "gpt2":
            bench_resnet(Path(tmp), args)


if __name__ == "__main__":
    main()
