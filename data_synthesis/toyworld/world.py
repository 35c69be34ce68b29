"""`cot-rm toyworld`: the procedural text-to-video world with exact labels (the embedded default dataset).

    cot-rm toyworld --out data/toy --n 2000 --seed 0 [--size 64] [--workers 2]

writes `DIR/videos/NNNNNN.mp4` (H.264), `DIR/pointwise.jsonl` and `DIR/pairs.jsonl` (the records of the README's Data formats).

Prompts come from a small grammar: count (1-3), colour (red, yellow, green, cyan, blue, purple), shape
(circle, square, triangle, diamond), direction (left, right, up, down), speed (slow, fast) and
background (white, black, grey), e.g. "two red circles moving left slowly on a white background".
Each prompt has several videos (1.5-4 s, 8/12/16 fps, 64x64 by default); each video gets 0-3 defects,
each with a severity 1-3 and the exact frames where it is visible:

    visual_quality        flicker, noise, blur, blockiness, banding       (severity = strength)
    text_alignment        wrong_colour (severity = steps apart on the hue ring red-yellow-green-cyan-
                          blue-purple), wrong_shape (square<->diamond 1, circle<->square/diamond 2,
                          anything<->triangle 3), wrong_count (|actual - expected|), wrong_direction
                          (opposite 3, perpendicular 2), missing_object (severity = how long it is gone)
    physical_consistency  teleport (jump size), freeze, reversal, morphing (duration), wall_pass (wall
                          thickness), speed_change (speed factor 2/3/4)

Scoring rule (1-5, integers, exactly derivable from `meta.defects`):

    dimension = max(1, 5 - sum of the severities of that dimension's defects)
    overall   = min(visual_quality, text_alignment, physical_consistency)

A clean video scores 5 everywhere; a video is only as good as its weakest dimension.

Splits: prompt p is train/val/test by `SPLIT_CYCLE[p % 10]` (80/10/10). Test prompts use only the
held-out colour x shape pairs (`HELD_OUT`), which are never drawn in train or val (not even by a
wrong_colour, wrong_shape or morphing defect), so test measures generalisation; val is
in-distribution. Pairs never cross splits.

Determinism: prompt p is drawn from the RNG seeded by (seed, 0, p) and video i from (seed, 1, i)
(`meta.seed` is that video's own seed), x264 runs single-threaded, and results are written in index
order whatever the worker count: the same seed gives byte-identical videos and JSONL.
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing as mp
import os
import sys
import time
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cot_rm.media.writer import write_video
from cot_rm.schema import PairRecord, PointwiseRecord, write_jsonl
from data_synthesis.toyworld.plan import DEFECT_TYPES, DIMENSION_OF, VISIBLE_TYPES, plan_video, prompt_for
from data_synthesis.toyworld.render import layout_centres, render

DIMENSIONS = tuple(DEFECT_TYPES)  # visual_quality, text_alignment, physical_consistency
# One thread: x264's frame-threaded output depends on thread timing; ultrafast: 2,000 clips in seconds.
X264_OPTIONS = {"threads": "1", "preset": "ultrafast", "crf": "18"}


# ---- the scoring rule ----------------------------------------------------------------------------------


def dimension_scores(defects: list[dict]) -> dict[str, int]:
    """max(1, 5 - sum of severities) for each dimension (defects of other dimensions are ignored)."""
    return {
        dim: max(1, 5 - sum(int(d["severity"]) for d in defects if d["dimension"] == dim))
        for dim in DIMENSIONS
    }


def overall_score(dims: dict[str, float]):
    """The weakest dimension (over the dimensions given, `overall` itself excluded)."""
    return min(v for k, v in dims.items() if k != "overall")


def scores_from_defects(defects: list[dict]) -> dict[str, int]:
    dims = dimension_scores(defects)
    return {**dims, "overall": overall_score(dims)}


def compare(scores_a: dict, scores_b: dict) -> dict[str, str]:
    """A/B/tie per dimension both records score (higher is better)."""
    return {
        dim: "A" if scores_a[dim] > scores_b[dim] else "B" if scores_b[dim] > scores_a[dim] else "tie"
        for dim in scores_a
        if dim in scores_b
    }


def preference(dims: dict[str, str]) -> str:
    """The overall label; without an overall score, the side every decided dimension agrees on (else tie)."""
    if "overall" in dims:
        return dims["overall"]
    decided = {v for v in dims.values() if v != "tie"}
    return decided.pop() if len(decided) == 1 else "tie"


# ---- one video ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToyConfig:
    n: int = 200
    seed: int = 0
    height: int = 64
    width: int = 64
    videos_per_prompt: int = 4
    cross_pairs_per_prompt: int = 2
    workers: int = 1
    defect_types: tuple[str, ...] | None = None  # None: all; else the random defects come from these

    def __post_init__(self):
        unknown = sorted(set(self.defect_types or ()) - set(DIMENSION_OF))
        if unknown or self.defect_types == ():
            raise ValueError(f"unknown defect types {unknown}; known: {', '.join(DIMENSION_OF)}")
        if self.n < 1 or self.seed < 0 or self.videos_per_prompt < 1 or self.cross_pairs_per_prompt < 0:
            raise ValueError("need n >= 1, seed >= 0, videos_per_prompt >= 1, cross_pairs_per_prompt >= 0")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if (
            self.height % 2
            or self.width % 2
            or not 32 <= min(self.height, self.width) <= max(self.height, self.width) <= 1024
        ):
            raise ValueError(f"size must be even and 32 to 1024 px a side, got {self.height}x{self.width}")


def video_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, 1, index]).generate_state(1)[0])


def make_video(out_dir: str, cfg: ToyConfig, index: int) -> PointwiseRecord:
    """Plan, draw and encode video `index`; return its pointwise record (video path relative to out_dir)."""
    p = index // cfg.videos_per_prompt
    spec, prompt, split = prompt_for(np.random.default_rng([cfg.seed, 0, p]), p)
    vseed = video_seed(cfg.seed, index)
    rng = np.random.default_rng(vseed)
    types = frozenset(cfg.defect_types) if cfg.defect_types else None
    scene, fps = plan_video(rng, spec, split, cfg.height, cfg.width, types=types)
    frames, defects = render(scene, rng)
    rel = f"videos/{index:06d}.mp4"
    encode(Path(out_dir) / rel, frames, fps)
    defects = [clean_defect(d) for d in sorted(defects, key=lambda d: (d["frames"][0], d["type"]))]
    meta = {"spec": spec, "fps": fps, "num_frames": len(frames), "height": cfg.height, "width": cfg.width}
    meta |= {
        "seed": vseed,
        "prompt_id": f"p{p:04d}",
        "defects": defects,
        "frame_defects": frame_index(defects),
    }
    return PointwiseRecord(f"{index:06d}", rel, prompt, scores_from_defects(defects), meta, split)


def object_centres(meta: dict, split: str) -> np.ndarray:
    """(frames, objects, 2): each object's centre (x, y) in pixels in every frame of the video `meta`
    describes, replayed from its seed as `make_video` drew it (a defect may hide an object; its centre
    is still given). Position targets for perception pretraining; raises if the replay disagrees."""
    rng = np.random.default_rng(meta["seed"])
    scene, _ = plan_video(rng, meta["spec"], split, meta["height"], meta["width"])
    planned = {d["type"] for d in scene.defects}  # render drops those no frame shows
    if scene.num_frames != meta["num_frames"] or not {d["type"] for d in meta["defects"]} <= planned:
        raise ValueError(f"video seed {meta['seed']}: the replayed plan differs from its meta")
    return layout_centres(scene, rng)


def encode(path: Path, frames: list[np.ndarray], fps: float) -> None:
    """Write atomically (temp name, then rename): an interrupted build never leaves half a video."""
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.mp4")
    write_video(tmp, frames, fps, options=X264_OPTIONS)
    os.replace(tmp, path)


def clean_defect(d: dict) -> dict:
    """The annotation as published: type, dimension, severity, frames (sorted), params."""
    keys = ("type", "dimension", "severity", "frames", "params")
    out = {k: d[k] for k in keys}
    out["frames"] = sorted(int(f) for f in d["frames"])
    return out


def frame_index(defects: list[dict]) -> dict[str, list[str]]:
    """{"12": ["flicker", ...]}: which defects show in each frame (frames without any are left out)."""
    index: dict[int, list[str]] = {}
    for d in defects:
        for f in d["frames"]:
            index.setdefault(int(f), []).append(d["type"])
    return {str(f): index[f] for f in sorted(index)}


# ---- the dataset --------------------------------------------------------------------------------------


def build(out_dir: str | os.PathLike, cfg: ToyConfig, progress: bool = True) -> dict:
    """Write videos, pointwise.jsonl and pairs.jsonl under out_dir; return a summary."""
    out = Path(out_dir)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    records = _videos(out, cfg, progress)
    pairs = same_prompt_pairs(records, cfg.seed) + cross_prompt_pairs(records, cfg)
    write_jsonl(out / "pointwise.jsonl", records)
    write_jsonl(out / "pairs.jsonl", pairs)
    keep = {Path(r.video).name for r in records}
    for stale in (out / "videos").glob("[0-9][0-9][0-9][0-9][0-9][0-9].mp4"):  # an earlier, larger --n
        if stale.name not in keep:
            stale.unlink()
    splits = {s: sum(r.split == s for r in records) for s in ("train", "val", "test")}
    return {"out": str(out), "videos": len(records), "pairs": len(pairs), "splits": splits,
            "seconds": round(time.perf_counter() - start, 2)}  # fmt: skip


def _videos(out: Path, cfg: ToyConfig, progress: bool) -> list[PointwiseRecord]:
    work = functools.partial(make_video, str(out), cfg)
    bar = tqdm(total=cfg.n, desc="toyworld", unit="video", file=sys.stderr, disable=not progress)
    if cfg.workers <= 1:
        records = [_tick(bar, work(i)) for i in range(cfg.n)]
    else:
        # forkserver: workers need only numpy/av, and forking a parent that may hold torch threads is unsafe.
        with mp.get_context("forkserver").Pool(cfg.workers) as pool:
            chunk = max(1, min(16, cfg.n // (4 * cfg.workers)))
            records = [_tick(bar, r) for r in pool.imap(work, range(cfg.n), chunksize=chunk)]  # in order
    bar.close()
    return records


def _tick(bar, record):
    bar.update(1)
    return record


def _pair(kind: str, a: PointwiseRecord, b: PointwiseRecord) -> PairRecord:
    dims = compare(a.scores, b.scores)
    meta = {"kind": kind, "id_a": a.id, "id_b": b.id, "scores_a": a.scores, "scores_b": b.scores}
    prompt_b = b.prompt if b.prompt != a.prompt else None
    return PairRecord(f"{kind}-{a.id}-{b.id}", a.prompt, a.video, b.video, preference(dims), dims, meta,
                      prompt_b, a.split)  # fmt: skip


def same_prompt_pairs(records: list[PointwiseRecord], seed: int) -> list[PairRecord]:
    """Every pair of videos of one prompt; A/B order is a coin flip so position carries no signal."""
    rng = np.random.default_rng([seed, 2])
    pairs = []
    for group in _by_prompt(records).values():
        for a, b in combinations(group, 2):
            a, b = (b, a) if rng.random() < 0.5 else (a, b)
            pairs.append(_pair("same_prompt", a, b))
    return pairs


def cross_prompt_pairs(records: list[PointwiseRecord], cfg: ToyConfig) -> list[PairRecord]:
    """For each prompt, videos paired with videos of other prompts of the same split."""
    rng = np.random.default_rng([cfg.seed, 3])
    groups = _by_prompt(records)
    pairs = []
    for pid, group in groups.items():
        others = [q for q in groups if q != pid and groups[q][0].split == group[0].split]
        for _ in range(cfg.cross_pairs_per_prompt if others else 0):
            other = groups[others[int(rng.integers(len(others)))]]
            a, b = group[int(rng.integers(len(group)))], other[int(rng.integers(len(other)))]
            pairs.append(_pair("cross_prompt", a, b))
    return _unique(pairs)


def _by_prompt(records: list[PointwiseRecord]) -> dict[str, list[PointwiseRecord]]:
    groups: dict[str, list[PointwiseRecord]] = {}
    for r in records:
        groups.setdefault(r.meta["prompt_id"], []).append(r)
    return groups


def _unique(pairs: list[PairRecord]) -> list[PairRecord]:
    seen, out = set(), []
    for p in pairs:
        if p.id not in seen:
            seen.add(p.id)
            out.append(p)
    return out


# ---- CLI ----------------------------------------------------------------------------------------------


def _size(text: str) -> tuple[int, int]:
    try:
        h, _, w = text.lower().partition("x")
        return int(h), int(w or h)
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be N or HxW (even numbers), got {text!r}") from None


def _types(text: str) -> tuple[str, ...]:
    return VISIBLE_TYPES if text == "visible" else tuple(t.strip() for t in text.split(",") if t.strip())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder (videos/, pointwise.jsonl, pairs.jsonl)")
    parser.add_argument("--n", type=int, default=200, help="number of videos (default 200)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed: same seed, same bytes")
    parser.add_argument("--size", type=_size, default=(64, 64), help="frame size N or HxW, even (default 64)")
    parser.add_argument("--videos-per-prompt", type=int, default=4, help="videos per prompt (default 4)")
    parser.add_argument(
        "--cross-pairs", type=int, default=2, help="cross-prompt pairs per prompt (default 2)"
    )
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: cores)")
    parser.add_argument(
        "--defect-types",
        type=_types,
        default=None,
        help="draw random defects only from these: comma-separated types, or 'visible' (the types a tiny "
        f"random vision tower sees best: {','.join(VISIBLE_TYPES)}); default: all",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def main(args: argparse.Namespace) -> int:
    try:
        cfg = ToyConfig(args.n, args.seed, *args.size, args.videos_per_prompt, args.cross_pairs, args.workers,
                        args.defect_types)  # fmt: skip
    except ValueError as err:
        print(f"cot-rm toyworld: {err}", file=sys.stderr)
        return 2
    if Path(args.out).exists() and not Path(args.out).is_dir():
        print(f"cot-rm toyworld: --out {args.out} is a file; give a folder", file=sys.stderr)
        return 2
    try:
        summary = build(args.out, cfg, progress=not args.no_progress)
    except OSError as err:
        print(f"cot-rm toyworld: cannot write under {args.out}: {err.strerror or err}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    if empty := [s for s, k in summary["splits"].items() if not k]:
        per = 3 * cfg.videos_per_prompt  # prompts 0, 1, 2 are train, val, test (plan.SPLIT_CYCLE)
        print(f"cot-rm toyworld: no {' or '.join(empty)} videos; --n {per} or more covers every split",
              file=sys.stderr)  # fmt: skip
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m data_synthesis.toyworld.world")
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
