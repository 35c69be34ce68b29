"""What a toy-world video shows, in words: the descriptive targets of the tiny base's perception pretraining.

A caption of what was actually drawn (count, colour, shape, direction, speed, background: the prompt's
spec after any alignment defect changed it) and one line per visible event, citing the frames where it
shows. The words describe pixels, never a judgement: no scores, no "wrong", no dimension names, nothing
compared with a prompt (the pretraining sees no prompt). This is the toy world's analogue of the
captioning data a real Qwen-VL base was pretrained on.

    describe(meta, frames=[0, 4, 9, 13, 18, 22, 27, 31])
    -> "Two purple squares on a white background, moving up slowly. Frames 9, 13 and 18: the picture
        flickers dark (strong)."

`frames` limits the events to those a model shown these frames can see (the judge's sampled frames);
a teleport, whose two frames rarely are both sampled, is cited by the sampled frames around the jump.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from data_synthesis.toyworld.plan import COUNT_WORDS, SPEED_WORDS

INTENSITY = {1: "faint", 2: "clear", 3: "strong"}
NUMBER = {0: "no", 1: "one", 2: "two", 3: "three"}
BACK = {"left": "right", "right": "left", "up": "down", "down": "up"}


def drawn_spec(meta: dict) -> dict:
    """The prompt's spec as drawn: alignment defects replace the colour, shape, count or direction. A
    video judged against another video's prompt (a prompt_swap negative) carries its own in `drawn`."""
    if "drawn" in meta:
        return dict(meta["drawn"])
    drawn = dict(meta["spec"])
    for d in meta.get("defects", []):
        key = d["type"].removeprefix("wrong_")
        if d["dimension"] == "text_alignment" and key in drawn:
            drawn[key] = d["params"]["actual"]
    return drawn


def caption(spec: dict) -> str:
    """ "Two purple squares on a white background, moving up slowly." (what is drawn, not asked for)."""
    n = int(spec["count"])
    noun = spec["shape"] + ("s" if n > 1 else "")
    head = f"{COUNT_WORDS[n]} {spec['colour']} {noun}"
    return f"{head[0].upper()}{head[1:]} on a {spec['background']} background, moving {spec['direction']} " \
        f"{SPEED_WORDS[spec['speed']]}."  # fmt: skip


def objects(spec: dict) -> str:
    return "the " + spec["shape"] + ("s" if int(spec["count"]) > 1 else "")


def event(defect: dict, spec: dict) -> str | None:
    """What a defect looks like, without judging it; None for what the caption already says."""
    kind, p = defect["type"], defect.get("params") or {}
    how = INTENSITY.get(int(defect.get("severity", 2)), "clear")
    them = objects(spec)
    return {
        "flicker": f"the picture flickers {'dark' if p.get('towards', 'black') == 'black' else 'bright'} ({how})",
        "noise": f"grainy noise covers the picture ({how})",
        "blur": f"the picture is blurred ({how})",
        "blockiness": f"the picture breaks into blocks ({how})",
        "banding": f"the colours step in bands ({how})",
        "missing_object": _missing(int(p.get("count_visible", int(spec["count"]) - 1)), spec["shape"]),
        "teleport": f"{them} jump to another place",
        "freeze": f"{them} stand still",
        "reversal": f"{them} move back {BACK[spec['direction']]}",
        "morphing": f"the shape changes into a {p.get('to_shape', 'different shape')}",
        "wall_pass": f"{them} pass through a wall",
        "speed_change": f"{them} suddenly speed up",
    }.get(kind)


def _missing(visible: int, shape: str) -> str:
    if visible == 0:
        return f"the {shape} is gone"
    return f"only {NUMBER[visible]} {shape}{'s' if visible > 1 else ''} visible"


def visible_frames(defect: dict, frames: Sequence[int] | None) -> list[int]:
    """The frames among `frames` where `defect` shows (a teleport: the sampled frames around its jump)."""
    own = sorted(int(f) for f in defect.get("frames") or [])
    if frames is None or not own:
        return own
    seen = sorted({int(f) for f in frames})
    if defect["type"] == "teleport":
        before = [f for f in seen if f <= own[0]]
        after = [f for f in seen if f >= own[-1]]
        return [before[-1], after[0]] if before and after else []
    return [f for f in seen if f in set(own)]


def cite(frames: Sequence[int]) -> str:
    frames = list(frames)
    if len(frames) == 1:
        return f"Frame {frames[0]}"
    return "Frames " + ", ".join(map(str, frames[:-1])) + f" and {frames[-1]}"


def describe(meta: dict, frames: Sequence[int] | None = None) -> str:
    """The caption, then each visible event in time order: "Frames 9 and 13: the picture flickers dark"."""
    spec = drawn_spec(meta)
    lines = [caption(spec)]
    events = []
    for d in meta.get("defects", []):
        text, at = event(d, spec), visible_frames(d, frames)
        if text and at:
            events.append((at[0], f"{cite(at)}: {text}."))
    lines += [text for _, text in sorted(events)]
    return " ".join(lines)


# Events that need motion to be seen: a single frame cannot show them.
MOTION = frozenset({"teleport", "freeze", "reversal", "speed_change"})


def describe_frame(meta: dict, frame: int) -> str:
    """One frame seen alone (the tool's view): what is drawn, then what is wrong with this frame's pixels."""
    spec = drawn_spec(meta)
    lines = [caption(spec).split(", moving")[0] + "."]
    for d in meta.get("defects", []):
        if d["type"] not in MOTION and frame in d.get("frames", []) and (text := event(d, spec)):
            lines.append(text[0].upper() + text[1:] + ".")
    return " ".join(lines)


_CAPTION = re.compile(
    r"^(a|two|three) (\w+) (\w+?)s? on a (\w+) background(?:, moving (\w+) (slowly|quickly))?", re.IGNORECASE
)
# The words each kind of event is written with (see `event`), to read a description back.
EVENT_WORDS = {
    "flicker": "flickers", "noise": "grainy noise", "blur": "blurred", "blockiness": "blocks",
    "banding": "in bands", "missing_object": r"visible\b|\bis gone", "teleport": "jump to another",
    "freeze": "stand still", "reversal": "move back", "morphing": "shape changes", "wall_pass": "through a wall",
    "speed_change": "speed up",
}  # fmt: skip


def read_description(text: str) -> dict:
    """The caption's attributes (None where unreadable) and the set of event kinds a description names."""
    m = _CAPTION.match(text.strip())
    keys = ("count", "colour", "shape", "background", "direction", "speed")
    found = dict(zip(keys, m.groups())) if m else dict.fromkeys(keys)
    if found["count"]:
        found["count"] = {"a": 1, "two": 2, "three": 3}[found["count"].lower()]
        found["colour"] = found["colour"].lower()
    if found["speed"]:
        found["speed"] = {"slowly": "slow", "quickly": "fast"}[found["speed"]]
    found["events"] = {k for k, words in EVENT_WORDS.items() if re.search(words, text)}
    return found
