"""eval/perception.py: the probe's labels from a hand-written meta, the linear probe on data whose answer
is known (separable -> 1.0, pure noise -> near chance), and the features of a real tiny base."""

from __future__ import annotations

import torch

from eval.perception import labels, linear_probe, pooled_features


def test_labels_follow_what_is_drawn_and_shown():
    meta = {
        "spec": {
            "shape": "square",
            "colour": "red",
            "count": 1,
            "direction": "up",
            "speed": "slow",
            "background": "grey",
        },  # fmt: skip
        "defects": [
            {
                "type": "wrong_colour",
                "dimension": "text_alignment",
                "severity": 1,
                "frames": list(range(16)),
                "params": {"expected": "red", "actual": "yellow"},
            },  # fmt: skip
            {"type": "noise", "dimension": "visual_quality", "severity": 2, "frames": [5, 6], "params": {}},
        ],
    }
    got = labels(meta, shown=[0, 5, 10, 15])
    assert got == {"colour": "yellow", "shape": "square", "count": 1, "direction": "up",
                   "visual_quality": True, "physical_consistency": False}  # fmt: skip
    assert labels(meta, shown=[0, 10, 15])["visual_quality"] is False  # the noisy frames are not shown


def test_linear_probe_separable_and_noise():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 8, generator=g)
    y = ["a" if v > 0 else "b" for v in x[:, 3]]
    assert linear_probe(x[:300], y[:300], x[300:], y[300:]) >= 0.95
    noise = [("a", "b")[int(i)] for i in torch.randint(0, 2, (400,), generator=g)]
    assert linear_probe(x[:300], noise[:300], x[300:], noise[300:]) <= 0.7


def test_pooled_features_keep_time_order(tiny_qwen25vl_dir, sample_mp4):
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    from cot_rm.media.video import Sampling, read_video

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_qwen25vl_dir).eval()
    processor = AutoProcessor.from_pretrained(tiny_qwen25vl_dir)
    video = read_video(sample_mp4, Sampling(fps=None, num_frames=4, min_pixels=12544, max_pixels=12544))
    feats = pooled_features(model, processor, [video, video])
    assert feats.shape == (2, 2 * model.config.vision_config.out_hidden_size)  # 4 frames = 2 temporal slices
    assert torch.allclose(feats[0], feats[1])
