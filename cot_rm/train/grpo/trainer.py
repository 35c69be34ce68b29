"""Stage 2, `cot-rm grpo --config YAML [key=value ...]`: GRPO with select_frames rollouts, head co-trained.

`CotRmGRPOTrainer` keeps TRL 1.16's GRPOTrainer (advantages, clipped losses, buffering, metrics) and
replaces what it cannot do for video (docs/grpo_design.md):

- rollouts: `_generate` runs `cot_rm.train.grpo.rollout.Rollouts` on the stashed dataset rows (video, prompt,
  sampling, ...; TRL's `prompt` column is the generation prompt text), HF generate or vLLM
  (`cot_rm.train.grpo.vllm`: server or colocate, weights synced before each generation, the head never sent);
- log-probs: `_get_per_token_logps_and_entropies` calls `ThinkThenScore(token_logps=True)` with each
  chunk's video and tool images (`collate_media`), through TRL's fused LM head (temperature-scaled);
  tool-result and query tokens are out of the loss through `tool_mask`;
- the head: the loss pass reads it at the query token; regression on the row's labelled scores plus
  Bradley-Terry (ties) over both sides of a pair in the micro-batch, weight `head.weight`, scaled for
  gradient accumulation as TRL scales its own terms; detached from the VLM unless `head.grad_to_policy`;
- dynamic sampling: groups whose total reward has zero variance leave the policy loss (counted);
- a frozen tower's features are computed once (`VisionFeatureCache` with the rollouts' key hints);
- the KL term (`train.beta` > 0): the reference is the starting checkpoint loaded again and frozen
  (TRL would load the base model's name, which is not the SFT policy), with a feature cache of its own.

Truncated rollouts are masked through `tool_mask` when `mask_truncated_completions` is set (TRL's own
test reads the last id, which is the query token here).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
from collections import Counter
from pathlib import Path

import torch
from datasets import Dataset
from torch.utils.data import Sampler
from transformers import set_seed
from trl import GRPOConfig, GRPOTrainer
from trl.models import prepare_deepspeed, prepare_fsdp
from trl.models.utils import unwrap_model_for_generation
from trl.trainer.utils import add_fused_lm_head, disable_dropout_in_model, nanstd

from cot_rm.config import ConfigError, add_config_arguments, check_trl_args, config_from_args
from cot_rm.media.frame_cache import FrameCache
from cot_rm.model.modeling import ThinkThenScore
from cot_rm.model.processing import mm_token_type_ids
from cot_rm.model.vision_cache import training_cache
from cot_rm.protocol import JudgeSpec
from cot_rm.schema import read_jsonl
from cot_rm.train.common import CotRmSaveMixin, head_losses, zero3
from cot_rm.train.data import PREF, SFTCollator, first_pairs, load_traces
from cot_rm.train.grpo.config import GRPORunConfig
from cot_rm.train.grpo.rewards import build_rewards, defect_frames_of
from cot_rm.train.grpo.rollout import Rollouts, collate_media, hf_turn_generator
from cot_rm.train.grpo.vllm import build_backend
from cot_rm.train.log import note
from cot_rm.train.report import calibrate, validation_traces
from cot_rm.train.runs import start_run, train_to_the_end

# `cot-rm grpo --help`
DESCRIPTION = (
    "Stage 2: GRPO of an SFT checkpoint with multi-turn select_frames rollouts (HF generate or vLLM) and the "
    "regression head co-trained. Resumes from the newest checkpoint in train.output_dir. Example: "
    "cot-rm grpo --config configs/tiny/grpo.yaml train.max_steps=2"
)

VLLM_TODO = (
    "use_vllm: TRL's vLLM generation is image-only; set rollout.backend: vllm_server or vllm_colocate instead "
    "(cot_rm.train.grpo.vllm, docs/grpo_design.md)"
)


class PairRepeatSampler(Sampler):
    """TRL's RepeatSampler over units (one row, or both rows of a pair): a unit never straddles two
    generation batches, so the pairwise reward sees both sides. Yields each row `mini_repeat_count` times
    in a row, each batch of `batch_size` rows `repeat_count` times."""

    def __init__(self, units: list[tuple[int, ...]], mini_repeat_count: int, batch_size: int,
                 repeat_count: int = 1, shuffle: bool = True, seed: int = 0):  # fmt: skip
        if any(len(u) > batch_size for u in units):
            raise ValueError(
                f"a pair does not fit a generation batch of {batch_size} prompt(s): raise it to >= 2"
            )
        self.units, self.mini, self.batch_size, self.repeat = (
            units,
            mini_repeat_count,
            batch_size,
            repeat_count,
        )
        self.shuffle, self.generator = shuffle, torch.Generator().manual_seed(seed)

    def _chunks(self, order: list[int]) -> list[list[int]]:
        chunks, current, waiting = [], [], []
        for unit in (self.units[i] for i in order):
            still = []
            for u in [*waiting, unit]:  # units that did not fit the last chunk go first
                if len(current) + len(u) <= self.batch_size:
                    current += u
                else:
                    still.append(u)
                if len(current) == self.batch_size:
                    chunks.append(current)
                    current = []
            waiting = still
        return chunks

    def __iter__(self):
        n = len(self.units)
        order = torch.randperm(n, generator=self.generator).tolist() if self.shuffle else list(range(n))
        for chunk in self._chunks(order):
            for _ in range(self.repeat):
                for index in chunk:
                    yield from [index] * self.mini

    def __len__(self) -> int:
        rows = sum(len(c) for c in self._chunks(list(range(len(self.units)))))
        return rows * self.mini * self.repeat


class CotRmGRPOTrainer(CotRmSaveMixin, GRPOTrainer):
    """GRPOTrainer for `ThinkThenScore` (see the module doc). `run`: a `GRPORunConfig` (rollout, head,
    dynamic_sampling); `units`: the sampler units when rows come in pairs (None: TRL's sampler)."""

    def __init__(self, model, reward_funcs, args: GRPOConfig, train_dataset, run, spec, vision_cache=None,
                 units=None, frame_cache=None, ref_model=None, ref_cache=None, **kwargs):  # fmt: skip
        beta = args.beta
        if beta != 0.0 and ref_model is None:
            raise ValueError(
                f"beta={beta}: pass ref_model (a frozen ThinkThenScore of the starting checkpoint; "
                "grpo.build loads it): TRL would load one from the base model's name"
            )
        if args.use_vllm:  # TRL's own vLLM path is image-only: ours goes through rollout.backend
            raise NotImplementedError(VLLM_TODO)
        self.run_cfg, self.spec, self.vision_cache, self.units = run, spec, vision_cache, units
        # TRL reads `ids[-1]` for truncation: here the last id is always the query token. Mask through tool_mask.
        self.mask_truncated = args.mask_truncated_completions
        args.mask_truncated_completions = False
        args.remove_unused_columns = False  # the rollout needs video/sampling, the rewards their columns
        if args.ddp_find_unused_parameters is None:
            args.ddp_find_unused_parameters = (
                False  # TRL forces True for VLMs; every trainable param gets a grad
            )
        processor = model.processor
        model.config.image_token_id = processor.image_token_id  # TRL suppresses it in generation
        args.beta = 0.0  # TRL builds no reference of its own; ours is set below
        super().__init__(model=model, reward_funcs=reward_funcs, args=args, train_dataset=train_dataset,
                         processing_class=processor, **kwargs)  # fmt: skip
        args.beta = self.beta = beta
        # TRL's loss_is_scaled_for_ga = True: its terms are pre-divided by the accumulation steps; so is the head's.
        tok = processor.tokenizer
        self.generation_config.suppress_tokens = [
            processor.image_token_id,
            processor.video_token_id,
            tok.convert_tokens_to_ids(model.config.reward_token),
        ]
        for m in (model, ref_model) if beta else (model,):
            add_fused_lm_head(m.base_vlm, temperature=self.temperature,
                              cast_lm_head_to_fp32=args.cast_lm_head_to_fp32, outputs=("log_probs", "entropy"))  # fmt: skip
        self.ref_model, self.ref_cache = (
            (self._prepare_reference(ref_model), ref_cache) if beta else (None, None)
        )
        self.rollouts = Rollouts(
            processor, model.config.family, spec, model.config.reward_token, None,
            max_completion_length=args.max_completion_length, max_turn_tokens=run.rollout.max_turn_tokens,
            stale_turns=run.rollout.stale_turns, frame_cache=frame_cache,
        )  # fmt: skip
        self.vllm_generate, self.vllm_sync, self._vllm_synced_step = None, None, None
        if run.rollout.backend != "hf":
            self.vllm_generate, self.vllm_sync = build_backend(
                run.rollout,
                model,
                self.generation_config,
                args.output_dir,
                args.seed,
                self.accelerator.device,
            )
        self.log_theta = math.log(run.head.tie_theta)
        self._rows, self._batch, self._mm, self._head_out, self._rewards_per_func = (
            None,
            None,
            None,
            None,
            None,
        )

    def _prepare_reference(self, ref):
        """As TRL prepares the reference it builds itself: frozen, dropout off, wrapped for inference."""
        ref.requires_grad_(False).eval()
        if self.args.disable_dropout:
            disable_dropout_in_model(ref)
        if self.is_deepspeed_enabled:
            return prepare_deepspeed(ref, self.accelerator)
        if self.is_fsdp_enabled:
            return prepare_fsdp(ref, self.accelerator)
        return self.accelerator.prepare_model(ref, evaluation_mode=True)

    # --------------------------------------------------------------------------------- sampling

    def _get_train_sampler(self, dataset=None):
        if self.units is None:
            return super()._get_train_sampler(dataset)
        return PairRepeatSampler(
            self.units, self.num_generations, self.args.generation_batch_size // self.num_generations,
            self.num_iterations * self.args.steps_per_generation, self.shuffle_dataset, self.args.seed,
        )  # fmt: skip

    # --------------------------------------------------------------------------------- rollouts

    def _turn_generator(self, unwrapped):
        if self.vllm_generate is None:
            return hf_turn_generator(unwrapped.vlm, self.generation_config, self.vision_cache)
        if self._vllm_synced_step != self.state.global_step:  # new weights since the last rollouts
            if self.accelerator.is_main_process:
                stats = self.vllm_sync(unwrapped)
                self._metrics["train"]["vllm/sync_s"].append(stats.get("save_s", 0.0) + stats["reload_s"])
            self.accelerator.wait_for_everyone()
            self._vllm_synced_step = self.state.global_step
        return self.vllm_generate

    def _generate_and_score_completions(self, inputs):
        self._rows = inputs
        output = super()._generate_and_score_completions(inputs)
        batch, device = self._batch, self.accelerator.device
        output["mm_rows"], output["key_hints"] = batch.media, batch.key_hints
        dims = self.spec.dimensions
        target, mask = (
            torch.zeros(len(inputs), len(dims)),
            torch.zeros(len(inputs), len(dims), dtype=torch.bool),
        )
        for i, row in enumerate(inputs):
            for j, d in enumerate(dims):
                value = (row.get("scores") or {}).get(d)
                if value is not None:
                    target[i, j], mask[i, j] = self.spec.to_unit(float(value)), True
        output["head_target"], output["head_mask"] = target.to(device), mask.to(device)
        for key in ("pair_id", "side", "pair_label"):
            output[key] = [row.get(key) for row in inputs]
        if self.run_cfg.dynamic_sampling:
            self._drop_zero_variance_groups(output, len(inputs))
        return output

    def _generate(self, prompts):
        mode = "train" if self.model.training else "eval"
        with unwrap_model_for_generation(self.model_wrapped, self.accelerator,
                                         gather_deepspeed3_params=self.args.ds3_gather_for_generation,
                                         gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs,
                                         ) as unwrapped, torch.no_grad():  # fmt: skip
            self.rollouts.generate_turn = self._turn_generator(unwrapped)
            batch = self.rollouts.run(self._rows, num_generations=1)  # TRL's sampler repeats each row G times
        self._batch = batch
        self._mm = (batch.media, batch.key_hints)
        tool_mask = [list(m) for m in batch.tool_mask]
        device = self.accelerator.device
        lengths = self.accelerator.gather(torch.tensor([sum(m) for m in tool_mask], device=device)).float()
        truncated = self.accelerator.gather(torch.tensor(batch.truncated, device=device)).float()
        if self.mask_truncated:
            tool_mask = [
                [0] * len(m) if cut else m for m, cut in zip(tool_mask, batch.truncated, strict=True)
            ]
        if mode == "train":
            total = sum(map(len, batch.prompt_ids)) + sum(map(len, batch.completion_ids))
            self.state.num_input_tokens_seen += int(
                self.accelerator.gather(torch.tensor(total, device=device)).sum()
            )
        metrics = self._metrics[mode]
        metrics["num_tokens"] = [self.state.num_input_tokens_seen]
        metrics["completions/mean_length"].append(lengths.mean().item())
        metrics["completions/min_length"].append(lengths.min().item())
        metrics["completions/max_length"].append(lengths.max().item())
        metrics["completions/clipped_ratio"].append(truncated.mean().item())
        for name, value in batch.metrics().items():
            metrics[name].append(value)
        return batch.prompt_ids, batch.completion_ids, tool_mask, batch.completions, None, {}, None, []

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        self._rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        return self._rewards_per_func

    def _drop_zero_variance_groups(self, output: dict, local_rows: int) -> None:
        """Zero `tool_mask` for groups whose weighted total reward is constant; recompute num_items."""
        mode = "train" if self.model.training else "eval"
        g = self.num_generations if mode == "train" else self.num_generations_eval
        r = self._rewards_per_func
        if g < 2 or r is None:
            return
        total = (r * self.reward_weights.to(r.device).unsqueeze(0)).nansum(dim=1)
        total[torch.isnan(r).all(dim=1)] = torch.nan
        std = nanstd(total.view(-1, g), dim=1)
        flat = torch.isclose(std, torch.zeros_like(std)) | torch.isnan(std)  # nan: < 2 scorable rollouts
        start = self.accelerator.process_index * local_rows
        drop = flat.repeat_interleave(g)[start : start + local_rows].to(output["tool_mask"].device)
        output["tool_mask"] = output["tool_mask"] * (~drop).unsqueeze(1).to(output["tool_mask"].dtype)
        loss_mask = output["completion_mask"] * output["tool_mask"]
        output["num_items_in_batch"] = self.accelerator.gather(loss_mask.sum()).sum()
        self._metrics[mode]["dynamic_sampling/dropped_groups"].append(float(flat.sum()))
        self._metrics[mode]["dynamic_sampling/dropped_frac"].append(flat.float().mean().item())

    # -------------------------------------------------------------------------------- log-probs

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep,
                                           batch_size=None, compute_entropy=False, compute_aux_loss=False,
                                           **_unused):  # fmt: skip
        """TRL's chunked log-prob pass with each chunk's video and tool images; the head's outputs at the
        query token are kept in `self._head_out` ([B, D] rewards, log-variances or None)."""
        media, hints = self._mm
        if len(media) != input_ids.size(0):
            raise RuntimeError(f"{len(media)} rollouts' media for {input_ids.size(0)} sequences")
        batch_size = batch_size or input_ids.size(0)
        device = input_ids.device
        logps, entropies, rewards, log_vars = [], [], [], []
        for start in range(0, input_ids.size(0), batch_size):
            end = min(start + batch_size, input_ids.size(0))
            ids, mask = input_ids[start:end], attention_mask[start:end]
            vision = {k: v.to(device) for k, v in collate_media(media[start:end]).items()}
            vision["mm_token_type_ids"] = mm_token_type_ids(self.processing_class, ids)
            labels = ids.masked_fill(mask == 0, -100)
            labels[:, :-logits_to_keep] = -100
            keys = {k: [x for h in hints[start:end] for x in h[k]] for k in ("videos", "images")}
            cache = self.ref_cache if model is self.ref_model else self.vision_cache
            with (
                cache.key_hints(**keys) if cache is not None else contextlib.nullcontext(),
                self.accelerator.autocast(),
            ):
                out = model(input_ids=ids, attention_mask=mask, labels=labels, token_logps=True,
                            detach_head_input=not self.run_cfg.head.grad_to_policy, **vision)  # fmt: skip
            logps.append(out.log_probs[:, -logits_to_keep:])
            if compute_entropy:
                entropies.append(out.entropy[:, -logits_to_keep:])
            rewards.append(out.rewards)
            log_vars.append(out.log_var)
        if model is not self.ref_model:  # the reference's head is never read
            self._head_out = (torch.cat(rewards), None if log_vars[0] is None else torch.cat(log_vars))
        return torch.cat(logps), (torch.cat(entropies) if compute_entropy else None), None

    # ------------------------------------------------------------------------------------- loss

    def _compute_loss(self, model, inputs):
        self._mm = (inputs["mm_rows"], inputs["key_hints"])
        self._head_out = None
        loss = super()._compute_loss(model, inputs)
        mode = "train" if self.model.training else "eval"
        rewards, log_var = self._head_out
        h = self.run_cfg.head
        point, pair, acc = head_losses(
            rewards, log_var, self._head_batch(inputs, rewards.device), h, self.log_theta
        )
        head_loss = point + pair
        normalizer = self.current_gradient_accumulation_steps if mode == "train" else 1.0
        loss = loss + h.weight * head_loss / normalizer
        for name, value in (("head/point_loss", point), ("head/pair_loss", pair)):
            self._metrics[mode][name].append(self.accelerator.gather(value.detach()).mean().item())
        if acc is not None:
            self._metrics[mode]["head/pair_accuracy"].append(acc)
        if self.vision_cache is not None:
            self._metrics[mode]["vision_cache_hit_rate"].append(self.vision_cache.stats()["hit_rate"])
        return loss

    def _head_batch(self, inputs: dict, device) -> dict:
        """head_losses' inputs for this micro-batch: targets, plus every (A rollout, B rollout) of a pair."""
        dims = self.spec.dimensions
        pairs, labels, masks = [], [], []
        ids, sides, pair_labels = inputs["pair_id"], inputs["side"], inputs["pair_label"]
        for i, (pid, side) in enumerate(zip(ids, sides, strict=True)):
            if pid is None or side != "A":
                continue
            label = pair_labels[i] or {}
            for j, (pid_j, side_j) in enumerate(zip(ids, sides, strict=True)):
                if pid_j == pid and side_j == "B":
                    pairs.append([i, j])
                    labels.append([PREF.get(label.get(d), 0) for d in dims])
                    masks.append([label.get(d) in PREF for d in dims])
        return {
            "head_target": inputs["head_target"].to(device),
            "head_mask": inputs["head_mask"].to(device),
            "pair_index": torch.tensor(pairs, dtype=torch.long, device=device).reshape(-1, 2),
            "pair_label": torch.tensor(labels, dtype=torch.long, device=device).reshape(-1, len(dims)),
            "pair_mask": torch.tensor(masks, dtype=torch.bool, device=device).reshape(-1, len(dims)),
        }


