"""Multi-turn `select_frames` rollouts for GRPO: token ids concatenated turn by turn, never re-tokenised.

    rollouts = Rollouts(processor, family, spec, reward_token, hf_turn_generator(model.vlm, gen_cfg))
    batch = rollouts.run(rows, num_generations=G)      # rows: {"video", "prompt", "sampling", ...}

Each rollout starts from `protocol.render` of `protocol.judgment_conversation` (tool template, generation
prompt), encoded once per distinct (video, sampling, prompt) with `processing.encode`: G rollouts of a
row (or G identical rows, as TRL's sampler repeats them) share one prompt encoding and one `Video`.

A round: the active rollouts generate one assistant turn together (left padding, through the
`generate_turn` seam: HF here, vLLM later), parsed with `protocol.parse_turn` with the local judge's
semantics (`Judge._advance` / `_run_tool`): a malformed call or unknown tool, a call over the budget,
too many frames, a frame out of range or a frame that will not decode is answered by an error tool
turn and spends a call; a valid call gets its frames (`read_frames_at` at the row's
`tool_max_pixels`). The tool-result ids are exactly what the chat template renders for those tool
messages: `render(dummy + tool messages, add_generation_prompt=True)` minus `render(dummy)` up to its
last `<|im_end|>`, encoded with the frames (so `<|image_pad|>` runs are expanded by the processor).
A judgment, an unparseable turn, a turn cut by the length budget, or a tool request on the last
allowed turn (`max_tool_calls + 1` turns) ends the rollout. Then the query suffix is appended as SFT
and the judge do: `"\\n<|reward|>"` after the final `<|im_end|>` (or `"<|im_end|>\\n<|reward|>"` when
the last turn was cut), so `prompt_ids + completion_ids` is `render(conversation) + reward_token`.

Visual memory window (`JudgeSpec.memory_window`): each turn is generated in the windowed context
(`protocol.apply_memory_window`: only the last `window` tool rounds that returned images keep them;
older ones are rendered with the placeholder text; a round that returned only an error does not count). The returned sequence is the final windowed conversation, what
the judge scores and SFT trains on. A generated turn whose context differed from that (it saw images
that are placeholders in the final sequence) is "stale": with `stale_turns="mask"` (default) its
tokens get `tool_mask` 0, with "keep" they stay in the loss; both count `stale_turns`/`stale_tokens`.
The first turn and the final turn are always exact.

Length: completion ids (generated + tool + query) never exceed `max_completion_length` (tool rounds
counted at their longer rendering, images or placeholder); a turn is capped at the tokens left and a
tool result that would not fit ends the rollout as truncated.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from cot_rm import protocol
from cot_rm.media.video import Sampling, Video, VideoError, read_frames_at, read_video
from cot_rm.model.processing import encode, mm_token_type_ids
from cot_rm.protocol import JudgeSpec, Judgment, ParseError, ToolRequest

IM_END = "<|im_end|>"
STALE_POLICIES = ("mask", "keep")
_DUMMY = [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]


@dataclass
class TurnBatch:
    """One generation call: left-padded model inputs plus what other backends need (raw media, keys).

    `inputs`: input_ids, attention_mask, mm_token_type_ids, pixel_values_videos, video_grid_thw
    (+ second_per_grid_ts), pixel_values + image_grid_thw when images are in context (CPU tensors).
    `videos`/`images`: the same media as `Video` objects and PIL images, in placeholder order.
    `max_new_tokens`: per row (the tokens each rollout has left). `rollout_ids`: index of each row's
    rollout in the `run` call (lets a scripted generator follow its script).
    """

    inputs: dict[str, torch.Tensor]
    videos: list[Video]
    images: list[Any]
    key_hints: dict[str, list[str]]
    max_new_tokens: list[int]
    rollout_ids: list[int]


# A backend: (new ids ending with the stop token when it stopped, their log-probs or None) per row.
TurnGenerator = Callable[[TurnBatch], list[tuple[list[int], list[float] | None]]]


@dataclass
class RolloutMedia:
    """What a log-prob pass needs to rebuild the vision inputs of one rollout's final sequence."""

    videos: list[Video]
    images: list[Any]  # PIL tool images of the rounds still in the window, in placeholder order
    image_refs: list[dict]  # {"video": path, "frame": n} for each of `images`
    inputs: dict[str, torch.Tensor] = field(default_factory=dict)  # their processed tensors (shared)


