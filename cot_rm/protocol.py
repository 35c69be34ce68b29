"""The judgment protocol: the one owner of the judgment format.

Synthesis, rewards, evaluation and serving all import from here: the system prompt, the
`select_frames` tool schema, the rendering of a judgment conversation, and the one parser. Never copy
a score regex into a second place.

A judgment conversation (TRL's conversational form):

    system     the rubric, the scale, the tool rules, the output format
    user       the video (a Qwen video input) + its sampled frame indices/timestamps + the prompt
    assistant  <think>...</think> + <tool_call>{"name": "select_frames", ...}</tool_call>   (0..n rounds)
    tool       "frame 12 (0.75 s):" <image> ...   (or an error message)
    assistant  <think>...</think> <answer>{"visual_quality": 4, ...}</answer>

Frame indices are always source frame indices (0 .. total_frames - 1) of the whole video.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Protocol

PROTOCOL_VERSION = "cot-rm/1"
TOOL_NAME = "select_frames"
# Pixels of each frame the tool returns, unless a trace or a caller says otherwise (frames at higher
# resolution than the first turn's video is the point of the tool).
TOOL_MAX_PIXELS = 224 * 224
DEFAULT_DIMENSIONS = ("visual_quality", "text_alignment", "physical_consistency", "overall")
DIMENSION_HELP = {
    "visual_quality": "clarity, sharpness, noise, flicker, blockiness and colour banding of the frames",
    "text_alignment": "whether objects, colours, counts, shapes and motion match the prompt",
    "physical_consistency": "plausible motion over time: no teleporting, freezing, reversal, "
    "morphing shapes, passing through walls or sudden speed changes",
    "overall": "your overall judgement of the video as a result for this prompt",
}
FAMILIES = ("qwen2_5_vl", "qwen3_vl")


@dataclass(frozen=True)
class JudgeSpec:
    """What a judgment contains and the tool budgets. Stored in checkpoints, so a model judges as trained."""

    dimensions: tuple[str, ...] = DEFAULT_DIMENSIONS
    score_min: float = 1.0
    score_max: float = 5.0
    max_tool_calls: int = 3  # select_frames calls per judgment
    max_frames_per_call: int = 8
    memory_window: int = 1  # tool rounds (with images) whose images stay in context; older: placeholders

    def __post_init__(self):
        if not self.dimensions or len(set(self.dimensions)) != len(self.dimensions):
            raise ValueError(f"dimensions must be distinct and non-empty, got {self.dimensions}")
        if not self.score_min < self.score_max:
            raise ValueError(f"score_min {self.score_min} must be below score_max {self.score_max}")
        if self.max_tool_calls < 0 or self.max_frames_per_call < 1 or self.memory_window < 0:
            raise ValueError("tool budgets must be non-negative (frames per call at least 1)")
        if self.max_tool_calls > 0 and self.memory_window == 0:
            raise ValueError(
                "memory_window 0 would drop every frame the tool returns; keep at least 1 tool round "
                "(or set max_tool_calls 0 for no tool)"
            )

    def label_problem(self, dim: str, value) -> str | None:
        """Why a human label cannot train or score this judge (None: fine; a null label is unlabelled)."""
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return f"scores[{dim!r}] must be a number, got {value!r}"
        if not self.score_min <= value <= self.score_max:
            return (f"scores[{dim!r}] = {value} is off the judge's {self.score_min:g}-{self.score_max:g} scale; "
                    "rescale the labels")  # fmt: skip
        return None

    def to_unit(self, score: float) -> float:
        """A score on the scale -> [-1, 1] (the regression head's target space)."""
        return (score - (self.score_min + self.score_max) / 2) / ((self.score_max - self.score_min) / 2)

    def from_unit(self, x: float) -> float:
        """The inverse of `to_unit`: a head output back on the score scale."""
        return x * (self.score_max - self.score_min) / 2 + (self.score_min + self.score_max) / 2

    def to_dict(self) -> dict:
        return {**self.__dict__, "dimensions": list(self.dimensions)}

    @classmethod
    def from_dict(cls, d: dict) -> JudgeSpec:
        return cls(**{**d, "dimensions": tuple(d.get("dimensions", DEFAULT_DIMENSIONS))})


# ----------------------------------------------------------------------------------------- prompts


def system_prompt(spec: JudgeSpec = JudgeSpec()) -> str:
    lo, hi = _num(spec.score_min), _num(spec.score_max)
    dims = "\n".join(f"- {d}: {DIMENSION_HELP.get(d, d.replace('_', ' '))}" for d in spec.dimensions)
    example = json.dumps({d: hi - 1 if i % 2 else hi for i, d in enumerate(spec.dimensions)})
    return (
        "You are a careful judge of AI-generated videos. Watch the video, compare it with its "
        "generation prompt and score it on each dimension:\n"
        f"{dims}\n"
        f"Scores are numbers from {lo} (worst) to {hi} (best).\n\n"
        "Think step by step inside <think>...</think>. Cite the frames you rely on by their index, "
        'as in "frame 12". To inspect frames at higher resolution, call the select_frames tool '
        f"with up to {spec.max_frames_per_call} frame indices per call, at most "
        f"{spec.max_tool_calls} calls in all. When you are done, end with your scores as a JSON "
        f"object inside <answer>...</answer>, for example:\n<answer>{example}</answer>\n"
        "Write nothing after </answer>."
    )


def tool_schema(spec: JudgeSpec = JudgeSpec()) -> dict:
    """The `select_frames` tool in the OpenAI function format the Qwen chat templates list."""
    return {
        "type": "function",
        "function": {
            "name": TOOL_NAME,
            "description": "Return the given frames of the video as images at higher resolution.",
            "parameters": {
                "type": "object",
                "properties": {
                    "frames": {
                        "type": "array",
                        "items": {"type": "integer"},
                        "description": f"Frame indices of the whole video, at most "
                        f"{spec.max_frames_per_call}.",
                    }
                },
                "required": ["frames"],
            },
        },
    }


class FrameInfo(Protocol):
    """What the first turn states about the video (a `cot_rm.media.video.Video` satisfies it)."""

    indices: list[int]
    timestamps: list[float]
    total_frames: int
    fps: float
    duration_s: float


# The chat template's control tokens are written <|name|> (<|im_end|>, <|video_pad|>, <|reward|>, ...).
_CONTROL = re.compile(r"<(?=\|[^\s|<>]{1,40}\|>)")


def defuse(text: str) -> str:
    """`text` with every <|name|> written "< |name|>": the tokenizer reads it as plain text, so a prompt
    cannot close its turn, add media placeholders or forge the reward token."""
    return _CONTROL.sub("< ", text)


def frames_seen(video: FrameInfo) -> str:
    """The sentence that tells the model which frames of the video it is shown (and when they are)."""
    shown = dict(zip(video.indices, video.timestamps))  # distinct frames: overlapping sampling repeats some
    sampled = ", ".join(f"frame {i} ({t:.2f} s)" for i, t in shown.items())
    return (
        f"The video has {video.total_frames} frames at {video.fps:.2f} fps ({video.duration_s:.2f} s). "
        f"You see {len(shown)} of them at low resolution: {sampled}."
    )


def user_turn(prompt: str, video: FrameInfo, spec: JudgeSpec = JudgeSpec(), video_ref: Any = None) -> dict:
    """The first user message: the video input, what was sampled, the prompt (defused) and the
    instruction."""
    text = (
        f"{frames_seen(video)}\n"
        f"Frames you may select: 0 to {video.total_frames - 1}.\n"
        f'Generation prompt: "{defuse(prompt)}"\n'
        f"Judge the video on {', '.join(spec.dimensions)}."
    )
    ref = video_ref if video_ref is not None else getattr(video, "path", None)
    return {"role": "user", "content": [{"type": "video", "video": ref}, {"type": "text", "text": text}]}


def assistant_tool_turn(think: str, frame_lists: Sequence[Sequence[int]]) -> dict:
    """An assistant turn that thinks then calls select_frames once per list (structured tool_calls)."""
    calls = [
        {"type": "function", "function": {"name": TOOL_NAME, "arguments": {"frames": [int(f) for f in fr]}}}
        for fr in frame_lists
    ]
    return {"role": "assistant", "content": f"<think>{think}</think>", "tool_calls": calls}


def tool_turn(
    frames: Sequence[int] = (),
    timestamps: Sequence[float] = (),
    images: Sequence[Any] | None = None,
    error: str | None = None,
) -> dict:
    """The tool's answer: each frame as a caption plus an image, or an error message for the model."""
    if error is not None:
        return {"role": "tool", "name": TOOL_NAME, "content": [{"type": "text", "text": f"Error: {error}"}]}
    images = images if images is not None else [None] * len(frames)
    content: list[dict] = []
    for f, t, img in zip(frames, timestamps, images, strict=True):
        content.append({"type": "text", "text": f"frame {f} ({t:.2f} s):"})
        content.append({"type": "image", "image": img})
    return {"role": "tool", "name": TOOL_NAME, "content": content}


def format_answer(scores: dict[str, float], spec: JudgeSpec = JudgeSpec()) -> str:
    return "<answer>" + json.dumps({d: _num(scores[d]) for d in spec.dimensions}) + "</answer>"


def assistant_final_turn(think: str | None, scores: dict[str, float], spec: JudgeSpec = JudgeSpec()) -> dict:
    """The last turn. `think=None` leaves the rationale out (rationale-free samples for the head)."""
    head = f"<think>{think}</think>\n" if think is not None else ""
    return {"role": "assistant", "content": head + format_answer(scores, spec)}


def format_tool_call(frames: Sequence[int]) -> str:
    """The exact text of one call, as the Qwen chat templates render a structured tool call."""
    args = json.dumps({"frames": [int(f) for f in frames]})
    return f'<tool_call>\n{{"name": "{TOOL_NAME}", "arguments": {args}}}\n</tool_call>'


def apply_memory_window(messages: list[dict], window: int) -> list[dict]:
    """Keep the images of the last `window` tool rounds that returned images; older ones become a short
    text placeholder. A round that returned only an error does not count: a bad call must not push the
    frames the model already chose out of its context.

    A tool round is a run of consecutive tool messages. Returns new message dicts (inputs untouched).
    """
    rounds, prev_tool = [], False
    for i, m in enumerate(messages):
        if m["role"] == "tool" and not prev_tool:
            rounds.append([])
        if m["role"] == "tool":
            rounds[-1].append(i)
        prev_tool = m["role"] == "tool"
    rounds = [r for r in rounds if any(_has_image(messages[i]) for i in r)]
    stale = {i for r in (rounds[:-window] if window > 0 else rounds) for i in r}
    out = []
    for i, m in enumerate(messages):
        if i in stale and isinstance(m["content"], list):
            m = {**m, "content": [_placeholder(c) for c in m["content"]]}
        out.append(m)
    return out


def _has_image(message: dict) -> bool:
    return isinstance(message["content"], list) and any(p.get("type") == "image" for p in message["content"])


def _placeholder(part: dict) -> dict:
    if part.get("type") == "image":
        return {"type": "text", "text": "[image dropped from context; select the frame again to see it]"}
    return part


def chat_template(family: str, training: bool = False) -> str:
    """The tool-capable chat template for a model family.

    Qwen3-VL: TRL's copy of its own template. Qwen2.5-VL's stock template has no tool section, but the
    Qwen2.5 language models were trained on the same hermes-style format (`<tools>` in the system turn,
    `<tool_call>` in assistant turns, `<tool_response>` in a user turn), which Qwen3-VL's template
    renders identically for the vision tokens both families share; so both families use it.
    `training=True` gives the variant with {% generation %} markers for assistant-only loss masks.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; expected one of {FAMILIES}")
    name = "qwen3_vl_training.jinja" if training else "qwen3_vl.jinja"
    return resources.files("trl").joinpath("chat_templates", name).read_text()


def render(
    processor: Any,
    messages: list[dict],
    family: str,
    spec: JudgeSpec = JudgeSpec(),
    add_generation_prompt: bool = False,
    training: bool = False,
) -> str:
    """Render a conversation to text with the family's tool-capable template and the tool schema."""
    return processor.apply_chat_template(
        messages,
        tools=[tool_schema(spec)],
        chat_template=chat_template(family, training),
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
    )


def judgment_conversation(
    prompt: str,
    video: FrameInfo,
    rounds: Sequence[tuple[str, Sequence[Sequence[int]], Sequence[dict]]] = (),
    final: tuple[str | None, dict[str, float]] | None = None,
    spec: JudgeSpec = JudgeSpec(),
    video_ref: Any = None,
) -> list[dict]:
    """A whole conversation: system, user, then (think, calls, tool messages) rounds, then the answer.

    The memory window is applied, so the list is what the model sees in context.
    """
    messages = [
        {"role": "system", "content": [{"type": "text", "text": system_prompt(spec)}]},
        user_turn(prompt, video, spec, video_ref),
    ]
    for think, calls, tool_messages in rounds:
        messages.append(assistant_tool_turn(think, calls))
        messages.extend(tool_messages)
    if final is not None:
        messages.append(assistant_final_turn(final[0], final[1], spec))
    return apply_memory_window(messages, spec.memory_window)


# ------------------------------------------------------------------------------------------ parser


@dataclass(frozen=True)
class ToolCall:
    name: str
    frames: tuple[int, ...]


@dataclass(frozen=True)
class ToolRequest:
    """An assistant turn that asks for frames (not a final judgment)."""

    think: str
    calls: tuple[ToolCall, ...]


@dataclass(frozen=True)
class Judgment:
    """A final turn: the rationale, the per-dimension scores and the frames the rationale cites."""

    think: str
    scores: dict[str, float]
    frames_cited: tuple[int, ...] = field(default=())


@dataclass(frozen=True)
class ParseError:
    """Why a model output is not a valid turn. `reason` is one of REASONS; `detail` is for people."""

    reason: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}" if self.detail else self.reason


