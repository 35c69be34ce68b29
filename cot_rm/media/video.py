"""Decode real video files with PyAV and sample frames the way Qwen-VL expects.

Sizing follows qwen-vl-utils (`smart_resize`, `smart_nframes`), re-implemented here because importing
`qwen_vl_utils` pulls in torch, torchvision and requests (~3.5 s), which `cot-rm video-info` should not pay;
`tests/test_video.py` checks both functions against the originals.

Frame indices are always SOURCE indices (0..total_frames-1): critiques cite "frame 12" and the
`select_frames` tool asks for frames by those numbers. Sparse targets are reached by seeking to the
keyframe before each one and decoding forward; dense targets are decoded linearly.

Torch is imported only by `read_video` (for the tensor it returns); everything else is NumPy.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import av
import numpy as np
from av.video.reformatter import VideoReformatter
from PIL import Image

if TYPE_CHECKING:  # imported lazily at run time
    import torch
    from PIL import Image

    from cot_rm.media.frame_cache import FrameCache

FACTORS = {"qwen2_5_vl": 28, "qwen3_vl": 32}  # patch size x spatial merge (14x2, 16x2)
FRAME_FACTOR = 2  # temporal patch size: frame counts are multiples of it
VIDEO_MIN_TOKENS = 128  # qwen-vl-utils' VIDEO_MIN_TOKEN_NUM: default min_pixels = 128 * factor**2
IMAGE_MIN_TOKENS = 4  # qwen-vl-utils' IMAGE_MIN_TOKEN_NUM, for frames returned as images
MAX_RATIO = 200  # qwen-vl-utils refuses more extreme aspect ratios
MIN_SEEK_GAP = 32  # decode forward rather than seek when the next target is this close
# Frames are resized as RGB with PIL's bicubic (antialiased when shrinking: the filter torchvision's
# uint8 resize, which qwen-vl-utils calls, was ported from), after the decoder's own RGB conversion at
# the stored size. Two steps rather than one swscale pass, so that frames held in memory (an RGB array,
# `cot_rm.media.clip`) go through the very same arithmetic as a file and give the model the same pixels.
RESAMPLE = Image.Resampling.BICUBIC


class VideoError(Exception):
    """A video that cannot be used; `reason` says why and what to do."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass(frozen=True)
class Sampling:
    """How frames are chosen and sized. `num_frames` wins over `fps`; `min_pixels` defaults to
    128 * factor**2 (as qwen-vl-utils) and is clamped to `max_pixels` (qwen-vl-utils asserts min <= max)."""

    fps: float | None = 2.0
    num_frames: int | None = None
    min_frames: int = 4
    max_frames: int = 16
    min_pixels: int | None = None  # resolved to an int by __post_init__
    max_pixels: int = 448 * 448
    family: str = "qwen2_5_vl"
    # Each sampled frame after the first is given twice (f0 f1 f1 f2 ...), so the tower's temporal patches
    # are the steps (f0, f1), (f1, f2), ...: a change between two frames (a jump, a reversal) lies inside
    # one patch, where the patch embedding sees both. 2n - 2 frames through the tower for n sampled.
    overlap: bool = False

    def __post_init__(self):
        patch = FACTORS.get(self.family, 0) ** 2
        for ok, msg in [
            (patch > 0, f"unknown family {self.family!r}; choose one of {sorted(FACTORS)}"),
            (
                self.num_frames is not None or 0 < (self.fps or 0) < math.inf,
                f"set a finite fps > 0 or num_frames, got fps {self.fps}",
            ),
            (self.num_frames is None or self.num_frames >= 1, f"num_frames must be >= 1: {self.num_frames}"),
            (
                1 <= self.min_frames <= self.max_frames,
                f"need 1 <= min_frames <= max_frames, got min_frames {self.min_frames}, max_frames {self.max_frames}",
            ),
            (self.max_pixels >= patch, f"max_pixels must hold one patch ({patch} pixels)"),
        ]:
            if not ok:
                raise ValueError(msg)
        min_pixels = VIDEO_MIN_TOKENS * self.factor**2 if self.min_pixels is None else self.min_pixels
        object.__setattr__(self, "min_pixels", int(min(min_pixels, self.max_pixels)))

    @property
    def factor(self) -> int:
        return FACTORS[self.family]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Sampling:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# ---- qwen-vl-utils sizing rules -------------------------------------------------------------------


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """qwen-vl-utils' smart_resize: sides multiples of `factor`, area in [min_pixels, max_pixels], aspect
    kept. One deliberate difference: when min_pixels is close to max_pixels the upscaling branch can
    overshoot max_pixels there; we then fall back to the largest size that fits, so the result is stable
    under a second smart_resize with the same budget (the processor may resize again)."""
    if max(height, width) / min(height, width) > MAX_RATIO:
        raise ValueError(f"aspect ratio {max(height, width) / min(height, width):.0f} exceeds {MAX_RATIO}")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        h_bar, w_bar = _fit_below(height, width, factor, max_pixels)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
        if h_bar * w_bar > max_pixels:
            h_bar, w_bar = _fit_below(height, width, factor, max_pixels)
    return h_bar, w_bar


