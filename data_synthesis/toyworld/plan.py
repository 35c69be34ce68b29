"""The toy world's grammar and its sampler: prompts, splits, and which defects go where.

Everything random takes a numpy Generator, so a (seed, index) pair fixes a prompt or a video exactly.
Alignment defects change what is drawn for the whole clip; every other defect gets its own frame span,
and spans never overlap (a freeze stays pixel-identical, a flicker is never hidden inside a freeze).
"""

from __future__ import annotations

import numpy as np

from data_synthesis.toyworld.render import BACKGROUNDS, COLOURS, SHAPES, Scene

COLOUR_RING = tuple(COLOURS)  # hue order
DIRECTIONS = ("left", "right", "up", "down")
OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}
SPEEDS = ("slow", "fast")
COUNTS = (1, 2, 3)
FPS = (8, 12, 16)
DURATIONS = (1.5, 2.0, 3.0, 4.0)  # seconds: 12 to 64 frames

# Colour x shape pairs seen only in the test split (never drawn in train/val, not even by a defect), so
# test measures generalisation to new combinations of known words.
HELD_OUT = frozenset({("red", "triangle"), ("yellow", "diamond"), ("green", "square"), ("blue", "circle")})
# Prompt index p gets SPLIT_CYCLE[p % 10]: 80/10/10, and the first three prompts cover all splits.
SPLIT_CYCLE = ("train", "val", "test", "train", "train", "train", "train", "train", "train", "train")

DEFECT_TYPES = {
    "visual_quality": ("flicker", "noise", "blur", "blockiness", "banding"),
    "text_alignment": ("wrong_colour", "wrong_shape", "wrong_count", "wrong_direction", "missing_object"),
    "physical_consistency": ("teleport", "freeze", "reversal", "morphing", "wall_pass", "speed_change"),
}
DIMENSION_OF = {t: dim for dim, types in DEFECT_TYPES.items() for t in types}
DEFECTS_PER_VIDEO = (0.2, 0.3, 0.3, 0.2)  # P(0, 1, 2, 3 defects): clean videos and every score level
# The types a frozen RANDOM tiny vision tower sees best at 8 frames x 112 px (a probe on its features,
# 2,000 videos: each type ranked its pairs 0.71-0.82, against 0.46-0.64 for blur, noise, blockiness,
# wrong_shape, missing_object, morphing, wall_pass). `cot-rm toyworld --defect-types visible`.
VISIBLE_TYPES = ("flicker", "banding", "wrong_colour", "wrong_direction", "reversal", "teleport", "freeze")  # fmt: skip

# Span length (fraction of the clip) by severity, for defects whose severity is how long they last.
SPAN_BY_SEVERITY = {
    "freeze": (0.2, 0.35, 0.5),
    "reversal": (0.25, 0.4, 0.55),
    "morphing": (0.2, 0.35, 0.5),
    "missing_object": (0.2, 0.4, 0.6),
}
SPEED_FACTOR = (2.0, 3.0, 4.0)  # speed_change, by severity
# wrong_shape severity: a rotated square is a near miss; a triangle is far from everything else.
SHAPE_SEVERITY = {frozenset(("square", "diamond")): 1, frozenset(("circle", "square")): 2,
                  frozenset(("circle", "diamond")): 2}  # fmt: skip
TEMPLATES = (
    "{count} {colour} {shapes} moving {direction} {speed} on a {background} background",
    "{Count} {colour} {shapes} {move} {direction} {speed} across a {background} background",
    "{count} {colour} {shapes} on a {background} background, moving {direction} {speed}",
)
COUNT_WORDS = {1: "a", 2: "two", 3: "three"}
SPEED_WORDS = {"slow": "slowly", "fast": "quickly"}


def pick(rng: np.random.Generator, options):
    options = list(options)
    return options[int(rng.integers(len(options)))]


def prompt_for(rng: np.random.Generator, p: int) -> tuple[dict, str, str]:
    """Prompt number p: its spec, its text and its split."""
    split = SPLIT_CYCLE[p % len(SPLIT_CYCLE)]
    combos = [(c, s) for c in COLOURS for s in SHAPES if ((c, s) in HELD_OUT) == (split == "test")]
    colour, shape = pick(rng, combos)
    spec = {
        "shape": shape,
        "colour": colour,
        "count": int(pick(rng, COUNTS)),
        "direction": pick(rng, DIRECTIONS),
        "speed": pick(rng, SPEEDS),
        "background": pick(rng, BACKGROUNDS),
    }
    return spec, prompt_text(spec, int(rng.integers(len(TEMPLATES)))), split


