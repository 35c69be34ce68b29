"""Deliberate negatives: break one thing on purpose in ANY pointwise JSONL's videos and label it by rule.

    negs, pairs = make_negatives(read_jsonl("data/pointwise.jsonl"), "data/neg", seed=0)
    python -m data_synthesis.negatives --input data/pointwise.jsonl --out data/neg

Kinds (each variant keeps the source's split, fps and size; new videos go to OUT/videos/):

    prompt_swap  the same video judged against another record's prompt (same split; for toy-world
                 records a prompt with another colour or shape): text_alignment = 1. No new video.
    shuffle      frames in a random order: physical_consistency = 1.
    reverse      frames in reverse order: physical_consistency = min(orig, 2), except for toy-world
                 records (meta.spec.direction): their uniform motion run backwards is still physical,
                 but it now goes the other way, so it gets the toy world's wrong_direction defect
                 (opposite 3, perpendicular 2) and the toy rule decides text_alignment.
    drop         a contiguous chunk (30%) cut out of the middle, so the motion jumps at the cut:
                 physical_consistency = min(orig, 2).

Scores: other dimensions keep the source's score. For toy-world records the source's defect
annotations are carried over with their frames remapped (a chunk to drop is chosen clear of them) and
every dimension follows the toy-world rule (`toyworld.dimension_scores`), with the caps above applied
on top; `overall = min(dimensions)`. For other records `overall = min(source overall, min(dimensions))`
(the variant is never rated above its source); a source without `overall` gets none. A dimension the
source lacks is added at its cap when the source uses the default names; a source with its own names
gets the cap on its overall score instead, and with no overall either, that kind is not made for it
(no label could say the broken copy is worse).

Shuffle, reverse and drop need moving content: a static video (almost no pixel ever changes by more
than `STATIC_LEVELS` levels) yields no variant, since nothing visible would change.

Each variant's meta: {"negative", "source_id", "defects" (the new defect with the frames where it
shows, plus the carried ones), "frame_defects", "fps", "num_frames", "height", "width"}, plus "order"
(source frame of each output frame) for shuffle/reverse/drop, "prompt_source_id" for prompt_swap and
"spec" for toy-world records (the spec of the prompt the variant is judged against; a prompt_swap also
keeps what its video draws as "drawn"). Each variant also
yields a pair (source vs variant, A/B order by coin flip) labelled from the scores.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import zlib
from collections.abc import Sequence
from pathlib import Path

import av
import numpy as np

from cot_rm.media.video import VideoError, probe
from cot_rm.protocol import JudgeSpec
from cot_rm.schema import PairRecord, PointwiseRecord, read_jsonl, write_jsonl
from data_synthesis.toyworld.describe import drawn_spec
from data_synthesis.toyworld.plan import OPPOSITE, direction_severity
from data_synthesis.toyworld.world import (
    compare,
    dimension_scores,
    encode,
    frame_index,
    overall_score,
    preference,
)

KINDS = ("prompt_swap", "shuffle", "reverse", "drop")
KIND_DIMENSION = {"prompt_swap": "text_alignment", "shuffle": "physical_consistency",
                  "reverse": "physical_consistency", "drop": "physical_consistency"}  # fmt: skip
DROP_FRACTION = 0.3
# Static: fewer than STATIC_SHARE of the pixels ever change by more than STATIC_LEVELS in any channel
# over the clip. A per-pixel range, not a mean: a small toy object moving slowly barely moves the mean;
# any channel, not grey: purple on grey has nearly the background's luminance.
STATIC_LEVELS = 24
STATIC_SHARE = 0.002
FRAME_PARAMS = ("from_frame", "to_frame", "held_frame")  # params that name frames: remapped with them


def make_negatives(
    records: Sequence[PointwiseRecord],
    out_dir: str | os.PathLike,
    kinds: Sequence[str] = KINDS,
    seed: int = 0,
    rate: float = 1.0,
    base_dir: str | os.PathLike | None = None,
) -> tuple[list[PointwiseRecord], list[PairRecord]]:
    """Variants of `records` (each kind with probability `rate` per record) and source-vs-variant pairs.

    Returned video paths are relative to out_dir (write the JSONL there); relative source paths are
    resolved against base_dir (default: the working directory). A missing or broken source video
    raises VideoError naming it."""
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown negative kind(s) {unknown}; choose from {KINDS}")
    out, base = Path(out_dir), Path(base_dir or os.getcwd())
    variants, pairs = [], []
    for src in records:
        path = _source_path(src, base)
        video = _Lazy(path)
        for kind in [k for k in KINDS if k in kinds]:
            rng = np.random.default_rng([seed, KINDS.index(kind), zlib.crc32(src.id.encode())])
            if rng.random() >= rate or not labelable(src, kind):
                continue
            made = _MAKERS[kind](src, records, video, out, rng)
            if made is not None:
                variants.append(made)
                pairs.append(_pair(src, os.path.relpath(path, out), made, rng))
    return variants, pairs


def write_negatives(records, out_dir, **kwargs) -> dict:
    """make_negatives, then OUT/pointwise.jsonl and OUT/pairs.jsonl; returns the counts."""
    variants, pairs = make_negatives(records, out_dir, **kwargs)
    write_jsonl(Path(out_dir) / "pointwise.jsonl", variants)
    write_jsonl(Path(out_dir) / "pairs.jsonl", pairs)
    return {"variants": len(variants), "pairs": len(pairs)}


# ---- decoding -----------------------------------------------------------------------------------------


def decode_all(path: str | os.PathLike) -> tuple[list[np.ndarray], float]:
    """Every frame (RGB uint8, cropped to even sides for yuv420p) and the fps; VideoError if unusable."""
    path = os.fspath(path)
    fps = probe(path)["fps"]  # VideoError for a missing, empty, truncated or non-video file
    try:
        with av.open(path) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    except av.error.FFmpegError as err:
        raise VideoError(
            path, f"decoding failed ({err.strerror}); the file is corrupt, re-export it"
        ) from None
    if not frames:
        raise VideoError(path, "no frame could be decoded; re-export the video")
    h, w = frames[0].shape[0] // 2 * 2, frames[0].shape[1] // 2 * 2
    return [f[:h, :w] for f in frames], fps


class _Lazy:
    """A source video decoded on first use (prompt_swap alone never decodes)."""

    def __init__(self, path: Path):
        self.path = path
        self._data = None

    def get(self) -> tuple[list[np.ndarray], float]:
        if self._data is None:
            self._data = decode_all(self.path)
        return self._data

    def is_static(self) -> bool:
        frames = np.stack(self.get()[0])
        moving = (frames.max(0).astype(np.int16) - frames.min(0)).max(-1) > STATIC_LEVELS  # any channel
        return len(frames) < 2 or float(moving.mean()) < STATIC_SHARE


def _source_path(src: PointwiseRecord, base: Path) -> Path:
    if "://" in src.video:
        raise VideoError(src.video, "remote videos are not supported here; download the file first")
    path = Path(src.video)
    return path if path.is_absolute() else base / path


# ---- the four kinds ------------------------------------------------------------------------------------


def _prompt_swap(src, records, video, out, rng):
    partners = [r for r in records if r.split == src.split and r.prompt != src.prompt and _differs(src, r)]
    if not partners:
        return None
    other = partners[int(rng.integers(len(partners)))]
    info = probe(video.path)  # header only: the swap needs no decoding
    n, fps = info["total_frames"], info["fps"]
    kept = [d for d in _defects(src) if d["dimension"] != "text_alignment"]  # alignment was to the old prompt
    new = {"type": "prompt_swap", "dimension": "text_alignment", "severity": 3, "frames": list(range(n)),
           "params": {"expected": other.prompt, "actual": src.prompt, "prompt_source_id": other.id}}  # fmt: skip
    # The spec describes the prompt judged against: the partner's (none if the partner has none); what
    # the video draws stays the source's (`drawn`, read by describe.drawn_spec).
    extra = {"height": info["height"], "width": info["width"], "prompt_source_id": other.id,
             "spec": (other.meta or {}).get("spec")}  # fmt: skip
    if isinstance((src.meta or {}).get("spec"), dict):
        extra["drawn"] = drawn_spec(src.meta)
    rel = os.path.relpath(video.path, out)
    return _variant(src, "prompt_swap", [new, *kept], {"text_alignment": 1}, rel, fps, n, other.prompt, extra)


def _differs(src: PointwiseRecord, other: PointwiseRecord) -> bool:
    """Toy-world prompts must differ in colour or shape, so the swap really breaks alignment."""
    a, b = (src.meta or {}).get("spec"), (other.meta or {}).get("spec")
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return True
    return (a.get("colour"), a.get("shape")) != (b.get("colour"), b.get("shape"))


def _shuffle(src, records, video, out, rng):
    frames, fps = video.get()
    n = len(frames)
    if n < 3 or video.is_static():
        return None
    order = rng.permutation(n).tolist()
    while order == sorted(order):
        order = rng.permutation(n).tolist()
    breaks = [i for i in range(1, n) if order[i] != order[i - 1] + 1]
    shown = sorted({j for i in breaks for j in (i - 1, i)})
    new = {"type": "shuffle", "dimension": "physical_consistency", "severity": 3, "frames": shown,
           "params": {"order": order}}  # fmt: skip
    # The source's physical defects no longer mean anything in scrambled time: the shuffle replaces them.
    kept = [d for d in _remap(_defects(src), order) if d["dimension"] != "physical_consistency"]
    return _encoded(src, "shuffle", frames, fps, order, [new, *kept], {"physical_consistency": 1}, out)


def _reverse(src, records, video, out, rng):
    frames, fps = video.get()
    n = len(frames)
    if n < 2 or video.is_static():
        return None
    order = list(range(n - 1, -1, -1))
    kept = _remap(_defects(src), order)
    if _is_toy(src):
        kept, caps = _reverse_direction(src, kept, n), {}
    else:
        new = {"type": "reverse", "dimension": "physical_consistency", "severity": 3, "frames": list(range(n)),
               "params": {}}  # fmt: skip
        kept, caps = [new, *kept], {"physical_consistency": 2}
    return _encoded(src, "reverse", frames, fps, order, kept, caps, out)


def _reverse_direction(src: PointwiseRecord, defects: list[dict], n: int) -> list[dict]:
    """Toy world: the drawn direction flips; re-derive wrong_direction against the prompt's direction."""
    expected = src.meta["spec"]["direction"]
    wrong = [d for d in defects if d["type"] == "wrong_direction"]
    drawn = wrong[0]["params"]["actual"] if wrong else expected
    actual = OPPOSITE[drawn]
    rest = [d for d in defects if d["type"] != "wrong_direction"]
    if actual == expected:
        return rest
    new = {"type": "wrong_direction", "dimension": "text_alignment", "severity": direction_severity(expected, actual),
           "frames": list(range(n)), "params": {"expected": expected, "actual": actual}}  # fmt: skip
    return [new, *rest]


