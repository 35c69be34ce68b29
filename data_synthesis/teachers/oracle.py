"""The oracle teacher: critiques written from the toy world's exact defect annotations.

It plays the part of a strong VLM teacher on the toy world, where the truth is known: every defect in
`meta.defects` becomes a sentence that names it and cites the frames where it is visible, the scores
are the label's, and the wording is drawn at random (seeded) from several phrasings and orders, so a
student cannot pass by memorising one sentence. A record without defect annotations gets an error
reply (counted by the pipeline), never an invented critique.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from cot_rm.protocol import DEFAULT_DIMENSIONS, JudgeSpec, format_answer
from data_synthesis.teachers.base import TeacherReply, TeacherRequest
from data_synthesis.toyworld.describe import NUMBER, describe
from data_synthesis.toyworld.plan import SPEED_WORDS

DIM_WORDS = {
    "visual_quality": ["visual quality", "image quality", "picture quality"],
    "text_alignment": ["text alignment", "faithfulness to the prompt", "prompt alignment"],
    "physical_consistency": ["physical consistency", "motion plausibility", "physical plausibility"],
    "overall": ["overall", "all things considered", "in sum"],
}
LEVEL = {5: ["excellent", "flawless", "very good"], 4: ["good", "mostly fine", "solid"],
         3: ["mediocre", "acceptable but flawed", "middling"], 2: ["poor", "weak", "clearly flawed"],
         1: ["very poor", "bad", "severely broken"]}  # fmt: skip
SEVERITY = {1: ["slight", "mild", "faint"], 2: ["noticeable", "clear", "moderate"],
            3: ["severe", "strong", "glaring"]}  # fmt: skip

# {sev}: a severity adjective, {at}: a frame citation, {exp}/{act}: expected/actual (alignment defects).
TEMPLATES = {
    "flicker": ["There is {sev} flicker: the brightness jumps in {at}.",
                "The frame brightness pulses ({sev} flicker) in {at}.",
                "{At} flicker; the whole image flashes {sev_ly}."],
    "noise": ["{Sev} grain/noise covers the image in {at}.", "Random pixel noise is {sev} in {at}.",
              "{At} are speckled with {sev} noise."],
    "blur": ["The object edges are {sev_ly} blurred in {at}.", "{At} look soft, with {sev} blur.",
             "A {sev} blur smears the shapes in {at}."],
    "blockiness": ["{Sev} blocky compression artifacts appear in {at}.",
                   "{At} show {sev} blockiness, as if heavily compressed.",
                   "Square block artifacts ({sev}) break up the image in {at}."],
    "banding": ["{Sev} colour banding replaces smooth shading in {at}.",
                "{At} show {sev} banding: colours step instead of blending.",
                "The background has {sev} colour bands in {at}."],
    "wrong_colour": ["The object is {act} instead of {exp} (see {at}).",
                     "The prompt asks for {exp}, but {at} show a {act} object.",
                     "Colour is wrong: {act} where {exp} was requested, visible in {at}."],
    "wrong_shape": ["The prompt asks for a {exp}, but the object is a {act} in {at}.",
                    "{At} show a {act}, not the requested {exp}.",
                    "Shape mismatch: a {act} appears instead of a {exp} ({at})."],
    "wrong_count": ["The prompt asks for {exp} object(s), but {at} show {act}.",
                    "Counting the objects in {at} gives {act}, not {exp}.",
                    "Wrong number of objects: {act} instead of {exp} (see {at})."],
    "wrong_direction": ["The motion goes {act} although the prompt says {exp} ({at}).",
                        "In {at} the object moves {act}, not {exp} as requested.",
                        "Direction is wrong: {act} instead of {exp}, clear across {at}."],
    "missing_object": ["The requested object is missing in {at}.", "{At} show only the background; "
                       "the object the prompt describes never appears.",
                       "No {exp} is visible in {at}."],
    "teleport": ["The object teleports: it jumps to a new place between {at}.",
                 "Between {at} the object skips across the frame without moving through the gap.",
                 "A sudden jump in position in {at} breaks continuity ({sev})."],
    "freeze": ["The motion freezes in {at}: the object stops dead.", "{At} are identical; the motion stalls.",
               "A {sev} freeze: nothing moves in {at}."],
    "reversal": ["The object suddenly reverses direction in {at}.",
                 "In {at} the motion runs backwards for no reason.",
                 "A {sev} reversal: the object turns back in {at}."],
    "morphing": ["The shape morphs into something else in {at}.",
                 "{At} show the object changing shape, which a rigid object cannot do.",
                 "A {sev} shape morph appears in {at}."],
    "wall_pass": ["The object passes straight through the wall in {at}.",
                  "In {at} the object goes through the solid wall instead of stopping.",
                  "Wall penetration: the object crosses the barrier in {at}."],
    "speed_change": ["The speed changes abruptly in {at}.", "{At} show a sudden, unmotivated change of speed.",
                     "A {sev} speed jump in {at} makes the motion implausible."],
    "shuffle": ["The frames are out of order: the object jumps back and forth in {at}.",
                "Temporal order is scrambled; {at} do not follow one another.",
                "The motion is incoherent across {at}, as if the frames were shuffled."],
    "reverse": ["The video plays backwards: the motion runs against the described direction ({at}).",
                "Motion is reversed over {at}.", "{At} show the whole motion running in reverse."],
    "drop": ["Frames are missing around {at}: the object jumps ahead.",
             "A chunk of the motion is cut out near {at}, so the object skips forward.",
             "{At} show a gap in the motion where frames were dropped."],
    "prompt_swap": ["The video does not show what the prompt describes at all ({at}).",
                    "This video belongs to a different prompt: nothing in {at} matches it.",
                    "{At} show content unrelated to the prompt."],
}  # fmt: skip
GENERIC = ["A {sev} {kind} problem is visible in {at}.", "{At} show a {sev} {kind} issue."]
# What the video shows, stated before any comparison with the prompt: the critique first describes, then
# judges (a small student learns the description from its perception pretraining, data_synthesis/toyworld/describe.py).
SEEN = "I see {seen}"
OPENINGS = ["The prompt asks for {prompt}.", 'The prompt is "{prompt}".', "Checking the video against {prompt}.",
            "I compare the frames with the prompt: {prompt}."]  # fmt: skip
SPOT = ["A closer look at {at} confirms it.", "{At}, inspected closely, agree.", "Checking {at} shows the same.",
        "{At} bear this out."]  # fmt: skip
CLEAN = {
    "visual_quality": ["The frames are clean and sharp.", "No flicker, noise or blur is visible.",
                       "Image quality is steady throughout."],
    "text_alignment": ["Objects, colours and motion match the prompt.", "Everything the prompt asks for is there.",
                       "The content follows the prompt."],
    "physical_consistency": ["The motion is smooth and continuous.", "Movement is steady and plausible.",
                             "Nothing jumps, freezes or reverses."],
}  # fmt: skip


class OracleTeacher:
    """Writes the critique the annotations imply; the answer is the label (it is an oracle)."""

    name = "oracle"
    model = "toyworld-oracle/1"
    needs_images = False  # it reads the annotations, not the pixels: the pipeline skips decoding for it

    def __init__(self, plain: bool = False, fields: bool = False):
        # plain: one wording and a fixed order of dimensions (`Plain`), for students too small to learn
        # a varied teacher's many ways of saying the same thing. fields (implies plain): the prompt is
        # restated attribute by attribute ("shape circle"), which a student finds by looking the key up
        # in the prompt, where a verbatim quote needs it to copy word pairs it may never have written.
        self.plain, self.fields = plain or fields, fields
        if self.plain:
            self.model = "toyworld-oracle/1-fields" if fields else "toyworld-oracle/1-plain"

    def generate(self, requests: Sequence[TeacherRequest]) -> list[TeacherReply]:
        return [self._one(r) for r in requests]

    def _one(self, req: TeacherRequest) -> TeacherReply:
        meta = getattr(req.record, "meta", None) or {}
        if "defects" not in meta:
            return TeacherReply(req.id, None, "oracle needs toy-world defect annotations (meta.defects)")
        rng = Plain() if self.plain else random.Random(f"{req.seed}:{req.id}")
        # What the student's first-turn frames show, in the words of its perception pretraining.
        seen = describe(meta, req.shown or None) if "spec" in meta else None
        asked = meta.get("spec") if self.fields else None
        think = critique(
            req.record.prompt, meta["defects"], req.record.scores, rng, meta.get("num_frames"), seen, asked
        )
        answer = format_answer(req.record.scores, JudgeSpec(dimensions=tuple(req.record.scores)))
        return TeacherReply(req.id, f"<think>{think}</think>\n{answer}")


class Plain(random.Random):
    """The oracle's choices made the same way every time: the first wording, dimensions in their listed
    order, spot checks on every clean dimension, frame spans written as ranges."""

    def choice(self, seq):
        return seq[0]

    def shuffle(self, x, *args) -> None:
        return None

    def random(self) -> float:
        return 0.0

    def sample(self, population, k, **kwargs):
        return list(population)[:k]


def check_annotated(records, source) -> None:
    """The oracle writes from toy-world annotations: refuse, before any work, records that have none."""
    bare = [r.id for r in records if "defects" not in (r.meta or {})]
    if bare:
        raise ValueError(
            f"{source}: {len(bare)} of {len(records)} records have no toy-world annotations (meta.defects), "
            f"e.g. {bare[0]!r}; the oracle teacher only knows toy-world videos: use --teacher openai:URL "
            "(a served VLM) for your own videos"
        )


def critique(
    prompt: str,
    defects: list[dict],
    scores: dict[str, float],
    rng: random.Random,
    num_frames: int | None = None,
    seen: str | None = None,
    asked: dict | None = None,
) -> str:
    """A varied critique: what the video shows (`seen`: what is drawn and the events in the frames the
    student sees, as `describe` words them), an opening that recalls the prompt (`asked`, the prompt's
    toy-world spec: restated field by field), one sentence per defect (grouped by dimension), verdicts.

    A clean dimension is often backed by a spot check of two random frames (when the frame count is
    known), so clean videos are inspected with the tool too, not only flawed ones.
    """
    sentences = [SEEN.format(seen=seen[0].lower() + seen[1:])] if seen else []
    sentences.append(restate(asked) if asked else rng.choice(OPENINGS).format(prompt=prompt.rstrip(".")))
    dims = [d for d in DEFAULT_DIMENSIONS if d != "overall"]
    rng.shuffle(dims)  # the order of dimensions varies between critiques
    for dim in dims:
        mine = [d for d in defects if d.get("dimension") == dim]
        sentences += [defect_sentence(d, rng) for d in mine] or [rng.choice(CLEAN[dim])]
        if not mine and num_frames and num_frames > 2 and rng.random() < 0.7:
            # Fixed spots (a third and two thirds in), not random ones: a student can learn where to look.
            at = cite([num_frames // 3, 2 * num_frames // 3], rng)
            sentences.append(rng.choice(SPOT).format(at=at, At=at[0].upper() + at[1:]))
        if dim in scores:
            sentences.append(verdict(dim, scores[dim], rng))
    if "overall" in scores:
        sentences.append(verdict("overall", scores["overall"], rng))
    return " ".join(sentences)


def restate(spec: dict) -> str:
    """ "The prompt asks for: count two, colour red, shape circle, motion left, speed slowly, background
    white." A toy prompt's spec, each value after its attribute's name."""
    values = {"count": NUMBER.get(int(spec["count"]), spec["count"]), "colour": spec["colour"],
              "shape": spec["shape"], "motion": spec["direction"], "speed": SPEED_WORDS[spec["speed"]],
              "background": spec["background"]}  # fmt: skip
    return "The prompt asks for: " + ", ".join(f"{k} {v}" for k, v in values.items()) + "."


