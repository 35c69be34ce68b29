"""Trace building (as in VR-Thinker): an accepted critique becomes a multi-turn select_frames trace.

The first turn shows K uniform low-resolution frames (the video input). The frames the critique cites
become `select_frames` calls, one call per round, within the protocol's budgets; each tool result
holds those frames at higher resolution; the memory window is applied as the model will see it. The
final turn is the critique and the label's answer. Frames are referenced by index into the video
file, never embedded: a tool image is `{"type": "image", "image": {"video": PATH, "frame": 12}}`.

Rationale-free samples (the critique dropped, as DeScore's random mask) teach the head to score
without a rationale.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from cot_rm.protocol import JudgeSpec, Judgment, judgment_conversation, tool_turn

# The plan names no frames: the call that follows lists them (a number list said twice is just harder
# to learn), and the final critique cites them.
PLANS = [
    "Let me look closer at the frames that matter.",
    "I want to see some frames at higher resolution.",
    "A few frames need a closer look.",
    "To check this, I inspect the key frames.",
    "First I examine the suspicious frames.",
]
NEXT = [
    "Now the next frames.",
    "Next, more frames.",
    "I also check other frames.",
    "Then the remaining frames.",
]


def plan_calls(cited: Sequence[int], total_frames: int, spec: JudgeSpec) -> list[list[int]]:
    """Cited frames as select_frames calls: valid indices only, at most the budget, evenly thinned."""
    frames = sorted({f for f in cited if 0 <= f < total_frames})
    budget = spec.max_tool_calls * spec.max_frames_per_call
    if len(frames) > budget:  # keep first and last, spread the rest evenly
        step = (len(frames) - 1) / (budget - 1) if budget > 1 else 0
        frames = sorted({frames[round(i * step)] for i in range(budget)})
    n_calls = min(spec.max_tool_calls, -(-len(frames) // spec.max_frames_per_call)) if frames else 0
    if n_calls == 0:
        return []
    size = -(-len(frames) // n_calls)  # balanced chunks in time order
    return [frames[i : i + size] for i in range(0, len(frames), size)]


def build_trace(
    record: Any,
    video: Any,
    judgment: Judgment | None,
    video_ref: str,
    spec: JudgeSpec,
    rng: random.Random,
) -> list[dict]:
    """Messages of one trace. `judgment=None` gives the rationale-free sample (answer only)."""
    rounds = []
    if judgment is not None:
        calls = plan_calls(judgment.frames_cited, video.total_frames, spec)
        for k, frames in enumerate(calls):
            think = rng.choice(PLANS if k == 0 else NEXT)
            images = [{"video": video_ref, "frame": f} for f in frames]
            times = [f / video.fps for f in frames]
            rounds.append((think, [frames], [tool_turn(frames, times, images)]))
    think = judgment.think if judgment is not None else None
    return judgment_conversation(record.prompt, video, rounds, (think, record.scores), spec, video_ref)


def tool_frames(messages: list[dict]) -> list[list[int]]:
    """The frames of every select_frames call in a trace, in order."""
    return [
        list(call["function"]["arguments"]["frames"])
        for m in messages
        if m["role"] == "assistant"
        for call in m.get("tool_calls") or []
    ]
