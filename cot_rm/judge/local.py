"""The local judge: the select_frames tool loop with a transformers model, then the head's scores.

For a batch of videos, each conversation advances one assistant turn per round (batched greedy
generation, left padding). A turn that calls the tool gets the frames (or an error message, never an
exception) as the next tool turn, within the protocol's budgets and memory window; a turn that
answers ends that judgment; an unparseable turn ends it with its parse error (counted, never scored
as 0). Then one scoring pass appends `<|reward|>` after each final turn and reads the head, so
`scores` (head) exist even when `answer_scores` (the generated answer) do not. The same pass gives the
head's std (`scores_std`, an uncertainty head only), both through the checkpoint's calibration
(`cot_rm.model.calibration`), and `answer_probs` from the logits at the answer's score digits
(`cot_rm.judge.answer_probs`).

A video is a file path or frames held in memory (`cot_rm.media.clip.Clip`): both are sampled, sized and
served to the tool alike.

Greedy by default, so a judgment is reproducible; `judge_samples` draws k seeded sampled judgments and
reports their mean and spread. `cot-rm judge` (`cot_rm.judge.cli`) runs it on video files.

By default each round and the scoring pass run only what is new (`cot_rm.judge.reuse`: each video and
tool frame processed and through the vision tower once, the keys and values of the conversation so far
continued from); `reuse=False` keeps the old path, which re-encodes the whole conversation every time:
the same judgments (the same greedy text, scores within float noise), slower.
"""

from __future__ import annotations

import copy
import statistics
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from cot_rm import protocol
from cot_rm.judge import answer_probs
from cot_rm.judge.media import IMAGE, VIDEO, image_key, video_key
from cot_rm.judge.reuse import Reuse
from cot_rm.media.clip import frames_at, read_source
from cot_rm.media.video import Sampling, VideoError
from cot_rm.model import calibration
from cot_rm.model.modeling import reward_positions
from cot_rm.model.processing import encode
from cot_rm.protocol import JudgeSpec, Judgment, ParseError, ToolRequest


@dataclass
class _Conv:
    id: str
    source: object  # a video file path, or a `cot_rm.media.clip.Clip`
    video: object
    messages: list[dict]
    images: dict[int, object] = field(default_factory=dict)  # id(image part) -> PIL image
    calls: list[dict] = field(default_factory=list)
    final_text: str | None = None
    result: Judgment | ParseError | None = None
    prefix: object = None  # the fast path's keys and values so far (`cot_rm.judge.prefix.Prefix`)
    keys: dict = field(default_factory=dict)  # the fast path's media key of the video and of each image ref