def collate_media(media: Sequence[RolloutMedia]) -> dict[str, torch.Tensor]:
    """The vision kwargs of a batch of rollouts' final sequences (row order): pixel_values_videos,
    video_grid_thw (+ second_per_grid_ts), pixel_values + image_grid_thw when any image remains.
    Add `processing.mm_token_type_ids(processor, input_ids)` for the forward."""
    out: dict[str, list[torch.Tensor]] = {}
    for m in media:
        for k, v in m.inputs.items():
            out.setdefault(k, []).append(v)
    return {k: torch.cat(v) for k, v in out.items()}


@dataclass
class RolloutBatch:
    """Per rollout (row order, each row's G rollouts adjacent). `tool_mask` is 1 on policy tokens."""

    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    tool_mask: list[list[int]]
    logprobs: list[list[float]] | None  # aligned with completion_ids (0 off-policy); None from HF
    completions: list[list[dict]]  # TRL conversational form: assistant (raw text) and tool turns
    media: list[RolloutMedia]
    key_hints: list[dict[str, list[str]]]  # {"videos": [key], "images": [keys]} for VisionFeatureCache
    results: list[Judgment | ParseError]  # how each rollout ended
    tool_calls: list[int]  # calls answered (valid or not): the budget spent
    invalid_calls: list[int]
    truncated: list[bool]  # length budget hit (mask them via tool_mask if wanted)
    stale_turns: list[list[int]]  # generated-turn indices produced in a different context
    stale_tokens: list[int]

    def padded(self, pad_id: int) -> dict[str, torch.Tensor]:
        """prompt ids/mask left-padded, completion ids/mask/tool_mask right-padded (TRL's layout)."""
        p, c = max(map(len, self.prompt_ids)), max(map(len, self.completion_ids))
        out = {k: [] for k in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "tool_mask")}
        for pi, ci, tm in zip(self.prompt_ids, self.completion_ids, self.tool_mask, strict=True):
            out["prompt_ids"].append([pad_id] * (p - len(pi)) + pi)
            out["prompt_mask"].append([0] * (p - len(pi)) + [1] * len(pi))
            out["completion_ids"].append(ci + [pad_id] * (c - len(ci)))
            out["completion_mask"].append([1] * len(ci) + [0] * (c - len(ci)))
            out["tool_mask"].append(tm + [0] * (c - len(tm)))
        return {k: torch.tensor(v, dtype=torch.long) for k, v in out.items()}

    def metrics(self) -> dict[str, float]:
        n = max(len(self.completion_ids), 1)
        return {
            "tools/calls_mean": sum(self.tool_calls) / n,
            "tools/invalid_calls_mean": sum(self.invalid_calls) / n,
            "tools/stale_tokens": float(sum(self.stale_tokens)),
            "rollout/truncated_frac": sum(self.truncated) / n,
            "rollout/parsed_frac": sum(isinstance(r, Judgment) for r in self.results) / n,
        }


@dataclass
class _Prompt:
    path: str
    video: Video
    ids: list[int]
    video_inputs: dict[str, torch.Tensor]
    video_key: str


@dataclass
class _Seg:
    kind: str  # "gen" | "tool"
    ids: list[int]
    alt: list[int] | None = None  # tool round rendered with placeholders (None: no images)
    logps: list[float] | None = None
    images: list[Any] = field(default_factory=list)
    refs: list[dict] = field(default_factory=list)
    image_inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    full_rounds: frozenset = frozenset()  # gen: image rounds shown with images when it was generated