REASONS = (
    "empty",
    "truncated",  # set by the generating loop (judge, serve, rollouts): the turn hit its token budget
    "missing_think",
    "duplicate_tag",
    "unclosed_tag",
    "missing_answer",
    "text_outside_tags",
    "text_after_answer",
    "bad_json",
    "not_an_object",
    "unknown_dimension",
    "missing_dimension",
    "duplicate_dimension",
    "score_not_number",
    "score_out_of_range",
    "malformed_tool_call",
    "unknown_tool",
    "tool_call_with_answer",
)

_TAG = re.compile(r"<(/?)(think|answer|tool_call)>")
# At most 9 digits a number: no video has a billion frames, and int() refuses over 4300 digits.
_CITE = re.compile(r"\bframes?\s+(\d{1,9}(?:\s*(?:-|–|to|,|and|,\s*and)\s*\d{1,9})*)(?!\d)", re.IGNORECASE)


def parse_turn(text: str, spec: JudgeSpec = JudgeSpec()) -> Judgment | ToolRequest | ParseError:
    """Parse one assistant turn: `<think>` then either tool calls or the final `<answer>`.

    Whitespace between blocks is allowed; any other text outside the tags is an error, so a format
    reward and the eval's parse-failure rate both see a sloppy output for what it is.
    """
    blocks = _blocks(text)
    if isinstance(blocks, ParseError):
        return blocks
    kinds = [k for k, _ in blocks]
    if kinds.count("think") > 1 or kinds.count("answer") > 1:
        tag = "think" if kinds.count("think") > 1 else "answer"
        return ParseError("duplicate_tag", f"<{tag}> appears {kinds.count(tag)} times")
    if not kinds or kinds[0] != "think":
        return ParseError("missing_think", "the turn must open with <think>...</think>")
    think = blocks[0][1].strip()
    if "answer" in kinds and "tool_call" in kinds:
        return ParseError("tool_call_with_answer", "a turn either calls tools or answers, not both")
    if "tool_call" in kinds:
        calls = [_parse_call(body) for k, body in blocks if k == "tool_call"]
        bad = next((c for c in calls if isinstance(c, ParseError)), None)
        return bad or ToolRequest(think, tuple(calls))
    if kinds[-1] != "answer":
        return ParseError("missing_answer", "no <answer>...</answer> after </think>")
    scores = _parse_scores(blocks[-1][1], spec)
    if isinstance(scores, ParseError):
        return scores
    return Judgment(think, scores, cited_frames(think))