class Judge:
    """Judges videos with a `ThinkThenScore` model the way it was trained (greedy by default;
    `temperature` > 0 samples, with `top_p`). `cache`: the frame cache for video files; `reuse`: the fast
    path (the module docstring), shared by the copies `with_sampling` makes; what it stores holds for the
    weights it was computed with (`judge.reuse.clear()` after changing them)."""

    def __init__(self, model, sampling: Sampling, spec: JudgeSpec, tool_max_pixels: int = protocol.TOOL_MAX_PIXELS,
                 max_new_tokens: int = 512, batch_size: int = 8, cache=None, name: str | None = None,
                 temperature: float = 0.0, top_p: float = 1.0, reuse: bool = True):  # fmt: skip
        self.model, self.sampling, self.spec = model, sampling, spec
        self.temperature, self.top_p = temperature, top_p
        self.name = name or str(model.config.base_model)
        self.tool_max_pixels, self.max_new_tokens = tool_max_pixels, max_new_tokens
        self.batch_size, self.cache = batch_size, cache
        self.processor, self.family = model.processor, model.config.family
        self.score_tokens = answer_probs.score_tokens(self.processor.tokenizer, spec)
        self.reuse = Reuse(model) if reuse else None

    def with_sampling(self, temperature: float, top_p: float = 1.0) -> Judge:
        """This judge (the same model, settings and frame cache) sampling at `temperature` and `top_p`: a
        copy, so a request's sampling never changes what another request sharing this judge gets."""
        other = copy.copy(self)
        other.temperature, other.top_p = temperature, top_p
        return other

    def judge(self, items: Sequence[tuple[str, object, str]], seed: int | None = None) -> list[dict]:
        """Judgment JSON (README, Data formats) for each (id, video, prompt), in order; a video is a file
        path or a `Clip`. `seed` fixes the draws when sampling (the global RNG is restored afterwards)."""
        out = []
        with _seeded(seed, next(self.model.parameters()).device):
            for start in range(0, len(items), self.batch_size):
                out += self._judge_batch(items[start : start + self.batch_size])
        return out

    def judge_samples(self, items: Sequence[tuple[str, str, str]], k: int, seed: int = 0) -> list[dict]:
        """k sampled judgments per item, summarised by `summarize_samples`. Draw s is seeded with
        seed + s, so draw s does not depend on k (3 draws are the first 3 of 5)."""
        if self.temperature <= 0 or k < 1:
            raise ValueError(f"sampling needs temperature > 0 and k >= 1 (got {self.temperature}, {k})")
        draws = [self.judge(items, seed=seed + s) for s in range(k)]
        meta = {"temperature": self.temperature, "top_p": self.top_p, "seed": seed}
        return [summarize_samples([d[i] for d in draws], **meta) for i in range(len(items))]

    def _judge_batch(self, items) -> list[dict]:
        convs, failed = [], {}
        for rid, path, prompt in items:
            try:
                convs.append(self.open(rid, path, prompt))
            except VideoError as err:
                failed[rid] = str(err)
        for _ in range(self.rounds):
            active = [c for c in convs if c.result is None]
            if not active:
                break
            for conv, (text, cut) in zip(active, self._generate(active), strict=True):
                self.advance(conv, text, cut)
        done = {j["id"]: j for j in self.close(convs)}
        return [done.get(rid) or video_error_record(rid, failed[rid], self.name) for rid, _, _ in items]

    # The steps of one judgment, for drivers that generate elsewhere (`cot_rm.serve.app` asks vLLM):
    # open -> (generate a turn on `context(conv)`, advance) at most `rounds` times -> close.
    @property
    def rounds(self) -> int:
        """Assistant turns a judgment may take: one per allowed tool call, plus the answer."""
        return self.spec.max_tool_calls + 1

    def open(self, rid: str, source, prompt: str) -> _Conv:
        """A new judgment of the video `source`, a file path or a `Clip` (raises `VideoError` when a file
        cannot be read)."""
        video = read_source(source, self.sampling, self.cache)
        return _Conv(rid, source, video, protocol.judgment_conversation(prompt, video, spec=self.spec))

    def context(self, conv: _Conv) -> list[dict]:
        """The messages the model sees for its next turn (the memory window applied)."""
        return protocol.apply_memory_window(conv.messages, self.spec.memory_window)

    def advance(self, conv: _Conv, text: str, cut: bool = False) -> bool:
        """Take one generated assistant turn (tool calls are served here; `cut`: it ran out of tokens
        before its end token, and ends the judgment as `truncated`); True once it is final."""
        self._advance(conv, text, cut)
        return conv.result is not None

    @property
    def cut_detail(self) -> str:
        return (
            f"the turn reached max_new_tokens ({self.max_new_tokens}) before it ended; raise --max-new-tokens"
        )

    def close(self, convs: list[_Conv]) -> list[dict]:
        """Score finished (or budget-spent) judgments with the head, in one batched pass; their JSON."""
        for conv in convs:
            if conv.result is None:
                conv.result = ParseError("missing_answer", "tool budget spent without an answer")
        scored = self._score(convs) if convs else []
        return [self._record(c, **s) for c, s in zip(convs, scored, strict=True)]

    @torch.inference_mode()
    def score_video_only(self, items: Sequence[tuple[str, str, str]]) -> list[list[float]]:
        """The head's raw outputs on the video and prompt alone, no critique generated: the
        rationale-free input that SFT's rationale dropout trains. Set beside the judged scores, it shows
        how much of the head's accuracy comes from the video and how much from reading the critique."""
        convs = [self.open(rid, path, prompt) for rid, path, prompt in items]
        raw = []
        for start in range(0, len(convs), self.batch_size):
            chunk = convs[start : start + self.batch_size]
            raw += self.model.score(**self._inputs(chunk, final=False, reward=True)).tolist()
        return raw

    def _inputs(self, convs: list[_Conv], final: bool, reward: bool | None = None) -> dict:
        """final: the conversation ends with the model's last turn (no generation prompt); reward:
        append the query token the head reads (default: when final)."""
        return self._encoded(convs, final, reward)[1]

    def _encoded(self, convs: list[_Conv], final: bool, reward: bool | None = None) -> tuple[list[str], dict]:
        """The rendered texts and the model inputs `_inputs` describes."""
        reward = final if reward is None else reward
        texts, videos, images = [], [], []
        for c in convs:
            msgs = self.context(c)
            text = protocol.render(
                self.processor, msgs, self.family, self.spec, add_generation_prompt=not final
            )
            texts.append(text + (self.model.config.reward_token if reward else ""))
            videos.append(c.video)
            images += [c.images[p["image"]] for m in msgs if m["role"] == "tool" for p in m["content"]
                       if p.get("type") == "image"]  # fmt: skip
        device = next(self.model.parameters()).device
        batch = encode(self.processor, texts, videos=videos, images=images or None, padding_side="left")
        return texts, {k: v.to(device) for k, v in batch.items()}

    def _rendered(self, convs: list[_Conv], final: bool) -> tuple[list[str], list[list[tuple]]]:
        """The fast path's input: each rendered text (as `_encoded` renders it) and its media in order."""
        texts, media = [], []
        for c in convs:
            msgs = self.context(c)
            text = protocol.render(
                self.processor, msgs, self.family, self.spec, add_generation_prompt=not final
            )
            texts.append(text + (self.model.config.reward_token if final else ""))
            media.append(self._media(c, msgs))
        return texts, media

    @staticmethod
    def _media(conv: _Conv, msgs: list[dict]) -> list[tuple]:
        """(kind, store key, item) of the video and of each tool image in `msgs`, keys computed once."""
        if VIDEO not in conv.keys:
            conv.keys[VIDEO] = video_key(conv.video)
        out = [(VIDEO, conv.keys[VIDEO], conv.video)]
        for ref in (
            p["image"] for m in msgs if m["role"] == "tool" for p in m["content"] if p.get("type") == "image"
        ):
            if ref not in conv.keys:
                conv.keys[ref] = image_key(conv.images[ref])
            out.append((IMAGE, conv.keys[ref], conv.images[ref]))
        return out

    @classmethod
    def from_model(cls, model, **kwargs) -> Judge:
        """A judge with the checkpoint's own settings (`cot_rm.json`: frame sampling, tool budgets and
        tool resolution), so it judges the way the model was trained; `kwargs` as for `Judge`."""
        cfg = model.config
        spec = JudgeSpec.from_dict(cfg.judge_spec or {"dimensions": cfg.dimensions})
        return cls(
            model, Sampling.from_dict(cfg.sampling), spec, tool_max_pixels=cfg.tool_max_pixels, **kwargs
        )

    @torch.inference_mode()
    def _generate(self, convs: list[_Conv]) -> list[tuple[str, bool]]:
        """Each conversation's next turn, and whether it was cut by `max_new_tokens` (no end token)."""
        if self.temperature > 0:
            how = {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p, "top_k": 0}
        else:
            how = {"do_sample": False}
        if self.reuse is not None:
            texts, media = self._rendered(convs, final=False)
            new = self.reuse.generate(convs, texts, media, max_new_tokens=self.max_new_tokens, **how)
        else:
            inputs = self._inputs(convs, final=False)
            ids = self.model.vlm.generate(**inputs, max_new_tokens=self.max_new_tokens, **how)
            new = ids[:, inputs["input_ids"].shape[1] :]
        eos = self.model.vlm.generation_config.eos_token_id
        eos = torch.tensor(eos if isinstance(eos, list) else [eos], device=new.device)
        ended = torch.isin(new, eos).any(1).tolist()  # padding after an end is an end token too
        texts = self.processor.batch_decode(new, skip_special_tokens=True)
        return [(t, not e) for t, e in zip(texts, ended, strict=True)]

    def _advance(self, conv: _Conv, text: str, cut: bool = False) -> None:
        if cut:  # unfinished, whatever it holds: say so rather than blame the format
            conv.result, conv.final_text = ParseError("truncated", self.cut_detail), text
            return
        parsed = protocol.parse_turn(text, self.spec)
        if isinstance(parsed, ParseError) and parsed.reason in ("malformed_tool_call", "unknown_tool"):
            # A bad call is answered with an error as the tool result (and spends a call), never ends it;
            # `request` keeps what the model wrote, since it has no frames to show.
            request = text.split("<tool_call>", 1)[-1].split("</tool_call>", 1)[0].strip()[:300]
            conv.calls.append({"frames": [], "error": str(parsed), "request": request})
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
            pics = frames_at(conv.source, list(call.frames), self.tool_max_pixels, self.family)
        except VideoError as err:  # a frame that will not decode is the model's tool error, not a crash
            conv.calls[-1]["error"] = err.reason
            return protocol.tool_turn(error=err.reason)
        refs = [f"{conv.id}:{len(conv.calls)}:{f}" for f in call.frames]  # placeholders the renderer ignores
        turn = protocol.tool_turn(call.frames, [f / conv.video.fps for f in call.frames], refs)
        for ref, pic in zip(refs, pics, strict=True):
            conv.images[ref] = pic
        return turn

    @torch.inference_mode()
    def _score(self, convs: list[_Conv]) -> list[dict]:
        """`_record`'s keyword arguments per conversation: the head's raw outputs (and log-variances) and
        the answer's score-digit probabilities, from one teacher-forced pass over each finished turn."""
        for c in convs:  # the final turn as generated (even unparseable: the head still reads it)
            c.messages.append({"role": "assistant", "content": (c.final_text or "").strip()})
        out = []
        for start in range(0, len(convs), self.batch_size):
            out += self._score_batch(convs[start : start + self.batch_size])
        return out

    def _score_batch(self, convs: list[_Conv]) -> list[dict]:
        if self.reuse is not None:
            return self._score_reusing(convs)
        texts, inputs = self._encoded(convs, final=True)
        # The final norm's output feeds the head; the LM head reads it too, at the answer's score digits.
        out = self.model(**inputs, return_logits=False, return_last_hidden=True)
        wanted = [self._wanted(c, text) for c, text in zip(convs, texts, strict=True)]
        return self._scored(out.rewards, out.log_var, wanted, inputs["input_ids"], out.last_hidden)

    def _score_reusing(self, convs: list[_Conv]) -> list[dict]:
        """`_score_batch` on the fast path: only the tokens after what the last round encoded are run, and
        always the answer's digits (whose logits `answer_probs` reads) and the reward token."""
        texts, media = self._rendered(convs, final=True)
        wanted = [self._wanted(c, text) for c, text in zip(convs, texts, strict=True)]
        keep = [1 + max((back for back, _ in (w or {}).values()), default=0) for w in wanted]
        hidden, ids, mask = self.reuse.hidden(convs, texts, media, keep)
        at = hidden[torch.arange(len(convs)), reward_positions(ids, self.model.reward_token_id, mask)]
        # The head row by row: a row's scores are then the same bits whichever rows are scored with it.
        rewards, log_var = zip(*(self.model.head.forward_dist(row[None]) for row in at), strict=True)
        log_var = None if log_var[0] is None else torch.cat(log_var)
        return self._scored(torch.cat(rewards), log_var, wanted, ids, hidden)

    def _scored(self, rewards, log_var, wanted, input_ids, hidden) -> list[dict]:
        """`_record`'s keyword arguments per row from the head's outputs and the final hidden states."""
        log_var = log_var.tolist() if log_var is not None else [None] * len(wanted)
        lm_head = self.model.base_vlm.lm_head
        return [
            {"raw": raw, "log_var": lv,
             "probs": answer_probs.read(h, ids, lm_head, w, self.score_tokens, self.spec) if w is not None else None}
            for raw, lv, w, ids, h in zip(rewards.tolist(), log_var, wanted, input_ids, hidden, strict=True)
        ]  # fmt: skip

    def _wanted(self, conv: _Conv, text: str) -> dict | None:
        """Where the answer's score digits sit, counted from the end of `text`'s tokens; None when
        `answer_probs` is not read (the answer did not parse, or the scale has no digit tokens)."""
        if not isinstance(conv.result, Judgment) or self.score_tokens is None:
            return None
        offsets = answer_probs.digit_offsets(text, self.spec)
        return answer_probs.positions_from_end(self.processor.tokenizer, text, offsets)

    def _record(self, conv: _Conv, raw: list[float], log_var: list[float] | None = None,
                probs: dict | None = None) -> dict:  # fmt: skip
        cfg = self.model.config
        ok = isinstance(conv.result, Judgment)
        record = {
            "id": conv.id,
            "scores": calibration.scores(raw, cfg.dimensions, cfg.calibration, self.spec),
        }
        if log_var is not None:  # an uncertainty (Gaussian NLL) head
            record["scores_std"] = calibration.scores_std(log_var, cfg.dimensions, cfg.calibration, self.spec)
        return record | {
            "answer_scores": conv.result.scores if ok else None,
            "answer_probs": probs if ok else None,
            "rationale": conv.result.think if ok else (conv.final_text or ""),
            # frames of this video only: a critique that cites "frame 121" of a 30-frame clip keeps
            # those words in `rationale`, but 121 is not a frame anyone can look at
            "frames_cited": [f for f in conv.result.frames_cited if f < conv.video.total_frames]
            if ok
            else [],
            "tool_calls": conv.calls,
            "parse_error": None if ok else str(conv.result),
            "model": self.name,
            "protocol_version": protocol.PROTOCOL_VERSION,
        }


