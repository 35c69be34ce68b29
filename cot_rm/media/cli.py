"""`cot-rm video-info PATH`: decode a video's sampled frames and print the sampling plan as one JSON object.

Exit status 2 with one line on stderr (file, reason, what to do) when the video cannot be used.
Torch is not imported here: the frames stay NumPy, so the command answers in a fraction of a second.
"""

from __future__ import annotations

import argparse
import json
import sys

from cot_rm.media.frame_cache import FrameCache, default_cache_dir
from cot_rm.media.video import FACTORS, Sampling, VideoError, read_video_numpy

PROG = "cot-rm video-info"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d, arg = Sampling(), parser.add_argument
    # fmt: off
    arg("path", help="video file (mp4, webm, mkv, avi, gif, ... anything FFmpeg reads)")
    arg("--fps", type=float, default=d.fps, help=f"frames sampled per second (default {d.fps})")
    arg("--num-frames", type=int, default=None,
        help="sample this many frames, evenly spread (wins over --fps, --min/--max-frames); rounded to an "
        "even number (frames go to the model in pairs) and at most the video's frames")
    arg("--min-frames", type=int, default=d.min_frames, help=f"with --fps: at least this many (default {d.min_frames})")
    arg("--max-frames", type=int, default=d.max_frames, help=f"with --fps: at most this many (default {d.max_frames})")
    arg("--min-pixels", type=int, default=None, help="per-frame minimum (default 128*factor^2, clamped to --max-pixels)")
    arg("--max-pixels", type=int, default=d.max_pixels, help=f"per-frame pixel budget (default {d.max_pixels})")
    arg("--family", choices=sorted(FACTORS), default=d.family, help="model family: sets the patch factor (28 or 32)")
    arg("--overlap", action="store_true",
        help="frames as overlapping pairs of neighbours (f0 f1 f1 f2 ...), as a checkpoint sampling so reads them")
    arg("--cache-dir", default=None, help=f"frame cache directory (default {default_cache_dir()})")
    arg("--no-cache", action="store_true", help="decode without reading or filling the frame cache")
    # fmt: on


def main(args: argparse.Namespace) -> int:
    try:
        sampling = Sampling(
            fps=args.fps,
            num_frames=args.num_frames,
            min_frames=args.min_frames,
            max_frames=args.max_frames,
            min_pixels=args.min_pixels,
            max_pixels=args.max_pixels,
            family=args.family,
            overlap=args.overlap,
        )
    except ValueError as err:
        print(f"{PROG}: invalid sampling: {err}", file=sys.stderr)
        return 2
    cache = None if args.no_cache else FrameCache(args.cache_dir)
    try:
        video = read_video_numpy(args.path, sampling, cache)
    except VideoError as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return 2
    print(json.dumps(video.info()))
    return 0