def _fit_below(height: int, width: int, factor: int, max_pixels: int) -> tuple[int, int]:
    beta = math.sqrt(height * width / max_pixels)
    # max(factor, .) guards extreme aspect ratios, where one side would floor to zero.
    return (
        max(factor, math.floor(height / beta / factor) * factor),
        max(factor, math.floor(width / beta / factor) * factor),
    )


def smart_nframes(total_frames: int, video_fps: float, sampling: Sampling) -> int:
    """qwen-vl-utils' smart_nframes, except that a request beyond the video's length is clamped instead
    of raising, and at least FRAME_FACTOR frames are returned (a 1-frame video repeats its frame)."""
    if sampling.num_frames is not None:
        n = round(sampling.num_frames / FRAME_FACTOR) * FRAME_FACTOR
    else:
        lo = math.ceil(sampling.min_frames / FRAME_FACTOR) * FRAME_FACTOR
        hi = math.floor(sampling.max_frames / FRAME_FACTOR) * FRAME_FACTOR
        n = min(max(total_frames / video_fps * sampling.fps, lo), hi, total_frames)
        n = math.floor(n / FRAME_FACTOR) * FRAME_FACTOR
    n = min(n, total_frames // FRAME_FACTOR * FRAME_FACTOR)
    return max(n, FRAME_FACTOR)


def sample_indices(total_frames: int, video_fps: float, sampling: Sampling) -> list[int]:
    """Evenly spaced source indices, first and last frame included (qwen-vl-utils' linspace + round);
    with `sampling.overlap`, as the pairs of neighbours (f0, f1, f1, f2, ...)."""
    n = smart_nframes(total_frames, video_fps, sampling)
    even = np.linspace(0, total_frames - 1, n).round().astype(int).tolist()
    return [f for a, b in zip(even, even[1:]) for f in (a, b)] if sampling.overlap and n > 1 else even


def video_tokens(num_frames: int, resized_height: int, resized_width: int, factor: int) -> int:
    """Vision tokens the LLM sees: (T / temporal patch) x (H / factor) x (W / factor)."""
    return math.ceil(num_frames / FRAME_FACTOR) * (resized_height // factor) * (resized_width // factor)


@dataclass
class Video:
    """One sampled video: frames plus what the Qwen processors and the prompt need to know about them."""

    path: str
    frames: torch.Tensor  # (T, 3, H, W) uint8 at (resized_height, resized_width); NumPy from read_video_numpy
    indices: list[int]
    timestamps: list[float]
    fps: float
    total_frames: int
    duration_s: float
    height: int
    width: int
    resized_height: int
    resized_width: int
    sampling: Sampling = field(default_factory=Sampling)
    rotation: int = 0  # the display rotation applied to the stored frames (height/width are as displayed)
    decoded_frames: int = 0  # frames the decoder produced (0 on a cache hit)

    @property
    def shown(self) -> list[int]:
        """The distinct source frames the model sees, in order (`indices` repeats some with overlap)."""
        return sorted(set(self.indices))

    @property
    def video_tokens(self) -> int:
        return video_tokens(len(self.indices), self.resized_height, self.resized_width, self.sampling.factor)

    def processor_metadata(self) -> dict[str, Any]:
        """transformers' VideoMetadata fields (Qwen3-VL needs frames_indices; without it, 24 fps is assumed)."""
        return {
            "fps": self.fps,
            "frames_indices": list(self.indices),
            "total_num_frames": self.total_frames,
            "duration": self.duration_s,
            "height": self.height,
            "width": self.width,
            "video_backend": "pyav",
        }

    def info(self) -> dict[str, Any]:
        """The `cot-rm video-info` JSON object (exactly these 12 keys)."""
        return {
            "path": self.path,
            "duration_s": round(self.duration_s, 6),
            "fps": self.fps,
            "total_frames": self.total_frames,
            "sampled_indices": list(self.indices),
            "timestamps_s": [round(t, 6) for t in self.timestamps],
            "height": self.height,
            "width": self.width,
            "rotation": self.rotation,
            "resized_height": self.resized_height,
            "resized_width": self.resized_width,
            "video_tokens": self.video_tokens,
        }


# ---- opening and probing ------------------------------------------------------------------------------


def _check_file(path: str) -> None:
    """Reject what FFmpeg would only report vaguely, with a reason a user can act on."""
    if not os.path.exists(path):
        raise VideoError(path, "no such file; check the path")
    if os.path.isdir(path):
        raise VideoError(path, "is a directory, not a video file; pass the path of a video file")
    if os.path.getsize(path) == 0:
        raise VideoError(path, "file is empty (0 bytes); re-export or re-download the video")


def _looks_like_text(path: str) -> bool:
    with open(path, "rb") as f:
        text = f.read(1024).decode("utf-8", errors="replace")
    return all((c.isprintable() or c.isspace()) and c != "\ufffd" for c in text)


def _open(path: str):
    _check_file(path)
    try:
        return av.open(path, metadata_errors="ignore")
    except PermissionError:
        raise VideoError(path, "permission denied; make the file readable") from None
    except EOFError:  # av.error.EOFError subclasses it: headers promise data that is not there
        raise VideoError(path, "file ends before any video data (empty or truncated); re-export it") from None
    except av.error.FFmpegError as err:
        if _looks_like_text(path):
            raise VideoError(path, "is a text file, not a video; pass a video file") from None
        raise VideoError(
            path,
            f"FFmpeg cannot read it as a video ({err.strerror}): the file is truncated, corrupt or not a "
            "video; re-export or re-download it",
        ) from None


def _video_stream(container, path: str):
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams})
        has = f"only {'/'.join(kinds)} streams" if kinds else "no streams at all"
        raise VideoError(path, f"has no video stream ({has}); pass a file with a video track")
    return container.streams.video[0]


