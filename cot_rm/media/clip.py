"""Frames held in memory (a video generator's output), sampled and sized exactly as a file's frames are.

A `Clip` is RGB uint8 frames [T, H, W, 3], upright, with their frame rate. `read_clip` is `read_video` for
it: the same source indices (`sample_indices` on its length and fps), the same size (`smart_resize`) and
the same resize (`resize_rgb`), so a file's frames decoded at full size (PyAV's
`frame.to_ndarray(format="rgb24")`) and passed here with the file's fps give the model the very pixels the
file gives it. `clip_frames_at` answers the `select_frames` tool the way `read_frames_at` does for a file.

`read_source` and `frames_at` take either kind of video, so the judge's loop needs no other change.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from cot_rm.media.frame_cache import FrameCache
from cot_rm.media.video import (
    FACTORS,
    IMAGE_MIN_TOKENS,
    Sampling,
    Video,
    VideoError,
    read_frames_at,
    read_video,
    resize_rgb,
    sample_indices,
    smart_resize,
)

UINT8_HINT = "for frames in [0, 1]: (frames.clamp(0, 1) * 255).round().to(torch.uint8)"


@dataclass(frozen=True, eq=False)
class Clip:
    """RGB uint8 frames [T, H, W, 3] (a NumPy array on the CPU) and their frames per second; `name`
    stands for the path in messages and in `Video.path`. Build one with `as_clip`, which checks them."""

    frames: np.ndarray
    fps: float
    name: str = "frames"

    @property
    def total_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def height(self) -> int:
        return int(self.frames.shape[1])

    @property
    def width(self) -> int:
        return int(self.frames.shape[2])


def as_clip(frames, fps: float | None, name: str = "frames") -> Clip:
    """A checked `Clip` from a uint8 NumPy array or torch tensor [T, H, W, 3] (any device) and its fps;
    a ValueError names `name` and says what to change."""
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().to("cpu").numpy()
    if not isinstance(frames, np.ndarray):
        raise ValueError(
            f"{name}: expected a video file path or frames (a uint8 array or tensor [T, H, W, 3]), "
            f"got {type(frames).__name__}"
        )
    _check_shape(frames.shape, name)
    if frames.dtype != np.uint8:
        raise ValueError(f"{name}: frames must be uint8 (0-255), got {frames.dtype}; {UINT8_HINT}")
    if fps is None:
        raise ValueError(f"{name}: frames need their fps (fps=8 for all videos, or one per video)")
    if isinstance(fps, bool) or not isinstance(fps, int | float) or not 0 < fps < math.inf:
        raise ValueError(f"{name}: fps must be a finite number > 0, got {fps!r}")
    return Clip(np.ascontiguousarray(frames), float(fps), name)


def _check_shape(shape: tuple[int, ...], name: str) -> None:
    if len(shape) != 4:
        raise ValueError(
            f"{name}: frames must be [T, H, W, 3] (time, height, width, RGB), got shape {tuple(shape)}"
        )
    if shape[-1] != 3:
        hint = (
            "they look channels-first: pass frames.permute(0, 2, 3, 1)"
            if shape[1] == 3
            else "RGB only: drop an alpha channel with frames[..., :3]"
        )
        raise ValueError(f"{name}: frames must be [T, H, W, 3], got shape {tuple(shape)}; {hint}")
    if min(shape[:3]) < 1:
        raise ValueError(f"{name}: frames must hold at least one 1x1 frame, got shape {tuple(shape)}")


def _size(clip: Clip, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    try:
        return smart_resize(clip.height, clip.width, factor, min_pixels, max_pixels)
    except ValueError as err:  # aspect ratio beyond what Qwen-VL accepts
        raise ValueError(f"{clip.name}: {err}; crop or pad the frames") from None


def read_clip(clip: Clip, sampling: Sampling = Sampling()) -> Video:
    """`read_video` for frames in memory: `frames` is a (T, 3, H, W) uint8 torch tensor."""
    rh, rw = _size(clip, sampling.factor, sampling.min_pixels, sampling.max_pixels)
    indices = sample_indices(clip.total_frames, clip.fps, sampling)
    frames = np.stack([resize_rgb(clip.frames[i], (rh, rw)) for i in indices]).transpose(0, 3, 1, 2)
    return Video(
        path=clip.name,
        frames=torch.from_numpy(np.ascontiguousarray(frames)),
        indices=indices,
        timestamps=[i / clip.fps for i in indices],
        fps=clip.fps,
        total_frames=clip.total_frames,
        duration_s=clip.total_frames / clip.fps,
        height=clip.height,
        width=clip.width,
        resized_height=rh,
        resized_width=rw,
        sampling=sampling,
    )


def clip_frames_at(clip: Clip, indices: list[int], max_pixels: int, family: str = "qwen2_5_vl") -> list:
    """`read_frames_at` for frames in memory: those frames as RGB images sized for the model, in order."""
    for i in indices:
        if isinstance(i, bool) or not isinstance(i, int | np.integer) or not 0 <= i < clip.total_frames:
            raise VideoError(
                clip.name, f"frame {i!r} is out of range: the clip has frames 0..{clip.total_frames - 1}"
            )
    factor = FACTORS[family]
    size = _size(clip, factor, min(IMAGE_MIN_TOKENS * factor**2, max_pixels), max_pixels)
    return [Image.fromarray(resize_rgb(clip.frames[int(i)], size)) for i in indices]


def read_source(
    source: str | os.PathLike | Clip, sampling: Sampling, cache: FrameCache | None = None
) -> Video:
    """A video file (through the frame cache, when given) or a `Clip`, sampled the same way."""
    return read_clip(source, sampling) if isinstance(source, Clip) else read_video(source, sampling, cache)


def frames_at(source: str | os.PathLike | Clip, indices: list[int], max_pixels: int, family: str) -> list:
    """The `select_frames` tool's answer for a video file or a `Clip`."""
    if isinstance(source, Clip):
        return clip_frames_at(source, indices, max_pixels, family)
    return read_frames_at(source, indices, max_pixels, family)
