"""`nlc train` and `nlc generate`: build the package into the run folder, then run its
generated scripts in a child process (under `torchrun` for several processes)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from nlc.errors import NlcError
from nlc.frontend.load import Spec
from nlc.ir import Graph
from nlc.train.data_check import check_data
from nlc.weights import WEIGHTS_FILE, Weights

PACKAGE = "package"  # the run folder's copy of the generated package
TEACHER = "teacher"  # the distillation teacher's package, with its weights.pt


def prepare_run(
    spec: Spec,
    graph: Graph,
    run: Path,
    resume: bool = False,
    lr_find: bool = False,
    weights: Weights | None = None,
) -> Path:
    """Check the data and the run folder, then build the package into `run/package`, with
    `weights` (to fine-tune from) as its weights.pt."""
    from nlc.api import write_build
    from nlc.emit.package import package_files

    train = spec.ast.train
    if train is None:
        raise NlcError(
            f"{spec.path} has no `train:` section",
            spec.ast.loc,
            "add one, e.g. `train: {epochs: 10}`, or train it from a pipeline file that names "
            "this spec under `model:`",
        )
    check_data(spec)
    started = any((run / "checkpoints").glob("*.pt"))  # a run killed before saving restarts
    if started and not (resume or lr_find):
        raise NlcError(
            f"{run} already holds a training run",
            None,
            "pass --resume to continue it, or -o to start a new run in another folder",
        )
    if resume and not started:
        raise NlcError(
            f"--resume: {run} has no checkpoints to resume from",
            None,
            "start the run without --resume",
        )
    model_file = f"{graph.name}/model.py"
    old = run / PACKAGE / model_file
    if resume and old.is_file() and old.read_text() != package_files(graph, spec)[model_file]:
        raise NlcError(
            f"--resume: the model of {spec.path} is not the one {run} was trained with",
            None,
            "resume with the spec and --set values the run started with (its package/spec.yaml)",
        )
    write_build(spec, graph, run / PACKAGE, onnx=False, weights=weights)
    if train.distill is not None:
        build_teacher(spec, run / TEACHER)
    return run


def build_teacher(spec: Spec, folder: Path) -> Path:
    """The package of `train.distill`'s teacher with its trained weights in `folder`: a run
    folder's own package (passes included) and best checkpoint, or a spec and its weights."""
    import shutil

    from nlc.api import load_trained, write_build
    from nlc.frontend.train_check import teacher_paths
    from nlc.weights import read_weights, write_weights

    train = spec.ast.train
    assert train is not None and train.distill is not None
    teacher, weights = teacher_paths(spec, train)
    if folder.exists():
        shutil.rmtree(folder)
    if teacher == weights / PACKAGE / "spec.yaml":  # a run folder: reuse its package
        shutil.copytree(weights / PACKAGE, folder, ignore=shutil.ignore_patterns("*.onnx"))
        write_weights(folder, read_weights(weights))
        return folder
    tspec, tgraph, tweights = load_trained(teacher, weights)
    tspec.ast.train = None  # the teacher is only run forward: no training script
    return write_build(tspec, tgraph, folder, onnx=False, weights=tweights)


def train_command(
    spec: Spec, graph: Graph, run: Path, resume: bool, lr_find: bool, nproc: int
) -> list[str]:
    """The command line that runs the generated train.py for `run`; it starts from the
    package's weights.pt when the build has one."""
    if nproc < 1:
        raise NlcError(f"--nproc {nproc}: needs at least 1 process", None, "e.g. --nproc 2")
    train = spec.ast.train
    assert train is not None
    if train.batch_size % (nproc * train.accumulate):
        raise NlcError(
            f"--nproc {nproc}: batch_size {train.batch_size} does not split into {nproc} "
            f"processes x {train.accumulate} micro-batches",
            train.at("batch_size"),
            f"use a batch_size that is a multiple of {nproc * train.accumulate}",
        )
    options = ["--run", str(run), "--data-root", str(spec.data_root)]
    options += ["--resume"] * resume + ["--lr-find"] * lr_find
    init = run / PACKAGE / WEIGHTS_FILE
    options += ["--init", str(init)] if init.is_file() else []
    options += ["--teacher", str(run / TEACHER)] if train.distill is not None else []
    if nproc == 1:
        return [sys.executable, "-m", f"{graph.name}.train", *options]
    # `--` ends torchrun's own options: it would read --run as an abbreviation of --run-path.
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    return [*launcher, f"--nproc_per_node={nproc}", "-m", f"{graph.name}.train", "--", *options]


def run_script(run: Path, command: list[str]) -> int:
    """Run a generated script with the run's package importable; its exit status."""
    env = dict(os.environ)
    package = str((run / PACKAGE).resolve())
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package, env.get("PYTHONPATH")]))
    try:
        return subprocess.run(command, env=env, check=False).returncode
    except KeyboardInterrupt:  # the child got the same SIGINT; its last checkpoint stays
        return 130


def generate_command(run: Path, options: list[str]) -> list[str]:
    """The command line of the run's generate.py with `options` passed through."""
    package = run / PACKAGE
    scripts = sorted(package.glob("*/generate.py")) if package.is_dir() else []
    if not scripts:
        has_run = (run / "config.json").is_file()
        raise NlcError(
            f"{run} is not a language-model run" if has_run else f"{run} is not a training run",
            None,
            "generate takes the folder of an `nlc train` run of a spec with task lm or mlm",
        )
    return [sys.executable, "-m", f"{scripts[0].parent.name}.generate", "--run", str(run), *options]