_PROBE_KEYS = ("fps", "total_frames", "duration_s", "height", "width", "rotation")


@dataclass(frozen=True)
class _StreamInfo:
    fps: float
    total_frames: int
    height: int  # as displayed: a phone's portrait clip stored sideways has its rotation applied
    width: int
    time_base: float
    rotation: int = 0  # degrees counterclockwise the stored frames turn to be displayed: 0, 90, 180, 270

    @property
    def duration_s(self) -> float:
        return self.total_frames / self.fps


def _stream_info(container, stream, path: str) -> _StreamInfo:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate or rate <= 0:
        raise VideoError(path, "video stream has no frame rate; re-encode it with a constant frame rate")
    fps = float(rate)
    # mp4/avi/gif headers give an exact count; webm/mkv do not, so count packets (demux, no decode).
    total = stream.frames if stream.frames > 0 else _count_packets(container, stream, path, fps)
    if total <= 0:
        raise VideoError(path, "video stream has no frames; re-export the video")
    if container.format.name == "gif" and not _gif_complete(path):
        raise VideoError(path, "GIF is truncated (no trailer byte); re-export or re-download it")
    width, height = stream.codec_context.width, stream.codec_context.height
    if not width or not height:
        raise VideoError(path, "video stream has no frame size; the file is corrupt, re-export it")
    return _StreamInfo(fps, total, height, width, float(stream.time_base))


def _display_rotation(path: str) -> int:
    """The display matrix's rotation (phones store portrait video sideways with one), in quarter turns
    counterclockwise as degrees. PyAV shows it on decoded frames only, so this decodes the first one."""
    with _open(path) as container:
        stream = _video_stream(container, path)
        try:
            frame = next(container.decode(stream), None)
        except av.error.FFmpegError:
            return 0  # not this function's to report: decoding the sampled frames says what is wrong
    return round((frame.rotation if frame is not None else 0) / 90) % 4 * 90


def _count_packets(container, stream, path: str, fps: float) -> int:
    try:
        total = sum(1 for packet in container.demux(stream) if packet.size)
    except av.error.FFmpegError as err:
        raise VideoError(
            path, f"demuxing failed ({err.strerror}); the file is corrupt, re-export it"
        ) from None
    expected = _declared_duration(container, stream) * fps
    # A cut-off mkv/webm still opens; only its header's duration betrays the missing frames.
    if expected and total + max(2.0, 0.02 * expected) < expected:
        raise VideoError(
            path,
            f"truncated: the header promises {expected:.0f} frames but only {total} are present; "
            "re-export or re-download it",
        )
    return total


