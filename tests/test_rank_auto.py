"""`rank: auto`: a rank within `max_error`, kept only where the factorized layer is faster than
the dense one on the target, measured in onnxruntime on the host target (`cpu`) or predicted
by the cost model (`measure: false`, other targets); fractions without weights."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
import yaml

import nlc
from nlc.errors import NlcError
from nlc.ir import Graph
from nlc.passes import auto, run_passes
from nlc.passes.auto import TIE, choose_rank

MODEL = {"rank": "auto", "measure": False}  # the cost model decides: deterministic


def _mlp(tmp_path: Path, hidden: int, extra: dict | None = None) -> Graph:
    doc = {
        "nlc": 1,
        "name": "mlp",
        "inputs": {"x": {"shape": ["B", hidden]}},
        "graph": [
            {"op": "linear", "name": "big", "out": hidden},
            "relu",
            {"op": "linear", "name": "small", "out": 64},
            "relu",
            {"op": "linear", "name": "head", "out": 64},
        ],
        **(extra or {}),
    }
    spec = tmp_path / "mlp.yaml"
    spec.write_text(yaml.safe_dump(doc, sort_keys=False))
    return nlc.load(spec)[1]


def _weights(graph: Graph, low_rank: dict[str, int]) -> dict[str, torch.Tensor]:
    """Random weights; those named in `low_rank` are A @ B of that rank plus tiny noise."""
    gen = torch.Generator().manual_seed(0)
    out = {}
    for name, p in graph.parameters():
        t = torch.randn(p.shape, generator=gen)
        node = name.rsplit(".", 1)[0]
        if name.endswith(".weight") and node in low_rank:
            r = low_rank[node]
            a, b = (
                torch.randn(p.shape[0], r, generator=gen),
                torch.randn(r, p.shape[1], generator=gen),
            )
            t = a @ b + 1e-3 * t
        out[name] = t
    return out


def _rows(report: list[dict]) -> dict[str, dict]:
    return {row["node"]: row for row in report}


def test_low_rank_large_layer_gets_its_rank_and_small_layer_stays_dense(tmp_path: Path):
    graph = _mlp(tmp_path, 1024)
    weights = _weights(graph, {"big": 8, "small": 4})
    new, factors, report = run_passes(graph, weights, [("svd", MODEL)])
    rows = _rows(report)
    big = rows["big"]
    assert big["op_after"] == "lowrank_linear" and 8 <= big["rank"] <= 10
    assert big["error"] <= 0.1 and big["factorized_us"] < big["dense_us"]
    assert factors["big.0.weight"].shape == (big["rank"], 1024)
    # 64 x 64 random: within 10% error only ranks with more weights than the dense layer.
    assert rows["head"]["skipped"] == (
        "kept dense: no rank within max_error has fewer parameters than the layer"
    )
    assert new.nodes["head"].op == "linear"


def test_structural_auto_takes_the_largest_fraction_predicted_faster(tmp_path: Path):
    graph = _mlp(tmp_path, 1024)
    new, weights, report = run_passes(graph, None, [("svd", MODEL)])
    big = _rows(report)["big"]
    # 0.75 and 0.5 of 1024 have at least as many weights as the dense layer: not candidates.
    assert weights is None and big["rank"] == 256 and new.nodes["big"].attrs.rank == 256
    assert big["factorized_us"] < big["dense_us"] and big["target"] == "cpu"
    assert _rows(report)["head"]["skipped"].startswith("kept dense")
    assert _rows(report)["small"]["rank"] == 48  # 1024 -> 64: three quarters of 64 already pay


def test_the_target_option_and_the_spec_target_decide(tmp_path: Path):
    graph = _mlp(tmp_path, 1024)
    _, _, report = run_passes(graph, None, [("svd", {"rank": "auto", "target": "h100"})])
    assert {row["target"] for row in report} == {"h100"}
    assert {row["timing"] for row in report} == {"model"}  # measure: auto, not the host
    spec_graph = _mlp(
        tmp_path, 1024, {"targets": ["rtx3060"], "passes": [{"pass": "svd", "rank": "auto"}]}
    )
    assert {row["target"] for row in spec_graph.meta["passes"]} == {"rtx3060"}


@pytest.mark.parametrize("name", ["tucker", "cp"])
def test_conv_auto_within_budget(tmp_path: Path, name: str):
    doc = {
        "nlc": 1,
        "name": "cnn",
        "inputs": {"x": {"shape": ["B", 16, 32, 32]}},
        "graph": [{"op": "conv2d", "name": "c", "out": 32, "kernel": 3, "padding": 1}],
    }
    spec = tmp_path / "cnn.yaml"
    spec.write_text(yaml.safe_dump(doc, sort_keys=False))
    graph = nlc.load(spec)[1]
    gen = torch.Generator().manual_seed(0)
    # A kernel of 4 rank-one terms: Tucker ranks 4 and CP rank 4 are within the budget.
    a, b, h, w = (torch.randn(n, 4, generator=gen) for n in (32, 16, 3, 3))
    weight = torch.einsum("or,ir,hr,wr->oihw", a, b, h, w)
    weights = {"c.weight": weight, "c.bias": torch.zeros(32)}
    options = {**MODEL, "max_error": 0.05}
    _, _, report = run_passes(graph, weights, [(name, options)])
    (row,) = report
    assert row["error"] <= 0.05 and "dense_us" in row
    ranks = row["rank"] if isinstance(row["rank"], list) else [row["rank"]]
    assert max(ranks) <= 8


def test_auto_is_one_choice_for_both_tucker_modes(tmp_path: Path):
    graph = _mlp(tmp_path, 64)
    with pytest.raises(NlcError, match="write rank: auto, not a list"):
        run_passes(graph, None, [("tucker", {"rank": ["auto", 4]})])


def test_min_speedup_keeps_layers_below_the_margin_dense(tmp_path: Path):
    graph = _mlp(tmp_path, 1024)
    weights = _weights(graph, {"big": 8})
    options = {**MODEL, "select": "big"}
    _, _, report = run_passes(graph, weights, [("svd", options)])
    big = _rows(report)["big"]
    ratio = big["dense_us"] / big["factorized_us"]
    new, _, report = run_passes(graph, weights, [("svd", {**MODEL, "min_speedup": ratio * 1.01})])
    assert _rows(report)["big"]["skipped"].endswith(f"(min_speedup {ratio * 1.01})")
    assert new.nodes["big"].op == "linear"
    new, _, _ = run_passes(graph, weights, [("svd", {**options, "min_speedup": ratio * 0.99})])
    assert new.nodes["big"].op == "lowrank_linear"


def _conv(tmp_path: Path, cin: int = 16, out: int = 32, side: int = 8) -> Graph:
    doc = {
        "nlc": 1,
        "name": "cnn",
        "inputs": {"x": {"shape": ["B", cin, side, side]}},
        "graph": [{"op": "conv2d", "name": "c", "out": out, "kernel": 3, "padding": 1}],
    }
    spec = tmp_path / "cnn.yaml"
    spec.write_text(yaml.safe_dump(doc, sort_keys=False))
    return nlc.load(spec)[1]


def _fake_timer(monkeypatch, dense_us: float, factorized_us) -> list[list]:
    """Replace onnxruntime timing: the dense layer takes `dense_us`, a rewrite at rank r
    `factorized_us(r)`; returns the ranks each call timed."""
    calls: list[list] = []

    def fake(graph, node, plans, target):
        calls.append([p.rank for p in plans])
        return [dense_us * 1e-6, *(factorized_us(p.rank) * 1e-6 for p in plans)]

    monkeypatch.setattr(auto, "measure_seconds", fake)
    return calls


def test_measured_slower_stays_dense_whatever_the_model_predicts(tmp_path: Path, monkeypatch):
    graph = _mlp(tmp_path, 256)
    weights = _weights(graph, {"big": 8})
    calls = _fake_timer(monkeypatch, 10.0, lambda rank: 12.0)
    new, out, report = run_passes(graph, weights, [("svd", {"rank": "auto", "select": "big"})])
    (row,) = report
    assert calls and row["timing"] == "measured" and new.nodes["big"].op == "linear"
    assert row["skipped"] == "kept dense: factorized 12.0 us vs dense 10.0 us on cpu"
    # the cost model predicted it faster: the report keeps both
    assert row["predicted_dense_us"] > 0 and row["dense_us"] == 10.0
    assert out["big.weight"] is weights["big.weight"] or torch.equal(
        out["big.weight"], weights["big.weight"]
    )


def test_measured_faster_is_taken_at_the_largest_rank_as_fast_as_the_fastest(
    tmp_path: Path, monkeypatch
):
    graph = _mlp(tmp_path, 256)
    weights = _weights(graph, {"big": 8})
    # Every rank within budget is faster; 8 and 16 measure the same, 24 and up slower.
    _fake_timer(monkeypatch, 10.0, lambda rank: 5.0 if rank <= 16 else 5.0 + rank / 8)
    options = {"rank": "auto", "select": "big", "max_error": 0.1}
    new, out, report = run_passes(graph, weights, [("svd", options)])
    (row,) = report
    timed = [rank for rank, _ in row["candidates_us"]]
    assert timed[0] == 8 and all(r % 8 == 0 for r in timed) and len(timed) == auto.CANDIDATES
    assert row["rank"] == 16 and new.nodes["big"].attrs.rank == 16
    assert (row["dense_us"], row["factorized_us"]) == (10.0, 5.0)
    assert row["error"] <= 0.1 and out["big.0.weight"].shape == (16, 256)
    assert "largest rank within 5% of the fastest" in row["choice"]


def test_min_speedup_applies_to_measured_times(tmp_path: Path, monkeypatch):
    graph = _mlp(tmp_path, 256)
    weights = _weights(graph, {"big": 8})
    _fake_timer(monkeypatch, 10.0, lambda rank: 9.5)
    options = {"rank": "auto", "select": "big", "min_speedup": 1.1}
    new, _, report = run_passes(graph, weights, [("svd", options)])
    assert report[0]["skipped"].endswith("(min_speedup 1.1)") and new.nodes["big"].op == "linear"


def test_choose_rank_is_deterministic_given_the_times():
    times = {8: 5.0, 16: 5.0 * (1 + TIE), 24: 6.0, 32: 11.0}
    assert choose_rank(times, 10.0, 1.0, bounded=True)[0] == 16  # within TIE of the fastest
    assert choose_rank(times, 10.0, 1.0, bounded=False)[0] == 24  # no budget: largest faster
    assert choose_rank(times, 10.0, 2.5, bounded=True)[0] is None
    assert choose_rank({8: 4.0, 16: 3.0}, 10.0, 1.0, bounded=True)[0] == 16


def test_measure_option_is_validated(tmp_path: Path):
    graph = _mlp(tmp_path, 64)
    with pytest.raises(NlcError, match="measure"):
        run_passes(graph, None, [("svd", {"rank": "auto", "measure": "sometimes"})])
    with pytest.raises(NlcError, match="target h100 is not it"):
        run_passes(graph, None, [("svd", {"rank": "auto", "measure": True, "target": "h100"})])


def test_measuring_times_each_candidate_in_onnxruntime(tmp_path: Path):
    graph = _conv(tmp_path, 16, 32, 8)
    _, _, report = run_passes(graph, None, [("tucker", {"rank": "auto", "measure": True})])
    (row,) = report
    assert row["timing"] == "measured" and row["dense_us"] > 0 and row["predicted_dense_us"] > 0
    assert len(row["candidates_us"]) == 3 and all(us > 0 for _, us in row["candidates_us"])


def test_cp_auto_on_a_full_rank_kernel_finishes_in_seconds(tmp_path: Path):
    """Random weights: a flat spectrum, the case where the ALS search climbs highest."""
    graph = _conv(tmp_path, 32, 32, 8)
    gen = torch.Generator().manual_seed(0)
    weights = {"c.weight": torch.randn(32, 32, 3, 3, generator=gen), "c.bias": torch.zeros(32)}
    start = time.perf_counter()
    _, _, report = run_passes(graph, weights, [("cp", {**MODEL, "max_error": 0.5})])
    assert time.perf_counter() - start < 20
    (row,) = report
    assert row["error"] <= 0.5 and row["rank"] % auto.ALIGN == 0