def defect_sentence(defect: dict, rng: random.Random) -> str:
    params = defect.get("params") or {}
    sev = rng.choice(SEVERITY.get(int(defect.get("severity", 2)), SEVERITY[2]))
    at = cite(defect.get("frames") or [], rng)
    fields = {
        "sev": sev, "Sev": sev.capitalize(), "sev_ly": _adverb(sev), "at": at, "At": at[0].upper() + at[1:],
        "exp": params.get("expected", "the requested content"), "act": params.get("actual", "something else"),
        "kind": defect.get("type", "quality").replace("_", " "),
    }  # fmt: skip
    return rng.choice(TEMPLATES.get(defect.get("type"), GENERIC)).format(**fields)


def cite(frames: Sequence[int], rng: random.Random, most: int = 4) -> str:
    """Cite a frame span the way the protocol's parser reads it: "frame 7", "frames 3-6", "frames 2, 9 and 14"."""
    frames = sorted(set(int(f) for f in frames))
    if not frames:
        return "the video"
    if len(frames) == 1:
        return f"frame {frames[0]}"
    contiguous = frames[-1] - frames[0] == len(frames) - 1
    if contiguous and len(frames) <= most and rng.random() < 0.6:
        return f"frames {frames[0]}-{frames[-1]}"
    picks = (
        frames
        if len(frames) <= most
        else sorted(rng.sample(frames[1:-1], most - 2) + [frames[0], frames[-1]])
    )
    if len(picks) == 2:
        return f"frames {picks[0]} and {picks[1]}"
    return "frames " + ", ".join(map(str, picks[:-1])) + f" and {picks[-1]}"


def verdict(dim: str, score: float, rng: random.Random) -> str:
    word = rng.choice(DIM_WORDS.get(dim, [dim.replace("_", " ")]))
    level = rng.choice(LEVEL[min(5, max(1, round(score)))])
    forms = ["{W} is {lvl}.", "So {w} is {lvl}.", "{W}: {lvl}."] if dim != "overall" else [
        "Overall the video is {lvl}.", "All things considered, it is {lvl}.", "Overall: {lvl}."]  # fmt: skip
    return rng.choice(forms).format(W=word[0].upper() + word[1:], w=word, lvl=level)


def _adverb(adj: str) -> str:
    return {"faint": "faintly", "mild": "mildly", "slight": "slightly", "clear": "clearly", "severe": "severely",
            "strong": "strongly", "glaring": "glaringly", "noticeable": "noticeably",
            "moderate": "moderately"}.get(adj, adj)  # fmt: skip
