"""Pair probabilities: P(A better), P(tie), P(B better) from the head's Rao-Kupper model on raw outputs,
worked out by hand; the tie parameter fitted at the end of training, saved in cot_rm.json, 2.0 for older
checkpoints. The three paths that judge a pair (`cot-rm judge --pair`, `POST /v1/judge/pair`,
`RewardModel.compare`) live in tests/test_sampling_paths.py."""

from __future__ import annotations

import json
import math

import pytest
import torch

from cot_rm.model import calibration, losses
from cot_rm.model.config import CotRmConfig
from cot_rm.model.pairwise import probabilities
from cot_rm.protocol import JudgeSpec
from cot_rm.train import report

DIMS = ["visual_quality", "overall"]


def _cfg(**kw) -> CotRmConfig:
    return CotRmConfig(dimensions=DIMS, **kw)


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_probabilities_by_hand_on_the_raw_scale():
    # overall: calibration std 0.5; scores 4 and 3 are z 0.5 and 0 on the unit scale (3 + 2 z), so the raw
    # difference is 0.5 * 0.5 = 0.25. theta = 2: P(A) = sigmoid(0.25 - ln 2), P(B) = sigmoid(-0.25 - ln 2).
    # visual_quality has no statistics (mean 0, std 1): scores 2 and 4 are raw -0.5 and 0.5, d = -1.
    cfg = _cfg(calibration={"overall": {"mean": 0.1, "std": 0.5}}, tie_theta=2.0)
    got = probabilities({"visual_quality": 2.0, "overall": 4.0}, {"visual_quality": 4.0, "overall": 3.0}, cfg)
    for dim, d in (("overall", 0.25), ("visual_quality", -1.0)):
        a, b = _sigmoid(d - math.log(2)), _sigmoid(-d - math.log(2))
        assert got[dim] == pytest.approx({"A": a, "tie": 3 * a * b, "B": b}, abs=1e-12)
        assert sum(got[dim].values()) == pytest.approx(1.0, abs=1e-12)
    assert got["overall"]["A"] == pytest.approx(0.390991, abs=1e-6)
    # equal scores: P(tie) = (theta - 1) / (theta + 1), 1/3 at theta 2, 1/2 at theta 3; A and B share the rest
    same = probabilities({"visual_quality": 3.0, "overall": 3.0}, {"visual_quality": 3.0, "overall": 3.0},
                         _cfg(tie_theta=3.0))  # fmt: skip
    assert same["overall"] == pytest.approx({"A": 0.25, "tie": 0.5, "B": 0.25}, abs=1e-12)


def test_swapping_the_videos_swaps_the_outcomes_and_missing_scores_give_none():
    cfg = _cfg(calibration={"overall": {"mean": 0.0, "std": 0.3}})
    a, b = {"visual_quality": 4.5, "overall": 2.0}, {"visual_quality": 1.0, "overall": 2.5}
    ab, ba = probabilities(a, b, cfg), probabilities(b, a, cfg)
    for dim in DIMS:
        assert ab[dim] == pytest.approx({"A": ba[dim]["B"], "tie": ba[dim]["tie"], "B": ba[dim]["A"]})
    assert probabilities(None, b, cfg) == {"visual_quality": None, "overall": None}
    partial = probabilities({"visual_quality": 4.0, "overall": None}, b, cfg)
    assert partial["overall"] is None and partial["visual_quality"] is not None


def test_calibration_raw_inverts_scores():
    spec = JudgeSpec(dimensions=tuple(DIMS))
    cal = {"overall": {"mean": -0.2, "std": 0.4}}
    row = [0.7, -0.35]
    assert calibration.raw(calibration.scores(row, DIMS, cal, spec), DIMS, cal, spec) == pytest.approx(row)


