"""P(A better), P(tie), P(B better) per dimension for two judged videos: the head's own pairwise model.

The head is trained on pairs with Bradley-Terry with ties (Rao-Kupper, `losses.bt_ties_loss`) on its raw
outputs r (the unit scale). With d = r_a - r_b and the tie parameter theta > 1:

    P(A) = sigmoid(d - log theta)      P(B) = sigmoid(-d - log theta)      P(tie) = (theta^2 - 1) P(A) P(B)

and the three sum to 1. The probabilities are read on that raw scale, never on the calibrated `scores`:
`scores` stretch a raw difference by (score_max - score_min) / 2 / std (2 / std on the 1-5 scale), and
the same d would then give other, unfitted probabilities. The raw outputs come back from the Judgments'
`scores` by inverting the calibration rule (`calibration.raw`), so any two Judgments, from `cot-rm judge`,
`cot-rm serve` or `RewardModel`, give the same probabilities; sampled Judgments give those of their mean
scores. theta is the checkpoint's `tie_theta`: fitted on the validation pairs at the end of training
(`losses.fit_tie_theta`), 2.0 for checkpoints saved before it was.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from cot_rm.model import calibration, losses
from cot_rm.model.config import CotRmConfig
from cot_rm.protocol import JudgeSpec

OUTCOMES = ("A", "tie", "B")  # the pair records' labels (docs/formats.md, section 2)


def probabilities(
    scores_a: Mapping[str, float | None] | None, scores_b: Mapping[str, float | None] | None, cfg: CotRmConfig
) -> dict[str, dict[str, float] | None]:
    """{dimension: {"A": p, "tie": p, "B": p}} for the checkpoint's dimensions, from the two Judgments'
    `scores`; None for a dimension either side has no score for (a video that could not be read)."""
    dims = [d for d in cfg.dimensions if _has(scores_a, d) and _has(scores_b, d)]
    out: dict[str, dict[str, float] | None] = dict.fromkeys(cfg.dimensions)
    if not dims:
        return out
    spec = JudgeSpec.from_dict(cfg.judge_spec or {"dimensions": cfg.dimensions})
    raw_a = torch.tensor(calibration.raw(scores_a, dims, cfg.calibration, spec), dtype=torch.float64)
    raw_b = torch.tensor(calibration.raw(scores_b, dims, cfg.calibration, spec), dtype=torch.float64)
    probs = losses.rao_kupper_log_probs(raw_a - raw_b, math.log(cfg.tie_theta)).exp()  # [D, 3]
    for dim, row in zip(dims, probs.tolist(), strict=True):
        out[dim] = dict(zip(OUTCOMES, row, strict=True))
    return out


def _has(scores: Mapping[str, float | None] | None, dim: str) -> bool:
    return bool(scores) and scores.get(dim) is not None
