"""Shape rules of single ops, through the frontend (what a one-line spec infers or rejects)."""

from __future__ import annotations

import pytest

import nlc
from nlc.errors import NlcError


def _lower(tmp_path, shape: str, item: str):
    spec = tmp_path / "m.yaml"
    spec.write_text(f"nlc: 1\nname: m\ninputs: {{x: {{shape: {shape}}}}}\ngraph:\n  - {item}\n")
    return nlc.check(spec)


def _out(graph) -> str:
    return str(graph.type_of(next(iter(graph.outputs.values()))))


@pytest.mark.parametrize(
    ("shape", "item", "want"),
    [
        ("[2, 12]", "{op: reshape, shape: [0, -1, 3]}", "f32[2,4,3]"),
        ("[B, 12]", "{op: reshape, shape: [0, 3, -1]}", "f32[B,3,4]"),
        ("[B, 3, 9, 9]", "{op: conv2d, out: 4, kernel: 3, padding: [1, 0]}", "f32[B,4,9,7]"),
        (
            "[B, 3, H, W]",
            "{op: conv2d, out: 4, kernel: 3, stride: 2}",
            "f32[B,4,floor(H/2-3/2)+1,floor(W/2-3/2)+1]",
        ),
        ("[B, 8, 4]", "{op: groupnorm, groups: 4}", "f32[B,8,4]"),
        ("[B, T, 16]", "{op: attention, heads: 4, kv_heads: 2, rope: true}", "f32[B,T,16]"),
    ],
)
def test_shape_rules(tmp_path, shape, item, want):
    assert _out(_lower(tmp_path, shape, item)).startswith(want)


@pytest.mark.parametrize(
    ("shape", "item", "message", "hint"),
    [
        ("[2, 12]", "{op: reshape, shape: [0, -1, 5]}", "cannot be viewed", "divide"),
        ("[B, 3, 9, 9]", "{op: conv2d, out: 4, kernel: 3, padding: [1]}", "padding must", "list"),
        ("[B, 4, 1]", "{op: groupnorm, groups: 4}", "single value", "fewer groups"),
        (
            "[B, T, 16]",
            "{op: attention, heads: 4, kv_heads: 3}",
            "multiple of kv_heads",
            "kv_heads",
        ),
        ("[B, 3, 4, 4]", "{op: maxpool2d, kernel: 5}", "larger than input", "adaptive"),
    ],
)
def test_rejections_say_why_and_how(tmp_path, shape, item, message, hint):
    with pytest.raises(NlcError) as e:
        _lower(tmp_path, shape, item)
    assert message in e.value.message and hint in (e.value.hint or "")
    assert e.value.loc is not None and e.value.loc.line == 5
