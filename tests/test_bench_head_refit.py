"""bench/head_refit.py's readers, by hand: the ridge fit (judge_ceiling's), its penalty choice and `overall` as a minimum."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

_BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(_BENCH))  # head_refit imports judge_ceiling as a sibling
_SPEC = importlib.util.spec_from_file_location("head_refit", _BENCH / "head_refit.py")
hr = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(hr)


def test_ridge_recovers_a_linear_map_and_leaves_the_intercept_unshrunk():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 3, generator=g) * torch.tensor([1.0, 5.0, 0.2]) + 7.0
    y = x @ torch.tensor([[2.0], [-1.0], [0.5]]) + 3.0
    assert torch.allclose(hr.ridge(x, y, x, 1e-6), y, atol=1e-2)
    # A huge penalty shrinks every weight to 0 but keeps the mean, the intercept.
    flat = hr.ridge(x, y, x, 1e9)
    assert torch.allclose(flat, y.mean().expand_as(flat), atol=1e-2)


def test_fit_picks_the_penalty_with_the_least_validation_error():
    g = torch.Generator().manual_seed(1)
    x, noise = torch.randn(40, 30, generator=g), torch.randn(40, 1, generator=g)
    y = x[:, :1] + noise  # one useful feature of 30: fitting the rest overfits 20 train rows
    (on_val,), penalty = hr.fit(x[:20], y[:20], x[20:], y[20:], x[20:])
    assert on_val.shape == (20, 1)
    assert penalty > min(hr.PENALTIES)


def test_overall_as_the_minimum_of_the_other_dimensions():
    items = [("a", "v1.mp4", "p"), ("b", "v2.mp4", "p")]
    scores = torch.tensor([[0.5, -1.0, 2.0, 9.0], [1.0, 0.0, 0.0, -9.0]])
    dims = ["visual_quality", "text_alignment", "physical_consistency", "overall"]
    judged = hr.as_judged(items, scores, dims, overall_as_min=True)
    assert judged[("v1.mp4", "p")]["scores"]["overall"] == -1.0
    assert judged[("v2.mp4", "p")]["scores"]["overall"] == 0.0
    assert hr.as_judged(items, scores, dims)[("v1.mp4", "p")]["scores"]["overall"] == 9.0