@dataclass
class _State:
    prompt: _Prompt
    tool_px: int
    segs: list[_Seg] = field(default_factory=list)
    messages: list[dict] = field(default_factory=list)
    calls: int = 0
    invalid: int = 0
    truncated: bool = False
    result: Judgment | ParseError | None = None

    def rounds(self) -> list[_Seg]:
        return [s for s in self.segs if s.kind == "tool"]

    def full_rounds(self, window: int) -> frozenset:
        """Indices of tool rounds with images that the memory window keeps (the last `window` of the
        rounds with images: an error-only round does not count, as in `protocol.apply_memory_window`)."""
        with_images = [r for r, seg in enumerate(self.rounds()) if seg.alt is not None]
        return frozenset(with_images[-window:] if window > 0 else ())

    def context(self, window: int) -> tuple[list[int], list[_Seg]]:
        """Completion ids in the windowed context, and the tool rounds shown with images."""
        full, ids, shown, r = self.full_rounds(window), [], [], 0
        for s in self.segs:
            if s.kind == "tool":
                use_full = s.alt is None or r in full
                ids += s.ids if use_full else s.alt
                shown += [s] if use_full and s.alt is not None else []
                r += 1
            else:
                ids += s.ids
        return ids, shown

    def budget_used(self) -> int:
        return sum(max(len(s.ids), len(s.alt or ())) for s in self.segs)