def prompt_text(spec: dict, template: int = 0) -> str:
    n = spec["count"]
    words = {
        "count": COUNT_WORDS[n],
        "Count": COUNT_WORDS[n].capitalize(),
        "colour": spec["colour"],
        "shapes": spec["shape"] + ("s" if n > 1 else ""),
        "move": "moves" if n == 1 else "move",
        "direction": spec["direction"],
        "speed": SPEED_WORDS[spec["speed"]],
        "background": spec["background"],
    }
    return TEMPLATES[template].format(**words)


def plan_video(
    rng: np.random.Generator,
    spec: dict,
    split: str,
    height: int,
    width: int,
    forced: list[tuple[str, int | None]] | None = None,
    fps: int | None = None,
    num_frames: int | None = None,
    types: frozenset[str] | None = None,
) -> tuple[Scene, int]:
    """A scene to render and its fps. `forced` [(type, severity or None)] replaces the random defects
    (tests use it to look at one defect at a time); `types` limits the random ones to those types."""
    fps = int(fps or pick(rng, FPS))
    n = int(num_frames or round(fps * pick(rng, DURATIONS)))
    for _ in range(100):  # resample until no held-out combination would be drawn outside test
        defects = _forced(rng, spec, n, forced) if forced is not None else _sample(rng, spec, n, types)
        scene = _scene(rng, spec, defects, height, width, n)
        if split == "test" or not _draws_held_out(scene):
            return scene, fps
    raise RuntimeError("could not sample defects that avoid the held-out colour x shape pairs")


def _sample(rng: np.random.Generator, spec: dict, n: int, types: frozenset[str] | None = None) -> list[dict]:
    allowed = {dim: [t for t in ts if types is None or t in types] for dim, ts in DEFECT_TYPES.items()}
    allowed = {dim: ts for dim, ts in allowed.items() if ts}  # a dimension with no type left: always clean
    defects: list[dict] = []
    for _ in range(int(rng.choice(len(DEFECTS_PER_VIDEO), p=DEFECTS_PER_VIDEO))):
        used = {d["type"] for d in defects}
        options = [t for t in allowed[pick(rng, allowed)] if t not in used]
        if options:
            defects.append(_defect(rng, pick(rng, options), None, spec))
    return _allocate(rng, defects, n)


def _forced(rng: np.random.Generator, spec: dict, n: int, forced) -> list[dict]:
    return _allocate(rng, [_defect(rng, t, sev, spec) for t, sev in forced], n)


def _defect(rng: np.random.Generator, kind: str, severity: int | None, spec: dict) -> dict:
    """One planned defect: severity, semantic params and (for span defects) the length it wants."""
    sev = int(severity or rng.integers(1, 4))
    d = {"type": kind, "dimension": DIMENSION_OF[kind], "severity": sev, "params": {}, "length": 0.0}
    if kind in ALIGNMENT_SAMPLERS:
        d["severity"], d["params"] = ALIGNMENT_SAMPLERS[kind](rng, spec, severity)
    elif kind == "teleport":
        d["params"] = {"direction": pick(rng, ("forward", "backward"))}
        d["length"] = -2  # exactly two frames: before and after the jump
    elif kind == "speed_change":
        d["params"] = {"factor": SPEED_FACTOR[sev - 1]}
        d["length"] = 0.3
    elif kind == "morphing":
        d["params"] = {"from_shape": spec["shape"], "to_shape": None}  # to_shape once the shape is known
    if kind in SPAN_BY_SEVERITY:
        d["length"] = SPAN_BY_SEVERITY[kind][d["severity"] - 1]
    elif d["dimension"] == "visual_quality":
        d["length"] = float(rng.uniform(0.2, 0.4))
    return d


def _wrong_colour(rng, spec, severity):
    i = COLOUR_RING.index(spec["colour"])
    sev = int(severity or rng.integers(1, 4))
    ring = len(COLOUR_RING)
    actual = COLOUR_RING[(i + pick(rng, sorted({sev, -sev}))) % ring]
    return sev, {"expected": spec["colour"], "actual": actual}


def _mismatch(rng, spec, key: str, values, severity_of, severity):
    """A wrong `key` drawn from `values`, at the requested severity when one exists."""
    options = [v for v in values if v != spec[key]]
    if severity is not None:
        options = [v for v in options if severity_of(spec[key], v) == severity] or options
    actual = type(spec[key])(pick(rng, options))
    return severity_of(spec[key], actual), {"expected": spec[key], "actual": actual}


