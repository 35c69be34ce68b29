"""Preference-anchored rationalisation (as in RationalRewards / VideoScore2).

The teacher sees the frames, the prompt and the human label and writes the critique that justifies
it, ending in the protocol's `<answer>`. The one protocol parser reads it; the consistency filter
keeps it only when the answer agrees with the label. Near misses get a bounded number of rewrites;
an optional blind re-judgement (no label shown) must agree too.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from cot_rm.protocol import DIMENSION_HELP, JudgeSpec, Judgment, ParseError, parse_judgment
from data_synthesis import filters
from data_synthesis.filters import ConsistencyRule
from data_synthesis.teachers.base import Teacher, TeacherRequest

PROMPT_VERSION = "rationale/1"


@dataclass(frozen=True)
class RationaleConfig:
    spec: JudgeSpec = JudgeSpec()
    rule: ConsistencyRule = ConsistencyRule()
    max_rewrites: int = 1  # rewrite rounds for near misses (0 = none)
    blind: bool = False  # also re-judge without the label and require agreement
    max_tokens: int = 1024


@dataclass
class Item:
    """One labelled video ready for the teacher: the frames it sees and their captions."""

    record: Any  # cot_rm.schema.PointwiseRecord
    images: list
    captions: list[str]
    total_frames: int
    fps: float
    seed: int
    shown: tuple[int, ...] = ()  # the frames the judged model sees in its first turn (the trace's video)


@dataclass
class Outcome:
    id: str
    judgment: Judgment | None = None  # the accepted critique
    reason: str | None = (
        None  # why it was rejected: teacher_error | unparseable | inconsistent | blind_disagrees
    )
    detail: str = ""
    rewrites: int = 0
    teacher_scores: dict | None = None
    parse_errors: list[str] = field(default_factory=list)  # every ParseError reason met on the way


def label_spec(record, spec: JudgeSpec) -> JudgeSpec:
    """The spec restricted to the dimensions this record is labelled on."""
    return replace(spec, dimensions=tuple(record.scores))


def teacher_system(spec: JudgeSpec) -> str:
    dims = "\n".join(f"- {d}: {DIMENSION_HELP.get(d, d.replace('_', ' '))}" for d in spec.dimensions)
    return (
        "You are an expert annotator of AI-generated videos. You write the critique a careful judge "
        f"writes before scoring a video on:\n{dims}\nScores run from {spec.score_min:g} (worst) to "
        f'{spec.score_max:g} (best). Cite the frames you rely on by their index, as in "frame 12".\n'
        "Answer in exactly this form and write nothing after it:\n"
        "<think>your critique</think>\n<answer>{JSON object: dimension -> score}</answer>"
    )


def _context(item: Item) -> str:
    r = item.record
    return (
        f'Generation prompt: "{r.prompt}"\nThe images are {len(item.images)} of the video\'s '
        f"{item.total_frames} frames ({item.fps:.2f} fps), each captioned with its frame index."
    )


def anchored_request(item: Item, cfg: RationaleConfig) -> TeacherRequest:
    label = json.dumps(item.record.scores)
    text = (
        f"{_context(item)}\nHuman ratings: {label}\n"
        "Write the critique that leads to exactly these ratings: describe what you see, name each flaw "
        "and the frames that show it, and explain every rating. End with the ratings in <answer>."
    )
    return _request(item, cfg, text, item.seed)


def blind_request(item: Item, cfg: RationaleConfig) -> TeacherRequest:
    text = f"{_context(item)}\nJudge the video: critique it, cite frames, then give your ratings in <answer>."
    return _request(item, cfg, text, item.seed + 1)


def rewrite_request(
    item: Item, cfg: RationaleConfig, previous: str, off: dict, attempt: int
) -> TeacherRequest:
    diffs = ", ".join(f"{d}: you gave {item.record.scores[d] + x:g}, humans gave {item.record.scores[d]:g}"
                      for d, x in off.items())  # fmt: skip
    text = (
        f"{_context(item)}\nHuman ratings: {json.dumps(item.record.scores)}\nYour critique was:\n{previous}\n"
        f"It disagrees with the human ratings ({diffs}). Look at the frames again and rewrite the critique "
        "so that what it says supports the human ratings. End with exactly those ratings in <answer>."
    )
    return _request(item, cfg, text, item.seed + 100 + attempt)


def _request(item: Item, cfg: RationaleConfig, text: str, seed: int) -> TeacherRequest:
    return TeacherRequest(
        id=item.record.id,
        system=teacher_system(label_spec(item.record, cfg.spec)),
        text=text,
        images=item.images,
        captions=item.captions,
        record=item.record,
        seed=seed,
        shown=item.shown,
        max_tokens=cfg.max_tokens,
    )


def rationalize(teacher: Teacher, items: Sequence[Item], cfg: RationaleConfig) -> list[Outcome]:
    """Anchored critiques for a batch, filtered; one teacher call per stage so endpoints batch well."""
    outcomes = [Outcome(it.record.id) for it in items]
    replies = teacher.generate([anchored_request(it, cfg) for it in items])
    pending = {i: _judge(outcomes[i], items[i], r.text, r.error, cfg) for i, r in enumerate(replies)}
    for attempt in range(cfg.max_rewrites):
        near = {i: v for i, v in pending.items() if v is not None and v[0].status == filters.NEAR_MISS}
        if not near:
            break
        reqs = [rewrite_request(items[i], cfg, v[1], v[0].off, attempt) for i, v in near.items()]
        for (i, _), reply in zip(near.items(), teacher.generate(reqs), strict=True):
            outcomes[i].rewrites += 1
            pending[i] = _judge(outcomes[i], items[i], reply.text, reply.error, cfg)
    for i, v in pending.items():
        if v is not None and v[0].status != filters.ACCEPT:
            outcomes[i].judgment = None
            outcomes[i].reason, outcomes[i].detail = "inconsistent", _offs(v[0].off)
    if cfg.blind:
        _blind_check(teacher, items, outcomes, cfg)
    return outcomes


def _judge(out: Outcome, item: Item, text: str | None, error: str | None, cfg: RationaleConfig):
    """Parse and filter one reply into `out`; returns (verdict, text) or None when it cannot be scored."""
    if text is None:
        out.judgment, out.reason, out.detail = None, "teacher_error", error or "no reply"
        return None
    parsed = parse_judgment(text, label_spec(item.record, cfg.spec))
    if isinstance(parsed, ParseError):
        out.parse_errors.append(parsed.reason)
        out.judgment, out.reason, out.detail = None, "unparseable", str(parsed)
        return None
    verdict = filters.check(parsed.scores, item.record.scores, cfg.rule)
    out.judgment, out.teacher_scores, out.reason, out.detail = parsed, parsed.scores, None, ""
    return verdict, text


def _blind_check(
    teacher: Teacher, items: Sequence[Item], outcomes: list[Outcome], cfg: RationaleConfig
) -> None:
    kept = [i for i, o in enumerate(outcomes) if o.judgment is not None]
    replies = teacher.generate([blind_request(items[i], cfg) for i in kept])
    for i, reply in zip(kept, replies, strict=True):
        if reply.text is None:
            detail = f"blind re-judgement failed: {reply.error or 'no reply'}"
        elif isinstance(
            parsed := parse_judgment(reply.text, label_spec(items[i].record, cfg.spec)), ParseError
        ):
            outcomes[i].parse_errors.append(parsed.reason)
            detail = f"blind reply unparseable ({parsed})"
        else:
            verdict = filters.check(parsed.scores, items[i].record.scores, cfg.rule)
            if verdict.status == filters.ACCEPT:
                continue
            detail = f"blind judgement off: {_offs(verdict.off)}"
        outcomes[i].judgment, outcomes[i].reason, outcomes[i].detail = None, "blind_disagrees", detail


def _offs(off: dict) -> str:
    return ", ".join(f"{d} {x:+g}" for d, x in off.items())
