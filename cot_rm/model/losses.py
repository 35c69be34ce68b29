"""Losses and metrics for the scoring head: pairwise (Bradley-Terry) and pointwise (regression).

Conventions shared by every function here:
- scores `r_a`, `r_b`, predictions and targets are `[B]` or `[B, D]` (one column per dimension);
- pairwise `labels` have the same shape, as ints: 1 = A preferred, -1 = B preferred, 0 = tie;
- `mask` (same shape, bool or 0/1) marks the entries that count; a missing label is masked out, never
  read as a tie. Losses average over counted entries; with none counted they return a zero that still
  carries the graph (so a batch with no usable labels does not break a backward pass).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

A_WINS, TIE, B_WINS = 1, 0, -1
DEFAULT_LOG_THETA = math.log(2.0)  # theta = 2: P(tie) = 1/3 for equal scores


def _masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of `values` over `mask` (all when None); 0 (with graph) when nothing is counted."""
    if mask is None:
        return values.mean()
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def _check_labels(labels: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if labels.shape != like.shape:
        raise ValueError(f"labels shape {tuple(labels.shape)} != scores shape {tuple(like.shape)}")
    labels = labels.long()
    if not torch.isin(labels, torch.tensor([B_WINS, TIE, A_WINS], device=labels.device)).all():
        raise ValueError("labels must be 1 (A wins), -1 (B wins) or 0 (tie); mask missing ones out")
    return labels


# ------------------------------------------------------------------------------ Bradley-Terry + ties


def rao_kupper_log_probs(diff: torch.Tensor, log_theta: torch.Tensor | float) -> torch.Tensor:
    """Log-probabilities of (A wins, tie, B wins) under Rao-Kupper; returns `[..., 3]`.

    Rao & Kupper (1967), the "Bradley-Terry with ties" VideoAlign trains with. With strengths
    pi = exp(r) and a tie parameter theta > 1:
        P(A > B) = pi_a / (pi_a + theta pi_b)                        = sigmoid(d - log theta)
        P(B > A) = pi_b / (pi_b + theta pi_a)                        = sigmoid(-d - log theta)
        P(tie)   = (theta^2 - 1) pi_a pi_b / ((pi_a + theta pi_b)(pi_b + theta pi_a))
                 = (theta^2 - 1) sigmoid(d - log theta) sigmoid(-d - log theta)
    where d = r_a - r_b; the three sum to 1. Written with logsigmoid so it is stable for large |d|.
    """
    log_theta = torch.as_tensor(log_theta, dtype=diff.dtype, device=diff.device)
    if (log_theta <= 0).any():
        raise ValueError("Rao-Kupper needs theta > 1 (log_theta > 0)")
    log_a = F.logsigmoid(diff - log_theta)
    log_b = F.logsigmoid(-diff - log_theta)
    log_tie = torch.log(torch.expm1(2 * log_theta)) + log_a + log_b  # log(theta^2 - 1) + ...
    return torch.stack([log_a, log_tie, log_b], dim=-1)


def bt_ties_loss(
    r_a: torch.Tensor,
    r_b: torch.Tensor,
    labels: torch.Tensor,
    log_theta: torch.Tensor | float = DEFAULT_LOG_THETA,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean negative log-likelihood of the labels under Rao-Kupper (ties are data, not skipped).

    r_a, r_b, labels, mask: [B] or [B, D]. `log_theta` is a float or a (learnable) tensor
    broadcastable to the scores, e.g. one per dimension; see `TieParameter` for a learnable one.
    """
    labels = _check_labels(labels, r_a)
    log_probs = rao_kupper_log_probs(r_a - r_b, log_theta)  # [..., 3] = (A, tie, B)
    column = (1 - labels).unsqueeze(-1)  # A_WINS -> 0, TIE -> 1, B_WINS -> 2
    nll = -log_probs.gather(-1, column).squeeze(-1)  # [B] or [B, D]
    return _masked_mean(nll, mask)


class TieParameter(nn.Module):
    """A learnable log(theta) > 0 (one per dimension, or one shared): softplus keeps theta > 1.

    Train it with the head (it lives with the loss, not in the checkpoint: the checkpoint's `tie_theta`
    is fitted on validation pairs at the end of training, `fit_tie_theta`).
    """

    def __init__(self, num_dims: int = 1, init_theta: float = 2.0):
        super().__init__()
        if init_theta <= 1.0:
            raise ValueError("init_theta must be > 1")
        init = math.log(math.expm1(math.log(init_theta)))  # inverse softplus of log(theta)
        self.raw = nn.Parameter(torch.full((num_dims,), init))

    def forward(self) -> torch.Tensor:
        return F.softplus(self.raw) + 1e-6  # [num_dims], broadcast over a [B, D] batch


# --------------------------------------------------------------------------- Bradley-Terry + margin


def bt_margin_loss(
    r_a: torch.Tensor,
    r_b: torch.Tensor,
    labels: torch.Tensor,
    margin: torch.Tensor | float = 0.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """-log sigmoid(r_w - r_l - m), Llama 2's margin ranking loss (Touvron et al. 2023, eq. 2).

    Ties are skipped (masked out), as DeScore's head loss does: plain Bradley-Terry has no
    probability for a tie, and pushing both directions would only pull the two scores together.
    `margin` (float or per-pair tensor) asks the winner to lead by at least m; 0 gives plain BT.
    """
    labels = _check_labels(labels, r_a)
    signed = labels.to(r_a.dtype) * (r_a - r_b)  # r_w - r_l for decided pairs
    nll = -F.logsigmoid(signed - margin)
    decided = labels != TIE
    return _masked_mean(nll, decided if mask is None else decided & mask.bool())


# -------------------------------------------------------------------------------------- regression


def mse_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error over counted entries (a missing dimension score is masked, not zero)."""
    return _masked_mean((pred - target.to(pred.dtype)) ** 2, mask)


def gaussian_nll_loss(
    mean: torch.Tensor,
    log_var: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    full: bool = False,
) -> torch.Tensor:
    """Gaussian negative log-likelihood: 0.5 * (log var + (y - mu)^2 / var) [+ 0.5 log 2 pi].

    Needs a head that predicts a log-variance beside the mean: `RewardHead(..., uncertainty=True)`
    gives a per-sample `[B, D]` one (heteroscedastic); a `[D]` parameter broadcasts as a per-dimension
    noise level. Log-variance (not variance) keeps it positive without a clamp. `full` adds the constant.
    """
    target = target.to(mean.dtype)
    nll = 0.5 * (log_var + (target - mean) ** 2 * torch.exp(-log_var))
    if full:
        nll = nll + 0.5 * math.log(2 * math.pi)
    return _masked_mean(nll, mask)


# ----------------------------------------------------------------------------------------- metrics


def pairwise_accuracy(
    r_a: torch.Tensor, r_b: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None
) -> float:
    """Accuracy without ties: the fraction of decided (non-tie) pairs whose score order matches.

    An exact score tie on a decided pair counts as wrong. NaN when no decided pair is counted.
    """
    labels = _check_labels(labels, r_a)
    counted = labels != TIE if mask is None else (labels != TIE) & mask.bool()
    right = torch.sign(r_a - r_b).long() == labels
    n = int(counted.sum())
    return float((right & counted).sum()) / n if n else float("nan")


def predict_with_ties(diff: torch.Tensor, margin: float) -> torch.Tensor:
    """3-way prediction from d = score_a - score_b: tie when |d| <= margin, else the sign of d.

    `<=`, the rule `cot-rm eval` (eval/metrics.py) and the GRPO pairwise reward apply, so a margin fitted
    here means the same thing wherever it is used; margin 0 ties exactly equal scores only."""
    pred = torch.sign(diff).long()
    return torch.where(diff.abs() <= margin, torch.zeros_like(pred), pred)


def accuracy_with_ties(
    diff: torch.Tensor, labels: torch.Tensor, margin: float, mask: torch.Tensor | None = None
) -> float:
    """3-way accuracy (A / tie / B) of `predict_with_ties` over all counted pairs, ties included.

    The "accuracy with ties" of Deutsch et al. 2023 that VideoAlign reports, at a given margin.
    """
    labels = _check_labels(labels, diff)
    right = predict_with_ties(diff, margin) == labels
    if mask is not None:
        right = right[mask.bool()]
    return float(right.float().mean()) if right.numel() else float("nan")


# --------------------------------------------------------------------------- fitted on validation


def fit_calibration(
    scores: Mapping[str, Sequence[float]], min_std: float = 1e-6
) -> dict[str, dict[str, float]]:
    """Per-dimension mean and (population) std of raw head scores on validation data (VideoAlign).

    A (near-)constant dimension (std <= min_std) gets std 1.0: calibration then only shifts it.
    """
    out = {}
    for dim, values in scores.items():
        x = torch.as_tensor(list(values), dtype=torch.float64)
        if x.numel() == 0:
            raise ValueError(f"no validation scores for dimension {dim!r}")
        std = float(x.std(correction=0))
        out[dim] = {"mean": float(x.mean()), "std": std if std > min_std else 1.0}
    return out


def fit_tie_margin(diffs: Sequence[float] | torch.Tensor, labels: Sequence[int] | torch.Tensor) -> float:
    """The margin m maximising 3-way accuracy on validation pairs (tie when |score_a - score_b| <= m).

    Candidates: 0 (tie only on equal scores), the midpoints between consecutive distinct |d| (the same partitions as
    VideoAlign's threshold search, but with a margin that sits between the data) and 2 max|d| (always
    tie). Equal accuracies keep the smallest margin. Labels: 1 = A, -1 = B, 0 = tie.
    """
    d = torch.as_tensor(diffs, dtype=torch.float64).flatten()
    y = torch.as_tensor(labels).flatten()
    if d.numel() == 0 or d.shape != y.shape:
        raise ValueError(f"need as many labels as diffs (>0), got {d.numel()} and {y.numel()}")
    mags = torch.unique(d.abs())  # sorted
    candidates = [0.0, *((mags[:-1] + mags[1:]) / 2).tolist(), 2 * float(mags[-1]) or 1.0]
    best, best_acc = 0.0, -1.0
    for m in candidates:
        acc = accuracy_with_ties(d, y, m)
        if acc > best_acc:
            best, best_acc = m, acc
    return best


TIE_THETA_RANGE = (1.01, 1e4)  # P(tie | equal scores) from about 0.5% to nearly 1


def fit_tie_theta(diffs: Sequence[float] | torch.Tensor, labels: Sequence[int] | torch.Tensor) -> float:
    """The Rao-Kupper theta that maximises the likelihood of validation labels given the head's raw
    differences d = r_a - r_b (the head held fixed): the tie parameter of the formula the head trained
    with, fitted to what the head actually outputs. Labels: 1 = A, -1 = B, 0 = tie.

    The negative log-likelihood is convex in log(theta) (each term is -logsigmoid of an affine function,
    plus -log(theta^2 - 1), which is convex too), so a golden-section search on log(theta) within
    `TIE_THETA_RANGE` finds the optimum; the bounds keep a set without ties (theta -> 1) or with only
    ties (theta -> inf) finite.
    """
    d = torch.as_tensor(diffs, dtype=torch.float64).flatten()
    y = torch.as_tensor(labels).flatten().long()
    if d.numel() == 0 or d.shape != y.shape:
        raise ValueError(f"need as many labels as diffs (>0), got {d.numel()} and {y.numel()}")
    column = (1 - _check_labels(y, d)).unsqueeze(-1)  # A_WINS -> 0, TIE -> 1, B_WINS -> 2

    def nll(log_theta: float) -> float:
        return float(-rao_kupper_log_probs(d, log_theta).gather(-1, column).sum())

    lo, hi = (math.log(t) for t in TIE_THETA_RANGE)
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(60):  # the bracket shrinks by 0.618 a step: 60 steps leave ~1e-12 of log(1e4)
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        lo, hi = (lo, b) if nll(a) <= nll(b) else (a, hi)
    return math.exp((lo + hi) / 2)
