"""What an imported rationale's free text says: the label lines it leaks, the scores it states, and the
text cleaned to become a critique.

Public chain-of-thought records (VideoScore2's `thinking`) were written by a model that was shown the
human labels, and some restate them ("ground-truth of Dim-1: 'Visual Quality': 3"). Such a line gives
the student the answer instead of a reason for it, so it is cut (`strip_leaks`). The scores the text
states in its own words ("Score: 3", "(Score: 4)", "Visual quality: 2/5") are read per dimension
(`stated_scores`) so that the consistency filter can check them against the label.

A score is given to a dimension by, in this order: the name the statement itself carries ("Visual
quality: 3"); the dimension named last in the same sentence before it ("the visual quality is poor
(Score: 2)"); the section it sits in, opened by a line that starts with a dimension's name ("1. **Visual
Quality**", "### Physical consistency"). A statement none of these place is counted as unattributed
and checks nothing; so is an overall score (the label's `overall` is computed, not annotated).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from cot_rm.protocol import defuse

# A leak names the human label; a digit in the same sentence is the label's value.
LEAK = re.compile(
    r"ground[\s_-]*truth|\bgt\b|\b(?:human|annotators?|annotated|reference|gold|true)(?:['’]s)?[\s_-]+"
    r"(?:scores?|labels?|ratings?)\b",
    re.IGNORECASE,
)
_PAREN = re.compile(r"[ \t]?\([^()\n]*\)")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
# Protocol tags in the text would end the critique early when the trace is parsed; their bodies stay.
_TAGS = re.compile(r"</?(?:think|answer|tool_call)>", re.IGNORECASE)
_RULE = re.compile(r"^\s*(?:[-*_=~#]\s*){3,}$")  # a markdown rule (---, ***, ===) left after a cut

OVERALL = "overall"  # sections and statements about the whole video: read, never checked
# Names as a heading or a named statement may write them (short forms included) ...
HEADING_NAMES = {
    "visual_quality": r"visual(?:\s+quality)?|image\s+quality|vq|dim(?:ension)?[-\s_]*1",
    "text_alignment": r"text[-\s]*(?:to[-\s]*video[-\s]*)?alignment|t2v(?:\s+alignment)?"
    r"|prompt[-\s]+(?:alignment|adherence|following|faithfulness)|alignment|dim(?:ension)?[-\s_]*2",
    "physical_consistency": r"physical(?:\s*/\s*common[-\s]*sense)?(?:\s+(?:consistency|plausibility|realism))?"
    r"|physics|common[-\s]*sense(?:\s+consistency)?|phy|dim(?:ension)?[-\s_]*3",
    OVERALL: r"overall|summary|conclusion|final(?:\s+(?:score|rating|verdict|assessment))?",
}
# ... and as running prose names them: full phrases only, since "visual glitches" in a paragraph on
# physics does not make its score a visual one.
PROSE_NAMES = {
    "visual_quality": r"visual\s+quality|image\s+quality",
    "text_alignment": HEADING_NAMES["text_alignment"],
    "physical_consistency": r"physical(?:\s*/\s*common[-\s]*sense)?\s+(?:consistency|plausibility|realism)"
    r"|physics|common[-\s]*sense",
    OVERALL: r"overall|final\s+(?:score|rating|verdict)",
}


def _names(names: dict[str, str]) -> str:
    return "|".join(f"(?P<{dim}>{pattern})" for dim, pattern in names.items())


# Each run of spaces is read by one pattern only, so a long run cannot make the search quadratic.
_NUMBER = r"[\s*]*(?P<value>\d+(?:\.\d+)?)(?:\s*(?:/|out\s+of)\s*(?P<of>\d+))?\**"
_HEADING = re.compile(
    r"^[\s#>*_\-+•·]*(?:\(?(?:\d{1,2}|[ivx]{1,4}|[a-c])[.):][\s*_#]*)?(?:" + _names(HEADING_NAMES) + r")\b",
    re.IGNORECASE,
)
_PROSE = re.compile(r"\b(?:" + _names(PROSE_NAMES) + r")\b", re.IGNORECASE)
# "Visual quality: 3", "'Visual Quality': 3/5", "physical consistency score: 2" (the number ends a clause,
# so "Text alignment: 2 cats instead of 3" is no score).
_NAMED = re.compile(
    r"\b(?:" + _names(HEADING_NAMES) + r")\b[*'\"’)\]]*(?:\s*(?:score|rating)\b)?[*'\"’)\]]*\s*[:：=]" + _NUMBER
    + r"(?=\s*(?:[.,;)\]]|$))",
    re.IGNORECASE,
)  # fmt: skip
# "Score: 3", "(Score: 4)", "a score of 2", "rating = 4/5"
_SCORE = re.compile(r"\b(?:score|rating)\s*(?:[:：=]|\bof\b|\bis\b)" + _NUMBER, re.IGNORECASE)


@dataclass
class Stated:
    """The scores a text states: dimension -> every value stated for it, in order."""

    scores: dict[str, list[float]] = field(default_factory=dict)
    unattributed: int = 0  # statements no dimension could be given to (or overall ones): not checked


def clean(text: str) -> tuple[str, int]:
    """The critique an imported rationale becomes, and how many lines had label text cut from them."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = defuse(_TAGS.sub("", text))  # control-token text cannot end the turn or forge media
    text, cut = strip_leaks(text)
    return _tidy(text), cut


