"""Qwen2.5-VL's 3-D (M-RoPE) positions as the model was trained with, and as vLLM computes them.

Each run of text, image or video tokens starts one past the largest position so far. A video's
temporal positions are spaced by tokens_per_second x seconds per temporal patch, so a long clip sampled
sparsely reaches far past its spatial extent: 16 frames over 60 s give temporal positions up to 112 on a
16 x 16 grid. transformers 5.19 resumes the text after a video at the video's start + its spatial extent
instead (`current_pos += max(h, w) // merge`), so the critique's positions overlap the video's and
differ from the positions Qwen pretrained with and from vLLM's (rollouts, serving). `use_qwen_positions`
puts the original rule on a loaded model; with it, transformers and vLLM give the same log-probs.
Qwen3-VL states each frame's time in text (one temporal patch per frame), so it has no such gap.
"""

from __future__ import annotations

import itertools
import types

import torch


def use_qwen_positions(vlm) -> None:
    """Give a Qwen2.5-VL HF model (`...ForConditionalGeneration` or its `.model`; PEFT unwrapped by the
    caller) the original position rule; other families are left as they are."""
    inner = getattr(vlm, "model", vlm)  # ...ForConditionalGeneration -> ...Model
    if type(inner).__name__ == "Qwen2_5_VLModel":
        inner.get_rope_index = types.MethodType(qwen2_5_vl_rope_index, inner)


def qwen2_5_vl_rope_index(self, input_ids: torch.Tensor, mm_token_type_ids: torch.Tensor,
                          image_grid_thw: torch.Tensor | None = None, video_grid_thw: torch.Tensor | None = None,
                          second_per_grid_ts: torch.Tensor | None = None,
                          attention_mask: torch.Tensor | None = None, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """`Qwen2_5_VLModel.get_rope_index` (same arguments and returns: position ids [3, B, T] and the
    per-row delta between the next position and the length) with every run starting after the
    largest position before it."""
    merge = self.config.vision_config.spatial_merge_size
    per_second = self.config.vision_config.tokens_per_second
    grids = {1: iter(image_grid_thw if image_grid_thw is not None else ()),
             2: iter(video_grid_thw if video_grid_thw is not None else ())}  # fmt: skip
    seconds = iter(second_per_grid_ts.tolist() if second_per_grid_ts is not None else ())
    device = input_ids.device
    position_ids = torch.zeros(3, *input_ids.shape, dtype=input_ids.dtype, device=device)
    deltas = []
    for b in range(input_ids.shape[0]):
        keep = (
            attention_mask[b].bool() if attention_mask is not None else torch.ones_like(input_ids[b]).bool()
        )
        kinds = mm_token_type_ids[b][keep].tolist()  # 0 text, 1 image, 2 video
        runs, start = [], 0
        for kind, run in itertools.groupby(kinds):
            if kind == 0:
                pos = torch.arange(len(list(run)), device=device).expand(3, -1) + start
            else:
                interval = per_second * next(seconds, 1.0) if kind == 2 else 1
                pos = self.get_vision_position_ids(
                    start, next(grids[kind]), 1, merge, interval, device=device
                )
            runs.append(pos)
            start = int(pos.max()) + 1
        if runs:
            position_ids[:, b, keep] = torch.cat(runs, 1).to(position_ids)
        deltas.append(start - len(kinds))
    return position_ids, torch.tensor(deltas, device=device).unsqueeze(1)