def parse_judgment(text: str, spec: JudgeSpec = JudgeSpec()) -> Judgment | ParseError:
    """Parse a final turn; a tool request where an answer is due is `missing_answer`."""
    out = parse_turn(text, spec)
    if isinstance(out, ToolRequest):
        return ParseError("missing_answer", "the turn calls a tool instead of answering")
    return out


def cited_frames(text: str) -> tuple[int, ...]:
    """Frame indices a critique cites: "frame 12", "frames 3, 4 and 9", "frames 10-14" (sorted, unique)."""
    found: set[int] = set()
    for m in _CITE.finditer(text):
        for part in re.split(r"\s*(?:,\s*and|,|and)\s*", m.group(1)):
            lo_hi = re.split(r"\s*(?:-|–|to)\s*", part)
            nums = [int(x) for x in lo_hi if x.isdigit()]
            if len(nums) == 2 and nums[0] <= nums[1] and nums[1] - nums[0] <= 1000:
                found.update(range(nums[0], nums[1] + 1))
            else:
                found.update(nums)
    return tuple(sorted(found))


def _blocks(text: str) -> list[tuple[str, str]] | ParseError:
    """Split a turn into (tag, body) blocks; only whitespace may sit between and around them."""
    if not text or not text.strip():
        return ParseError("empty", "the output is empty")
    if not _TAG.search(text):
        return ParseError("missing_think", "no <think>, <tool_call> or <answer> tag at all")
    blocks, pos, open_tag, open_end = [], 0, None, 0
    for m in _TAG.finditer(text):
        closing, tag = m.group(1) == "/", m.group(2)
        if open_tag is None:
            if closing:
                return ParseError("unclosed_tag", f"</{tag}> without an opening <{tag}>")
            outside = text[pos : m.start()]
            if outside.strip():
                where = "text_after_answer" if blocks and blocks[-1][0] == "answer" else "text_outside_tags"
                return ParseError(where, f"unexpected text {outside.strip()[:40]!r}")
            open_tag, open_end = tag, m.end()
        elif closing and tag == open_tag:
            blocks.append((tag, text[open_end : m.start()]))
            open_tag, pos = None, m.end()
        else:  # blocks do not nest: any other tag before the close means the block was left open
            return ParseError(
                "unclosed_tag", f"<{open_tag}> is not closed before <{'/' if closing else ''}{tag}>"
            )
    if open_tag is not None:
        return ParseError("unclosed_tag", f"<{open_tag}> is never closed")
    rest = text[pos:]
    if rest.strip():
        where = "text_after_answer" if blocks and blocks[-1][0] == "answer" else "text_outside_tags"
        return ParseError(where, f"unexpected text {rest.strip()[:40]!r}")
    return blocks


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    keys = [k for k, _ in pairs]
    dup = next((k for k in keys if keys.count(k) > 1), None)
    if dup is not None:
        raise _DuplicateKey(dup)
    return dict(pairs)


