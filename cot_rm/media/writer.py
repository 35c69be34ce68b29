"""Write real video files with PyAV (FFmpeg is bundled): the demo, the toy world, benchmarks and tests.

`write_video` encodes RGB frames with a real FFmpeg encoder into any container PyAV can mux; the
container comes from the file extension.
"""

from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

# Encoders that need a palette / RGB pixel format rather than planar YUV.
_PIX_FMT = {"gif": "rgb8", "png": "rgb24", "apng": "rgb24"}


def write_video(
    path: str | Path,
    frames: Iterable[np.ndarray],
    fps: float | Fraction,
    codec: str = "libx264",
    *,
    pix_fmt: str | None = None,
    gop: int | None = None,
    options: dict[str, str] | None = None,
    bit_rate: int | None = None,
) -> Path:
    """Encode `frames` (each HxWx3 uint8 RGB, all the same even size) into `path`; return the path.

    The container comes from the file extension (mp4, webm, mkv, avi, gif, ...). `gop` sets the keyframe
    interval; `options` go to the encoder (e.g. {"preset": "ultrafast"}).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), mode="w") as out:
        stream = None
        for rgb in frames:
            if stream is None:
                stream = _add_stream(out, codec, rate, rgb.shape, pix_fmt, gop, options, bit_rate)
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb, dtype=np.uint8), format="rgb24")
            for packet in stream.encode(frame.reformat(format=stream.pix_fmt)):
                out.mux(packet)
        if stream is None:
            raise ValueError("write_video needs at least one frame")
        for packet in stream.encode():  # flush delayed frames (B-frames, lookahead)
            out.mux(packet)
    return path


def _add_stream(out, codec, rate, shape, pix_fmt, gop, options, bit_rate):
    stream = out.add_stream(codec, rate=rate, options=dict(options or {}))
    stream.height, stream.width = int(shape[0]), int(shape[1])
    stream.pix_fmt = pix_fmt or _PIX_FMT.get(codec, "yuv420p")
    if gop is not None:
        stream.codec_context.gop_size = gop
    if bit_rate is not None:
        stream.codec_context.bit_rate = bit_rate
    return stream
