"""Are the critiques faithful to the video? A check that needs the truth, so it runs on toy-world data.

Each toy video's `meta.defects` says exactly what is wrong with it. For every judged toy video this reads
which defect types its critique names (by the words each type is written with) and compares:

    recall           defects present (by type) that the critique names / defects present
    false_mentions   critiques that name at least one type the video does not have / critiques

A critique can score well and still invent a flicker or miss a freeze; these two numbers catch that.
Sentences that deny a problem ("No flicker, noise or blur is visible.", "Nothing jumps, freezes or
reverses.") name nothing, and the prompt restated in the critique is not read as a finding.

It also reads what a critique says is drawn, from its "I see ..." sentence (or, without one, its first
sentence: "I see two red circles on a white background, moving left slowly."), against what the video
shows (`describe.drawn_spec`: the prompt with its alignment defects applied), per attribute:

    described[attr]  {"said": critiques that state it, "right": of those, how many match the video}

A judge cannot weigh the prompt against the video if it misreads the video: this is where it shows.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

from data_synthesis.toyworld.describe import drawn_spec
from data_synthesis.toyworld.plan import DIRECTIONS
from data_synthesis.toyworld.render import BACKGROUNDS, COLOURS, SHAPES

COLOUR = rf"(?:{'|'.join(COLOURS)})"
# The words each defect type is written with: the oracle teacher's phrasings, their plain synonyms, and
# the words of the description a critique opens with (data_synthesis/toyworld/describe.py's `event`:
# "Frames 9 and 13: the squares stand still.").
NAMES = {
    "flicker": r"flicker|brightness (?:jumps|pulses)|flashes",
    "noise": r"noise|grain|speckled",
    "blur": r"blur|look soft",
    "blockiness": r"block",
    "banding": r"banding|colour bands|bands:|step in bands",
    "wrong_colour": rf"colou?r is wrong|is {COLOUR} instead|show a {COLOUR} object|{COLOUR} where",
    "wrong_shape": r"shape mismatch|not the requested|but the object is an? ",
    "wrong_count": r"object\(s\)|counting the objects|wrong number",
    "wrong_direction": r"direction is wrong|motion goes \w+ although|moves \w+, not ",
    "missing_object": (
        r"missing|never appears|^no .+ is visible|\bis gone|^(?:frames? [\d, and]+: )?only \w+ \w+ visible"
    ),
    "teleport": r"teleport|jumps? to|skips across|jump in position",
    "freeze": r"freez|stalls|are identical|stops dead|stands? still",
    "reversal": r"revers|runs backwards|turns back|moves? back",
    "morphing": r"morph|changing shape|shape changes",
    "wall_pass": r"wall",
    "speed_change": r"speed (?:changes|jump)|change of speed|speed up",
}
_DENIAL = re.compile(r"^(?:no flicker|nothing jumps)", re.IGNORECASE)
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def named_defects(rationale: str, prompt: str = "") -> set[str]:
    """The defect types a critique names (its <think> text; denials and the restated prompt ignored)."""
    text = rationale.replace(prompt.rstrip("."), " ") if prompt else rationale
    found = set()
    for sentence in _SENTENCE.split(text):
        sentence = sentence.strip()
        if not sentence or _DENIAL.match(sentence):
            continue
        found |= {kind for kind, words in NAMES.items() if re.search(words, sentence, re.IGNORECASE)}
    return found


_NOUN = "|".join(SHAPES)
_SEEN = {
    "count": re.compile(rf"\b(a|an|one|two|three|[123])\s+(?:\w+\s+)?(?:{_NOUN})s?\b", re.IGNORECASE),
    "colour": re.compile(rf"\b({'|'.join(COLOURS)})\b", re.IGNORECASE),
    "shape": re.compile(rf"\b({_NOUN})s?\b", re.IGNORECASE),
    "background": re.compile(rf"\b({'|'.join(BACKGROUNDS)}) background", re.IGNORECASE),
    "direction": re.compile(rf"\bmov\w*\s+({'|'.join(DIRECTIONS)})\b", re.IGNORECASE),
    "speed": re.compile(r"\b(slowly|slow|quickly|fast)\b", re.IGNORECASE),
}
_COUNTS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "1": 1, "2": 2, "3": 3}
_SPEEDS = {"slowly": "slow", "quickly": "fast"}


def described(rationale: str) -> dict:
    """What a critique says is drawn, from its "I see ..." sentence or else its first: {attribute:
    value} for each attribute it states ({"count": 2, "colour": "red", "speed": "slow", ...})."""
    sentences = [x.strip() for x in _SENTENCE.split(rationale.strip()) if x.strip()]
    seen = next((x for x in sentences if re.search(r"\bI see\b", x)), sentences[0] if sentences else "")
    out = {}
    for key, pattern in _SEEN.items():
        if m := pattern.search(seen):
            word = m.group(1).lower()
            out[key] = _COUNTS[word] if key == "count" else _SPEEDS.get(word, word)
    return out


def description_accuracy(judgments: list[tuple[dict, dict]]) -> dict | None:
    """[(judgment, the video's drawn spec)] -> per attribute, how many critiques state it and how many of
    those match the video; None when nothing was judged."""
    if not judgments:
        return None
    said, right = Counter(), Counter()
    for judgment, drawn in judgments:
        for key, value in described(judgment.get("rationale") or "").items():
            said[key] += 1
            right[key] += value == (int(drawn[key]) if key == "count" else drawn[key])
    return {k: {"said": said[k], "right": right[k]} for k in _SEEN if said[k]}


def toy_truth(records: list, kind: str, data: Path) -> tuple[dict[str, set[str]], dict[str, dict]]:
    """({resolved video path: its defect types}, {path: what it draws (`describe.drawn_spec`), for the
    videos with a spec}), from one read of the toy metas (see `toy_metas`)."""
    metas = toy_metas(records, kind, data)
    return {p: _types(m) for p, m in metas.items()}, {
        p: drawn_spec(m) for p, m in metas.items() if "spec" in m
    }


def toy_metas(records: list, kind: str, data: Path) -> dict[str, dict]:
    """{resolved video path: its meta} from the records' own `meta.defects` (toy pointwise files) or, for
    toy pairs, from the `pointwise.jsonl` the toy world writes beside `pairs.jsonl`; {} otherwise."""
    if kind == "pointwise":
        return {str(Path(r.video).resolve()): r.meta for r in records if "defects" in (r.meta or {})}
    beside = Path(data).parent / "pointwise.jsonl"
    if not beside.is_file():
        return {}
    found = {}
    with beside.open(encoding="utf-8") as f:
        for line in f:
            row = json.loads(line) if line.strip() else {}
            if "defects" in (row.get("meta") or {}):
                found[str((beside.parent / row["video"]).resolve())] = row["meta"]
    return found


def _types(meta: dict) -> set[str]:
    return {d["type"] for d in meta["defects"]}


def faithfulness(judgments: list[tuple[dict, str, set[str]]]) -> dict | None:
    """[(judgment, its prompt, the video's true defect types)] -> recall and false mentions, overall and
    by type; None when nothing was judged. Judgments without a rationale count as naming nothing."""
    if not judgments:
        return None
    present, named, absent_named = Counter(), Counter(), Counter()
    false_critiques = 0
    for judgment, prompt, truth in judgments:
        said = named_defects(judgment.get("rationale") or "", prompt)
        present.update(truth)
        named.update(truth & said)
        absent_named.update(said - truth)
        false_critiques += bool(said - truth)
    return {
        "videos": len(judgments),
        "defects_present": sum(present.values()),
        "recall": round(sum(named.values()) / max(sum(present.values()), 1), 4),
        "false_mentions": round(false_critiques / len(judgments), 4),
        "recall_by_type": {k: f"{named[k]}/{present[k]}" for k in sorted(present)},
        "false_mentions_by_type": dict(sorted(absent_named.items())),
    }
