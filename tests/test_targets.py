"""Target files: the built-ins load with the figures their sources give, and bad files are
reported at file:line:col with a hint."""

from __future__ import annotations

import pytest

from nlc.errors import NlcError
from nlc.resources import data_dir
from nlc.targets import builtin_targets, load_target


def test_builtins_load_under_their_file_names():
    names = builtin_targets()
    assert {"rx580", "rtx2060", "rtx3090", "h100", "cpu"} <= set(names)
    for name in names:
        target = load_target(name)
        assert target.name == name
        assert "f32" in target.dtypes


def test_rx580_figures():
    t = load_target("rx580")
    assert t.peak_tflops.f16 == t.peak_tflops.f32  # no packed fp16 math on Polaris
    assert t.dtypes == ["f32", "f16"]  # no bf16, no int8 dot product
    assert t.peak_tflops.i8_tensor is None and t.peak_tflops.bf16_tensor is None
    assert (t.memory_gib, t.memory_bandwidth_gbs) == (8, 256)
    # Without tensor cores even a matmul runs at the vector rate.
    assert t.peak_flops("f16", "matmul") == t.peak_flops("f32", "matmul") == 6.175e12


def test_cpu_peaks_are_derived_from_the_core_count_and_clock():
    t = load_target("cpu")
    cores, ghz, fma_units, lanes = 2, 2.596, 2, 16
    assert t.peak_tflops.f32 == pytest.approx(cores * ghz * fma_units * lanes * 2 / 1e3, rel=1e-3)
    assert t.peak_tflops.bf16_tensor == pytest.approx(2 * t.peak_tflops.f32)
    assert t.peak_tflops.i8_tensor == pytest.approx(4 * t.peak_tflops.f32)
    assert (
        t.dtypes == ["f32", "bf16", "i8"]
        and t.calibrated
        and t.runtime == "onnxruntime"
        and t.threads == 1
    )
    assert t.cache_mib == 32


def test_matrix_classes_use_tensor_cores_and_the_rest_the_vector_rate():
    t = load_target("h100")
    assert t.peak_flops("bf16", "matmul") == pytest.approx(989.4e12)
    assert t.peak_flops("f16", "elementwise") == pytest.approx(133.8e12)
    assert t.peak_flops("bf16", "norm") == pytest.approx(66.9e12)  # no bf16 vector rate: f32
    assert t.peak_flops("f32", "conv") == pytest.approx(66.9e12)


def test_user_file_by_path_named_after_the_file(tmp_path):
    text = (data_dir("targets") / "rx580.yaml").read_text().replace("name: rx580\n", "")
    path = tmp_path / "my_gpu.yaml"
    path.write_text(text)
    assert load_target(path).name == "my_gpu"


def _rx580_with(old: str, new: str) -> str:
    text = (data_dir("targets") / "rx580.yaml").read_text()
    assert text.count(old) == 1
    return text.replace(old, new)


# (text replaced, replacement, message, hint, where the error points: a line's text or None)
BAD = [
    ("memory_gib: 8", "memroy_gib: 8", "unknown key 'memroy_gib'", "'memory_gib'?", "memroy"),
    (
        "memory_bandwidth_gbs: 256",
        "memory_bandwidth_gbs: fast",
        "memory_bandwidth_gbs must be a valid number",
        "takes float",
        "memory_bandwidth_gbs:",
    ),
    ("kind: gpu\n", "", "missing key 'kind'", "add `kind: ...`", None),
    ("kind: gpu", "kind: tpu", "kind must be 'gpu' or 'cpu'", "'gpu'", "kind:"),
    (
        "dtypes: [f32, f16]",
        "dtypes: [f32, f16, bf16]",
        "dtype bf16 is listed but peak_tflops gives no rate for it",
        "add `bf16:` or `bf16_tensor:` under peak_tflops",
        "dtypes:",
    ),
    (
        "dtypes: [f32, f16]",
        "dtypes: [f32]",
        "peak_tflops.f16 is given but f16 is not in dtypes",
        "add f16 to `dtypes:`",
        "  f16:",
    ),
    ("  matmul: 0.6", "  matmul: 1.5", "efficiency.matmul must be in (0, 1]", "0.6", "  matmul:"),
    ("  matmul: 0.6", "  matmull: 0.6", "unknown op class 'matmull'", "'matmul'?", "  matmull:"),
    ("  fft: 0.2\n", "", "efficiency has no factor for fft", "`fft: 0.5`", "efficiency:"),
]


@pytest.mark.parametrize(("old", "new", "message", "hint", "at"), BAD, ids=[b[2] for b in BAD])
def test_bad_target_file_points_at_the_problem(tmp_path, old, new, message, hint, at):
    text = _rx580_with(old, new)
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(NlcError) as info:
        load_target(path)
    err = info.value
    assert message in err.message
    assert hint in err.hint
    assert err.loc is not None and err.loc.file == str(path)
    if at is not None:
        assert err.loc.line == text[: text.index(at)].count("\n") + 1
    assert err.render().startswith(f"{path}:{err.loc.line}:{err.loc.col}: error: ")


def test_position_of_a_dtype_without_a_peak(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(_rx580_with("dtypes: [f32, f16]", "dtypes: [f32, f16, bf16]"))
    with pytest.raises(NlcError) as info:
        load_target(path)
    text = path.read_text()
    line = text[: text.index("dtypes:")].count("\n") + 1
    assert (info.value.loc.line, info.value.loc.col) == (line, len("dtypes: [f32, f16, ") + 1)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- a\n- b\n", "is not a mapping"),
        ("", "is not a mapping"),
        ("kind: [gpu\n", "invalid YAML"),
    ],
)
def test_unreadable_target_files(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(NlcError, match=message) as info:
        load_target(path)
    assert info.value.loc is not None


def test_unknown_builtin_and_missing_file(tmp_path):
    with pytest.raises(NlcError, match="unknown target 'rx58'") as info:
        load_target("rx58")
    assert "did you mean 'rx580'?" in info.value.hint
    with pytest.raises(NlcError, match="unknown target 'quantum'") as info:
        load_target("quantum")
    assert "built-in targets: " in info.value.hint and "rx580" in info.value.hint
    with pytest.raises(NlcError, match="does not exist"):
        load_target(tmp_path / "nope.yaml")
