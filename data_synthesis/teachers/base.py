"""Teachers: whatever writes the rationales that synthesis anchors on the human labels.

One interface (this module), four implementations, built from a spec by `factory.make_teacher`:

    teacher = make_teacher("openai:http://127.0.0.1:8000#Qwen/Qwen2.5-VL-72B-Instruct")
    replies = teacher.generate([TeacherRequest(id=..., system=..., text=..., images=[...], ...)])

- `oracle`: writes rationales from the toy world's exact annotations (`oracle.py`);
- `openai:URL[#MODEL]` (`openai.py`): any OpenAI-compatible chat endpoint (in real use a large VLM behind
  `vllm serve`); frames are sent inline as base64 data URLs, each after its caption;
- `hf:PATH` (`hf.py`): a local transformers VLM (greedy by default), batched with left padding;
- `import:FILE` (`imported.py`): rationales that already exist (VideoScore2's released CoT records), each
  record's own, with the scores its text states.

A failed request never raises out of `generate`: its reply has `text=None` and an `error` string,
so the synthesis pipeline can count and report failures instead of dying on request 9,000 of 10,000.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass
class TeacherRequest:
    id: str
    system: str  # system prompt text
    text: str  # the user instruction, placed after the images
    images: list  # PIL.Image frames shown to the teacher (uniformly sampled from the video)
    captions: list[str]  # one per image, e.g. "frame 12 (1.50 s):", shown just before that image
    record: Any  # the labelled source record (cot_rm.schema.PointwiseRecord); the oracle reads it
    seed: int = 0
    max_tokens: int = 1024
    shown: tuple[int, ...] = ()  # frames the student will see in its first turn (the oracle describes them)


@dataclass
class TeacherReply:
    id: str
    text: str | None  # the raw completion, or None on failure
    error: str | None = None  # e.g. "timeout after 3 tries"; a failure is counted, never raised


class Teacher(Protocol):
    name: str  # "oracle" | "openai" | "hf" | "import"
    model: str  # what produced the text (model id / path): goes into provenance

    def generate(self, requests: list[TeacherRequest]) -> list[TeacherReply]: ...


def check_captions(request: TeacherRequest) -> None:
    if len(request.captions) != len(request.images):
        raise ValueError(
            f"request {request.id}: {len(request.images)} images but {len(request.captions)} captions"
        )


class TeacherUnavailableError(RuntimeError):
    """The endpoint cannot be used at all (e.g. no model list at start-up): raised, not counted."""
