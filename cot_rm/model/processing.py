"""The one place that turns rendered chat text + decoded videos (+ images) into model inputs.

`cot_rm.media.video` samples and resizes the frames (it owns frame sampling for the whole project); this
module hands those exact frames to the Hugging Face processor and tells it not to sample or resize
again, then checks that the processor produced the grids the video module promised:

    batch = encode(processor, [text], videos=[read_video(path, sampling)])
    model(**batch)

Pitfalls this guards against (each one fails silently otherwise):
- without `video_metadata` the processor takes frames as 24 fps: wrong Qwen2.5-VL temporal rope
  spacing (`second_per_grid_ts`) and wrong Qwen3-VL timestamps in the prompt text;
- Qwen3-VL computes its `<t seconds>` prompt timestamps from `frames_indices` in that metadata;
- without `mm_token_type_ids` the model falls back to 1-D positions (no 3-D mrope for vision tokens);
- Qwen3-VL's video processor samples frames by default (`do_sample_frames=True`), and both resize
  by default: our frames would be re-sampled / re-scaled behind our back.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from transformers import BatchFeature

if TYPE_CHECKING:
    from cot_rm.media.video import Video

_TEXT, _IMAGE, _VIDEO = 0, 1, 2  # transformers' mm_token_type_ids values


def video_kwargs(videos: Sequence[Video]) -> dict[str, Any]:
    """Processor kwargs that feed `videos` as they are: their own frames, metadata, no resampling."""
    return {
        "videos": [v.frames for v in videos],
        "videos_kwargs": {
            "video_metadata": [v.processor_metadata() for v in videos],
            "do_sample_frames": False,  # the frames are already the sampled ones
            "do_resize": False,  # and already resized to multiples of patch * merge
            # explicit "no cap" (the transformers 5.17-5.21 default) silences a per-call warning
            "cap_pixels_per_frame": False,
        },
    }


def _image_size(image) -> tuple[int, int]:
    if isinstance(image, torch.Tensor):
        return int(image.shape[-2]), int(image.shape[-1])
    width, height = image.size  # PIL
    return height, width


def image_kwargs(processor, images: Sequence) -> dict[str, Any]:
    """Processor kwargs for `images` (PIL or CHW tensors): no resize when already patch-aligned.

    The tool's frames come from `cot_rm.media.video.read_frames_at`, already resized to multiples of the
    factor; anything else is left to the processor's own `smart_resize` (which is the identity on
    aligned sizes inside its pixel range, so both paths agree).
    """
    ip = processor.image_processor
    factor = ip.patch_size * ip.merge_size
    aligned = all(h % factor == 0 and w % factor == 0 for h, w in map(_image_size, images))
    return {"images": list(images), "images_kwargs": {"do_resize": not aligned}}


def mm_token_type_ids(processor, input_ids: torch.Tensor) -> torch.Tensor:
    """0 text / 1 image / 2 video per token, as transformers' processors build it."""
    types = torch.zeros_like(input_ids)
    types[input_ids == processor.image_token_id] = _IMAGE
    types[input_ids == processor.video_token_id] = _VIDEO
    return types


def expected_video_grid(processor, video: Video) -> tuple[int, int, int]:
    """(t, h, w) patch grid the vision tower must see for `video` (frames padded to temporal pairs)."""
    vp = processor.video_processor
    num_frames = int(video.frames.shape[0])
    return (
        math.ceil(num_frames / vp.temporal_patch_size),
        video.resized_height // vp.patch_size,
        video.resized_width // vp.patch_size,
    )


def check_video_frames(processor, videos: Sequence[Video]) -> None:
    """Raise a clear error before the processor would fail cryptically (or tokenise wrongly).

    With `do_resize=False` the frames must already be multiples of patch * merge of THIS model:
    a video sampled for Qwen2.5-VL (factor 28) cannot feed Qwen3-VL (factor 32) as is.
    """
    vp = processor.video_processor
    factor = vp.patch_size * vp.merge_size
    for i, video in enumerate(videos):
        height, width = (int(n) for n in video.frames.shape[-2:])
        if (height, width) != (video.resized_height, video.resized_width):
            raise ValueError(
                f"video {i} ({video.path}): frames are {height}x{width}, "
                f"expected the resized {video.resized_height}x{video.resized_width}"
            )
        if height % factor or width % factor:
            raise ValueError(
                f"video {i} ({video.path}): {height}x{width} frames are not multiples of {factor} "
                f"(this processor's patch x merge); sample it with Sampling(family=...) of this model"
            )


def check_video_grids(processor, batch: BatchFeature, videos: Sequence[Video]) -> None:
    """Raise if the processor's grids/token counts differ from what `cot_rm.media.video` computed."""
    merge = processor.video_processor.merge_size
    grids = batch["video_grid_thw"].tolist()
    for i, (video, grid) in enumerate(zip(videos, grids, strict=True)):
        expected = expected_video_grid(processor, video)
        tokens = math.prod(grid) // (merge * merge)
        if tuple(grid) != expected or tokens != video.video_tokens:
            raise ValueError(
                f"video {i} ({video.path}): processor grid {tuple(grid)} ({tokens} tokens) but "
                f"expected {expected} ({video.video_tokens} tokens); was it re-sampled or resized?"
            )


def encode(
    processor,
    texts: Sequence[str],
    videos: Sequence[Video] | None = None,
    images: Sequence | None = None,
    *,
    padding: bool | str = True,
    padding_side: str | None = None,
) -> BatchFeature:
    """Tokenise rendered chat `texts` with their `videos` / `images` (in placeholder order) to tensors.

    `texts` are chat-template renderings holding one `<|video_pad|>` per video and one
    `<|image_pad|>` per image, in the same order as `videos` and `images` (flattened over the batch).
    Returns a BatchFeature with `input_ids`, `attention_mask`, `mm_token_type_ids`,
    `pixel_values_videos`, `video_grid_thw` (+ `second_per_grid_ts` for Qwen2.5-VL) and
    `pixel_values`, `image_grid_thw` when images are given. Use `padding_side="left"` for
    batched generation.
    """
    kwargs: dict[str, Any] = {"text": list(texts), "padding": padding, "return_tensors": "pt"}
    if padding_side is not None:
        kwargs["padding_side"] = padding_side
    if videos:
        check_video_frames(processor, videos)
        kwargs.update(video_kwargs(videos))
    if images:
        kwargs.update(image_kwargs(processor, images))
    batch = processor(**kwargs)
    if "mm_token_type_ids" not in batch:  # older processors do not return it by default
        batch["mm_token_type_ids"] = mm_token_type_ids(processor, batch["input_ids"])
    if videos:
        check_video_grids(processor, batch, videos)
    return batch