def _drop(src, records, video, out, rng):
    frames, fps = video.get()
    n = len(frames)
    chunk = max(2, round(DROP_FRACTION * n))
    if n - chunk < 3 or video.is_static():
        return None
    busy = _busy_frames(_defects(src), n)
    starts = [s for s in range(1, n - chunk) if busy.isdisjoint(range(s, s + chunk))]
    if not starts:
        return None
    s = starts[int(rng.integers(len(starts)))]
    order = list(range(s)) + list(range(s + chunk, n))
    new = {"type": "drop", "dimension": "physical_consistency", "severity": 3, "frames": [s - 1, s],
           "params": {"from_frame": s - 1, "to_frame": s, "dropped": [s, s + chunk - 1], "count": chunk}}  # fmt: skip
    kept = _remap(_defects(src), order)
    return _encoded(src, "drop", frames, fps, order, [new, *kept], {"physical_consistency": 2}, out)


def _busy_frames(defects: list[dict], n: int) -> set[int]:
    """Frames a span defect shows in or refers to (a freeze's held frame): a cut there would change it."""
    busy = set()
    for d in defects:
        if len(d["frames"]) < n:
            busy |= set(d["frames"]) | {v for k, v in (d.get("params") or {}).items() if k in FRAME_PARAMS}
    return busy


