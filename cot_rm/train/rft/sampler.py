"""Drawing RFT's judgments: GRPO's rollout loop (`cot_rm.train.grpo.rollout.Rollouts`) and backends (HF
`generate`, a vLLM server, an in-process vLLM) run K times per video; each judgment becomes one record of
the sample log (`cot_rm.train.rft.samples`).

A record holds the conversation as SFT will train on it (system and user turns, then the model's own
turns and the tool's answers, the memory window applied), the parsed answer or the parser's reason,
the generated tokens, the tool calls made and refused, and the frames cited: everything the keep and
selection rules read, and the kept trace itself, without running the model again.
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Iterator, Sequence

import torch
from transformers import GenerationConfig

from cot_rm import protocol
from cot_rm.media.frame_cache import FrameCache
from cot_rm.model.vision_cache import VisionFeatureCache
from cot_rm.protocol import JudgeSpec, Judgment
from cot_rm.train.grpo.rollout import IM_END, RolloutBatch, Rollouts, hf_turn_generator
from cot_rm.train.grpo.vllm import VLLMServerTurnGenerator, build_backend
from cot_rm.train.log import note

PROGRESS_EVERY_S = 30.0  # a progress line at most this often (and after the last batch)


def generation_config(processor, reward_token: str, s, eos=None) -> GenerationConfig:
    """Sampling as `s` (the config's sampling section) says; every turn stops at <|im_end|> (and the
    checkpoint's own end tokens, `eos`); the media and reward tokens are never generated (they would
    stand for no image, or end the judgment early), as in GRPO."""
    tok = processor.tokenizer
    stops = [
        tok.convert_tokens_to_ids(IM_END),
        *(eos if isinstance(eos, list | tuple) else [eos] if eos else []),
    ]
    pad = tok.pad_token_id if tok.pad_token_id is not None else stops[0]
    suppress = [processor.image_token_id, processor.video_token_id, tok.convert_tokens_to_ids(reward_token)]
    return GenerationConfig(do_sample=True, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
                            eos_token_id=list(dict.fromkeys(stops)), pad_token_id=pad,
                            suppress_tokens=suppress)  # fmt: skip


def turn_generator(s, model, processor, family: str, gen_cfg, out_dir: str):
    """(the backend's turn generator, a vision-feature cache to remove after sampling or None). A vLLM
    server must already serve the checkpoint (started on it); an in-process engine starts on the model's
    folder and gets the checkpoint's weights loaded first, so every draw comes from them."""
    if s.backend == "vllm_server":
        gen = VLLMServerTurnGenerator.from_generation_config(s.vllm_url, processor, family, gen_cfg, seed=s.seed,
                                                             timeout_s=s.vllm_timeout_s)  # fmt: skip
        return gen, None
    if s.backend == "vllm_colocate":
        gen, sync = build_backend(_ColocateArgs(s), model, gen_cfg, out_dir, s.seed)
        sync(model)
        return gen, None
    cache = None
    if model.config.freeze_vision:  # the K draws of a video share its tower features
        cache = VisionFeatureCache(model, max_items=256).install()
    return hf_turn_generator(model.vlm, gen_cfg, cache), cache


class _ColocateArgs:
    """The rollout settings `cot_rm.train.grpo.vllm.build_backend` reads, from RFT's sampling section."""

    backend, vllm_sync, vllm_sync_dir = "vllm_colocate", "disk", None

    def __init__(self, s):
        self.vllm_gpu_memory_utilization, self.vllm_max_model_len = (
            s.vllm_gpu_memory_utilization,
            s.vllm_max_model_len,
        )
        self.vllm_url, self.vllm_timeout_s = None, s.vllm_timeout_s


def make_rollouts(processor, config, s, generate_turn, frame_cache: str | None) -> Rollouts:
    """GRPO's rollout loop with the checkpoint's judging settings. Stale turns are kept in the token mask
    (only its sum is read: the tokens generated)."""
    spec = JudgeSpec.from_dict(config.judge_spec)
    frames = None if frame_cache == "off" else FrameCache(frame_cache)
    return Rollouts(processor, config.family, spec, config.reward_token, generate_turn,
                    max_completion_length=s.max_completion_length, max_turn_tokens=s.max_turn_tokens,
                    stale_turns="keep", frame_cache=frames,
                    default_tool_max_pixels=config.tool_max_pixels)  # fmt: skip


def batch_seed(seed: int, keys: Sequence[tuple[str, int]]) -> int:
    """The seed of one batch of draws: the same batch is drawn the same way on a rerun."""
    return (seed * 1_000_003 + zlib.crc32(json.dumps(list(keys)).encode())) % (2**31)


def draw_batches(rollouts: Rollouts, todo: Sequence[tuple[dict, int]], s) -> Iterator[list[dict]]:
    """Sample records of the (row, draw index) pairs in `todo`, `s.batch_size` rollouts at a time."""
    start, last_note = time.monotonic(), 0.0
    for i in range(0, len(todo), s.batch_size):
        chunk = todo[i : i + s.batch_size]
        seed = batch_seed(s.seed, [(row["id"], d) for row, d in chunk])
        torch.manual_seed(seed)
        batch = rollouts.run([row for row, _ in chunk], num_generations=1)
        yield [record(batch, n, row, d, seed, rollouts.spec) for n, (row, d) in enumerate(chunk)]
        done, now = i + len(chunk), time.monotonic()
        if now - last_note >= PROGRESS_EVERY_S or done == len(todo):
            note(__name__, f"cot-rm rft: drew {done}/{len(todo)} judgments ({now - start:.0f} s)")
            last_note = now


def record(batch: RolloutBatch, n: int, row: dict, draw: int, seed: int, spec: JudgeSpec) -> dict:
    """The sample-log record of rollout `n` of `batch` (the video `row`'s draw `draw`)."""
    video = batch.media[n].videos[0]
    turns = batch.completions[n]
    tool_frames = [[c["image"]["frame"] for c in m["content"] if c.get("type") == "image"]
                   for m in turns if m["role"] == "tool"]  # fmt: skip
    opening = protocol.judgment_conversation(row["prompt"], video, spec=spec, video_ref=row["video"])
    messages = protocol.apply_memory_window(opening + turns, spec.memory_window)
    result = batch.results[n]
    parsed = isinstance(result, Judgment)
    return {"video_id": row["id"], "draw": draw, "seed": seed,
            "answer": result.scores if parsed else None, "parse_error": None if parsed else result.reason,
            "tokens": sum(batch.tool_mask[n]), "tool_calls": batch.tool_calls[n],
            "invalid_calls": batch.invalid_calls[n], "truncated": batch.truncated[n],
            "frames_cited": list(result.frames_cited) if parsed else [],
            "tool_frames": [f for f in tool_frames if f], "frame_indices": video.shown,
            "messages": messages}  # fmt: skip
