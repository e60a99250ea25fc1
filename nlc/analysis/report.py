"""Render cost analyses: tables as rows of text (for the CLI's rich tables and for Markdown),
`report.md` and `report.json`, and a per-layer latency bar chart."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from nlc.analysis.cost import Cost, NodeCost
from nlc.analysis.memory import Memory
from nlc.errors import NlcError
from nlc.targets import Target

Table = tuple[list[str], list[list[str]]]  # headers, rows

LAYER_HEADERS = [
    "node", "op", "class", "dtype", "MACs", "FLOPs", "weights", "read", "written",
    "FLOP/B", "time", "bound", "share",
]  # fmt: skip
BOUND_COLOURS = {"compute": "tab:red", "memory": "tab:blue", "overhead": "tab:gray"}


def num(x: float) -> str:
    """A count with an SI prefix.

    >>> num(4089184256), num(512), num(0)
    ('4.09 G', '512', '0')
    """
    for prefix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {prefix}"
    return f"{x:.3g}"


def nbytes(n: int) -> str:
    """Bytes in binary units.

    >>> nbytes(102760448), nbytes(6 * 2**30), nbytes(100)
    ('98 MiB', '6 GiB', '100 B')
    """
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} B"


def duration(s: float) -> str:
    """
    >>> duration(0.0154), duration(3.2e-6), duration(0)
    ('15.4 ms', '3.2 us', '0')
    """
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if s >= scale:
            return f"{s / scale:.3g} {unit}"
    return f"{s * 1e9:.3g} ns" if s else "0"


def layer_table(cost: Cost) -> Table:
    """One row per node, in execution order."""
    return LAYER_HEADERS, [_layer_row(n, cost.latency) for n in cost.nodes]


def top_table(cost: Cost, k: int = 5) -> Table:
    """The `k` slowest nodes."""
    return LAYER_HEADERS, [_layer_row(n, cost.latency) for n in cost.top(k)]


def _layer_row(n: NodeCost, latency: float) -> list[str]:
    return [
        n.name,
        n.op,
        n.op_class,
        n.dtype,
        num(n.macs),
        num(n.flops),
        nbytes(n.weight_bytes),
        nbytes(n.read_bytes),
        nbytes(n.written_bytes),
        f"{n.intensity:.3g}" if n.intensity is not None else "-",
        duration(n.time.total),
        n.time.bound,
        f"{100 * n.time.total / latency:.1f}%" if latency else "-",
    ]


def totals(cost: Cost, train: bool = True) -> list[tuple[str, str]]:
    """The figures of one analysis, labelled; the training ones only with `train`."""
    rows = [
        ("latency", duration(cost.latency)),
        ("throughput", f"{cost.throughput:,.1f} samples/s"),
    ]
    if cost.tokens_per_s is not None:
        rows.append(("tokens", f"{cost.tokens_per_s:,.0f} tokens/s"))
    if train:
        rows.append(("training step (about 3x forward)", duration(cost.train_step)))
    rows += [
        ("MACs", num(cost.macs)),
        ("FLOPs", num(cost.flops)),
        ("parameters", f"{cost.params:,}"),
    ]
    for p in cost.precisions:
        # Labels name the precision, values the dtype: targets differ in their half dtype.
        tag, dtype = ("f32", "") if p.dtype == "f32" else ("mixed", f"{p.dtype}: ")
        rows.append((f"inference memory ({tag})", dtype + _memory(p.inference)))
        if train:
            rows.append((f"training memory, AdamW ({tag})", dtype + _memory(p.training)))
        if p.max_batch_inference is not None:
            batches = f"{p.max_batch_inference:,} inference"
            if train:
                batches += f", {p.max_batch_training:,} training"
            rows.append((f"largest batch ({tag})", dtype + batches))
    return rows


def _memory(m: Memory) -> str:
    parts = [("weights", m.weights), ("activations", m.activations)]
    parts += [("gradients", m.gradients), ("AdamW", m.optimizer), ("half copies", m.weight_copies)]
    return f"{nbytes(m.total)} (" + ", ".join(f"{k} {nbytes(v)}" for k, v in parts if v) + ")"


def compare_table(costs: list[Cost], train: bool = True) -> Table:
    """Totals side by side, one column per analysis."""
    columns = [dict(totals(c, train)) for c in costs]
    labels = list(dict.fromkeys(label for col in columns for label in col))
    headers = ["", *(_column(c) for c in costs)]
    return headers, [[label, *(col.get(label, "-") for col in columns)] for label in labels]


def layer_compare_table(costs: list[Cost]) -> Table:
    """Per-node time and bound side by side (the analyses are of one graph)."""
    headers = ["node", "op", *(f"{_column(c)} {h}" for c in costs for h in ("time", "bound"))]
    rows = []
    for i, n in enumerate(costs[0].nodes):
        cells = [x for c in costs for x in (duration(c.nodes[i].time.total), c.nodes[i].time.bound)]
        rows.append([n.name, n.op, *cells])
    return headers, rows


def _column(cost: Cost) -> str:
    return f"{cost.target.name} ({cost.dtype})"


def setting(cost: Cost) -> str:
    """What the figures assume, in one line."""
    dims = ", ".join(f"{k}={v}" for k, v in cost.dims.items()) or "no symbolic dims"
    t = cost.target
    fitted = (
        f"calibrated for {t.runtime}, {t.threads or 'all'} thread(s)"
        if t.calibrated
        else "uncalibrated efficiencies"
    )
    target = f"{cost.target.name} ({cost.target.description})"
    return f"{cost.graph} on {target}, {dims}, {cost.dtype}, {fitted}"


def targets_table(targets: list[Target]) -> tuple[list[str], list[list[str]]]:
    """Key figures of each target."""
    headers = [
        "target", "f32 TFLOP/s", "f16/bf16 TFLOP/s", "GB/s", "memory GiB", "cache MiB", "dtypes",
    ]  # fmt: skip
    rows = []
    for t in targets:
        p = t.peak_tflops
        # The best half-precision rate, on the matrix units where the device has them.
        half = max(filter(None, (p.f16, p.f16_tensor, p.bf16, p.bf16_tensor)), default=None)
        rows.append(
            [
                t.name,
                f"{p.f32:g}",
                f"{half:g}" if half else "-",
                f"{t.memory_bandwidth_gbs:g}",
                f"{t.memory_gib:g}",
                f"{t.cache_mib:g}",
                " ".join(t.dtypes),
            ]
        )
    return headers, rows


def markdown(costs: list[Cost]) -> str:
    """`report.md`: what the figures assume, the totals and the per-node times (side by side
    when there are several targets), the five slowest nodes of each analysis, and the
    per-node details of the first."""
    out = [f"# Cost of {costs[0].graph}", "", *(f"- {setting(c)}" for c in costs), ""]
    out += ["## Totals", "", *md_table(compare_table(costs)), ""]
    for c in costs:
        out += [f"## Slowest nodes on {_column(c)}", "", *md_table(top_table(c)), ""]
    if len(costs) > 1:
        out += ["## Per node, side by side", "", *md_table(layer_compare_table(costs)), ""]
    out += [f"## Per node on {_column(costs[0])}", "", *md_table(layer_table(costs[0])), ""]
    return "\n".join(out)


def md_table(table: Table) -> list[str]:
    headers, rows = table
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return lines + ["| " + " | ".join(cell.replace("|", "\\|") for cell in r) + " |" for r in rows]


def to_json(costs: list[Cost]) -> dict:
    """`report.json`: every figure in base units (seconds, bytes, FLOPs)."""
    return {
        "graph": costs[0].graph,
        "analyses": [
            {
                "target": c.target.name,
                "target_figures": c.target.model_dump(),
                "dims": c.dims,
                "dtype": c.dtype,
                "latency_s": c.latency,
                "train_step_s": c.train_step,
                "throughput_per_s": c.throughput,
                "tokens_per_s": c.tokens_per_s,
                "macs": c.macs,
                "flops": c.flops,
                "params": c.params,
                "precisions": [
                    {
                        **asdict(p),
                        "inference_total": p.inference.total,
                        "training_total": p.training.total,
                    }
                    for p in c.precisions
                ],
                "nodes": [
                    {
                        **asdict(n),
                        "flops": n.flops,
                        "dram_bytes": n.dram_bytes,
                        "intensity": n.intensity,
                        "time": {**asdict(n.time), "total": n.time.total, "bound": n.time.bound},
                    }
                    for n in c.nodes
                ],
            }
            for c in costs
        ],
    }


def render_report(costs: list[Cost]) -> dict[str, str]:
    """The files `report.md` and `report.json` (name -> text), for a build folder."""
    return {
        "report.md": markdown(costs),
        "report.json": json.dumps(to_json(costs), indent=1) + "\n",
    }


def plot_latency(costs: list[Cost], path: str | Path) -> Path:
    """A PNG bar chart of per-node latency, one panel per analysis, bars coloured by bound."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise NlcError(
            "--plot needs matplotlib", None, "pip install matplotlib (or nlc[plot])"
        ) from None
    nodes = [n.name for n in costs[0].nodes]
    fig, axes = plt.subplots(
        len(costs), 1, figsize=(max(8, 0.12 * len(nodes)), 3 * len(costs)), squeeze=False
    )
    for ax, cost in zip(axes[:, 0], costs, strict=True):
        times = [n.time.total * 1e6 for n in cost.nodes]
        colours = [BOUND_COLOURS.get(n.time.bound, "white") for n in cost.nodes]
        ax.bar(range(len(times)), times, color=colours, width=0.8)
        ax.set_ylabel("time (us)")
        ax.set_title(f"{setting(cost)}: {duration(cost.latency)}", fontsize=9)
        ax.set_xlim(-1, len(times))
        ax.set_xticks([])
    axes[-1, 0].set_xticks(range(len(nodes)), nodes, rotation=90, fontsize=5)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in BOUND_COLOURS.values()]
    axes[0, 0].legend(handles, [f"{b}-bound" for b in BOUND_COLOURS], fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path
