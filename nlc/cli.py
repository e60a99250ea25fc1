"""The `nlc` command line: parse arguments, call the library, render with rich."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, get_args

import typer
from rich.console import Console
from rich.table import Table

from nlc import __version__
from nlc.emit.quantize import MODES as QUANT_MODES
from nlc.errors import NlcError, did_you_mean
from nlc.frontend.search_ast import Strategy

app = typer.Typer(
    name="nlc",
    help="nlc, the NeuralLayers compiler: describe a network once in a spec (YAML or the .nlc "
    "DSL), then check its shapes and cost, print its IR, or build a standalone PyTorch package "
    "from it.",
    epilog="Try: nlc check examples/cnn_digits.yaml, then nlc build examples/cnn_digits.yaml "
    "-o build/cnn_digits. Run nlc COMMAND --help for the options of a command.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

SpecArg = Annotated[
    Path, typer.Argument(metavar="SPEC", help="Spec file (.yaml or .nlc).", show_default=False)
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        metavar="PARAM=VALUE",
        help="Override a param of the spec's `params:`, e.g. --set width=64, or a train "
        "setting, e.g. --set train.optimizer.lr=3e-4 (repeatable).",
        show_default=False,
    ),
]

PassOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--pass",
        metavar="NAME:KEY=VALUE,...",
        help="Run a pass after the spec's passes, e.g. --pass svd:rank=0.5,select=h.*.fc "
        "(repeatable; nlc passes lists them).",
        show_default=False,
    ),
]

DimOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--dim",
        metavar="DIM=SIZE",
        help="Size of a symbolic input dim, e.g. --dim T=1024 (default 1).",
        show_default=False,
    ),
]


def _run(fn):
    """Call `fn`; report user errors in one paragraph, exit 2, no traceback."""
    try:
        return fn()
    except NlcError as e:
        _fail(e)
    except OSError as e:  # the file system refused (permissions, disk full): not a bug of nlc
        _fail(NlcError(f"{e.strerror}: {e.filename}", None, "check the path and its permissions"))


def _fail(e: NlcError):
    err.print(e.render(excerpt=True), markup=False, soft_wrap=True)
    raise typer.Exit(2) from None


def _version(value: bool) -> None:
    if value:
        out.print(f"nlc {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Commands take a spec file; run `nlc COMMAND --help` for details."""


def _load(spec: Path, overrides: list[str] | None, passes: list[str] | None = None):
    from nlc.api import load
    from nlc.frontend.load import parse_overrides, parse_passes

    return load(spec, parse_overrides(overrides or []), parse_passes(passes or []))


def _load_weights(
    spec: Path, overrides: list[str] | None, passes: list[str] | None, weights: Path | None
):
    """`_load`, and with `weights` also the trained weights, transformed by the passes."""
    if weights is None:
        return (*_load(spec, overrides, passes), None)
    from nlc.api import load_trained
    from nlc.frontend.load import parse_overrides, parse_passes

    steps = parse_passes(passes or [])
    return load_trained(spec, weights, parse_overrides(overrides or []), steps)


def _dim_sizes(spec, graph, items: list[str]) -> dict[str, int]:
    """Sizes of the symbolic dims for MAC counts: 1, or what `--dim` says."""
    from nlc.frontend.load import parse_overrides

    sizes = {s: 1 for s in graph.meta["symbols"]}
    for key, value in parse_overrides(items, "--dim").items():
        if key not in sizes:
            raise NlcError(
                f"--dim {key}={value}: the spec has no symbolic dim {key!r} "
                f"(its symbolic dims: {', '.join(sizes) or 'none'})",
                spec.ast.key_at("inputs"),
                did_you_mean(key, sizes)
                or "symbolic dims are the names in input shapes, e.g. B in [B, 3, 32, 32]",
            )
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise NlcError(
                f"--dim {key}={value}: the size must be a positive integer",
                None,
                f"e.g. --dim {key}=128",
            )
        sizes[key] = value
    return sizes


def _quant_mode(value: str) -> str:
    if value not in QUANT_MODES:
        raise typer.BadParameter(f"{value!r} is not a mode: choose {' or '.join(QUANT_MODES)}")
    return value


