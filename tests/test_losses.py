"""Losses and metrics against numbers worked out by hand from the formulas (not from the code)."""

from __future__ import annotations

import math

import pytest
import torch

from cot_rm.model.losses import (
    TieParameter,
    accuracy_with_ties,
    bt_margin_loss,
    bt_ties_loss,
    fit_tie_margin,
    gaussian_nll_loss,
    mse_loss,
    pairwise_accuracy,
    predict_with_ties,
    rao_kupper_log_probs,
)
from eval import metrics

T = torch.tensor


def rk_probs(ra: float, rb: float, theta: float) -> tuple[float, float, float]:
    """Rao-Kupper in its original strength form: pi = exp(r)."""
    pa, pb = math.exp(ra), math.exp(rb)
    win_a = pa / (pa + theta * pb)
    win_b = pb / (pb + theta * pa)
    tie = (theta**2 - 1) * pa * pb / ((pa + theta * pb) * (pb + theta * pa))
    return win_a, tie, win_b


def test_rao_kupper_matches_strength_form_and_sums_to_one():
    theta = 2.0
    for ra, rb in [(1.0, 0.0), (0.0, 0.0), (0.5, 1.5), (-3.0, 2.0)]:
        got = rao_kupper_log_probs(T(ra - rb), math.log(theta)).exp()
        assert got.tolist() == pytest.approx(rk_probs(ra, rb, theta), abs=1e-6)
        assert float(got.sum()) == pytest.approx(1.0, abs=1e-6)


def test_bt_ties_loss_hand_computed():
    # theta = 2. Pair 1: d = 1, A wins: P = e / (e + 2) = 0.576117 -> NLL 0.551445.
    # Pair 2: d = 0, tie: P = (4 - 1) * 1 * 1 / ((1 + 2)(1 + 2)) = 1/3 -> NLL ln 3 = 1.098612.
    # Pair 3: r_a = 0.5, r_b = 1.5, B wins: P = e^1.5 / (e^1.5 + 2 e^0.5) = e / (e + 2) -> 0.551445.
    e = math.e
    nll_win, nll_tie = -math.log(e / (e + 2)), math.log(3)
    assert nll_win == pytest.approx(0.551445, abs=1e-6)
    r_a, r_b, labels = T([1.0, 0.0, 0.5]), T([0.0, 0.0, 1.5]), T([1, 0, -1])
    loss = bt_ties_loss(r_a, r_b, labels, log_theta=math.log(2))
    assert float(loss) == pytest.approx((2 * nll_win + nll_tie) / 3, abs=1e-6)  # 0.733834
    masked = bt_ties_loss(r_a, r_b, labels, math.log(2), mask=T([True, False, True]))
    assert float(masked) == pytest.approx(nll_win, abs=1e-6)


def test_bt_ties_loss_per_dimension_theta_and_2d():
    # [B=1, D=2], theta = (2, 3), both ties at d = 0: P = (theta^2 - 1) / (1 + theta)^2 = (theta - 1)/(theta + 1)
    loss = bt_ties_loss(
        T([[0.0, 0.0]]), T([[0.0, 0.0]]), T([[0, 0]]), log_theta=T([math.log(2), math.log(3)])
    )
    expected = (-math.log(1 / 3) - math.log(2 / 4)) / 2
    assert float(loss) == pytest.approx(expected, abs=1e-6)


def test_bt_ties_loss_rejects_bad_input():
    with pytest.raises(ValueError, match="theta > 1"):
        bt_ties_loss(T([0.0]), T([0.0]), T([0]), log_theta=0.0)
    with pytest.raises(ValueError, match="labels must be"):
        bt_ties_loss(T([0.0]), T([0.0]), T([2]))


def test_tie_parameter_is_learnable_and_starts_at_theta():
    tie = TieParameter(num_dims=2, init_theta=2.0)
    assert tie().tolist() == pytest.approx([math.log(2)] * 2, abs=1e-5)
    loss = bt_ties_loss(T([[0.0, 0.0]]), T([[0.0, 0.0]]), T([[0, 0]]), log_theta=tie())
    loss.backward()
    assert tie.raw.grad is not None and tie.raw.grad.abs().sum() > 0


def test_bt_margin_loss_hand_computed_ties_skipped():
    # m = 0.5. Pair 1: A wins, r_w - r_l = 1: -log sigmoid(0.5) = log(1 + e^-0.5) = 0.474077.
    # Pair 2: tie, skipped. Pair 3: B wins, r_w - r_l = 3 - 1 = 2: log(1 + e^-1.5) = 0.201413.
    a, c = math.log1p(math.exp(-0.5)), math.log1p(math.exp(-1.5))
    assert (a, c) == pytest.approx((0.474077, 0.201413), abs=1e-6)
    loss = bt_margin_loss(T([2.0, 0.0, 1.0]), T([1.0, 0.0, 3.0]), T([1, 0, -1]), margin=0.5)
    assert float(loss) == pytest.approx((a + c) / 2, abs=1e-6)
    plain = bt_margin_loss(T([2.0]), T([1.0]), T([1]))  # margin 0: -log sigmoid(1) = log(1 + e^-1)
    assert float(plain) == pytest.approx(math.log1p(math.exp(-1)), abs=1e-6)