# --------------------------------------------------------------------------------------------- data


def _first_object(path: Path) -> dict:
    """The file's first record (it tells traces from pointwise rows); a bad one names its line."""
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno}: invalid JSON ({err.msg})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            return obj
    raise ValueError(f"{path}: empty; give SFT traces or pointwise rows")


def load_rows(data, sampling: dict, spec) -> tuple[list[dict], list[tuple[int, ...]] | None]:
    """Dataset rows (prompt, video, sampling, tool_max_pixels, scores, defect_frames + pair columns) and
    the sampler units when a pairs file is given (both rows of a pair adjacent, then the singles).
    Labels must be on the checkpoint's dimensions and scale; videos must exist (checked now)."""
    dims = spec.dimensions
    path = Path(data.train)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if "messages" in _first_object(path):  # SFT traces
        records = [  # every line checked (the final calibration reads the val split), these splits used
            t
            for t in load_traces(path)
            if t.get("split", "train") in data.splits and not t.get("rationale_free") and "#nr" not in t["id"]
        ]
    else:
        records = [
            {"video": r.video, "prompt": r.prompt, "scores": r.scores, "meta": r.meta}
            for r in read_jsonl(path, kind="pointwise")
            if (r.split or "train") in data.splits
        ]
    _check_labels(records, spec, path)
    rows, seen = [], set()
    for t in records:
        key = (os.path.realpath(t["video"]), t["prompt"])
        if key in seen:
            continue
        seen.add(key)
        scores = {d: t["scores"].get(d) for d in dims}
        rows.append({"prompt": t["prompt"], "video": t["video"], "sampling": t.get("sampling") or sampling,
                     "tool_max_pixels": t.get("tool_max_pixels"), "scores": scores,
                     "defect_frames": defect_frames_of(t.get("meta")), "pair_id": None, "side": None,
                     "pair_label": None})  # fmt: skip
    if data.limit:
        rows = rows[: data.limit]
    if not rows:
        raise ValueError(f"{path}: no rows in splits {data.splits}")
    if not data.pairs:
        return rows, None
    index = {(os.path.realpath(r["video"]), r["prompt"]): i for i, r in enumerate(rows)}
    pairs, skipped = first_pairs(data.pairs, data.splits, index)  # a video's rollouts serve one pair per step
    paired, units, used = [], [], set()
    for p, a, b in pairs:
        used.update((a, b))
        label = {d: (p.dims or {"overall": p.preference}).get(d) for d in dims}
        for i, side in ((a, "A"), (b, "B")):
            paired.append({**rows[i], "pair_id": p.id, "side": side, "pair_label": label})
        units.append((len(paired) - 2, len(paired) - 1))
    words = {"no_video": "no row for both videos with the pair's prompt", "video_in_another_pair": "a video already in another pair"}  # fmt: skip
    skipped = Counter({words[k]: n for k, n in skipped.items()})
    if skipped:
        reasons = "; ".join(f"{n}: {why}" for why, n in skipped.items())
        note(
            __name__, f"note: {data.pairs}: {len(units)} pairs used, {sum(skipped.values())} not ({reasons})"
        )
    singles = [r for i, r in enumerate(rows) if i not in used]
    units += [(len(paired) + k,) for k in range(len(singles))]
    return paired + singles, units