class _DuplicateKey(ValueError):
    pass


def _loads(body: str) -> Any | ParseError:
    try:
        return json.loads(body, object_pairs_hook=_no_duplicates)
    except _DuplicateKey as dup:
        return ParseError("duplicate_dimension", f"key {dup} appears twice")
    except json.JSONDecodeError as err:
        return ParseError("bad_json", f"{err.msg} at char {err.pos}")
    except (RecursionError, ValueError) as err:  # nesting past Python's limit; an int over 4300 digits
        return ParseError("bad_json", f"not parseable JSON ({type(err).__name__}: {str(err)[:80]})")


def _parse_scores(body: str, spec: JudgeSpec) -> dict[str, float] | ParseError:
    obj = _loads(body)
    if isinstance(obj, ParseError):
        return obj
    if not isinstance(obj, dict):
        return ParseError("not_an_object", f"<answer> holds a {type(obj).__name__}, not a JSON object")
    unknown = [k for k in obj if k not in spec.dimensions]
    if unknown:
        return ParseError("unknown_dimension", f"{unknown[0]!r} is not one of {list(spec.dimensions)}")
    missing = [d for d in spec.dimensions if d not in obj]
    if missing:
        return ParseError("missing_dimension", f"no score for {missing[0]!r}")
    scores = {}
    for d in spec.dimensions:
        v = obj[d]
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            return ParseError("score_not_number", f"{d} = {v!r}")
        if not spec.score_min <= v <= spec.score_max:
            return ParseError("score_out_of_range", f"{d} = {v} outside [{spec.score_min}, {spec.score_max}]")
        scores[d] = float(v)
    return scores


