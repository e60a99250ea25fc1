"""The `nlc` command line on a real example: version, help, check, ir, build, ops."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

import nlc
from nlc.cli import app

EXAMPLE = str(Path(__file__).parents[1] / "examples" / "cnn_digits.yaml")


def _nlc(*args: str):
    result = CliRunner().invoke(app, list(args))
    assert "Traceback" not in result.output
    return result


def test_version():
    result = _nlc("--version")
    assert result.exit_code == 0 and result.stdout.strip() == f"nlc {nlc.__version__}"


def test_help_introduces_the_commands():
    result = _nlc("--help")
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    assert "NeuralLayers compiler" in text and "YAML or the .nlc DSL" in text
    for command in ("build", "check", "ir", "ops"):
        assert f" {command} " in text
    assert "Try: nlc check examples/cnn_digits.yaml" in text


def test_command_help_names_the_arguments():
    text = " ".join(_nlc("check", "--help").stdout.split())
    assert "SPEC" in text and "--set PARAM=VALUE" in text and "--dim DIM=SIZE" in text
    assert "list[str]" not in text  # the metavars, not Python types, tell what to write


def test_check_prints_a_table_and_totals():
    result = _nlc("check", EXAMPLE)
    assert result.exit_code == 0, result.stderr
    rows = {line.split("│")[1].strip(): line for line in result.stdout.splitlines() if "│" in line}
    assert "conv2d" in rows["stem.conv"] and "f32[B,32,8,8]" in rows["stem.conv"]
    assert "650" in rows["head"] and "f32[B,10]" in rows["head"]
    assert "93,546" in rows["total"] and "1,493,632" in rows["total"]
    assert "ok: 14 nodes, 93,546 parameters, 0.001 GMACs" in result.stdout


def test_check_dim_scales_the_macs():
    result = _nlc("check", EXAMPLE, "--dim", "B=8")
    assert result.exit_code == 0, result.stderr
    assert "MACs at B=8" in result.stdout and f"{1_493_632 * 8:,}" in result.stdout


def test_set_changes_the_parameter_count():
    result = _nlc("check", EXAMPLE, "--set", "width=16")
    assert result.exit_code == 0, result.stderr
    assert "ok: 14 nodes, 23,738 parameters" in result.stdout


def test_ir_first_lines():
    result = _nlc("ir", EXAMPLE)
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "graph cnn_digits {"
    assert lines[1] == "  %x : f32[B,1,8,8] = input"
    assert lines[2].startswith("  %stem.conv : f32[B,32,8,8] = conv2d[out=32,kernel=3,")


def test_build_then_rebuild_replaces_the_package(tmp_path):
    out = tmp_path / "pkg"
    first = _nlc("build", EXAMPLE, "-o", str(out))
    assert first.exit_code == 0, first.stderr
    assert "built cnn_digits (93,546 parameters)" in first.stdout
    assert (out / "cnn_digits" / "model.py").is_file() and (out / "pyproject.toml").is_file()
    (out / "stale.txt").write_text("from the previous build")

    second = _nlc("build", EXAMPLE, "-o", str(out), "--set", "width=16")
    assert second.exit_code == 0, second.stderr
    assert json.loads((out / "build.json").read_text())["parameters"] == 23_738
    assert not (out / "stale.txt").exists()  # replaced as a whole, not patched
    assert [p.name for p in tmp_path.iterdir()] == ["pkg"]  # no temporary folders left


def test_ops_lists_the_ops():
    result = _nlc("ops")
    assert result.exit_code == 0
    names = {line.split("│")[1].strip() for line in result.stdout.splitlines() if "│" in line}
    assert {"conv2d", "attention", "linear", "split"} <= names


def test_usage_mistakes_get_suggestions():
    command = _nlc("chek", EXAMPLE)
    assert command.exit_code == 2 and "Did you mean 'check'" in command.stderr
    option = _nlc("check", EXAMPLE, "--sett", "width=3")
    assert option.exit_code == 2 and "Possible options: --set" in option.stderr


def test_build_writes_the_cost_report_for_the_spec_targets(tmp_path):
    spec = tmp_path / "m.yaml"
    spec.write_text(
        "nlc: 1\nname: m\ninputs: {ids: {shape: [B, T], dtype: i64}}\n"
        "graph:\n  - {op: embedding, num: 50, dim: 16}\n  - {op: linear, out: 50}\n"
        "targets: [rx580, cpu]\ndims: {T: 64}\n"
    )
    result = _nlc("build", str(spec), "-o", str(tmp_path / "out"), "--no-onnx")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out/report.json").read_text())
    assert "rx580" in json.dumps(report) and "cpu" in json.dumps(report)
    markdown = (tmp_path / "out/report.md").read_text()
    assert "rx580" in markdown and "T=64" in markdown