def _check_labels(records: list[dict], spec, path: Path) -> None:
    """The rows' labels against the checkpoint (GRPO has no signal from labels it does not score) and
    their videos on disk."""
    labelled = sorted({d for t in records for d, v in t["scores"].items() if v is not None})
    if extra := [d for d in labelled if d not in spec.dimensions]:
        raise ValueError(
            f"{path}: labelled on {extra}, which the checkpoint does not score (its dimensions: "
            f"{list(spec.dimensions)}); relabel the data or train a checkpoint on these dimensions"
        )
    for t in records:
        if bad := next(filter(None, (spec.label_problem(d, v) for d, v in t["scores"].items())), None):
            raise ValueError(f"{path}: {t['video']}: {bad}")
    if missing := sorted(
        {t["video"] for t in records if "://" not in t["video"] and not os.path.exists(t["video"])}
    ):
        raise ValueError(f"{path}: {len(missing)} videos not found (e.g. {missing[0]})")


# --------------------------------------------------------------------------------------------- run


def build(cfg):
    """Model, trainer and rows for a resolved `GRPORunConfig`."""
    m, d = cfg.model, cfg.data
    args = GRPOConfig(**cfg.train)
    set_seed(args.seed)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[m.dtype]
    model = ThinkThenScore.from_pretrained(m.checkpoint, base_model=m.base_model, torch_dtype=dtype,
                                           attn_implementation=m.attn_implementation, is_trainable=True)  # fmt: skip
    spec = JudgeSpec.from_dict(model.config.judge_spec)
    funcs, weights = build_rewards(cfg.rewards, spec)
    args.reward_weights = weights
    rows, units = load_rows(d, model.config.sampling, spec)
    cache = None
    if model.config.freeze_vision and m.reuse_vision_features:
        cache = training_cache(model)
    frames = None if d.frame_cache == "off" else FrameCache(d.frame_cache)
    ref = ref_cache = None
    if args.beta != 0.0:  # the KL term's reference: the starting checkpoint, frozen
        ref = ThinkThenScore.from_pretrained(m.checkpoint, base_model=m.base_model, torch_dtype=dtype,
                                             attn_implementation=m.attn_implementation)  # fmt: skip
        ref_cache = None if cache is None else training_cache(ref)
    trainer = CotRmGRPOTrainer(model, funcs, args, Dataset.from_list(rows), cfg, spec, vision_cache=cache,
                               units=units, frame_cache=frames, ref_model=ref, ref_cache=ref_cache)  # fmt: skip
    return model, trainer, rows


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p, GRPORunConfig, DESCRIPTION)


