"""What the vision tower hands the language model, per temporal slice (two consecutive sampled frames, the
tower's temporal patch): the features perception pretraining trains on and the perception probes read."""

from __future__ import annotations

import torch


def slice_tokens(vlm, pixel_values_videos, video_grid_thw) -> list[torch.Tensor]:
    """Per video, [slices, 1 + tokens, width]: what the language model receives (tower + merger) per
    temporal slice, its spatial mean first, then its tokens in place (where things are)."""
    out = vlm.model.get_video_features(pixel_values_videos, video_grid_thw)
    feats = out.pooler_output if hasattr(out, "pooler_output") else out
    slices = [f.reshape(int(g[0]), -1, f.shape[-1]).float() for f, g in zip(feats, video_grid_thw)]
    return [torch.cat([s.mean(1, keepdim=True), s], 1) for s in slices]


def slice_means(vlm, pixel_values_videos, video_grid_thw) -> torch.Tensor:
    """[videos, slices * width]: the spatial means of `slice_tokens`, slices concatenated so time order
    survives (videos of one frame count; their sizes may differ)."""
    return torch.stack([s[:, 0].flatten() for s in slice_tokens(vlm, pixel_values_videos, video_grid_thw)])