class Rollouts:
    """Runs the select_frames loop for GRPO with any `TurnGenerator` backend (see the module doc)."""

    def __init__(self, processor, family: str, spec: JudgeSpec, reward_token: str,
                 generate_turn: TurnGenerator, max_completion_length: int = 1024,
                 max_turn_tokens: int = 512, stale_turns: str = "mask", frame_cache=None,
                 default_tool_max_pixels: int = protocol.TOOL_MAX_PIXELS):  # fmt: skip
        if stale_turns not in STALE_POLICIES:
            raise ValueError(f"stale_turns must be one of {STALE_POLICIES}, got {stale_turns!r}")
        self.processor, self.family, self.spec = processor, family, spec
        self.generate_turn, self.stale_policy, self.frame_cache = generate_turn, stale_turns, frame_cache
        self.max_completion_length, self.max_turn_tokens = max_completion_length, max_turn_tokens
        self.default_tool_max_pixels = default_tool_max_pixels
        tok = processor.tokenizer
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.convert_tokens_to_ids(IM_END)
        self.im_end_id = tok.convert_tokens_to_ids(IM_END)
        self.media_ids = {processor.image_token_id, processor.video_token_id}
        self.query_ids = self._tokens("\n" + reward_token)  # after a turn that ended with <|im_end|>
        self.cut_query_ids = self._tokens(IM_END + "\n" + reward_token)  # after a cut turn
        base = protocol.render(processor, _DUMMY, family, spec)
        self._cut = base.rindex(IM_END) + len(IM_END)
        self._base = base[: self._cut]

    # ------------------------------------------------------------------------------------- driver

    def run(self, rows: Sequence[dict], num_generations: int = 1) -> RolloutBatch:
        """Roll out every row `num_generations` times (1 when rows are already repeated G times)."""
        prompts: dict[tuple, _Prompt] = {}
        videos: dict[str, Video] = {}
        states = []
        for row in rows:
            prompt = self._prompt(row, prompts, videos)
            px = int(row.get("tool_max_pixels") or self.default_tool_max_pixels)
            states += [_State(prompt, px) for _ in range(num_generations)]
        for turn in range(self.spec.max_tool_calls + 1):
            active = [i for i, s in enumerate(states) if s.result is None]
            if not active:
                break
            caps = [self._turn_cap(states[i]) for i in active]
            for i, cap in zip(active, caps, strict=True):
                if cap <= 0:  # no room for even one token
                    states[i].truncated = True
                    states[i].result = ParseError("truncated", "length budget spent")
            active = [i for i, c in zip(active, caps, strict=True) if c > 0]
            if not active:
                break
            outs = self.generate_turn(self._turn_batch([states[i] for i in active], active))
            last = turn == self.spec.max_tool_calls
            for i, (ids, logps) in zip(active, outs, strict=True):
                self._advance(states[i], list(ids), logps, last)
        for s in states:
            if s.result is None:
                s.result = ParseError("missing_answer", "tool budget spent without an answer")
        return self._collect(states)

    def _prompt(self, row: dict, seen: dict[tuple, _Prompt], videos: dict[str, Video]) -> _Prompt:
        sampling = row["sampling"]
        sampling = Sampling.from_dict(sampling) if isinstance(sampling, dict) else sampling
        sampling = replace(sampling, family=self.family)
        path = str(row["video"])
        skey = json.dumps(sampling.to_dict(), sort_keys=True)
        key = (path, skey, row["prompt"])
        if key not in seen:
            vkey = f"{path}|{skey}"  # the vision-cache key cot_rm.train.data uses
            if vkey not in videos:
                videos[vkey] = read_video(path, sampling, self.frame_cache)
            video = videos[vkey]
            messages = protocol.judgment_conversation(row["prompt"], video, spec=self.spec, video_ref=path)
            text = protocol.render(
                self.processor, messages, self.family, self.spec, add_generation_prompt=True
            )
            enc = encode(self.processor, [text], videos=[video])
            vin = {
                k: enc[k] for k in ("pixel_values_videos", "video_grid_thw", "second_per_grid_ts") if k in enc
            }
            seen[key] = _Prompt(path, video, enc["input_ids"][0].tolist(), vin, vkey)
        return seen[key]

    def _turn_cap(self, s: _State) -> int:
        room = self.max_completion_length - s.budget_used() - len(self.cut_query_ids)
        return min(self.max_turn_tokens, room)

    def _turn_batch(self, states: list[_State], rollout_ids: list[int]) -> TurnBatch:
        seqs, videos, images, vkeys, ikeys = [], [], [], [], []
        video_parts, image_parts = [], []
        for s in states:
            ids, shown = s.context(self.spec.memory_window)
            seqs.append(s.prompt.ids + ids)
            videos.append(s.prompt.video)
            video_parts.append(s.prompt.video_inputs)
            vkeys.append(s.prompt.video_key)
            for seg in shown:
                images += seg.images
                image_parts.append(seg.image_inputs)
                ikeys += [_image_key(r, s.tool_px) for r in seg.refs]
        width = max(map(len, seqs))
        input_ids = torch.tensor([[self.pad_id] * (width - len(q)) + q for q in seqs])
        mask = torch.tensor([[0] * (width - len(q)) + [1] * len(q) for q in seqs])
        inputs = {"input_ids": input_ids, "attention_mask": mask,
                  "mm_token_type_ids": mm_token_type_ids(self.processor, input_ids)}  # fmt: skip
        for parts in (video_parts, image_parts):
            for k in parts[0] if parts else ():
                inputs[k] = torch.cat([p[k] for p in parts])
        caps = [self._turn_cap(s) for s in states]
        return TurnBatch(inputs, videos, images, {"videos": vkeys, "images": ikeys}, caps, rollout_ids)

    # -------------------------------------------------------------------------------- one turn

    def _advance(self, s: _State, ids: list[int], logps: list[float] | None, last: bool) -> None:
        if logps is not None and len(logps) != len(ids):
            raise ValueError(f"generate_turn returned {len(logps)} log-probs for {len(ids)} tokens")
        if self.media_ids.intersection(ids):
            raise ValueError(
                "the policy generated an <|image_pad|>/<|video_pad|> token, which no image backs: add the "
                "image/video (and reward) token ids to the generation config's suppress_tokens"
            )
        stopped = bool(ids) and ids[-1] == self.im_end_id
        shown = s.full_rounds(self.spec.memory_window)
        s.segs.append(_Seg("gen", ids, logps=logps, full_rounds=shown))
        text = self.processor.tokenizer.decode(ids, skip_special_tokens=True)
        s.messages.append({"role": "assistant", "content": text})
        if not stopped:  # cut by the length budget (or a stop token other than <|im_end|>)
            s.truncated = True
            s.result = ParseError("truncated", "the turn was cut by the length budget")
            return
        parsed = protocol.parse_turn(text, self.spec)
        if isinstance(parsed, ParseError) and parsed.reason in ("malformed_tool_call", "unknown_tool"):
            calls = [str(parsed)]
        elif isinstance(parsed, ToolRequest):
            calls = list(parsed.calls)
        else:
            s.result = parsed
            return
        if last:
            s.result = ParseError("missing_answer", "tool budget spent without an answer")
            return
        seg, tool_msgs, n_invalid = self._tool_round(s, calls)
        need = max(len(seg.ids), len(seg.alt or ())) + 1 + len(self.cut_query_ids)  # + >= 1 more token
        if s.budget_used() + need > self.max_completion_length:
            s.truncated = True
            s.result = ParseError("missing_answer", "the tool result does not fit the length budget")
            return
        s.segs.append(seg)
        s.messages += tool_msgs
        s.calls += len(calls)
        s.invalid += n_invalid

    def _tool_round(self, s: _State, calls: list) -> tuple[_Seg, list[dict], int]:
        """The tool messages for a turn's calls, and their ids (with images and with placeholders)."""
        msgs, pics, refs, invalid = [], [], [], 0
        video = s.prompt.video
        for n, call in enumerate(calls):
            if isinstance(call, str):  # malformed call / unknown tool, as Judge._advance answers it
                msgs.append(protocol.tool_turn(error=f"{call}; call select_frames as the system says"))
                invalid += 1
                continue
            error = protocol.check_call(call, video.total_frames, s.calls + n, self.spec)
            got = None
            if error is None:
                try:
                    got = read_frames_at(s.prompt.path, list(call.frames), s.tool_px, self.family)
                except VideoError as err:  # a frame that will not decode is the model's tool error
                    error = err.reason
            if error is not None:
                msgs.append(protocol.tool_turn(error=error))
                invalid += 1
                continue
            these = [{"video": s.prompt.path, "frame": int(f)} for f in call.frames]
            msgs.append(protocol.tool_turn(call.frames, [f / video.fps for f in call.frames], these))
            pics += got
            refs += these
        text = self._suffix(msgs)
        if not pics:
            return _Seg("tool", self._tokens(text)), msgs, invalid
        enc = encode(self.processor, [text], images=pics)
        alt = self._tokens(self._suffix(protocol.apply_memory_window(msgs, 0)))
        img = {k: enc[k] for k in ("pixel_values", "image_grid_thw")}
        seg = _Seg("tool", enc["input_ids"][0].tolist(), alt, images=pics, refs=refs, image_inputs=img)
        return seg, msgs, invalid

    def _suffix(self, tool_msgs: list[dict]) -> str:
        """The text the chat template adds for `tool_msgs` after an assistant turn's <|im_end|>,
        through the next generation prompt."""
        full = protocol.render(
            self.processor, _DUMMY + tool_msgs, self.family, self.spec, add_generation_prompt=True
        )
        if not full.startswith(self._base):
            raise AssertionError("the chat template renders earlier turns differently with tool messages")
        return full[self._cut :]

    def _tokens(self, text: str) -> list[int]:
        return self.processor.tokenizer(text, add_special_tokens=False)["input_ids"]

    # ------------------------------------------------------------------------------------ output

    def _collect(self, states: list[_State]) -> RolloutBatch:
        window = self.spec.memory_window
        out = {k: [] for k in ("prompt_ids", "completion_ids", "tool_mask", "logprobs", "completions", "media",
                               "key_hints", "results", "tool_calls", "invalid_calls", "truncated",
                               "stale_turns", "stale_tokens")}  # fmt: skip
        have_logps = True
        for s in states:
            final_full = s.full_rounds(window)
            ids, mask, logps, stale, stale_tok, shown, r = [], [], [], [], 0, [], 0
            turn = 0
            for seg in s.segs:
                if seg.kind == "tool":
                    use_full = seg.alt is None or r in final_full
                    part = seg.ids if use_full else seg.alt
                    shown += [seg] if use_full and seg.alt is not None else []
                    ids, mask, logps = ids + part, mask + [0] * len(part), logps + [0.0] * len(part)
                    r += 1
                    continue
                exact = seg.full_rounds == frozenset(x for x in final_full if x < r)
                if not exact:
                    stale.append(turn)
                    stale_tok += len(seg.ids)
                keep = exact or self.stale_policy == "keep"
                ids += seg.ids
                mask += [int(keep)] * len(seg.ids)
                have_logps &= seg.logps is not None
                logps += list(seg.logps) if seg.logps is not None else [0.0] * len(seg.ids)
                turn += 1
            last = s.segs[-1].ids if s.segs else []
            query = self.query_ids if last and last[-1] == self.im_end_id else self.cut_query_ids
            ids, mask, logps = ids + query, mask + [0] * len(query), logps + [0.0] * len(query)
            images = [p for seg in shown for p in seg.images]
            refs = [x for seg in shown for x in seg.refs]
            tensors = dict(s.prompt.video_inputs)
            for k in ("pixel_values", "image_grid_thw") if shown else ():
                tensors[k] = torch.cat([seg.image_inputs[k] for seg in shown])
            out["prompt_ids"].append(list(s.prompt.ids))
            out["completion_ids"].append(ids)
            out["tool_mask"].append(mask)
            out["logprobs"].append(logps)
            out["completions"].append(s.messages)
            out["media"].append(RolloutMedia([s.prompt.video], images, refs, tensors))
            out["key_hints"].append({"videos": [s.prompt.video_key],
                                     "images": [_image_key(x, s.tool_px) for x in refs]})  # fmt: skip
            out["results"].append(s.result)
            out["tool_calls"].append(s.calls)
            out["invalid_calls"].append(s.invalid)
            out["truncated"].append(s.truncated)
            out["stale_turns"].append(stale)
            out["stale_tokens"].append(stale_tok)
        if not have_logps:
            out["logprobs"] = None
        return RolloutBatch(**out)


