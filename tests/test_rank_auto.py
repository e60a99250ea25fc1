"""`rank: auto`: the smallest rank within `max_error`, kept only where the cost model predicts
the factorized layer faster than the dense one on the target; fractions without weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

import nlc
from nlc.errors import NlcError
from nlc.ir import Graph
from nlc.passes import run_passes


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
    new, factors, report = run_passes(graph, weights, [("svd", {"rank": "auto"})])
    rows = _rows(report)
    big = rows["big"]
    assert big["op_after"] == "lowrank_linear" and 8 <= big["rank"] <= 10
    assert big["error"] <= 0.1 and big["factorized_us"] < big["dense_us"]
    assert factors["big.0.weight"].shape == (big["rank"], 1024)
    # 64 x 64 on a CPU: two small matmuls cost more than one, whatever the rank.
    for name in ("head",):
        assert rows[name]["skipped"].startswith("kept dense: factorized ")
        assert rows[name]["skipped"].endswith(" us on cpu")
        assert rows[name]["factorized_us"] >= rows[name]["dense_us"]
        assert new.nodes[name].op == "linear"


def test_structural_auto_takes_the_largest_fraction_predicted_faster(tmp_path: Path):
    graph = _mlp(tmp_path, 1024)
    new, weights, report = run_passes(graph, None, [("svd", {"rank": "auto"})])
    big = _rows(report)["big"]
    # 0.75 and 0.5 of 1024 have at least as many weights as the dense layer: not faster.
    assert weights is None and big["rank"] == 256 and new.nodes["big"].attrs.rank == 256
    assert big["factorized_us"] < big["dense_us"] and big["target"] == "cpu"
    assert _rows(report)["head"]["skipped"].startswith("kept dense")
    assert _rows(report)["small"]["rank"] == 48  # 1024 -> 64: three quarters of 64 already pay


def test_the_target_option_and_the_spec_target_decide(tmp_path: Path):
    graph = _mlp(tmp_path, 1024)
    _, _, report = run_passes(graph, None, [("svd", {"rank": "auto", "target": "h100"})])
    assert {row["target"] for row in report} == {"h100"}
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
    options = {"rank": "auto", "max_error": 0.05}
    _, _, report = run_passes(graph, weights, [(name, options)])
    (row,) = report
    assert row["error"] <= 0.05 and "dense_us" in row
    ranks = row["rank"] if isinstance(row["rank"], list) else [row["rank"]]
    assert max(ranks) <= 8


def test_auto_is_one_choice_for_both_tucker_modes(tmp_path: Path):
    graph = _mlp(tmp_path, 64)
    with pytest.raises(NlcError, match="write rank: auto, not a list"):
        run_passes(graph, None, [("tucker", {"rank": ["auto", 4]})])