VIDEO_ERROR = "video_error: "


def video_error_of(parse_error: str | None) -> str | None:
    """Why the video could not be read, for a Judgment `video_error_record` made; else None."""
    return (
        parse_error.removeprefix(VIDEO_ERROR) if parse_error and parse_error.startswith(VIDEO_ERROR) else None
    )


def video_error_record(rid: str, error: str, model_name: str) -> dict:
    """The Judgment of a video that cannot be read: no scores at all, the reason as `parse_error`."""
    return {"id": rid, "scores": None, "answer_scores": None, "answer_probs": None, "rationale": "",
            "frames_cited": [], "tool_calls": [], "parse_error": VIDEO_ERROR + error,
            "model": model_name, "protocol_version": protocol.PROTOCOL_VERSION}  # fmt: skip


@contextmanager
def _seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    if seed is None:
        yield
        return
    # fork_rng restores the caller's RNG state: seeding here must not change what runs after.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


# ---------------------------------------------------------------------------------------- sampling


def summarize_samples(draws: list[dict], temperature: float, top_p: float, seed: int) -> dict:
    """k sampled Judgments of one video -> one Judgment with the contract keys plus `samples`.

    `scores` is the mean of the draws' head scores and `answer_scores` the mean over the draws that
    parsed (None when none did: a failed parse never counts as a score). The text fields (rationale,
    frames_cited, tool_calls, parse_error) are those of the first draw that parsed (else draw 0), whose
    index is `samples.shown`. `samples` adds the population std of both and every draw in full.
    The head's own `scores_std` (an uncertainty head) is the mean of the draws' and `answer_probs` the
    mixture of the parsed draws' (per dimension, the mean of their probabilities and expectations).
    """
    parsed = [j for j in draws if j["parse_error"] is None]
    shown = next((i for i, j in enumerate(draws) if j["parse_error"] is None), 0)
    head_mean, head_std = _mean_std([j["scores"] for j in draws if j["scores"] is not None])
    answer_mean, answer_std = _mean_std([j["answer_scores"] for j in parsed])
    samples = {"k": len(draws), "temperature": temperature, "top_p": top_p, "seed": seed,
               "shown": shown, "n_parsed": len(parsed), "scores_std": head_std,
               "answer_scores_std": answer_std, "judgments": draws}  # fmt: skip
    out = {**draws[shown], "scores": head_mean, "answer_scores": answer_mean, "samples": samples}
    if "scores_std" in out:
        out["scores_std"] = _mean_std([j["scores_std"] for j in draws if j.get("scores_std")])[0]
    if "answer_probs" in out:
        out["answer_probs"] = _mixture([j.get("answer_probs") for j in parsed])
    return out


def _mean_std(rows: list[dict]) -> tuple[dict | None, dict | None]:
    if not rows:
        return None, None
    mean = {d: statistics.fmean(r[d] for r in rows) for d in rows[0]}
    return mean, {d: statistics.pstdev([r[d] for r in rows]) for d in rows[0]}


def _mixture(rows: list[dict | None]) -> dict | None:
    """answer_probs of several draws -> one: per dimension, the mean over the draws that have it."""
    rows = [r for r in rows if r]
    if not rows:
        return None
    out: dict[str, dict | None] = dict.fromkeys(rows[0])
    for dim in out:
        have = [r[dim] for r in rows if r.get(dim)]
        if have:
            probs = {k: statistics.fmean(h["probs"][k] for h in have) for k in have[0]["probs"]}
            out[dim] = {"probs": probs, "expected": statistics.fmean(h["expected"] for h in have)}
    return out