def recalibrate(model, trainer, cfg, out: Path) -> None:
    """The co-trained head moved, so the SFT checkpoint's per-dimension mean/std and tie margin belong to
    a head that no longer exists: fit them again on the validation traces, as SFT does, and rewrite
    `cot_rm.json`. Needs SFT traces with a val split (else said, and SFT's are kept)."""
    if zero3(trainer):  # a forward pass on one rank's shards would hang
        note(__name__, "note: under ZeRO-3 the head's calibration stays SFT's")
        return
    if "messages" not in _first_object(Path(cfg.data.train)):
        note(__name__, "note: pointwise data: the head's calibration is SFT's (give SFT traces with a val split to "
              "refit it)")  # fmt: skip
        return
    val = validation_traces(cfg.data.train)
    if len(val) < 2:
        note(__name__, f"note: {len(val)} validation trace(s): the head's calibration and tie margin stay SFT's "
              "(synthesize val records too to refit them)")  # fmt: skip
        return
    spec = JudgeSpec.from_dict(model.config.judge_spec)
    collator = SFTCollator(model.processor, model.config.family, spec, model.config.reward_token)
    model.eval()
    calibrate(model, collator, val, cfg.data.pairs)
    model.config.save(out)


def main(args: argparse.Namespace) -> int:
    try:
        cfg = config_from_args(GRPORunConfig, args)
        check_trl_args(GRPOConfig, cfg.train)
        model, trainer, rows = build(cfg)
        resume = start_run(trainer, cfg, "cot-rm grpo", f"{len(rows)} rows from {cfg.model.checkpoint}")
    except (
        ConfigError,
        FileNotFoundError,
        ValueError,
        NotImplementedError,
        ImportError,
        RuntimeError,
    ) as err:
        print(f"cot-rm grpo: {err}", file=sys.stderr)
        return 2
    final = ("cot_rm.json", "trainer_state.json")  # the state is written last: present means complete
    if (status := train_to_the_end(trainer, resume, "cot-rm grpo", final)) is not None:
        return status
    out = Path(trainer.args.output_dir)
    trainer.save_model(str(out))  # cot-rm checkpoint: VLM or adapter + head + processor + cot_rm.json
    if trainer.is_world_process_zero() and cfg.head.weight > 0:
        recalibrate(model, trainer, cfg, out)
    trainer.save_state()  # trainer_state.json (log history with `reward`) beside the final model
    if trainer.is_world_process_zero():
        last = [e for e in trainer.state.log_history if "reward" in e]
        print(json.dumps({"steps": trainer.state.global_step, "last": last[-1] if last else None}, indent=2))
    return 0
