"""bench/judge_ceiling.py's arithmetic, by hand: pairwise accuracy without ties, the score rule's bound on
`overall`, and the adjacent-pair sampling it can try."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from cot_rm.media.video import Sampling

_SPEC = importlib.util.spec_from_file_location(
    "judge_ceiling", Path(__file__).resolve().parents[1] / "bench" / "judge_ceiling.py"
)
jc = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(jc)


def _pair(a: str, b: str, labels: dict[str, str]) -> dict:
    return {"meta": {"id_a": a, "id_b": b}, "dims": labels}


def _world(scores: list[list[float]], pairs: list[dict]) -> dict:
    return {"scores": torch.tensor(scores), "index": {"x": 0, "y": 1, "z": 2}, "pairs": pairs}


def test_pair_accuracy_skips_ties_and_counts_a_predicted_tie_as_wrong():
    tie = "tie"
    pairs = [
        _pair(
            "x",
            "y",
            {"visual_quality": "A", "text_alignment": tie, "physical_consistency": "B", "overall": "A"},
        ),
        _pair(
            "y",
            "z",
            {"visual_quality": "A", "text_alignment": tie, "physical_consistency": "A", "overall": "B"},
        ),
    ]
    pred = torch.tensor([[3.0, 1.0, 2.0, 5.0], [2.0, 1.0, 2.0, 4.0], [2.0, 1.0, 1.0, 1.0]])
    got = jc.pair_accuracy(pred, _world([[0] * 4] * 3, pairs))
    # VQ: x>y right, y=z a predicted tie (wrong): 1/2. TA: only ties: 0. PC: x=y wrong, y>z right: 1/2.
    # overall: x>y right, y>z but the label says B: 1/2.
    assert got == {"visual_quality": 0.5, "text_alignment": 0.0, "physical_consistency": 0.5, "overall": 0.5}


def test_score_rule_bound_orders_overall_by_the_lower_of_vq_and_pc():
    # x: VQ 5 PC 2 -> 2; y: VQ 3 PC 3 -> 3; z: VQ 1 PC 5 -> 1 (text alignment ignored).
    scores = [[5, 5, 2, 2], [3, 1, 3, 1], [1, 5, 5, 1]]
    pairs = [
        _pair("x", "y", {d: "tie" for d in jc.DIMS} | {"overall": "B"}),  # 2 < 3: right
        _pair("x", "z", {d: "tie" for d in jc.DIMS} | {"overall": "A"}),  # 2 > 1: right
        _pair("y", "z", {d: "tie" for d in jc.DIMS} | {"overall": "B"}),  # 3 > 1, label B: wrong
    ]
    assert jc.score_rule_bound(_world(scores, pairs)) == round(2 / 3, 3)


def test_paired_indices_are_adjacent_pairs_spread_over_the_video():
    eight = Sampling(fps=None, num_frames=8, min_pixels=12544, max_pixels=12544)
    assert jc.paired_indices(32, 8.0, eight) == [0, 1, 10, 11, 20, 21, 30, 31]
    assert jc.paired_indices(12, 8.0, eight) == [0, 1, 3, 4, 7, 8, 10, 11]


def test_a_random_base_of_another_shape_samples_frames_to_match(tmp_path, monkeypatch):
    from transformers import AutoConfig, AutoProcessor

    from cot_rm.media import video as video_module

    monkeypatch.setattr(video_module, "FACTORS", dict(video_module.FACTORS))  # the base patches both
    monkeypatch.setattr(video_module, "FRAME_FACTOR", video_module.FRAME_FACTOR)
    base = jc.random_base(["patch_size=4", "spatial_merge_size=4", "temporal_patch_size=4"], tmp_path)
    vision = AutoConfig.from_pretrained(base).vision_config
    video = AutoProcessor.from_pretrained(base).video_processor
    assert (vision.patch_size, vision.spatial_merge_size, vision.temporal_patch_size) == (4, 4, 4)
    assert (video.patch_size, video.merge_size, video.temporal_patch_size) == (4, 4, 4)
    assert Sampling(num_frames=8, max_pixels=64 * 64).factor == 16  # 4 x 4: a 64-pixel frame is 4 x 4 tokens
    assert video_module.video_tokens(8, 64, 64, 16) == 2 * 4 * 4  # 8 frames in slices of 4