_MAKERS = {"prompt_swap": _prompt_swap, "shuffle": _shuffle, "reverse": _reverse, "drop": _drop}


# ---- labels and records --------------------------------------------------------------------------------


def _is_toy(src: PointwiseRecord) -> bool:
    spec = (src.meta or {}).get("spec")
    return isinstance(spec, dict) and "direction" in spec and isinstance(src.meta.get("defects"), list)


def _defects(src: PointwiseRecord) -> list[dict]:
    defects = (src.meta or {}).get("defects")
    return [dict(d) for d in defects] if isinstance(defects, list) else []


def _remap(defects: list[dict], order: list[int]) -> list[dict]:
    """Defects in output-frame terms: frames (and frame params) follow their frames; a defect whose
    frames were all cut is gone."""
    pos = {src: i for i, src in enumerate(order)}
    out = []
    for d in defects:
        frames = sorted(pos[f] for f in d["frames"] if f in pos)
        if not frames:
            continue
        params = {k: pos.get(v, v) if k in FRAME_PARAMS else v for k, v in (d.get("params") or {}).items()}
        if params.get("from_frame", 0) > params.get("to_frame", float("inf")):  # time ran backwards
            params["from_frame"], params["to_frame"] = params["to_frame"], params["from_frame"]
        out.append({**d, "frames": frames, "params": params})
    return out