def _declared_duration(container, stream) -> float:
    """Seconds of video the header claims, when it says so for this stream (0.0 when unknown)."""
    if stream.duration:
        return float(stream.duration * stream.time_base)
    tag = stream.metadata.get("DURATION") or stream.metadata.get("duration")
    if tag:  # Matroska per-track tag, "HH:MM:SS.nnnnnnnnn"
        try:
            h, m, s = tag.split(":")
            return int(h) * 3600 + int(m) * 60 + float(s)
        except ValueError:
            return 0.0
    # The container duration covers every stream, so it only speaks for the video when alone.
    if container.duration and len(container.streams) == 1:
        return container.duration / av.time_base
    return 0.0


def _gif_complete(path: str) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\x3b"


def _probe(path: str) -> _StreamInfo:
    with _open(path) as container:
        info = _stream_info(container, _video_stream(container, path), path)
    rotation = _display_rotation(path)
    if rotation in (90, 270):
        info = dataclasses.replace(info, height=info.width, width=info.height)
    return dataclasses.replace(info, rotation=rotation)


def probe(path: str | os.PathLike) -> dict[str, Any]:
    """Header facts (and the first frame's rotation): fps, total_frames, duration_s, height and width as
    displayed, rotation."""
    info = _probe(os.fspath(path))
    return {k: getattr(info, k) for k in _PROBE_KEYS}