def _parse_call(body: str) -> ToolCall | ParseError:
    obj = _loads(body)
    if isinstance(obj, ParseError):
        return ParseError("malformed_tool_call", f"not JSON ({obj.detail})")
    if not isinstance(obj, dict) or set(obj) != {"name", "arguments"}:
        return ParseError("malformed_tool_call", 'expected {"name": ..., "arguments": {...}}')
    if obj["name"] != TOOL_NAME:
        return ParseError("unknown_tool", f"{obj['name']!r}; the only tool is {TOOL_NAME}")
    args = obj["arguments"]
    frames = args.get("frames") if isinstance(args, dict) else None
    if not isinstance(args, dict) or set(args) != {"frames"} or not isinstance(frames, list) or not frames:
        return ParseError("malformed_tool_call", 'arguments must be {"frames": [int, ...]} (non-empty)')
    if any(isinstance(f, bool) or not isinstance(f, int) for f in frames):
        return ParseError("malformed_tool_call", f"frame indices must be integers, got {frames}")
    return ToolCall(TOOL_NAME, tuple(dict.fromkeys(frames)))  # a frame named twice is shown once


def check_call(
    call: ToolCall, total_frames: int, calls_made: int, spec: JudgeSpec = JudgeSpec()
) -> str | None:
    """Why a well-formed call cannot be served (the message goes back to the model), or None if it can."""
    if calls_made >= spec.max_tool_calls:
        return f"tool budget spent: at most {spec.max_tool_calls} select_frames calls; answer now"
    if len(call.frames) > spec.max_frames_per_call:
        return f"too many frames ({len(call.frames)}); at most {spec.max_frames_per_call} per call"
    bad = [f for f in call.frames if not 0 <= f < total_frames]
    if bad:
        return f"frame {bad[0]} is out of range; valid frames are 0 to {total_frames - 1}"
    return None


