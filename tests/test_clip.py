"""Frames held in memory (cot_rm.media.clip): a file's frames decoded at full size and passed as an array
give the model the very pixels the file gives it, first turn and tool frames alike; bad arrays are refused
with a message that says what to change."""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch

from cot_rm.media.clip import as_clip, clip_frames_at, frames_at, read_clip, read_source
from cot_rm.media.video import Sampling, VideoError, read_frames_at, read_video


def decode_all(path) -> tuple[np.ndarray, float]:
    """Every frame of a file as uint8 RGB [T, H, W, 3] at its stored size, and its fps: what a caller
    holding the file would pass."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        return np.stack(frames), float(stream.average_rate)


@pytest.mark.parametrize(
    "sampling", [Sampling(num_frames=6, max_pixels=56 * 56), Sampling(fps=2.0, max_pixels=112 * 84)]
)
def test_decoded_frames_sample_and_resize_like_the_file(sample_mp4, sampling):
    frames, fps = decode_all(sample_mp4)
    from_file, from_memory = read_video(sample_mp4, sampling), read_clip(as_clip(frames, fps), sampling)
    assert from_memory.indices == from_file.indices and from_memory.timestamps == from_file.timestamps
    assert torch.equal(from_memory.frames, from_file.frames)  # bit for bit
    assert from_memory.processor_metadata() == from_file.processor_metadata()
    assert (from_memory.resized_height, from_memory.resized_width, from_memory.video_tokens) == (
        from_file.resized_height,
        from_file.resized_width,
        from_file.video_tokens,
    )


def test_tool_frames_from_memory_are_the_files(sample_mp4):
    frames, fps = decode_all(sample_mp4)
    clip = as_clip(torch.from_numpy(frames), fps)  # a tensor works too
    wanted = [31, 0, 12, 12]
    ours = [np.asarray(im) for im in clip_frames_at(clip, wanted, 64 * 64, "qwen2_5_vl")]
    theirs = [np.asarray(im) for im in read_frames_at(sample_mp4, wanted, 64 * 64, "qwen2_5_vl")]
    assert all(np.array_equal(a, b) for a, b in zip(ours, theirs, strict=True))
    assert [np.asarray(im).shape for im in frames_at(clip, [3], 64 * 64, "qwen3_vl")] == [
        np.asarray(read_frames_at(sample_mp4, [3], 64 * 64, "qwen3_vl")[0]).shape
    ]
    with pytest.raises(VideoError, match="frame 32 is out of range"):
        clip_frames_at(clip, [32], 64 * 64)
    assert read_source(str(sample_mp4), Sampling(num_frames=4)).path == str(sample_mp4)


@pytest.mark.parametrize(
    ("frames", "fps", "says"),
    [
        (np.zeros((4, 8, 8), np.uint8), 8, r"\[T, H, W, 3\].*got shape \(4, 8, 8\)"),
        (np.zeros((4, 3, 8, 8), np.uint8), 8, r"channels-first: pass frames.permute\(0, 2, 3, 1\)"),
        (np.zeros((4, 8, 8, 4), np.uint8), 8, r"drop an alpha channel"),
        (np.zeros((0, 8, 8, 3), np.uint8), 8, "at least one"),
        (np.zeros((4, 8, 8, 3), np.float32), 8, r"uint8 \(0-255\), got float32; .*\.to\(torch.uint8\)"),
        (torch.zeros(4, 8, 8, 3), 8, r"uint8 \(0-255\), got float32"),
        (np.zeros((4, 8, 8, 3), np.uint8), None, "need their fps"),
        (np.zeros((4, 8, 8, 3), np.uint8), 0, "fps must be a finite number > 0"),
        (np.zeros((4, 8, 8, 3), np.uint8), float("nan"), "fps must be a finite number > 0"),
        ([[0]], 8, "got list"),
    ],
)
def test_bad_frames_are_refused_with_what_to_do(frames, fps, says):
    with pytest.raises(ValueError, match=says) as err:
        as_clip(frames, fps, name="video 2")
    assert str(err.value).startswith("video 2: ")


def test_an_extreme_aspect_ratio_names_the_clip():
    with pytest.raises(ValueError, match="video 0: aspect ratio .* crop or pad"):
        read_clip(as_clip(np.zeros((2, 2, 600, 3), np.uint8), 8, name="video 0"), Sampling(num_frames=2))