def rescore(src: PointwiseRecord, defects: list[dict], caps: dict[str, int]) -> dict:
    """The module docstring's rule: toy records from their (remapped) defects, others from their scores."""
    if _is_toy(src):
        dims = dimension_scores([d for d in defects if d["type"] not in KINDS])
        dims = {k: min(v, caps.get(k, v)) for k, v in dims.items()}
        return {**dims, "overall": overall_score(dims)}
    dims = {k: v for k, v in src.scores.items() if k != "overall"}
    for dim, cap in caps.items():
        if dim in dims or _default_names(src):  # the default vocabulary: a missing one is set to its cap
            dims[dim] = min(dims.get(dim, cap), cap)
    scores = dict(dims)
    if "overall" in src.scores:  # own dimension names: a cap on one they lack bounds overall alone
        scores["overall"] = min(src.scores["overall"], *dims.values(), *caps.values())
    return scores


def _default_names(src: PointwiseRecord) -> bool:
    return set(src.scores) <= set(JudgeSpec().dimensions)


def labelable(src: PointwiseRecord, kind: str) -> bool:
    """Whether the rule can say the variant is worse: a toy record, one with the default dimension
    names, or one that scores the broken dimension or overall (own names without either: no label)."""
    return (
        _is_toy(src) or _default_names(src) or KIND_DIMENSION[kind] in src.scores or "overall" in src.scores
    )


def _encoded(src, kind, frames, fps, order, defects, caps, out: Path) -> PointwiseRecord:
    rel = f"videos/{_safe(src.id)}.{kind}.mp4"
    encode(out / rel, [frames[i] for i in order], fps)
    size = {"height": frames[0].shape[0], "width": frames[0].shape[1]}
    return _variant(src, kind, defects, caps, rel, fps, len(order), src.prompt, {**size, "order": order})


def _variant(src, kind, defects, caps, rel, fps, n, prompt, extra) -> PointwiseRecord:
    defects = sorted(defects, key=lambda d: (d["frames"][0], d["type"]))
    meta = {"negative": kind, "source_id": src.id, "defects": defects, "frame_defects": frame_index(defects)}
    meta |= {"fps": fps, "num_frames": n}
    meta |= {"spec": (src.meta or {}).get("spec")} | extra
    if meta["spec"] is None:
        del meta["spec"]
    return PointwiseRecord(f"{src.id}.{kind}", rel, prompt, rescore(src, defects, caps), meta, src.split)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)


def _pair(src: PointwiseRecord, src_video: str, neg: PointwiseRecord, rng) -> PairRecord:
    a, b = (src, neg) if rng.random() < 0.5 else (neg, src)
    video = {src.id: src_video, neg.id: neg.video}
    dims = compare(a.scores, b.scores)
    meta = {"kind": "negative", "negative": neg.meta["negative"], "id_a": a.id, "id_b": b.id,
            "scores_a": a.scores, "scores_b": b.scores}  # fmt: skip
    prompt_b = b.prompt if b.prompt != a.prompt else None
    return PairRecord(f"{neg.id}.pair", a.prompt, video[a.id], video[b.id], preference(dims), dims, meta,
                      prompt_b, src.split)  # fmt: skip


# ---- CLI ----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m data_synthesis.negatives", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--input", required=True, help="pointwise JSONL (README, Data formats)")
    parser.add_argument("--out", required=True, help="folder for videos/, pointwise.jsonl, pairs.jsonl")
    parser.add_argument(
        "--kinds", default=",".join(KINDS), help=f"comma-separated subset of {','.join(KINDS)}"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rate", type=float, default=1.0, help="probability of each kind per record")
    args = parser.parse_args(argv)
    try:
        counts = write_negatives(read_jsonl(args.input), args.out, kinds=args.kinds.split(","), seed=args.seed,
                                 rate=args.rate)  # fmt: skip
    except (VideoError, ValueError) as err:
        print(f"negatives: {err}", file=sys.stderr)
        return 2
    print(json.dumps(counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
