"""The keep rule, the selection rule and their counts (plain Python: tested on hand-written judgments).

A draw is one sampled judgment of a video, as the sample log holds it (`answer`: the parsed `<answer>`
scores or None, `parse_error`: the protocol parser's reason or None, `tokens`: generated tokens,
`invalid_calls`, `frames_cited`, `draw`: its index). It is rejected, for the first reason that applies:

1. `unparsed`: the judgment did not parse (`cot_rm.protocol`'s reason is counted beside it; a turn cut by
   the length budget is `truncated`);
2. `invalid_tool_call`: it made a select_frames call the tool refused (unless `allow_invalid_calls`):
   training on it would teach the bad call and its error turn;
3. `tolerance`: its answer is further than `tolerance` from the label on a labelled dimension;
4. `pair_order`: the video is one side of a pair, the other side has draws that passed 1-3, and none of
   them is ordered with this one as the label orders the pair on every dimension it orders (A or B; a
   tie is not checked). When only one side has such draws, the pair cannot be checked and each side is
   judged alone (counted as `one_side_only`).

The draws left are kept. A video trains on one of them, the first by `selection`: `shortest` (fewest
generated tokens, then lowest draw index), `most_frames` (most frames cited, then shortest), `first`
(lowest draw index). On a checked pair the two sides are chosen together: the ordered couple whose
summed ranks are lowest. A video with no kept draw falls back to its synthesized trace or is dropped
(`fallback`), counted either way.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

SELECTIONS = ("shortest", "most_frames", "first")
FALLBACKS = ("synthesized", "drop")
REJECT_REASONS = ("unparsed", "invalid_tool_call", "tolerance", "pair_order")
_EPS = 1e-9  # answers and labels are decimals: 3.0 vs 2.9 with tolerance 0.1 is within


@dataclass(frozen=True)
class KeepRule:
    tolerance: float = 0.0
    pair_order: bool = True
    allow_invalid_calls: bool = False
    selection: str = "shortest"

    def __post_init__(self):
        if self.selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS}, got {self.selection!r}")


@dataclass(frozen=True)
class Pair:
    """Two videos (their ids) and the label's preference per dimension ("A", "B" or "tie")."""

    a: str
    b: str
    label: dict[str, str]


@dataclass
class Outcome:
    """Every draw's verdict ("kept" or a reject reason), keyed (video id, draw index); the draw each video
    trains on; what happened to the pairs."""

    verdicts: dict[tuple[str, int], str] = field(default_factory=dict)
    chosen: dict[str, dict] = field(default_factory=dict)
    pairs: Counter = field(default_factory=Counter)


def off_dimensions(answer: dict[str, float], label: dict[str, float | None], tolerance: float) -> list[str]:
    """The labelled dimensions on which `answer` is further than `tolerance` from the label."""
    return [d for d, v in label.items() if v is not None and abs(answer[d] - v) > tolerance + _EPS]


def own_verdict(draw: dict, label: dict[str, float | None], rule: KeepRule) -> str | None:
    """The reason `draw` is rejected on its own (rules 1-3), or None when it passes them."""
    if draw["parse_error"] is not None:  # the sampler sets `answer` exactly when it parsed
        return "unparsed"
    if draw["invalid_calls"] and not rule.allow_invalid_calls:
        return "invalid_tool_call"
    if off_dimensions(draw["answer"], label, rule.tolerance):
        return "tolerance"
    return None


def ordered(a: dict[str, float], b: dict[str, float], label: dict[str, str]) -> bool:
    """Whether answers `a` and `b` order the pair as `label` does on every dimension it orders."""
    for d, pref in label.items():
        if pref == "A" and not a[d] > b[d]:
            return False
        if pref == "B" and not a[d] < b[d]:
            return False
    return True


def rank(draw: dict, selection: str) -> tuple[int, ...]:
    """Sort key of a kept draw under `selection`: the lowest is chosen."""
    if selection == "shortest":
        return (draw["tokens"], draw["draw"])
    if selection == "most_frames":
        return (-len(draw["frames_cited"]), draw["tokens"], draw["draw"])
    return (draw["draw"],)


def choose(
    labels: dict[str, dict], draws: dict[str, list[dict]], pairs: Sequence[Pair], rule: KeepRule
) -> Outcome:
    """Apply the keep rule to every draw and choose each video's draw (see the module doc). `labels`:
    video id -> its label scores; `draws`: video id -> its draws; each video in at most one of `pairs`."""
    out = Outcome()
    passing = {}
    for vid, found in draws.items():
        passing[vid] = []
        for d in found:
            reason = own_verdict(d, labels[vid], rule)
            out.verdicts[(vid, d["draw"])] = reason or "kept"
            if reason is None:
                passing[vid].append(d)
    done = set()
    for pair in pairs if rule.pair_order else ():
        out.pairs["used"] += 1
        if not (passing.get(pair.a) and passing.get(pair.b)):
            out.pairs["one_side_only"] += 1
            continue
        _choose_pair(out, pair, passing[pair.a], passing[pair.b], rule.selection)
        done.update((pair.a, pair.b))
    for vid, kept in passing.items():
        if vid not in done and kept:
            out.chosen[vid] = min(kept, key=lambda d: rank(d, rule.selection))
    return out


def _choose_pair(out: Outcome, pair: Pair, a_kept: list[dict], b_kept: list[dict], selection: str) -> None:
    couples = [(x, y) for x in a_kept for y in b_kept if ordered(x["answer"], y["answer"], pair.label)]
    out.pairs["ordered" if couples else "not_ordered"] += 1
    for vid, kept, side in ((pair.a, a_kept, 0), (pair.b, b_kept, 1)):
        in_couple = {c[side]["draw"] for c in couples}
        for d in kept:
            if d["draw"] not in in_couple:
                out.verdicts[(vid, d["draw"])] = "pair_order"
    if couples:
        best = min(couples, key=lambda c: tuple(map(sum, zip(rank(c[0], selection), rank(c[1], selection)))))
        out.chosen[pair.a], out.chosen[pair.b] = best


def summarize(out: Outcome, labels: dict[str, dict], draws: dict[str, list[dict]], rule: KeepRule,
              fallback: str) -> dict:  # fmt: skip
    """The counts of one selection: draws kept and rejected by reason (beside them the parser's reasons,
    and the dimensions parsed answers missed by more than the tolerance), videos with a kept draw,
    fallbacks or drops, and the pairs."""
    verdicts = Counter(out.verdicts.values())
    every = [d for found in draws.values() for d in found]
    off = Counter(
        dim
        for vid, found in draws.items()
        for d in found
        if d["parse_error"] is None
        for dim in off_dimensions(d["answer"], labels[vid], rule.tolerance)
    )
    without = sum(1 for vid in draws if vid not in out.chosen)
    return {
        "videos": len(draws),
        "draws": len(every),
        "kept": verdicts["kept"],
        "keep_rate": round(verdicts["kept"] / len(every), 4) if every else None,
        "rejected": {reason: verdicts[reason] for reason in REJECT_REASONS},
        "unparsed_by_reason": dict(
            sorted(Counter(d["parse_error"] for d in every if d["parse_error"]).items())
        ),
        "off_by_dimension": dict(sorted(off.items())),
        "videos_with_kept": len(out.chosen),
        "videos_without_kept": without,
        "fallback_synthesized": without if fallback == "synthesized" else 0,
        "dropped": without if fallback == "drop" else 0,
        "pairs": {k: out.pairs[k] for k in ("used", "ordered", "not_ordered", "one_side_only")},
    }
