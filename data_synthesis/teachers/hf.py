"""The `hf:PATH` teacher: a local transformers VLM (greedy by default), batched with left padding."""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from cot_rm.model.processing import encode
from cot_rm.model.rope import use_qwen_positions
from data_synthesis.teachers.base import TeacherReply, TeacherRequest, check_captions


def hf_messages(request: TeacherRequest) -> list[dict]:
    """Qwen chat messages: system, then a user turn of (caption, image)* and the instruction."""
    check_captions(request)
    parts: list[dict] = []
    for caption in request.captions:
        parts.append({"type": "text", "text": caption})
        parts.append({"type": "image"})  # the pixels travel separately, in this order
    parts.append({"type": "text", "text": request.text})
    return [
        {"role": "system", "content": [{"type": "text", "text": request.system}]},
        {"role": "user", "content": parts},
    ]


class HFTeacher:
    """A local transformers VLM as the teacher: batched `generate` with left padding.

    Greedy by default (temperature 0), so the same requests give the same replies; with a
    temperature > 0 each batch is seeded from its first request's seed.
    """

    name = "hf"
    needs_images = True

    def __init__(self, path: str, device: str = "cpu", temperature: float = 0.0, max_new_tokens: int | None = None,
                 batch_size: int = 4, dtype: str | None = None):  # fmt: skip
        self.model = str(path)
        self.device = device
        self.temperature = temperature
        self.max_new_tokens = max_new_tokens  # None: each request's max_tokens
        self.batch_size = max(1, batch_size)
        self.processor = AutoProcessor.from_pretrained(path)
        kwargs = {"dtype": dtype} if dtype else {}
        self.vlm = AutoModelForImageTextToText.from_pretrained(path, **kwargs).to(device).eval()
        use_qwen_positions(self.vlm)

    def _render(self, request: TeacherRequest) -> str:
        return self.processor.apply_chat_template(
            hf_messages(request), tokenize=False, add_generation_prompt=True
        )

    def _generate_batch(self, batch: list[TeacherRequest]) -> list[TeacherReply]:
        texts = [self._render(r) for r in batch]
        images = [im.convert("RGB") for r in batch for im in r.images]
        inputs = encode(self.processor, texts, images=images or None, padding_side="left").to(self.device)
        max_new = self.max_new_tokens or max(r.max_tokens for r in batch)
        sample = self.temperature > 0
        gen_kw: dict[str, Any] = {"max_new_tokens": max_new, "do_sample": sample}
        if sample:
            gen_kw["temperature"] = self.temperature
        # Seeding forks the RNG so the caller's global random state is left as it was.
        with torch.random.fork_rng(devices=[] if self.device == "cpu" else None), torch.inference_mode():
            torch.manual_seed(batch[0].seed)
            out = self.vlm.generate(**inputs, **gen_kw)
        new = out[:, inputs["input_ids"].shape[1] :]  # left padding: prompts all end at the same column
        texts_out = self.processor.batch_decode(new, skip_special_tokens=True)
        return [TeacherReply(r.id, t) for r, t in zip(batch, texts_out, strict=True)]

    def generate(self, requests: list[TeacherRequest]) -> list[TeacherReply]:
        replies: list[TeacherReply] = []
        for start in range(0, len(requests), self.batch_size):
            batch = requests[start : start + self.batch_size]
            try:
                replies.extend(self._generate_batch(batch))
            except Exception as e:  # a bad batch is counted per request, the run goes on
                replies.extend(TeacherReply(r.id, None, f"{type(e).__name__}: {e}") for r in batch)
        return replies
