"""Are the critiques faithful to the video? A check that needs the truth, so it runs on toy-world data.

Each toy video's `meta.defects` says exactly what is wrong with it. For every judged toy video this reads
which defect types its critique names (by the words each type is written with) and compares:

    recall           defects present (by type) that the critique names / defects present
    false_mentions   critiques that name at least one type the video does not have / critiques

A critique can score well and still invent a flicker or miss a freeze; these two numbers catch that.
Sentences that deny a problem ("No flicker, noise or blur is visible.", "Nothing jumps, freezes or
reverses.") name nothing, and the prompt restated in the critique is not read as a finding.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

COLOUR = r"(?:red|yellow|green|cyan|blue|purple)"
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


def toy_defects(records: list, kind: str, data: Path) -> dict[str, set[str]]:
    """{resolved video path: its defect types} from the records' own `meta.defects` (toy pointwise files)
    or, for toy pairs, from the `pointwise.jsonl` the toy world writes beside `pairs.jsonl`; {} otherwise."""
    if kind == "pointwise":
        return {str(Path(r.video).resolve()): _types(r.meta) for r in records if "defects" in (r.meta or {})}
    beside = Path(data).parent / "pointwise.jsonl"
    if not beside.is_file():
        return {}
    found = {}
    with beside.open(encoding="utf-8") as f:
        for line in f:
            row = json.loads(line) if line.strip() else {}
            if "defects" in (row.get("meta") or {}):
                found[str((beside.parent / row["video"]).resolve())] = _types(row["meta"])
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