def _num(x: float) -> int | float:
    """Integral floats print as ints (4, not 4.0), so answers read like the scale."""
    return int(x) if float(x).is_integer() else float(x)


def message_text(message: dict) -> str:
    """An assistant message back as the raw text the protocol parses.

    TRL's `parse_response` (tokenizers with a response schema) splits a Qwen turn into
    `reasoning_content` (the <think> body), `content` and structured `tool_calls`; they are put back
    together in Qwen's own layout so that the one parser judges every form alike.
    """
    content = message.get("content") or ""
    if isinstance(content, list):  # content parts: only the text counts
        content = "".join(
            p.get("text") or "" for p in content if isinstance(p, dict) and p.get("type") == "text"
        )
    think = message.get("reasoning_content") or message.get(
        "reasoning"
    )  # vLLM's reasoning parsers: either name
    if isinstance(think, str) and "<think>" not in content:
        content = f"<think>{think}</think>\n{content}"
    calls = message.get("tool_calls") or []
    if calls and "<tool_call>" not in content:
        content = content.rstrip() + "\n" + "\n".join(_call_text(c) for c in calls)
    return content


def _call_text(call: dict) -> str:
    fn = call.get("function", call) if isinstance(call, dict) else {}
    args = fn.get("arguments")
    if isinstance(args, str):  # OpenAI-style JSON string arguments
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            pass  # left a string: the parser rejects it as malformed_tool_call
    return f"<tool_call>\n{json.dumps({'name': fn.get('name'), 'arguments': args})}\n</tool_call>"