def test_fit_tie_theta_recovers_the_theta_that_made_the_labels():
    gen = torch.Generator().manual_seed(0)
    d = torch.randn(20000, generator=gen, dtype=torch.float64) * 1.5
    probs = losses.rao_kupper_log_probs(d, math.log(3.0)).exp()  # columns A, tie, B
    labels = 1 - torch.multinomial(probs, 1, generator=gen).squeeze(1)  # 1, 0, -1
    assert losses.fit_tie_theta(d, labels) == pytest.approx(3.0, rel=0.05)
    # the likelihood is convex in log theta: the fit beats its neighbours
    best = losses.fit_tie_theta(d[:500], labels[:500])
    zeros = torch.zeros(500, dtype=torch.float64)

    def nll(theta: float) -> float:
        return float(losses.bt_ties_loss(d[:500], zeros, labels[:500], math.log(theta)))

    assert nll(best) <= min(nll(best * 1.05), nll(best / 1.05))
    lo, hi = losses.TIE_THETA_RANGE  # no ties at all, or only ties: the bounds, not 1 or infinity
    assert losses.fit_tie_theta([1.0, -2.0], [1, -1]) == pytest.approx(lo)
    assert losses.fit_tie_theta([0.0, 0.5], [0, 0]) == pytest.approx(hi)
    with pytest.raises(ValueError, match="as many labels"):
        losses.fit_tie_theta([], [])


def test_cot_rm_json_keeps_tie_theta_and_older_files_get_the_training_default(tmp_path):
    _cfg(tie_theta=2.75).save(tmp_path)
    assert CotRmConfig.load(tmp_path).tie_theta == 2.75
    old = json.loads((tmp_path / "cot_rm.json").read_text())
    del old["tie_theta"]  # a checkpoint saved before the fit existed
    (tmp_path / "cot_rm.json").write_text(json.dumps(old))
    assert CotRmConfig.load(tmp_path).tie_theta == 2.0 == math.exp(losses.DEFAULT_LOG_THETA)
    for bad in (1.0, 0.5, True, "2", math.inf):
        with pytest.raises(ValueError, match="tie_theta must be a number > 1"):
            _cfg(tie_theta=bad)


class _Model:
    def __init__(self):
        self.config = CotRmConfig(dimensions=DIMS, tie_theta=2.0)


def test_training_end_fits_tie_theta_on_the_validation_pairs(tmp_path, monkeypatch):
    """`calibrate` (end of SFT and GRPO): theta by maximum likelihood over every label of the validation
    pairs whose two videos have a validation trace, from the head's raw outputs, shared by the dimensions."""
    raw = {"v0": [0.0, 0.0], "v1": [0.2, 0.9], "v2": [0.1, -0.8], "v3": [0.5, 0.5]}
    rows = [{"video": str(tmp_path / f"{v}.mp4"), "prompt": "p"} for v in raw]
    monkeypatch.setattr(report, "head_scores", lambda model, collator, rows: [raw[v] for v in raw])
    pairs = [("p1", "v0", "v1", "B", {"visual_quality": "tie", "overall": "B"}, "val"),
             ("p2", "v0", "v2", "A", {}, "val"),  # no dims: overall from the preference, as SFT reads it
             ("p3", "v1", "v2", "A", {"visual_quality": "A", "overall": "A"}, "val"),
             ("p4", "v1", "v3", "tie", {}, "val"),
             ("p5", "v0", "v3", "A", {}, "train")]  # fmt: skip
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"id": i, "prompt": "p", "video_a": str(tmp_path / f"{a}.mp4"),
                                        "video_b": str(tmp_path / f"{b}.mp4"), "preference": pref, "dims": dims,
                                        "split": split}) + "\n"
                            for i, a, b, pref, dims, split in pairs))  # fmt: skip
    model = _Model()
    report.calibrate(model, None, rows, str(path))
    # (raw difference, label) per labelled dimension of p1-p4: visual_quality then overall
    labelled = [(-0.2, 0), (-0.9, -1), (0.8, 1), (0.1, 1), (1.7, 1), (0.4, 0)]
    expected = losses.fit_tie_theta(*zip(*labelled, strict=True))
    assert model.config.tie_theta == pytest.approx(expected, rel=1e-9) and 1 < expected < 100
    margin = losses.fit_tie_margin([-0.9, 0.8, 1.7, 0.4], [-1, 1, 1, 0])  # overall only, as before
    assert model.config.tie_margin == pytest.approx(margin)
    untouched = _Model()  # no validation pairs: the theta set before (the one trained with) stays
    report.calibrate(untouched, None, rows, None)
    assert untouched.config.tie_theta == 2.0
