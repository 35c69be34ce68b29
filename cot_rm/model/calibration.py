"""The one rule that turns the head's raw outputs into the Judgment's `scores` and `scores_std`.

The head regresses each dimension onto the unit scale (the labels through `JudgeSpec.to_unit`, about
[-1, 1]). At the end of SFT (and GRPO) `cot_rm.train.report.calibrate` summarises its raw outputs on the
validation traces per dimension by their mean m and population std s (`cot_rm.json`'s `calibration`).
Every judge (`cot-rm judge`, `/v1/judge`, `RewardModel.score`, eval, the HTML page) applies:

    z          = (raw - m) / s                   (`ThinkThenScore.calibrate`)
    scores     = mid + half * z                  mid = (score_min + score_max) / 2, half = (score_max - score_min) / 2
    scores_std = half * exp(log_var / 2) / s     (the Gaussian-NLL head's std, through the same map)

On the 1-5 scale, `scores = 3 + 2 z`: 3 is the validation average of that dimension and 2 points are one
validation std, so the dimensions share one unit (VideoAlign's normalisation) and a reward that sums or
compares them weighs each alike. A dimension without statistics (a checkpoint fitted on fewer than 2
validation traces) has m = 0, s = 1: its scores are `from_unit(raw)`, the head's own regression onto the
scale. Never clipped: a reward, so 5.6 is simply better than 5.1.

The tie margin is fitted on raw differences (`losses.fit_tie_margin`); `margin_on_scores` carries it onto
`scores`, where a raw difference d becomes half * d / s.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from cot_rm.protocol import JudgeSpec

Calibration = Mapping[str, Mapping[str, float]]  # dimension -> {"mean", "std"}, as in cot_rm.json
RULE = "from_unit((raw - mean) / std)"  # named in caches of judgments: change it when the rule changes


def stats(dims: Sequence[str], calibration: Calibration) -> list[tuple[float, float]]:
    """(mean, std) per dimension in `dims` order; (0, 1) where none was fitted."""
    return [(calibration.get(d, {}).get("mean", 0.0), calibration.get(d, {}).get("std", 1.0)) for d in dims]


def _half(spec: JudgeSpec) -> float:
    return (spec.score_max - spec.score_min) / 2


def scores(raw: Sequence[float], dims: Sequence[str], calibration: Calibration, spec: JudgeSpec) -> dict:
    """One row of raw head outputs -> {dimension: score}: `spec.from_unit((raw - mean) / std)`."""
    pairs = zip(dims, raw, stats(dims, calibration), strict=True)
    return {d: spec.from_unit((x - mean) / std) for d, x, (mean, std) in pairs}


def raw(
    row: Mapping[str, float], dims: Sequence[str], calibration: Calibration, spec: JudgeSpec
) -> list[float]:
    """The inverse of `scores`: {dimension: score} -> the head's raw outputs in `dims` order
    (`mean + std * to_unit(score)`). Linear, so the mean of K draws' scores gives the mean of their raws."""
    pairs = zip(dims, stats(dims, calibration), strict=True)
    return [mean + std * spec.to_unit(row[d]) for d, (mean, std) in pairs]


def scores_std(
    log_var: Sequence[float], dims: Sequence[str], calibration: Calibration, spec: JudgeSpec
) -> dict:
    """One row of the head's log-variances -> {dimension: std on the scale of `scores`}."""
    pairs = zip(dims, log_var, stats(dims, calibration), strict=True)
    return {d: _half(spec) * math.exp(lv / 2) / std for d, lv, (_, std) in pairs}


def margin_on_scores(margin: float, dims: Sequence[str], calibration: Calibration, spec: JudgeSpec) -> dict:
    """The raw-scale tie margin as an eps per dimension on `scores` (the same ties, on either scale)."""
    return {d: _half(spec) * margin / std for d, (_, std) in zip(dims, stats(dims, calibration), strict=True)}