def strip_leaks(text: str) -> tuple[str, int]:
    """`text` without the sentences that restate a human label; the count of lines touched.

    A leak inside parentheses goes alone ("smooth (ground truth: 4)." keeps "smooth."); otherwise its
    sentence goes, and a line with nothing left goes whole.
    """
    out, touched = [], 0
    for line in text.split("\n"):
        if not _leaks(line):
            out.append(line)
            continue
        touched += 1
        line = _PAREN.sub(lambda m: "" if _leaks(m.group()) else m.group(), line)
        kept = " ".join(s for s in _SENTENCE_END.split(line) if not _leaks(s))
        if kept.strip():
            out.append(kept)
    return "\n".join(out), touched


def _leaks(text: str) -> bool:
    return bool(LEAK.search(text)) and any(c.isdigit() for c in text)


def _tidy(text: str) -> str:
    """Trailing spaces, rules and blank lines left at the end by a cut, and long blank runs, removed."""
    lines = [line.rstrip() for line in text.split("\n")]
    while lines and (not lines[-1] or _RULE.match(lines[-1])):
        lines.pop()
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def stated_scores(text: str, score_min: float = 1.0, score_max: float = 5.0) -> Stated:
    """Per dimension, the scores `text` states on the judge's scale (other scales, e.g. "7/10", are left
    out); see the module's docstring for how a statement is given to a dimension."""
    stated, section = Stated(), None
    for line in text.split("\n"):
        if head := _HEADING.match(line):
            section = head.lastgroup
        prev_end = 0
        for match, dim in _statements(line):
            value = _value(match, score_min, score_max)
            if value is None:
                continue
            dim = dim or _named_before(line, prev_end, match.start()) or section
            prev_end = match.end()
            if dim is None or dim == OVERALL:
                stated.unattributed += 1
            else:
                stated.scores.setdefault(dim, []).append(value)
    return stated


def _statements(line: str):
    """(match, dimension or None) for each score statement of a line, in order; a named statement wins
    over the bare "score: N" inside it."""
    named = [(m, next(d for d in HEADING_NAMES if m.group(d))) for m in _NAMED.finditer(line)]
    bare = [(m, None) for m in _SCORE.finditer(line)
            if not any(n.start() <= m.start() < n.end() for n, _ in named)]  # fmt: skip
    return sorted(named + bare, key=lambda pair: pair[0].start())


def _named_before(line: str, start: int, end: int) -> str | None:
    """The dimension named last in the sentence that holds the statement (between `start` and `end`)."""
    window = line[start:end]
    window = _SENTENCE_END.split(window)[-1]
    found = list(_PROSE.finditer(window))
    return found[-1].lastgroup if found else None


def _value(match: re.Match, score_min: float, score_max: float) -> float | None:
    value, of = float(match.group("value")), match.group("of")
    if of is not None and float(of) != score_max:
        return None  # a score on another scale
    return value if score_min <= value <= score_max else None
