"""What RFT judges: one row per video of the traces' splits (its label and its synthesized trace), and
the pairs whose order the keep rule checks; then the SFT traces it writes from the chosen draws.

Trace format (docs/formats.md, section 4): a kept draw becomes a trace like a synthesized one, with the
model's own turns as the assistant messages, the label as `scores` (on every dimension the checkpoint
scores, null where unlabelled, so the system prompt lists what the model answered) and `provenance`
naming the checkpoint that sampled it. Video references are relative to the traces file's folder.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from cot_rm.protocol import PROTOCOL_VERSION, JudgeSpec
from cot_rm.train.data import first_pairs, load_traces
from cot_rm.train.rft.keep import Pair


@dataclass
class Videos:
    """`rows`: what a rollout needs (id, video, prompt, sampling, tool_max_pixels) plus `trace`, the
    synthesized trace; `labels`: id -> score per checkpoint dimension (None: unlabelled)."""

    rows: list[dict]
    labels: dict[str, dict]
    pairs: list[Pair] = field(default_factory=list)
    pairs_skipped: Counter = field(default_factory=Counter)


def load_videos(data, spec: JudgeSpec) -> Videos:
    """The videos of `data.splits` in the traces file (rationale-free copies left out, one row per video
    and prompt, the first `data.limit`), and the pairs of `data.pairs` over them."""
    traces = [t for t in load_traces(data.train, data.splits) if not t.get("rationale_free")]
    rows, seen, ids = [], set(), set()
    for t in traces:
        key = (os.path.realpath(t["video"]), t["prompt"])
        if key in seen:
            continue
        if t["id"] in ids:  # the sample log is keyed by it
            raise ValueError(f"{data.train}: trace id {t['id']!r} names two videos; ids must be unique")
        if extra := [d for d, v in t["scores"].items() if v is not None and d not in spec.dimensions]:
            raise ValueError(f"{data.train}: {t['id']}: labelled on {extra}, which the checkpoint does not "
                             f"score (its dimensions: {list(spec.dimensions)})")  # fmt: skip
        seen.add(key)
        ids.add(t["id"])
        rows.append({"id": t["id"], "video": t["video"], "prompt": t["prompt"], "sampling": t["sampling"],
                     "tool_max_pixels": t.get("tool_max_pixels"), "trace": t})  # fmt: skip
    rows = rows[: data.limit] if data.limit else rows
    if not rows:
        raise ValueError(f"{data.train}: no traces in splits {data.splits}")
    labels = {r["id"]: {d: r["trace"]["scores"].get(d) for d in spec.dimensions} for r in rows}
    out = Videos(rows, labels)
    if data.pairs:
        _pairs(out, data, spec)
    return out


def _pairs(out: Videos, data, spec: JudgeSpec) -> None:
    """Each video in at most one pair (the first in the file), as GRPO draws them: a video's draws are
    chosen once, so they cannot be made to order against two partners."""
    index = {(os.path.realpath(r["video"]), r["prompt"]): r["id"] for r in out.rows}
    pairs, skipped = first_pairs(data.pairs, data.splits, index)
    out.pairs_skipped.update(skipped)
    for p, a, b in pairs:
        label = {d: v for d, v in (p.dims or {"overall": p.preference}).items() if d in spec.dimensions}
        out.pairs.append(Pair(a, b, label))


def with_video_ref(messages: list[dict], ref: str) -> list[dict]:
    """`messages` with every video reference (the user's video, the tool's frames) set to `ref`."""
    out = []
    for m in messages:
        if isinstance(m.get("content"), list):
            parts = []
            for c in m["content"]:
                if c.get("type") == "video":
                    c = {**c, "video": ref}
                elif c.get("type") == "image" and isinstance(c.get("image"), dict):
                    c = {**c, "image": {**c["image"], "video": ref}}
                parts.append(c)
            m = {**m, "content": parts}
        out.append(m)
    return out


def kept_trace(row: dict, draw: dict, labels: dict, spec: JudgeSpec, ref: str, sampled_by: dict) -> dict:
    """The SFT trace of a chosen draw. It inherits its source trace's sampling, tool resolution and tool
    budgets, so kept and fallback traces share one setting (`cot_rm.train.data.trace_settings`)."""
    source = row["trace"]
    trace = {"id": row["id"], "messages": with_video_ref(draw["messages"], ref), "video": ref,
             "sampling": source["sampling"], "scores": labels, "prompt": row["prompt"],
             "frame_indices": draw.get("frame_indices"), "teacher_scores": draw["answer"],
             "source_id": source.get("source_id", row["id"]), "tool_frames": draw["tool_frames"],
             "frames_cited": draw["frames_cited"], "rationale_free": False,
             "provenance": {"teacher": "rft", **sampled_by, "draw": draw["draw"], "seed": draw["seed"],
                            "protocol_version": PROTOCOL_VERSION}}  # fmt: skip
    for key in ("tool_max_pixels", "split"):
        if key in source:
            trace[key] = source[key]
    if source.get("judge_spec"):
        trace["judge_spec"] = {**source["judge_spec"], "dimensions": list(spec.dimensions)}
    return trace


def fallback_trace(row: dict, ref: str) -> dict:
    """The video's synthesized trace, marked as the fallback, its video referenced from the new file."""
    t = row["trace"]
    return {**t, "video": ref, "messages": with_video_ref(t["messages"], ref), "rft_fallback": True}


def video_ref(path: str, folder: Path) -> str:
    """A video's path as a trace in `folder` names it (relative, as synthesis writes them; URLs as they are)."""
    return path if "://" in path else os.path.relpath(path, folder.resolve())