def _wrong_shape(rng, spec, severity):
    return _mismatch(rng, spec, "shape", SHAPES, shape_severity, severity)


def shape_severity(expected: str, actual: str) -> int:
    return SHAPE_SEVERITY.get(frozenset((expected, actual)), 3)


def _wrong_count(rng, spec, severity):
    return _mismatch(rng, spec, "count", COUNTS, lambda expected, actual: abs(actual - expected), severity)


def _wrong_direction(rng, spec, severity):
    return _mismatch(rng, spec, "direction", DIRECTIONS, direction_severity, severity)


def direction_severity(expected: str, actual: str) -> int:
    """Opposite motion is the worst mismatch (3); perpendicular is 2."""
    return 3 if OPPOSITE[expected] == actual else 2


def _missing_object(rng, spec, severity):
    sev = int(severity or rng.integers(1, 4))
    return sev, {"expected": f"{spec['colour']} {spec['shape']}", "object": 0}


ALIGNMENT_SAMPLERS = {
    "wrong_colour": _wrong_colour,
    "wrong_shape": _wrong_shape,
    "wrong_count": _wrong_count,
    "wrong_direction": _wrong_direction,
    "missing_object": _missing_object,
}


def _allocate(rng: np.random.Generator, defects: list[dict], n: int) -> list[dict]:
    """Give each span defect disjoint frames in [1, n); alignment defects cover the whole clip.

    Lengths follow severity; when several defects do not fit, the longest shrink (never below their
    minimum), and a defect that still does not fit is left out."""
    spans = [d for d in defects if d["length"]]
    lengths = [_length(d, n) for d in spans]
    mins = [3 if d["type"] == "freeze" else 2 for d in spans]
    while sum(lengths) > n - 1:
        shrinkable = [i for i, (le, m) in enumerate(zip(lengths, mins)) if le > m]
        if not shrinkable:
            dropped = spans.pop()
            lengths.pop(), mins.pop()
            defects.remove(dropped)
            continue
        lengths[max(shrinkable, key=lambda i: lengths[i])] -= 1
    gaps = rng.multinomial(n - 1 - sum(lengths), [1 / (len(spans) + 1)] * (len(spans) + 1))
    pos = 1
    for idx, gap in zip(rng.permutation(len(spans)), gaps):
        pos += int(gap)
        _place(spans[idx], pos, lengths[idx])
        pos += lengths[idx]
    for d in defects:
        del d["length"]
        if "span" not in d and d["type"] != "wall_pass":  # wall_pass frames are measured when drawn
            d["frames"] = list(range(n))
        d.setdefault("frames", [])
    return defects


def _length(d: dict, n: int) -> int:
    if d["length"] < 0:
        return int(-d["length"])
    extra = 1 if d["type"] == "freeze" else 0
    return max(2, round(d["length"] * n)) + extra


def _place(d: dict, start: int, length: int) -> None:
    d["span"] = (start, start + length)
    frames = list(range(start, start + length))
    if d["type"] == "freeze":  # frames[0] is the held frame; the frozen ones repeat it
        d["params"] |= {"held_frame": start, "from_frame": start + 1, "to_frame": start + length - 1}
        frames = frames[1:]
    elif d["type"] in ("teleport", "reversal", "speed_change"):
        d["params"] |= {"from_frame": start, "to_frame": start + length - 1}
    d["frames"] = frames


def _scene(
    rng: np.random.Generator, spec: dict, defects: list[dict], height: int, width: int, n: int
) -> Scene:
    drawn = dict(spec)
    for d in defects:
        if d["dimension"] == "text_alignment" and d["type"] != "missing_object":
            key = d["type"].removeprefix("wrong_")
            drawn[key] = d["params"]["actual"]
    for d in defects:
        if d["type"] == "morphing":
            d["params"] |= {
                "from_shape": drawn["shape"],
                "to_shape": pick(rng, [s for s in SHAPES if s != drawn["shape"]]),
            }
        if d["type"] == "missing_object":
            d["params"]["object"] = int(rng.integers(drawn["count"]))
            d["params"]["count_visible"] = drawn["count"] - 1
    has_wall = any(d["type"] == "wall_pass" for d in defects)
    scene = Scene(
        height, width, n, defects=defects, distractor_wall=not has_wall and rng.random() < 0.3, **drawn
    )
    return scene


def _draws_held_out(scene: Scene) -> bool:
    shapes = {scene.shape} | {d["params"]["to_shape"] for d in scene.defects if d["type"] == "morphing"}
    return any((scene.colour, s) in HELD_OUT for s in shapes)
