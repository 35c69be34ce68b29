"""cot_rm.media.video and `cot-rm video-info` on real files written with PyAV (tests/videogen.py).

Every frame spells its own index in black/white blocks, so a test can tell which source frame came back.
Expected numbers are worked out by hand in the comments.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import av
import numpy as np
import pytest
from videogen import index_frame, read_index

from cot_rm.media.video import (
    Sampling,
    VideoError,
    probe,
    read_frames_at,
    read_video,
    read_video_numpy,
    smart_nframes,
    smart_resize,
)
from cot_rm.media.writer import write_video
from cot_rm.protocol import frames_seen

INFO_KEYS = {
    "path", "duration_s", "fps", "total_frames", "sampled_indices", "timestamps_s",
    "height", "width", "rotation", "resized_height", "resized_width", "video_tokens",
}  # fmt: skip

# container -> (codec, frames, fps). GIF delays are whole centiseconds, so 10 fps (12 would be 12.5).
CONTAINERS = {
    "mp4": ("libx264", 24, 12),
    "webm": ("libvpx-vp9", 24, 12),
    "mkv": ("h264", 24, 12),
    "avi": ("mpeg4", 24, 12),
    "gif": ("gif", 20, 10),
}


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    out = {}
    for ext, (codec, n, fps) in CONTAINERS.items():
        out[ext] = write_video(root / f"clip.{ext}", [index_frame(i, 48, 64) for i in range(n)], fps, codec)
    return out


@pytest.fixture(scope="module")
def long_video(tmp_path_factory):
    """3000 frames (100 s at 30 fps) with a keyframe every 10 frames."""
    path = tmp_path_factory.mktemp("long") / "long.mp4"
    frames = (index_frame(i, 32, 32) for i in range(3000))
    return write_video(path, frames, 30, "libx264", gop=10, options={"preset": "ultrafast"})


def video_info(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "cot_rm.cli", "video-info", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


# ---- video-info on each container ----------------------------------------------------------------


@pytest.mark.parametrize("ext", list(CONTAINERS))
def test_video_info_json(videos, ext):
    res = video_info(videos[ext], "--no-cache")
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""
    info = json.loads(res.stdout)
    assert set(info) == INFO_KEYS
    n, fps = CONTAINERS[ext][1:]
    # 2 s at 2 fps -> 4 frames (= min_frames); linspace(0, n-1, 4) rounded.
    expected_idx = {24: [0, 8, 15, 23], 20: [0, 6, 13, 19]}[n]
    assert info["total_frames"] == n
    assert info["fps"] == fps
    assert info["duration_s"] == pytest.approx(2.0)
    assert info["sampled_indices"] == expected_idx
    assert info["timestamps_s"] == pytest.approx([i / fps for i in expected_idx], abs=1e-6)
    assert (info["height"], info["width"]) == (48, 64)
    # 48x64 -> 56x56 < min_pixels 128*28^2 = 100352: scale by sqrt(100352/3072) = 5.7155,
    # ceil(274.3/28)=10 -> 280, ceil(365.8/28)=14 -> 392. Tokens: (4/2) * 10 * 14 = 280.
    assert (info["resized_height"], info["resized_width"]) == (280, 392)
    assert info["video_tokens"] == 280


@pytest.mark.parametrize("ext", list(CONTAINERS))
def test_sampled_frames_are_the_cited_source_frames(videos, ext):
    video = read_video_numpy(videos[ext], Sampling(num_frames=6, max_pixels=112 * 112))
    # linspace(0, 23, 6) = 0, 4.6, 9.2, 13.8, 18.4, 23 ; linspace(0, 19, 6) = 0, 3.8, 7.6, 11.4, 15.2, 19
    expected = [0, 5, 9, 14, 18, 23] if CONTAINERS[ext][1] == 24 else [0, 4, 8, 11, 15, 19]
    assert video.indices == expected
    assert [read_index(f) for f in video.frames] == expected
    assert video.frames.dtype == np.uint8 and video.frames.shape[:2] == (6, 3)


def test_overlap_gives_each_step_its_own_pair_of_frames(videos):
    # 24 frames, 6 sampled: 0 5 9 14 18 23 as the pairs of neighbours, 10 frames through the tower
    video = read_video_numpy(videos["mp4"], Sampling(num_frames=6, max_pixels=112 * 112, overlap=True))
    assert video.indices == [0, 5, 5, 9, 9, 14, 14, 18, 18, 23]
    assert [read_index(f) for f in video.frames] == video.indices
    assert video.shown == [0, 5, 9, 14, 18, 23]
    assert video.video_tokens == 5 * (video.resized_height // 28) * (video.resized_width // 28)
    assert "You see 6 of them at low resolution: frame 0 (0.00 s), frame 5" in frames_seen(video)
    plain = read_video_numpy(videos["mp4"], Sampling(num_frames=6, max_pixels=112 * 112))
    assert plain.shown == plain.indices == [0, 5, 9, 14, 18, 23]
    info = json.loads(video_info(videos["mp4"], "--num-frames", "6", "--overlap", "--no-cache").stdout)
    assert info["sampled_indices"] == video.indices


@pytest.mark.parametrize("ext", list(CONTAINERS))
def test_total_frames_matches_a_full_decode(videos, ext):
    with av.open(str(videos[ext])) as c:
        decoded = sum(1 for _ in c.decode(c.streams.video[0]))
    assert probe(videos[ext])["total_frames"] == decoded == CONTAINERS[ext][1]


def test_qwen3_family_and_options(videos):
    res = video_info(videos["mp4"], "--family", "qwen3_vl", "--fps", "12", "--max-frames", "10", "--no-cache")
    info = json.loads(res.stdout)
    # 24 frames at 12 fps sampled at 12 fps -> 24, capped to max_frames 10; linspace(0, 23, 10).
    assert info["sampled_indices"] == [0, 3, 5, 8, 10, 13, 15, 18, 20, 23]
    # factor 32: 48x64 -> 64x64 < 128*32^2 = 131072; sqrt(131072/3072) = 6.532 -> ceil(9.80)=10 -> 320,
    # ceil(13.06)=14 -> 448. Tokens: (10/2) * 10 * 14 = 700.
    assert (info["resized_height"], info["resized_width"]) == (320, 448)
    assert info["video_tokens"] == 700


def test_small_pixel_budget_keeps_sides_multiple_of_factor(videos):
    info = json.loads(
        video_info(videos["webm"], "--max-pixels", "12544", "--num-frames", "7", "--no-cache").stdout
    )
    # num_frames 7 -> round(3.5)*2 = 8 frames. min_pixels is clamped to 12544; the upscale to 112x140
    # would exceed 12544, so the largest fit: 48/0.4949=97 -> 84, 64/0.4949=129 -> 112. Tokens 4*3*4 = 48.
    assert len(info["sampled_indices"]) == 8
    assert (info["resized_height"], info["resized_width"]) == (84, 112)
    assert info["resized_height"] * info["resized_width"] <= 12544
    assert info["video_tokens"] == 48


# ---- seeking on a long video --------------------------------------------------------------------------


def test_long_video_seeks_instead_of_decoding_everything(long_video):
    video = read_video_numpy(long_video, Sampling(fps=2.0, max_frames=8, max_pixels=56 * 56))
    # 100 s at 2 fps = 200 -> capped at 8; linspace(0, 2999, 8) = 0, 428.4, 856.9, 1285.3, ...
    assert video.indices == [0, 428, 857, 1285, 1714, 2142, 2571, 2999]
    assert [read_index(f) for f in video.frames] == video.indices
    # Each target costs at most one GOP (10 frames) after its keyframe, plus a little slack.
    assert video.decoded_frames <= 8 * 12
    assert video.total_frames == 3000 and video.duration_s == pytest.approx(100.0)


def test_read_frames_at_returns_requested_frames_in_order(long_video):
    images = read_frames_at(long_video, [2999, 5, 1500, 5], max_pixels=64 * 64)
    assert [read_index(np.asarray(im)) for im in images] == [2999, 5, 1500, 5]
    # Image sizing: min_pixels = min(4*28^2, 4096) = 3136; 32x32 -> 28x28 = 784 is too small;
    # sqrt(3136/1024) = 1.75 -> ceil(56/28) = 2 -> 56x56 = 3136 <= 4096.
    assert all(im.size == (56, 56) and im.mode == "RGB" for im in images)


BFRAMES = {  # reordered frames: pts != dts. AVI with B-frames stamps frame 0 with pts 1 (a real pitfall).
    "mp4": ("libx264", 30000 / 1001, {"bf": "3"}),
    "mkv": ("libx264", 25, {"bf": "3", "x264-params": "open-gop=1"}),
    "avi": ("mpeg4", 25, {"bf": "2"}),
    "webm": ("libvpx-vp9", 25, {"deadline": "realtime", "cpu-used": "8", "auto-alt-ref": "1"}),
}


@pytest.mark.parametrize("ext", list(BFRAMES))
def test_random_access_with_reordered_frames(tmp_path, ext):
    codec, fps, options = BFRAMES[ext]
    path = write_video(
        tmp_path / f"b.{ext}",
        (index_frame(i, 32, 32) for i in range(600)),
        fps,
        codec,
        gop=24,
        options=options,
    )
    wanted = [599, 0, 313, 24, 23, 25, 477, 1, 598]  # keyframes, their neighbours, both ends, out of order
    images = read_frames_at(path, wanted, max_pixels=56 * 56)
    assert [read_index(np.asarray(im)) for im in images] == wanted
    video = read_video_numpy(path, Sampling(num_frames=8, max_pixels=56 * 56))
    assert [read_index(f) for f in video.frames] == video.indices == [0, 86, 171, 257, 342, 428, 513, 599]
    assert video.decoded_frames < 300


@pytest.mark.parametrize("bad", [3000, -1, 2.0, True])
def test_read_frames_at_rejects_out_of_range(long_video, bad):
    with pytest.raises(VideoError, match="out of range"):
        read_frames_at(long_video, [0, bad], max_pixels=64 * 64)


def test_dense_targets_decode_linearly(videos):
    video = read_video_numpy(videos["mp4"], Sampling(num_frames=24, max_pixels=56 * 56))
    assert video.indices == list(range(24))
    assert video.decoded_frames == 24  # every frame once, no seek re-decoding
    assert [read_index(f) for f in video.frames] == video.indices


# ---- results and metadata -----------------------------------------------------------------------------


def test_read_video_tensor_and_processor_metadata(videos):
    import torch

    video = read_video(videos["mkv"])
    assert isinstance(video.frames, torch.Tensor) and video.frames.dtype == torch.uint8
    assert tuple(video.frames.shape) == (4, 3, 280, 392)
    assert video.info()["sampled_indices"] == video.indices
    assert video.processor_metadata() == {
        "fps": 12.0,
        "frames_indices": [0, 8, 15, 23],
        "total_num_frames": 24,
        "duration": 2.0,
        "height": 48,
        "width": 64,
        "video_backend": "pyav",
    }


def test_vllm_is_told_the_video_positions_the_local_judge_uses(videos, tiny_qwen25vl_dir):
    """Qwen2.5-VL spaces video positions by temporal_patch_size / sampled fps. The local path (SFT, GRPO,
    `cot-rm judge`) gives transformers the source indices; vLLM gets the sampled frames as a clip of their
    own (`serve_engine.vllm_video_metadata`). Both must come out at 2 / (4 of 24 frames at 12 fps) = 1 s."""
    from transformers import AutoProcessor

    from cot_rm.engine.vllm import vllm_video_metadata
    from cot_rm.model.processing import encode

    processor = AutoProcessor.from_pretrained(tiny_qwen25vl_dir)
    video = read_video(videos["mp4"], Sampling(fps=None, num_frames=4, max_pixels=56 * 56))
    text = ["<|vision_start|><|video_pad|><|vision_end|>"]
    local = encode(processor, text, videos=[video])["second_per_grid_ts"]
    meta = {k: v for k, v in vllm_video_metadata(video).items() if k != "do_sample_frames"}
    served = processor(text=text, videos=[video.frames], video_metadata=[meta], do_sample_frames=False,
                       return_tensors="pt")["second_per_grid_ts"]  # fmt: skip
    assert local.tolist() == served.tolist() == [1.0]


def test_vllm_is_told_the_timestamps_the_local_judge_writes(videos, tiny_qwen3vl_dir):
    """Qwen3-VL writes each frame pair's time into the prompt, from the source indices and fps. vLLM gets
    both (`vllm_video_metadata`), so the video comes out as the same tokens: (0 + 8) / 2 / 12 fps = 0.3 s
    and (15 + 23) / 2 / 12 fps = 1.6 s for 4 of 24 frames."""
    from transformers import AutoProcessor

    from cot_rm.engine.vllm import vllm_video_metadata
    from cot_rm.model.processing import encode

    processor = AutoProcessor.from_pretrained(tiny_qwen3vl_dir)
    video = read_video(videos["mp4"], Sampling(fps=None, num_frames=4, max_pixels=64 * 64, family="qwen3_vl"))
    text = ["<|vision_start|><|video_pad|><|vision_end|>"]
    local = encode(processor, text, videos=[video])["input_ids"]
    meta = vllm_video_metadata(video, "qwen3_vl")
    assert meta["frames_indices"] == video.indices == [0, 8, 15, 23] and meta["fps"] == 12.0
    meta = {k: v for k, v in meta.items() if k != "do_sample_frames"}
    served = processor(text=text, videos=[video.frames], video_metadata=[meta], do_sample_frames=False,
                       do_resize=False, return_tensors="pt")["input_ids"]  # fmt: skip
    assert local.tolist() == served.tolist()
    decoded = processor.tokenizer.decode(local[0])
    assert decoded.count("seconds>") == 2 and "<0.3 seconds>" in decoded and "<1.6 seconds>" in decoded


@pytest.mark.parametrize("family,patch", [("qwen2_5_vl", 14), ("qwen3_vl", 16)])
def test_transformers_processor_agrees_on_tokens(videos, family, patch):
    """The real Qwen video processor, fed our frames at our size, yields video_tokens vision tokens."""
    from transformers import Qwen2VLVideoProcessor, Qwen3VLVideoProcessor

    video = read_video(videos["mp4"], Sampling(family=family))
    cls = Qwen3VLVideoProcessor if family == "qwen3_vl" else Qwen2VLVideoProcessor
    proc = cls(patch_size=patch, merge_size=2, temporal_patch_size=2)
    out = proc(
        videos=[video.frames], video_metadata=[video.processor_metadata()], do_sample_frames=False,
        do_resize=False, return_tensors="pt",
    )  # fmt: skip
    t, h, w = out["video_grid_thw"][0].tolist()
    assert (t, h * patch, w * patch) == (2, video.resized_height, video.resized_width)
    assert t * h * w // 4 == video.video_tokens


# ---- sizing rules against qwen-vl-utils -----------------------------------------------------------


def test_smart_resize_matches_qwen_vl_utils():
    from qwen_vl_utils import vision_process as qv

    for factor in (28, 32):
        lo, hi = 128 * factor**2, 448 * 448
        for h, w in [(48, 64), (360, 640), (1080, 1920), (720, 1280), (17, 900), (2000, 31), (448, 448)]:
            assert smart_resize(h, w, factor, lo, hi) == qv.smart_resize(h, w, factor, lo, hi)


def test_smart_nframes_matches_qwen_vl_utils():
    from qwen_vl_utils import vision_process as qv

    for total, vfps in [(24, 12), (3000, 30), (61, 24), (9, 8), (450, 29.97)]:
        for fps, lo, hi in [(2.0, 4, 16), (1.0, 4, 768), (0.5, 2, 8), (8.0, 3, 15)]:
            ele = {"fps": fps, "min_frames": lo, "max_frames": hi}
            mine = smart_nframes(total, vfps, Sampling(fps=fps, min_frames=lo, max_frames=hi))
            assert mine == qv.smart_nframes(ele, total, vfps)
    assert smart_nframes(24, 12, Sampling(num_frames=7)) == qv.smart_nframes({"nframes": 7}, 24, 12) == 8


def test_nframes_clamped_not_raising_past_the_end():
    assert smart_nframes(10, 10, Sampling(num_frames=40)) == 10  # qwen-vl-utils would raise
    assert smart_nframes(1, 10, Sampling()) == 2  # one-frame video: its frame twice


def test_sampling_defaults_and_clamps():
    assert Sampling().min_pixels == 128 * 28 * 28 and Sampling().factor == 28
    assert (
        Sampling(family="qwen3_vl").min_pixels == 128 * 32 * 32 and Sampling(family="qwen3_vl").factor == 32
    )
    assert Sampling(max_pixels=50_000).min_pixels == 50_000  # clamped: min <= max must hold
    assert Sampling.from_dict(Sampling(fps=1.0).to_dict()) == Sampling(fps=1.0)
    for bad in [dict(family="llava"), dict(fps=0), dict(fps=None), dict(min_frames=8, max_frames=4)]:
        with pytest.raises(ValueError):
            Sampling(**bad)


def test_video_tokens_by_hand(videos):
    video = read_video_numpy(videos["avi"], Sampling(num_frames=6, max_pixels=224 * 224))
    # 48x64, min clamped to 50176: 56x56=3136 too small; sqrt(50176/3072)=4.0415 -> ceil(6.93)=7 -> 196,
    # ceil(9.24)=10 -> 280; 196*280 = 54880 > 50176 -> fit below: floor(6.93)=6 -> 168, floor(9.24)=9 -> 252.
    assert (video.resized_height, video.resized_width) == (168, 252)
    assert video.video_tokens == math.ceil(6 / 2) * 6 * 9 == 162


# ---- unusable files -----------------------------------------------------------------------------------


def _bad_files(root, videos):
    files = {"missing": root / "nope.mp4", "directory": root, "empty": root / "empty.mp4"}
    files["empty"].write_bytes(b"")
    files["text"] = root / "notes.mp4"
    files["text"].write_text("this is a text file, not a video\n" * 20)
    for ext in ("mp4", "mkv", "gif"):  # cut in half: lost index (mp4), missing clusters (mkv), no trailer
        data = videos[ext].read_bytes()
        files[f"truncated_{ext}"] = root / f"cut.{ext}"
        files[f"truncated_{ext}"].write_bytes(data[: len(data) // 2])
    files["audio_only"] = root / "tone.wav"
    with av.open(str(files["audio_only"]), "w") as out:
        stream = out.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            out.mux(packet)
    files["zero_frames"] = root / "zero.avi"
    with av.open(str(files["zero_frames"]), "w") as out:  # a video stream header, no frames
        stream = out.add_stream("mpeg4", rate=12)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        out.start_encoding()
    return files


REASONS = {
    "missing": "no such file",
    "directory": "is a directory",
    "empty": "file is empty (0 bytes)",
    "text": "text file",
    "truncated_mp4": "truncated",
    "truncated_mkv": "truncated",
    "truncated_gif": "truncated",
    "audio_only": "no video stream",
    "zero_frames": "no frames",
}


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, videos):
    return _bad_files(tmp_path_factory.mktemp("bad"), videos)


@pytest.mark.parametrize("kind", list(REASONS))
def test_unusable_file_exits_2_with_one_line(bad_files, kind):
    path = bad_files[kind]
    res = video_info(path, "--no-cache")
    assert res.returncode == 2
    assert res.stdout == ""
    lines = res.stderr.splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith(f"cot-rm video-info: {path}: ")
    assert REASONS[kind] in lines[0]
    with pytest.raises(VideoError) as err:
        read_video_numpy(path)
    assert err.value.path == str(path) and str(err.value) == f"{path}: {err.value.reason}"


def test_invalid_sampling_exits_2(videos):
    res = video_info(videos["mp4"], "--min-frames", "9", "--max-frames", "2", "--no-cache")
    assert res.returncode == 2 and len(res.stderr.splitlines()) == 1 and "min_frames" in res.stderr


def _sideways(path, degrees: int):
    """A 64x32 clip stored sideways with a display rotation, as phones write portrait video: its
    top-left quarter is red, so where that red ends up shows which way the frames were turned."""
    rgb = np.zeros((32, 64, 3), np.uint8)
    rgb[:16, :32] = (230, 20, 20)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 64, 32, "yuv420p"
        stream.set_display_rotation(degrees)
        for _ in range(4):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")))
        out.mux(stream.encode())
    return path


@pytest.mark.parametrize(
    ("degrees", "size", "red_corner"),
    # counterclockwise display rotation: a quarter turn left puts the stored top-left at the bottom-left
    [(90, (64, 32), (-1, 0)), (-90, (64, 32), (0, -1)), (180, (32, 64), (-1, -1)), (0, (32, 64), (0, 0))],
)
def test_display_rotation_is_applied(tmp_path, degrees, size, red_corner):
    path = _sideways(tmp_path / f"rot{degrees}.mp4", degrees)
    video = read_video_numpy(path, Sampling(fps=None, num_frames=2, min_pixels=8 * 8, max_pixels=64 * 64))
    assert (video.height, video.width) == size and video.rotation == degrees % 360
    assert (video.resized_height, video.resized_width) == ((56, 28) if size[0] > size[1] else (28, 56))
    assert video.frames.shape[2:] == (video.resized_height, video.resized_width)
    frame = video.frames[0].transpose(1, 2, 0).astype(int)
    corner = frame[red_corner[0], red_corner[1]]
    assert corner[0] > 150 and corner[1] < 80, corner  # red where the display puts it
    assert frame[-1 - red_corner[0], -1 - red_corner[1]].max() < 60  # the opposite corner stays dark
    images = read_frames_at(path, [1], max_pixels=64 * 64)  # the tool's frames are upright too
    assert (images[0].height > images[0].width) == (size[0] > size[1])