def test_bt_margin_loss_all_ties_is_zero_with_graph():
    r_a = T([1.0, 2.0], requires_grad=True)
    loss = bt_margin_loss(r_a, T([0.0, 0.0]), T([0, 0]))
    assert float(loss.detach()) == 0.0
    loss.backward()  # does not raise: the zero keeps the graph
    assert r_a.grad.tolist() == [0.0, 0.0]


def test_mse_loss_masked_hand_computed():
    # squared errors 0, 4, (9 masked), 0 -> 4 / 3
    pred, target = T([[1.0, 2.0], [3.0, 4.0]]), T([[1.0, 0.0], [0.0, 4.0]])
    assert float(mse_loss(pred, target, T([[1, 1], [0, 1]]))) == pytest.approx(4 / 3)
    assert float(mse_loss(pred, target)) == pytest.approx(13 / 4)


def test_gaussian_nll_hand_computed():
    # (mu, log var, y) = (1, 0, 2): 0.5 (0 + 1/1) = 0.5;  (2, ln 4, 2): 0.5 (ln 4 + 0) = 0.693147
    mean, log_var, y = T([1.0, 2.0]), T([0.0, math.log(4)]), T([2.0, 2.0])
    expected = (0.5 + 0.5 * math.log(4)) / 2
    assert float(gaussian_nll_loss(mean, log_var, y)) == pytest.approx(expected, abs=1e-6)
    full = gaussian_nll_loss(mean, log_var, y, full=True)
    assert float(full) == pytest.approx(expected + 0.5 * math.log(2 * math.pi), abs=1e-6)
    # a per-dimension [D] log-variance broadcasts over [B, D]; (mu - y)^2 / e^ln2 = 4 / 2 = 2
    per_dim = gaussian_nll_loss(T([[0.0], [0.0]]), T([math.log(2)]), T([[2.0], [0.0]]))
    assert float(per_dim) == pytest.approx((0.5 * (math.log(2) + 2) + 0.5 * math.log(2)) / 2, abs=1e-6)


def test_pairwise_accuracy_ignores_ties_counts_exact_score_ties_wrong():
    # decided pairs: #0 (1 > 0, A: right), #1 (2 < 3 but A: wrong), #3 (5 > 1 but B: wrong) -> 1/3
    r_a, r_b, labels = T([1.0, 2.0, 0.0, 5.0]), T([0.0, 3.0, 0.0, 1.0]), T([1, 1, 0, -1])
    assert pairwise_accuracy(r_a, r_b, labels) == pytest.approx(1 / 3)
    assert pairwise_accuracy(T([1.0]), T([1.0]), T([1])) == 0.0
    assert math.isnan(pairwise_accuracy(T([1.0]), T([1.0]), T([0])))
    assert pairwise_accuracy(r_a, r_b, labels, mask=T([1, 0, 1, 0])) == 1.0


def test_accuracy_with_ties_hand_computed():
    diff, labels = T([0.1, -0.5, 0.05, 1.0, 0.3]), T([0, -1, 0, 1, 0])
    # margin 0.2: predictions tie, B, tie, A, A -> 4 of 5 right
    assert predict_with_ties(diff, 0.2).tolist() == [0, -1, 0, 1, 1]
    assert accuracy_with_ties(diff, labels, 0.2) == pytest.approx(0.8)
    # margin 0 (tie only on equal scores): A, B, A, A, A -> 2 of 5
    assert accuracy_with_ties(diff, labels, 0.0) == pytest.approx(0.4)
    assert accuracy_with_ties(diff, labels, 0.2, mask=T([1, 1, 1, 1, 0])) == 1.0


def test_a_fitted_tie_margin_means_what_eval_applies():
    """Tie when |d| <= margin, where the margin is fitted and where `cot-rm eval` applies it: the boundary
    and equal scores are ties in both, so the fitted accuracy is the one eval reports."""
    diff = T([0.0, 0.2, -0.2, 0.3, -0.5, 0.1], dtype=torch.float64)
    for margin in (0.0, 0.1, 0.2, 0.25, 0.3):
        ours = predict_with_ties(diff, margin).tolist()
        assert ours == metrics.predict_with_ties(diff.numpy(), margin).astype(int).tolist(), margin
    assert predict_with_ties(diff, 0.2).tolist() == [0, 0, 0, 1, -1, 0]  # |d| = margin is a tie
    assert predict_with_ties(diff, 0.0).tolist() == [0, 1, -1, 1, -1, 1]  # margin 0: equal scores tie
    labels = T([0, 0, -1, 1, -1, 0])
    margin = fit_tie_margin(diff, labels)
    expected = metrics.acc_with_ties(diff.numpy(), labels.numpy(), margin)
    assert accuracy_with_ties(diff, labels, margin) == pytest.approx(expected) == 5 / 6
