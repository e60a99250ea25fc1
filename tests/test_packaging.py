"""Install layouts: nlc as a non-editable wheel, and a generated package via pip."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _pip(*args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "-q", *args, "--no-deps", "--no-build-isolation"],
        check=True,
        cwd=ROOT,
    )


def _python(code: str, cwd: Path, path: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(path)}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, check=True
    )
    return done.stdout


def test_wheel_ships_data_and_builds_from_another_directory(tmp_path):
    _pip("wheel", "-w", str(tmp_path / "dist"), ".")
    (wheel,) = (tmp_path / "dist").glob("nlc-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for data in (
        "nlc/_data/templates/package/model.py.j2",
        "nlc/_data/templates/layers/Attention.py",
        "nlc/_data/spec/README.md",
        "nlc/_data/spec/nlc.lark",
        "nlc/_data/targets/rx580.yaml",
    ):
        assert data in names
    site = tmp_path / "site"
    _pip("install", "--target", str(site), str(wheel))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = _python(
        "import nlc, sys; print(nlc.__file__); "
        f"nlc.build({str(ROOT / 'examples/gpt2_small.nlc')!r}, 'pkg', onnx=False)",
        elsewhere,
        site,
    )
    assert out.startswith(str(site))
    assert (elsewhere / "pkg/gpt2_small/layers.py").read_text().count("class Attention") == 1


def test_generated_package_pip_installs_and_imports(tmp_path):
    import nlc

    nlc.build(ROOT / "examples/cnn_digits.yaml", tmp_path / "cnn_digits")
    site = tmp_path / "site"
    _pip("install", "--target", str(site), str(tmp_path / "cnn_digits"))
    out = _python(
        "import torch; from cnn_digits import Model; "
        "print(tuple(Model().eval()(torch.randn(2, 1, 8, 8)).shape))",
        tmp_path,
        site,
    )
    assert out.strip() == "(2, 10)"
    code = (site / "cnn_digits/model.py").read_text()
    assert "import nlc" not in code and "from nlc" not in code
