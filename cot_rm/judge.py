"""The local judge: the select_frames tool loop with a transformers model, then the head's scores.

For a batch of videos, each conversation advances one assistant turn per round (batched greedy
generation, left padding). A turn that calls the tool gets the frames (or an error message, never an
exception) as the next tool turn, within the protocol's budgets and memory window; a turn that
answers ends that judgment; an unparseable turn ends it with its parse error (counted, never scored
as 0). Then one scoring pass appends `<|reward|>` after each final turn and reads the head, so
`scores` (head) exist even when `answer_scores` (the generated answer) do not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from cot_rm import protocol
from cot_rm.processing import encode
from cot_rm.protocol import JudgeSpec, Judgment, ParseError, ToolRequest
from cot_rm.video import Sampling, VideoError, read_frames_at, read_video


@dataclass
class _Conv:
    id: str
    path: str
    video: object
    messages: list[dict]
    images: dict[int, object] = field(default_factory=dict)  # id(image part) -> PIL image
    calls: list[dict] = field(default_factory=list)
    final_text: str | None = None
    result: Judgment | ParseError | None = None


class Judge:
    """Judges videos with a `ThinkThenScore` model the way it was trained (greedy by default)."""

    def __init__(self, model, sampling: Sampling, spec: JudgeSpec, tool_max_pixels: int = 224 * 224,
                 max_new_tokens: int = 512, batch_size: int = 8, cache=None, name: str | None = None):  # fmt: skip
        self.model, self.sampling, self.spec = model, sampling, spec
        self.name = name or str(model.config.base_model)
        self.tool_max_pixels, self.max_new_tokens = tool_max_pixels, max_new_tokens
        self.batch_size, self.cache = batch_size, cache
        self.processor, self.family = model.processor, model.config.family

    def judge(self, items: Sequence[tuple[str, str, str]]) -> list[dict]:
        """Judgment JSON (DESIGN.md) for each (id, video path, prompt), in order."""
        out = []
        for start in range(0, len(items), self.batch_size):
            out += self._judge_batch(items[start : start + self.batch_size])
        return out

    def _judge_batch(self, items) -> list[dict]:
        convs, failed = [], {}
        for rid, path, prompt in items:
            try:
                video = read_video(path, self.sampling, self.cache)
            except VideoError as err:
                failed[rid] = str(err)
                continue
            convs.append(
                _Conv(rid, path, video, protocol.judgment_conversation(prompt, video, spec=self.spec))
            )
        for _ in range(self.spec.max_tool_calls + 1):
            active = [c for c in convs if c.result is None]
            if not active:
                break
            for conv, text in zip(active, self._generate(active), strict=True):
                self._advance(conv, text)
        for conv in convs:
            if conv.result is None:
                conv.result = ParseError("missing_answer", "tool budget spent without an answer")
        scores = self._score(convs) if convs else []
        done = {c.id: self._record(c, s) for c, s in zip(convs, scores, strict=True)}
        return [done.get(rid) or self._video_error(rid, failed[rid]) for rid, _, _ in items]

    def _inputs(self, convs: list[_Conv], final: bool) -> dict:
        texts, videos, images = [], [], []
        for c in convs:
            msgs = protocol.apply_memory_window(c.messages, self.spec.memory_window)
            text = protocol.render(
                self.processor, msgs, self.family, self.spec, add_generation_prompt=not final
            )
            texts.append(text + (self.model.config.reward_token if final else ""))
            videos.append(c.video)
            images += [c.images[p["image"]] for m in msgs if m["role"] == "tool" for p in m["content"]
                       if p.get("type") == "image"]  # fmt: skip
        device = next(self.model.parameters()).device
        batch = encode(self.processor, texts, videos=videos, images=images or None, padding_side="left")
        return {k: v.to(device) for k, v in batch.items()}

    @torch.inference_mode()
    def _generate(self, convs: list[_Conv]) -> list[str]:
        inputs = self._inputs(convs, final=False)
        ids = self.model.vlm.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        new = ids[:, inputs["input_ids"].shape[1] :]
        return self.processor.batch_decode(new, skip_special_tokens=True)

    def _advance(self, conv: _Conv, text: str) -> None:
        parsed = protocol.parse_turn(text, self.spec)
        if isinstance(parsed, ParseError) and parsed.reason in ("malformed_tool_call", "unknown_tool"):
            # A bad call is answered with an error as the tool result (and spends a call), never ends it.
            conv.calls.append({"frames": [], "error": str(parsed)})
            conv.messages.append({"role": "assistant", "content": text.strip()})
            conv.messages.append(protocol.tool_turn(error=f"{parsed}; call select_frames as the system says"))
            return
        if not isinstance(parsed, ToolRequest):
            conv.result, conv.final_text = parsed, text
            return
        conv.messages.append(protocol.assistant_tool_turn(parsed.think, [c.frames for c in parsed.calls]))
        for call in parsed.calls:
            conv.messages.append(self._run_tool(conv, call))

    def _run_tool(self, conv: _Conv, call) -> dict:
        """One select_frames call: frames as images, or the reason it cannot be served, for the model."""
        error = protocol.check_call(call, conv.video.total_frames, len(conv.calls), self.spec)
        conv.calls.append({"frames": list(call.frames), "error": error})
        if error is not None:
            return protocol.tool_turn(error=error)
        try:
            pics = read_frames_at(conv.path, list(call.frames), self.tool_max_pixels, self.family)
        except VideoError as err:  # a frame that will not decode is the model's tool error, not a crash
            conv.calls[-1]["error"] = err.reason
            return protocol.tool_turn(error=err.reason)
        refs = [f"{conv.id}:{len(conv.calls)}:{f}" for f in call.frames]  # placeholders the renderer ignores
        turn = protocol.tool_turn(call.frames, [f / conv.video.fps for f in call.frames], refs)
        for ref, pic in zip(refs, pics, strict=True):
            conv.images[ref] = pic
        return turn

    @torch.inference_mode()
    def _score(self, convs: list[_Conv]) -> list[list[float]]:
        for c in convs:  # the final turn as generated (even unparseable: the head still reads it)
            c.messages.append({"role": "assistant", "content": (c.final_text or "").strip()})
        raw = []
        for start in range(0, len(convs), self.batch_size):
            raw += self.model.score(
                **self._inputs(convs[start : start + self.batch_size], final=True)
            ).tolist()
        return raw

    def _record(self, conv: _Conv, raw: list[float]) -> dict:
        dims = self.model.config.dimensions
        ok = isinstance(conv.result, Judgment)
        return {
            "id": conv.id,
            "scores": {d: self.spec.from_unit(x) for d, x in zip(dims, raw, strict=True)},
            "answer_scores": conv.result.scores if ok else None,
            "rationale": conv.result.think if ok else (conv.final_text or ""),
            "frames_cited": list(conv.result.frames_cited) if ok else [],
            "tool_calls": conv.calls,
            "parse_error": None if ok else str(conv.result),
            "model": self.name,
            "protocol_version": protocol.PROTOCOL_VERSION,
        }

    def _video_error(self, rid: str, error: str) -> dict:
        return {"id": rid, "scores": None, "answer_scores": None, "rationale": "",
                "frames_cited": [], "tool_calls": [], "parse_error": f"video_error: {error}",
                "model": self.name, "protocol_version": protocol.PROTOCOL_VERSION}  # fmt: skip