def _resized(info: _StreamInfo, path: str, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    try:
        return smart_resize(info.height, info.width, factor, min_pixels, max_pixels)
    except ValueError as err:  # aspect ratio beyond what Qwen-VL accepts
        raise VideoError(path, f"{err}; crop or pad the video") from None


# ---- decoding -----------------------------------------------------------------------------------------


class _Decoder:
    """Yields source frames by index, seeking when the next target is far ahead.

    A frame's index is derived from its pts (constant frame rate assumed), which stays right after a
    seek. The origin is the pts of the first frame decoded, not the stream's start_time: AVI with
    B-frames, for one, stamps frame 0 with pts 1. Streams without pts, or whose container refuses to
    seek, are decoded linearly and counted.
    """

    def __init__(self, container, stream, info: _StreamInfo, path: str):
        self.container, self.stream, self.info, self.path = container, stream, info, path
        self.decoded = 0
        self.pos = -1  # index of the last frame decoded
        self.gop = 0  # widest keyframe spacing seen: seeking within a GOP saves nothing
        self._last_key: int | None = None
        self._frames = None
        self._pending = None  # a frame already decoded but not yet consumed
        self._can_seek = True
        self._origin: int | None = None  # pts of frame 0

    def _index(self, frame) -> int:
        if frame.pts is None:
            self._can_seek = False
            return self.pos + 1
        if self._origin is None:
            self._origin = frame.pts
        return round((frame.pts - self._origin) * self.info.time_base * self.info.fps)

    def _next(self):
        if self._pending is not None:
            frame, self._pending = self._pending, None
            return frame
        try:
            frame = next(self._frames, None)
        except av.error.FFmpegError as err:
            raise VideoError(
                self.path, f"decoding failed after frame {self.pos} ({err.strerror}); the file is corrupt"
            ) from None
        if frame is not None:
            self.decoded += 1
            self.pos = self._index(frame)
            if frame.key_frame:
                if self._last_key is not None:
                    self.gop = max(self.gop, self.pos - self._last_key)
                self._last_key = self.pos
        return frame

    def _seek(self, target: int) -> None:
        """Land on the keyframe at or before `target`; step further back if the index put us past it."""
        back = 0.5  # half a frame early, so rounding in the muxer's timestamps cannot skip the target
        before = self.pos
        while True:
            seconds = max(target - back, 0) / self.info.fps
            try:
                self.container.seek(self._origin + int(seconds / self.info.time_base), stream=self.stream)
            except av.error.FFmpegError as err:
                if back > 0.5:  # a first seek already moved us: no linear path left to fall back on
                    raise VideoError(self.path, f"seeking failed ({err.strerror}); remux the file") from None
                self._can_seek = False  # a refused seek moves nothing: carry on linearly
                return
            self._frames, self._pending, self._last_key = self.container.decode(self.stream), None, None
            first = self._next()
            if first is None or self.pos <= target or seconds == 0:
                self._pending = first
                # Landing at or before where we were means keyframes are sparser than the targets (or the
                # demuxer can only rewind, as GIF's): decoding on linearly is cheaper from here on.
                if first is not None and self.pos <= before:
                    self._can_seek = False
                return
            back = max(2 * back, MIN_SEEK_GAP)

    def frame_at(self, target: int):
        if self._frames is None:
            self._frames = self.container.decode(self.stream)
            self._pending = self._next()  # frame 0 tells whether frames carry pts (needed to seek)
        if self._can_seek and target - self.pos > max(MIN_SEEK_GAP, self.gop):
            self._seek(target)
        while (frame := self._next()) is not None:
            if self.pos >= target:
                return frame
        raise VideoError(
            self.path,
            f"truncated: frame {target} of {self.info.total_frames} could not be decoded (the stream ends "
            f"at frame {self.pos}); re-export or re-download the video",
        )


def resize_rgb(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An upright HxWx3 uint8 frame resized to `size` (height, width): the one resize every frame the
    model sees goes through, from a file or from memory."""
    if rgb.shape[:2] == tuple(size):
        return np.ascontiguousarray(rgb)
    image = Image.fromarray(np.ascontiguousarray(rgb)).resize((size[1], size[0]), RESAMPLE)
    return np.asarray(image)


def _decode_at(path: str, indices: list[int], info: _StreamInfo, size: tuple[int, int]):
    """RGB frames (HxWx3 uint8, turned upright, resized to `size`) for `indices`, in that order, and the
    decode count."""
    found: dict[int, np.ndarray] = {}
    # One reformatter reuses its swscale context (frame.to_ndarray builds one per frame); its defaults are
    # to_ndarray(format="rgb24")'s, so frames a caller decodes that way are these very pixels.
    scaler = VideoReformatter()
    with _open(path) as container:
        decoder = _Decoder(container, _video_stream(container, path), info, path)
        for target in sorted(set(indices)):
            rgb = scaler.reformat(decoder.frame_at(target), format="rgb24").to_ndarray()
            found[target] = resize_rgb(np.rot90(rgb, info.rotation // 90), size)
    return [found[i] for i in indices], decoder.decoded


# ---- public readers -----------------------------------------------------------------------------------


def read_video_numpy(
    path: str | os.PathLike, sampling: Sampling = Sampling(), cache: FrameCache | None = None
) -> Video:
    """`read_video` with `frames` as a NumPy (T, 3, H, W) uint8 array: no torch import (used by the CLI)."""
    path = os.fspath(path)
    _check_file(path)
    key = cache.key(path, {"kind": "sampled", **sampling.to_dict()}) if cache is not None else None
    if key is not None and (hit := cache.get(key)) is not None:
        frames, meta = hit
        return Video(path=path, frames=frames, sampling=sampling, decoded_frames=0, **meta)
    info = _probe(path)
    rh, rw = _resized(info, path, sampling.factor, sampling.min_pixels, sampling.max_pixels)
    indices = sample_indices(info.total_frames, info.fps, sampling)
    rgb, decoded = _decode_at(path, indices, info, (rh, rw))
    frames = np.ascontiguousarray(np.stack(rgb).transpose(0, 3, 1, 2))
    meta = {"indices": indices, "timestamps": [i / info.fps for i in indices], "resized_height": rh}
    meta |= {"resized_width": rw, **{k: getattr(info, k) for k in _PROBE_KEYS}}
    if key is not None:
        cache.put(key, frames, meta)
    return Video(path=path, frames=frames, sampling=sampling, decoded_frames=decoded, **meta)


def read_video(
    path: str | os.PathLike, sampling: Sampling = Sampling(), cache: FrameCache | None = None
) -> Video:
    """Sample, decode and resize a video; `frames` is a (T, 3, H, W) uint8 torch tensor."""
    import torch  # lazily: `cot-rm video-info` (NumPy only) starts without torch's import time

    video = read_video_numpy(path, sampling, cache)
    return dataclasses.replace(video, frames=torch.from_numpy(video.frames))


def read_frames_at(
    path: str | os.PathLike, indices: list[int], max_pixels: int, family: str = "qwen2_5_vl"
) -> list[Image.Image]:
    """Specific source frames as RGB images sized for the model (the `select_frames` tool's answer),
    in the order asked; image sizing (min_pixels = 4 * factor**2, as qwen-vl-utils for images)."""
    path, factor = os.fspath(path), FACTORS[family]
    info = _probe(path)
    for i in indices:
        if isinstance(i, bool) or not isinstance(i, int | np.integer) or not 0 <= i < info.total_frames:
            raise VideoError(
                path, f"frame {i!r} is out of range: the video has frames 0..{info.total_frames - 1}"
            )
    if not indices:
        return []
    size = _resized(info, path, factor, min(IMAGE_MIN_TOKENS * factor**2, max_pixels), max_pixels)
    rgb, _ = _decode_at(path, [int(i) for i in indices], info, size)
    return [Image.fromarray(a) for a in rgb]