def _image_key(ref: dict, tool_px: int) -> str:
    """The tool image's vision-cache key, as `cot_rm.train.data` builds it (path | frame | tool max pixels)."""
    return f"{ref['video']}|{ref['frame']}|{tool_px}"


def hf_turn_generator(model_vlm, generation_config, cache=None) -> TurnGenerator:
    """The transformers backend: `model_vlm.generate` (the HF VLM, e.g. `ThinkThenScore.vlm`) with
    `generation_config` (sampling, eos, suppress_tokens), each row cut after its first stop token and
    at its own `max_new_tokens`. `cache`: a `VisionFeatureCache` to feed the batch's key hints.
    Log-probs are not returned (None): TRL computes the old log-probs itself."""
    eos = generation_config.eos_token_id
    stops = set(eos if isinstance(eos, list | tuple) else [] if eos is None else [eos])

    @torch.inference_mode()
    def generate(batch: TurnBatch) -> list[tuple[list[int], None]]:
        device = next(model_vlm.parameters()).device
        inputs = {k: v.to(device) for k, v in batch.inputs.items()}
        hints = cache.key_hints(**batch.key_hints) if cache is not None else nullcontext()
        with hints:
            out = model_vlm.generate(**inputs, generation_config=generation_config,
                                     max_new_tokens=max(batch.max_new_tokens))  # fmt: skip
        new = out[:, inputs["input_ids"].shape[1] :].tolist()
        result = []
        for ids, cap in zip(new, batch.max_new_tokens, strict=True):
            end = next((n + 1 for n, t in enumerate(ids) if t in stops), len(ids))
            result.append((ids[: min(end, cap)], None))
        return result

    return generate