@app.command()
def build(
    spec: SpecArg,
    output: Annotated[
        Path | None,
        typer.Option(
            "-o",
            "--output",
            metavar="DIR",
            help="Output folder (default: build/<name>); a previous build there is replaced.",
            show_default=False,
        ),
    ] = None,
    set_: SetOpt = None,
    pass_: PassOpt = None,
    weights: Annotated[
        Path | None,
        typer.Option(
            "--weights",
            metavar="PATH",
            help="Trained weights (a state dict, a checkpoint, or an nlc train run folder): "
            "the passes transform them with the graph, and the build writes weights.pt.",
            show_default=False,
        ),
    ] = None,
    no_onnx: Annotated[
        bool, typer.Option("--no-onnx", help="Do not export model.onnx (nor verify it).")
    ] = False,
    opset: Annotated[
        int | None,
        typer.Option(
            "--opset",
            metavar="N",
            help="ONNX opset of model.onnx, 18 to 25 (default: 20).",
            show_default=False,
        ),
    ] = None,
    skip_verify: Annotated[
        bool,
        typer.Option(
            "--skip-verify",
            help="Keep model.onnx without checking it against PyTorch under onnxruntime.",
        ),
    ] = False,
    quantize: Annotated[
        str | None,
        typer.Option(
            "--quantize",
            parser=_quant_mode,
            metavar="int8-dynamic|int8-static",
            help="Also write model.int8.onnx, quantized by onnxruntime (int8-dynamic: int8 "
            "weights of linears and attention, convolutions stay fp32; int8-static: "
            "convolutions too, activations calibrated on random inputs), and quantize.json: "
            "its size, speed and error against model.onnx.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Compile SPEC into a pip-installable PyTorch package, with model.onnx verified by
    onnxruntime against PyTorch."""

    def go():
        from nlc.api import write_build

        loaded, graph, trained = _load_weights(spec, set_, pass_, weights)
        with err.status("building (ONNX export and verification take a while)"):
            path = write_build(
                loaded,
                graph,
                output or Path("build") / graph.name,
                onnx=not no_onnx,
                opset=opset,
                verify=not skip_verify,
                weights=trained,
                quantize=quantize,
            )
        out.print(f"built [bold]{graph.name}[/] ({graph.num_params():,} parameters) -> {path}")
        if not no_onnx:
            out.print(_onnx_summary(json.loads((path / "onnx.json").read_text())))
        if (path / "quantize.json").is_file():  # --quantize, or the quantize pass at int8
            out.print(_quantize_summary(json.loads((path / "quantize.json").read_text())))

    _run(go)


def _onnx_summary(report: dict) -> str:
    """One line on model.onnx: opset, size, worst error relative to the output's scale."""
    text = f"  model.onnx: opset {report['opset']}, {report['bytes'] / 1e6:.1f} MB, "
    if not report["verified"]:
        return text + "not verified (--skip-verify)"
    worst = max(
        o["max_abs_error"] / o["scale"] for c in report["checks"] for o in c["outputs"].values()
    )
    sizes = " and ".join(
        ", ".join(f"{k}={v}" for k, v in c["sizes"].items()) for c in report["checks"]
    )
    return text + f"matches PyTorch under onnxruntime at {sizes} (max error {worst:.1e} of scale)"


def _quantize_summary(report: dict) -> str:
    """One line on model.int8.onnx: how much smaller and faster, and its error."""
    lat = report["latency"]
    return (
        f"  {report['file']} ({report['mode']}): {report['size_ratio']:.1f}x smaller, "
        f"{report['speedup']:.2f}x the speed ({lat['fp32_ms']:.3g} -> {lat['int8_ms']:.3g} ms, "
        f"{lat['runtime']}, {lat['threads']} thread), "
        f"max error {report['max_relative_error']:.1e} of scale"
    )


@app.command()
def check(
    spec: SpecArg,
    set_: SetOpt = None,
    pass_: PassOpt = None,
    dim: DimOpt = None,
) -> None:
    """Validate SPEC, infer shapes, and print a per-layer table with totals.

    On a search space: its dimensions and size, and a check that its points lower."""

    def go():
        from nlc.analysis.counts import node_counts
        from nlc.frontend.load import parse_overrides
        from nlc.search.space import load_space

        space = load_space(spec, parse_overrides(set_ or []))
        if space is not None:
            return _check_space(space)
        loaded, graph = _load(spec, set_, pass_)
        sizes = _dim_sizes(loaded, graph, dim or [])
        rows = node_counts(graph, sizes)
        at = ", ".join(f"{k}={v}" for k, v in sizes.items())
        table = Table(title=f"{graph.name}" + (f"  (MACs at {at})" if at else ""))
        for col, justify in (
            ("node", "left"),
            ("op", "left"),
            ("output", "left"),
            ("params", "right"),
            ("MACs", "right"),
        ):
            table.add_column(col, justify=justify)
        for r in rows:
            table.add_row(
                r.node.name,
                r.node.op,
                ", ".join(map(str, r.node.outputs)),
                f"{r.params:,}",
                f"{r.macs:,}",
            )
        total_macs = sum(r.macs for r in rows)
        table.add_section()
        table.add_row("total", "", "", f"{graph.num_params():,}", f"{total_macs:,}")
        out.print(table)
        out.print(
            f"ok: {len(rows)} nodes, {graph.num_params():,} parameters, "
            f"{total_macs / 1e9:.3f} GMACs"
        )

    _run(go)


def _check_space(space) -> None:
    """Print a search space's dimensions and size, then lower its points (exit 2 on failure)."""
    from nlc.search.objectives import check_search
    from nlc.search.space_check import check_space

    out.print(
        f"search space {space.path}: {len(space.dims)} dimension{'s' * (len(space.dims) != 1)}",
        markup=False,
    )
    rows = [
        (
            d.name,
            d.kind,
            d.describe(),
            f"if {d.parent} in {d.describe_when()}" if d.parent else "",
            str(d.loc or ""),
        )
        for d in space.dims
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        cells = [c.ljust(w) for c, w in zip(r, widths, strict=False)]
        out.print("  " + "  ".join([*cells, r[4]]).rstrip(), markup=False, soft_wrap=True)
    size = space.size()
    if size is None:
        floats = ", ".join(d.name for d in space.dims if d.values() is None)
        out.print(
            f"size: infinite (float dims: {floats}); {space.count():,} points over the others"
        )
    else:
        out.print(f"size: {size:,} points")
    report = check_space(space)
    if report.exhaustive:
        how = f"all {report.checked:,} points"
    else:
        covering = report.checked - report.sampled
        how = (
            f"{report.checked:,} points ({covering} giving every dim each of its values, "
            f"{report.sampled} random with seed 0)"
        )
    if not report.failures:
        check_search(space)  # objectives and constraints name known metrics, targets and units
        out.print(f"ok: {how} lower to valid graphs")
        return
    for f in report.failures:
        err.print(f.error.render(excerpt=True), markup=False, soft_wrap=True)
        picked = "; ".join(f"{d.name}={f.point[d.name]!r} ({d.loc})" for d in f.culprits)
        err.print(
            f"  in {f.count} of the checked points, e.g. with "
            + (picked or space.describe(f.point)),
            markup=False,
            soft_wrap=True,
        )
    err.print(f"error: {len(report.failures)} distinct error(s) among {how}", markup=False)
    raise typer.Exit(2)


def _rich(table, title: str | None = None) -> Table:
    """A rich table from the (headers, rows) the report module builds."""
    headers, rows = table
    t = Table(title=title, title_justify="left")
    for i, h in enumerate(headers):
        t.add_column(h, justify="left" if i == 0 else "right")
    for r in rows:
        t.add_row(*r)
    return t


@app.command()
def cost(
    spec: SpecArg,
    target: Annotated[
        list[str] | None,
        typer.Option(
            "--target",
            "-t",
            metavar="NAME|FILE",
            help="Hardware target: a built-in name (see `nlc targets`) or a target .yaml file; "
            "repeat to compare targets side by side.",
            show_default=False,
        ),
    ] = None,
    batch: Annotated[
        int | None,
        typer.Option(
            "--batch",
            "-b",
            min=1,
            help="Batch size, the symbolic dim B (default 1).",
            show_default=False,
        ),
    ] = None,
    seq: Annotated[
        int | None,
        typer.Option(
            "--seq",
            min=1,
            help="Sequence length, the symbolic dim T (default 1).",
            show_default=False,
        ),
    ] = None,
    dim: DimOpt = None,
    train: Annotated[
        bool, typer.Option("--train", help="Also show training time, memory and largest batch.")
    ] = False,
    dtype: Annotated[
        str | None,
        typer.Option(
            "--dtype",
            metavar="f32|f16|bf16",
            help="Run floating-point tensors in this dtype (f16/bf16: mixed precision).",
            show_default=False,
        ),
    ] = None,
    json_out: Annotated[
        Path | None,
        typer.Option(
            "--json", metavar="FILE", help="Also write every figure as JSON.", show_default=False
        ),
    ] = None,
    plot: Annotated[
        Path | None,
        typer.Option(
            "--plot",
            metavar="PNG",
            help="Also draw per-layer latency (matplotlib).",
            show_default=False,
        ),
    ] = None,
    set_: SetOpt = None,
) -> None:
    """Estimate latency, throughput and memory of SPEC on hardware targets (roofline model)."""

    def go():
        from nlc.analysis.cost import analyze
        from nlc.analysis.report import (
            compare_table,
            layer_compare_table,
            layer_table,
            plot_latency,
            setting,
            to_json,
            top_table,
        )
        from nlc.targets import builtin_targets, load_target

        if not target:
            raise NlcError(
                "no target given",
                None,
                f"e.g. --target rx580; built-in targets: {', '.join(builtin_targets())}",
            )
        loaded, graph = _load(spec, set_)
        items = [*(dim or []), *([f"B={batch}"] if batch else []), *([f"T={seq}"] if seq else [])]
        sizes = _dim_sizes(loaded, graph, items)
        costs = [analyze(graph, load_target(t), sizes, dtype) for t in target]
        if len(costs) == 1:
            out.print(_rich(layer_table(costs[0]), setting(costs[0])))
        else:
            out.print(_rich(layer_compare_table(costs), "per layer"))
        for c in costs:
            out.print(_rich(top_table(c), f"slowest layers: {setting(c)}"))
        out.print(_rich(compare_table(costs, train), "totals"))
        if json_out:
            json_out.write_text(json.dumps(to_json(costs), indent=1) + "\n")
            out.print(f"wrote {json_out}")
        if plot:
            out.print(f"wrote {plot_latency(costs, plot)}")

    _run(go)


RunOpt = Annotated[
    Path | None,
    typer.Option(
        "-o",
        "--output",
        metavar="DIR",
        help="Run folder (default: runs/<name>): checkpoints, metrics, plots and the package.",
        show_default=False,
    ),
]


@app.command()
def train(
    spec: SpecArg,
    output: RunOpt = None,
    set_: SetOpt = None,
    pass_: PassOpt = None,
    weights: Annotated[
        Path | None,
        typer.Option(
            "--weights",
            metavar="PATH",
            help="Fine-tune from trained weights (a state dict, checkpoint or run folder), "
            "transformed by the spec's passes and --pass (e.g. a pruned or factorized model).",
            show_default=False,
        ),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option("--resume", help="Continue the run in the folder from its newest checkpoint."),
    ] = False,
    lr_find: Annotated[
        bool,
        typer.Option(
            "--lr-find",
            help="Run an LR range test instead of training: plots loss against LR and "
            "suggests a learning rate.",
        ),
    ] = False,
    nproc: Annotated[
        int,
        typer.Option(
            "--nproc", metavar="N", help="Processes on this machine (torchrun, DDP or FSDP)."
        ),
    ] = 1,
) -> None:
    """Build SPEC (a spec with a `train:` section, or a pipeline file) into a run folder and
    train it with the generated train.py."""

    def go():
        from nlc.frontend.load import load_spec, parse_overrides, parse_passes
        from nlc.train.run import prepare_run, run_script, train_command

        first = load_spec(spec, parse_overrides(set_ or []))
        if first.ast.train is not None and first.ast.train.iterative is not None:
            from nlc.train.schedule import train_iterative

            if resume or lr_find:
                raise NlcError(
                    "--resume and --lr-find run one training, not iterative compression steps",
                    first.ast.train.key_at("iterative"),
                    "drop the option, or run it on one step's folder (RUN/step-<i>)",
                )
            run = output or Path("runs") / first.ast.name
            overrides, steps = parse_overrides(set_ or []), parse_passes(pass_ or [])
            code = train_iterative(spec, overrides, steps, weights, run, nproc)
            if code:
                err.print(f"a fine-tuning step exited with status {code}; see {run}/step-*/")
                raise typer.Exit(code)
            return
        loaded, graph, trained = _load_weights(spec, set_, pass_, weights)
        run = output or Path("runs") / graph.name
        prepare_run(loaded, graph, run, resume, lr_find, trained)
        code = run_script(run, train_command(loaded, graph, run, resume, lr_find, nproc))
        if code:
            err.print(
                f"training exited with status {code}; the run's log is {run / 'train.log'}, "
                "and its last checkpoint (if any) is kept for --resume"
            )
            raise typer.Exit(code)

    _run(go)


@app.command()
def runs(
    folder: Annotated[
        Path, typer.Argument(metavar="DIR", help="A run folder, or a folder of runs.")
    ] = Path("runs"),
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List training runs side by side: status, best and final metrics, and the settings that
    differ between them."""

    def go():
        from nlc.train.runs import find_runs, table

        rows = table(find_runs(folder), folder)
        if as_json:
            out.print_json(data=rows)
            return
        # One column per run, one line per field: runs compare side by side however many
        # settings differ.
        fields = list(dict.fromkeys(k for row in rows for k in row if k != "run"))
        lines = [[field, *(row.get(field, "") for row in rows)] for field in fields]
        out.print(_rich((["", *(row["run"] for row in rows)], lines), f"runs in {folder}"))

    _run(go)


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def generate(
    ctx: typer.Context,
    run: Annotated[Path, typer.Argument(metavar="RUN_DIR", help="The folder of an lm/mlm run.")],
) -> None:
    """Sample text from a trained language model; options go to the run's generate.py:
    --prompt TEXT --max-tokens N --temperature T --top-k K --top-p P --seed S --checkpoint C."""

    def go():
        from nlc.train.run import generate_command, run_script

        code = run_script(run, generate_command(run, list(ctx.args)))
        if code:
            raise typer.Exit(code)

    _run(go)


@app.command()
def targets() -> None:
    """List the built-in hardware targets with their key figures."""

    def go():
        from nlc.analysis.report import targets_table
        from nlc.targets import builtin_targets, load_target

        out.print(_rich(targets_table([load_target(n) for n in builtin_targets()]), "targets"))

    _run(go)


@app.command()
def calibrate(
    target: Annotated[
        str,
        typer.Option(
            "--target",
            "-t",
            metavar="NAME|FILE",
            help="Target to fit: a built-in name (see `nlc targets`) or a target .yaml file; "
            "its peaks, capacities and cache size are kept.",
        ),
    ] = "cpu",
    output: Annotated[
        Path | None,
        typer.Option(
            "-o",
            "--output",
            metavar="FILE",
            help="Target file to write (default: <target>-calibrated.yaml here); the file name "
            "is the target's name.",
            show_default=False,
        ),
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(
            "--threads",
            min=1,
            metavar="N",
            help="Threads the runtime uses, here and in the models the target then describes "
            "(default: all cores).",
            show_default=False,
        ),
    ] = None,
    runtime: Annotated[
        str,
        typer.Option(
            "--runtime",
            metavar="onnxruntime|pytorch",
            help="What runs the micro-benchmarks: onnxruntime (as model.onnx runs) or eager "
            "PyTorch.",
        ),
    ] = "onnxruntime",
    budget: Annotated[
        float,
        typer.Option(
            "--budget",
            min=1,
            metavar="SECONDS",
            help="Seconds of timing in all; building the micro-benchmarks adds about 25 s.",
        ),
    ] = 40.0,
) -> None:
    """Time micro-benchmarks on this machine, fit a target's efficiencies, bandwidths and
    overheads to them, and write the calibrated target file (about a minute)."""

    def go():
        from nlc.calibrate import calibrate as fit_target

        path = output or Path(f"{Path(target).stem}-calibrated.yaml")
        with err.status("calibrating: building the micro-benchmarks") as status:
            fitted = fit_target(target, path, budget, threads, runtime, log=status.update)
        eff = ", ".join(f"{c} {e:.3g}" for c, e in fitted.efficiency.items())
        out.print(
            f"wrote [bold]{path}[/] ({fitted.runtime}, {fitted.threads or 'all'} thread(s)): "
            f"memory {fitted.memory_bandwidth_gbs:.3g} GB/s, cache "
            f"{fitted.cache_bandwidth_gbs:.3g} GB/s, launch {fitted.launch_overhead_us:.3g} us, "
            f"call {fitted.call_overhead_us:.3g} us, overlap {fitted.overlap:.2f}; "
            f"efficiencies: {eff}"
        )

    _run(go)


@app.command()
def ir(spec: SpecArg, set_: SetOpt = None, pass_: PassOpt = None) -> None:
    """Print the IR of SPEC, one line per node."""

    def go():
        from nlc.ir.printer import format_graph

        _, graph = _load(spec, set_, pass_)
        sys.stdout.write(format_graph(graph))

    _run(go)


@app.command()
def fmt(
    spec: SpecArg,
    check: Annotated[
        bool, typer.Option("--check", help="Write nothing; exit 1 if SPEC is not formatted.")
    ] = False,
) -> None:
    """Rewrite SPEC (.nlc or .yaml) in its canonical layout, comments kept."""

    def go():
        from nlc.frontend.fmt import format_file

        changed = format_file(spec, write=not check)
        if check and changed:
            err.print(f"{spec} is not formatted; run: nlc fmt {spec}", markup=False)
            raise typer.Exit(1)
        out.print(f"{'formatted' if changed else 'already formatted:'} {spec}", markup=False)

    _run(go)


@app.command()
def convert(
    source: SpecArg,
    target: Annotated[
        Path,
        typer.Argument(
            metavar="TARGET",
            help="File to write: .nlc for the DSL, .yaml for YAML (replaced if it exists).",
            show_default=False,
        ),
    ],
) -> None:
    """Write the spec SOURCE to TARGET in the other form (.yaml <-> .nlc), comments kept."""

    def go():
        from nlc.frontend.fmt import convert_file

        convert_file(source, target)
        out.print(f"wrote {target}", markup=False)

    _run(go)


@app.command()
def schema() -> None:
    """Print the JSON Schema of YAML specs (editor completion: see spec/README.md)."""
    from nlc.frontend.reference import schema_text

    sys.stdout.write(schema_text())


@app.command()
def passes() -> None:
    """List the graph passes a spec's `passes:` or --pass can run, with their options."""

    def go():
        from rich.markup import escape

        from nlc.passes import PASSES

        table = Table(title="passes")
        for col in ("pass", "options", "description"):
            table.add_column(col)
        for name in sorted(PASSES):
            fields = PASSES[name].Options.model_fields
            options = ", ".join(
                k if f.is_required() else f"{k}={f.default!r}" for k, f in fields.items()
            )
            table.add_row(name, escape(options), escape(PASSES[name].doc))
        out.print(table)

    _run(go)


@app.command()
def ops() -> None:
    """List the ops a spec can use, with their attributes."""
    from nlc.ops import REGISTRY

    table = Table(title="ops")
    table.add_column("op")
    table.add_column("attributes")
    table.add_column("description")
    for name in sorted(REGISTRY):
        op = REGISTRY[name]
        attrs = ", ".join(
            k if f.is_required() else f"{k}={f.default!r}" for k, f in op.Attrs.model_fields.items()
        )
        table.add_row(name, attrs, op.doc)
    out.print(table)


@app.command()
def search(
    spec: Annotated[
        Path,
        typer.Argument(
            metavar="SPEC",
            help="Search-space spec (a spec with choices and a `search:` section); or `status`, "
            "then a search folder, to print a study's summary.",
            show_default=False,
        ),
    ],
    folder: Annotated[
        Path | None,
        typer.Argument(
            metavar="[DIR]", help="With `status`: the search folder.", show_default=False
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "-o",
            "--output",
            metavar="DIR",
            help="Search folder (default: search/<name>): study.db, trials/, pareto.md, front/.",
            show_default=False,
        ),
    ] = None,
    trials: Annotated[
        int | None,
        typer.Option(
            "--trials",
            min=1,
            metavar="N",
            help="Trials in all (default: the spec's).",
            show_default=False,
        ),
    ] = None,
    strategy: Annotated[
        str | None,
        typer.Option(
            "--strategy",
            metavar="S",
            help="random, tpe, nsga2, evolution or darts (default: the spec's).",
            show_default=False,
        ),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(
            "--seed", metavar="N", help="Seed of the sampler and trainings.", show_default=False
        ),
    ] = None,
    workers: Annotated[
        int, typer.Option("--workers", min=1, metavar="N", help="Local worker processes.")
    ] = 1,
    storage: Annotated[
        str | None,
        typer.Option(
            "--storage",
            metavar="URL",
            help="Optuna storage shared by workers on many machines, e.g. "
            "postgresql://user:pass@host/db (default: sqlite DIR/study.db).",
            show_default=False,
        ),
    ] = None,
    set_: SetOpt = None,
) -> None:
    """Search the space of SPEC with Optuna (resumable: rerun to continue), then write the
    Pareto front: pareto.md, pareto.json, front/<n>.yaml, best.yaml, plots/."""

    def go():
        from nlc.frontend.load import parse_overrides
        from nlc.search import study as studies
        from nlc.search.outputs import write_outputs

        if str(spec) == "status":
            if folder is None:
                raise NlcError("search status: which folder?", None, "nlc search status DIR")
            return _search_status(folder, storage)
        if folder is not None:
            raise NlcError(f"unexpected argument {folder}", None, "give the folder with -o DIR")
        strategies = get_args(Strategy)
        if strategy is not None and strategy not in strategies:
            raise NlcError(
                f"--strategy {strategy}: unknown strategy",
                None,
                did_you_mean(strategy, strategies) or f"choose {', '.join(strategies)}",
            )
        given = {"trials": trials, "strategy": strategy, "seed": seed}
        settings = {k: v for k, v in given.items() if v is not None}
        setup = studies.make_setup(spec, parse_overrides(set_ or []), settings, output, storage)
        out.print(f"search {setup.name}: {setup.out} ({setup.storage})")
        study = studies.run(setup, workers, _search_line)
        space, _, goals = studies.load(setup)
        data = write_outputs(study, space, goals, Path(setup.out))
        _search_summary(data, goals, Path(setup.out))

    _run(go)


def _search_line(line: str) -> None:
    out.print(line, markup=False, soft_wrap=True)


def _search_status(folder: Path, storage: str | None) -> None:
    from nlc.search import study as studies
    from nlc.search.outputs import write_outputs

    study, setup = studies.reopen(folder, storage)
    space, settings, goals = studies.load(setup)
    out.print(f"study {setup.name} ({setup.storage}), spec {setup.spec}, {settings.trials} trials")
    data = write_outputs(study, space, goals, folder)
    _search_summary(data, goals, folder)


def _search_summary(data: dict, goals, folder: Path) -> None:
    from nlc.search.outputs import table

    counts = ", ".join(f"{v} {k}" for k, v in data["trials"].items())
    title = f"front of {data['study']}: {counts}"
    out.print(_rich(table(data, goals), title))
    if data["hypervolume"] is not None:
        out.print(f"hypervolume {data['hypervolume']:.4g}")
    out.print(f"wrote {folder / 'pareto.md'}, {folder / 'front'}/")
