"""Qwen2.5-VL positions (cot_rm/model/rope.py), by hand: text after a sparsely sampled video starts after the
video's last temporal position (Qwen's original rule, and vLLM's), not after its spatial extent."""

from __future__ import annotations

import types

import torch
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLModel

from cot_rm.model import rope
from cot_rm.model.modeling import ThinkThenScore


def _model():
    """What the position functions read: merge 2, 2 tokens per second, and the vision-position helper."""
    m = types.SimpleNamespace(config=types.SimpleNamespace(
        vision_config=types.SimpleNamespace(spatial_merge_size=2, tokens_per_second=2)))  # fmt: skip
    m.get_vision_position_ids = types.MethodType(Qwen2_5_VLModel.get_vision_position_ids, m)
    return m


def test_text_after_a_video_starts_after_its_last_temporal_position():
    # 2 text tokens, a video of 2 x 2 x 4 patches (2 x 1 x 2 merged tokens), 2 s per temporal patch
    # (interval 2 s x 2 tokens/s = 4), 3 text tokens; row 1 is the same, left-padded by one.
    types_ = torch.tensor([[0, 0, 2, 2, 2, 2, 0, 0, 0, 0], [0, 0, 0, 2, 2, 2, 2, 0, 0, 0]])
    mask = torch.tensor([[1] * 9 + [0], [0] + [1] * 9])
    ids = torch.zeros_like(types_)
    grid, seconds = torch.tensor([[2, 2, 4], [2, 2, 4]]), torch.tensor([2.0, 2.0])
    pos, delta = rope.qwen2_5_vl_rope_index(_model(), ids, types_, video_grid_thw=grid,
                                            second_per_grid_ts=seconds, attention_mask=mask)  # fmt: skip
    want = torch.tensor([[0, 1, 2, 2, 6, 6, 7, 8, 9],  # temporal: 0 and 4, from 2
                         [0, 1, 2, 2, 2, 2, 7, 8, 9],  # height: one merged row
                         [0, 1, 2, 3, 2, 3, 7, 8, 9]])  # width: two merged columns; text resumes at 6 + 1  # fmt: skip
    assert torch.equal(pos[:, 0, :9], want) and torch.equal(pos[:, 1, 1:], want)
    assert delta.flatten().tolist() == [1, 1]  # next position 10, length 9
    stock, _ = Qwen2_5_VLModel.get_rope_index(_model(), ids, types_, video_grid_thw=grid,
                                              second_per_grid_ts=seconds, attention_mask=mask)  # fmt: skip
    assert stock[0, 0, 6:9].tolist() == [
        4,
        5,
        6,
    ]  # transformers 5.19: 2 + spatial extent 2, inside the video's span


def test_images_and_short_videos_keep_transformers_positions():
    # an image of 2 x 2 patches between text, then a video whose temporal span stays under its spatial one
    types_ = torch.tensor([[0, 1, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2, 0]])
    ids = torch.zeros_like(types_)
    kwargs = {"image_grid_thw": torch.tensor([[1, 2, 2]]), "video_grid_thw": torch.tensor([[2, 4, 4]]),
              "second_per_grid_ts": torch.tensor([0.5])}  # fmt: skip
    ours, ours_delta = rope.qwen2_5_vl_rope_index(_model(), ids, types_, **kwargs)
    stock, stock_delta = Qwen2_5_VLModel.get_rope_index(_model(), ids, types_, **kwargs)
    assert torch.equal(ours, stock) and torch.equal(ours_delta, stock_delta)
    assert ours[:, 0, -1].tolist() == [6, 6, 6]  # video from 4: temporal 4-5, spatial 4-5; text at 6


def test_loaded_models_use_the_original_rule(tiny_rm, tiny_qwen3vl_dir):
    qwen25 = ThinkThenScore.from_pretrained(tiny_rm).vlm.model
    assert qwen25.get_rope_index.__func__ is rope.qwen2_5_vl_rope_index
    qwen3 = ThinkThenScore.from_base(tiny_qwen3vl_dir).vlm.model
    assert "get_rope_index" not in vars(qwen3)  # Qwen3-VL: one temporal patch per frame, no gap to close
