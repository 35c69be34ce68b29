"""Stage 1, `cot-rm sft --config YAML [key=value ...]`: the SFT cold start.

A subclass of TRL's SFTTrainer trains the VLM and the regression head together:

    loss = lm_weight * LM loss (assistant tokens only)
         + head_weight * (regression on every trace's label + Bradley-Terry with ties on pairs)

Pairs put both videos in one step; rationale dropout (DeScore's random mask) adds the answer-only
version of a sample for the head. With a frozen vision tower each video's features are computed once
and reused (`cot_rm.model.vision_cache`). At the end the model is saved with score calibration fitted on
validation traces, and a report (LM loss trend, parse rate of greedy judgments, the head's pairwise
accuracy on held-out pairs) is printed and written to OUTPUT_DIR/report.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from pathlib import Path

import torch
from datasets import Dataset
from transformers import set_seed
from trl import SFTConfig, SFTTrainer

from cot_rm.config import ConfigError, add_config_arguments, check_trl_args, config_from_args
from cot_rm.media.video import Sampling
from cot_rm.model.modeling import ThinkThenScore
from cot_rm.model.packing import sft_forward, use_varlen_sdpa
from cot_rm.model.vision_cache import training_cache
from cot_rm.protocol import JudgeSpec
from cot_rm.schema import read_jsonl
from cot_rm.train.common import CotRmSaveMixin, head_losses, lm_loss, whole_model
from cot_rm.train.data import SFTCollator, build_examples, load_traces, trace_settings
from cot_rm.train.report import finish
from cot_rm.train.runs import start_run, train_to_the_end
from cot_rm.train.sft.config import SFTRunConfig

# `cot-rm sft --help`
DESCRIPTION = (
    "Stage 1: SFT cold start of a think-then-score model (masked LM loss + regression/Bradley-Terry "
    "head loss). Resumes from the newest checkpoint in train.output_dir. Example: "
    "cot-rm sft --config configs/tiny/sft.yaml train.num_train_epochs=1"
)

HEAD_KEYS = ("head_target", "head_mask", "pair_index", "pair_label", "pair_mask")


class CotRmSFTTrainer(CotRmSaveMixin, SFTTrainer):
    """SFTTrainer for `ThinkThenScore`: video batches from `SFTCollator`, LM + head losses, cot-rm saving."""

    def __init__(self, model, args: SFTConfig, loss_args, vision_cache=None, packing: bool = False, **kwargs):
        args.remove_unused_columns = False  # the collator needs the raw example column
        if args.ddp_find_unused_parameters is None and model.config.freeze_vision:
            # TRL turns it on for VLMs (a text-only batch leaves the tower without grads); with the tower
            # frozen every trainable parameter gets a gradient, and the search costs a graph walk per step.
            args.ddp_find_unused_parameters = False
        args.dataset_kwargs = {**(args.dataset_kwargs or {}), "skip_prepare_dataset": True}
        super().__init__(model=model, args=args, **kwargs)
        self.loss_args = loss_args
        self.packing = packing  # padding-free rows (cot_rm/model/packing.py); the collator still pads
        self.vision_cache = vision_cache  # installed on the model: a frozen tower's features, reused
        self.log_theta = math.log(loss_args.tie_theta)
        # Every term is a per-micro-batch mean, so the Trainer divides by the accumulation steps:
        # transformers >= 5.19 reads the first flag, 5.17 (the GPU machine's) only the second.
        self.loss_is_scaled_for_ga = False
        self.model_accepts_loss_kwargs = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if model.training else "eval"
        head = {k: inputs.pop(k) for k in HEAD_KEYS}
        labels = inputs.pop("labels")
        keys = inputs.pop("vision_keys", None)
        skipped = inputs.pop("skipped_too_long", 0)
        hints = self.vision_cache is not None and keys  # not bool(cache): an empty cache has len 0
        with self.vision_cache.key_hints(**keys) if hints else contextlib.nullcontext():
            out, labels = sft_forward(model, inputs, labels, packing=self.packing,
                                      unwrapped=self.accelerator.unwrap_model(model))  # fmt: skip
        lm = lm_loss(out.logits, labels)
        point, pair, acc = self.head_losses(out.rewards, out.log_var, head)
        la = self.loss_args
        loss = la.lm_weight * lm + la.head_weight * (point + pair)
        for name, value in (("lm_loss", lm), ("head_point_loss", point), ("head_pair_loss", pair)):
            self._metrics[mode][name].append(float(value.detach()))
        if acc is not None:
            self._metrics[mode]["head_pair_accuracy"].append(acc)
        self._metrics[mode]["skipped_too_long"].append(float(skipped))
        if self.vision_cache is not None:
            self._metrics[mode]["vision_cache_hit_rate"].append(self.vision_cache.stats()["hit_rate"])
        return (loss, out) if return_outputs else loss

    def head_losses(self, rewards, log_var, head: dict) -> tuple[torch.Tensor, torch.Tensor, float | None]:
        return head_losses(rewards, log_var, head, self.loss_args, self.log_theta)


# --------------------------------------------------------------------------------------------- run


def build(cfg):
    """Model, processor, datasets and trainer for a resolved `SFTRunConfig`."""
    m, d = cfg.model, cfg.data
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[m.dtype]
    lora = m.lora.to_settings() if m.lora is not None else None
    # TrainingArguments first: under DeepSpeed ZeRO-3 it must exist before the model loads (sharded init).
    args = SFTConfig(**cfg.train, max_length=d.max_length)
    set_seed(args.seed)  # the head's random init and LoRA's, before the Trainer seeds the rest
    model = ThinkThenScore.from_base(
        m.base, dims=tuple(m.dimensions), head=m.head, lora=lora, freeze_vision=m.freeze_vision,
        uncertainty=cfg.loss.point_loss == "gaussian_nll", torch_dtype=dtype,
        attn_implementation=m.attn_implementation,
    )  # fmt: skip
    # Every line checked now (the end-of-run report reads the val split too), not steps into training.
    every = load_traces(d.train)
    traces = [t for t in every if not d.splits or t.get("split", "train") in d.splits]
    trainer, examples = make_trainer(model, args, cfg, traces, every)
    return model, trainer, traces, examples


def make_trainer(model, args: SFTConfig, cfg, traces: list[dict], every: list[dict]):
    """The SFT trainer of `model` on `traces` (and the examples it trains on). `every`: all the traces of
    the run's data, whose frame sampling, tool resolution and budgets the checkpoint records. `cfg` needs
    the SFT config's `data`, `loss` and `model.reuse_vision_features` / `model.attn_implementation`
    (`cot-rm rft` trains its kept traces through here too)."""
    d = cfg.data
    for path in (d.pairs, d.eval_pairs):  # fail now, not after the training time is spent
        if path:
            read_jsonl(path, kind="pairwise")
    check_dimensions(traces, model.config.dimensions, d.train)
    examples = build_examples(traces, d.pairs, d.splits)
    if not examples:
        raise ValueError(f"{d.train}: no traces in splits {d.splits}")
    # The checkpoint judges as the traces were written: their frames, tool resolution and budgets.
    sampling, tool_px, traced_spec = trace_settings(every, d.train)  # val traces too: the report uses them
    spec = JudgeSpec.from_dict({**(traced_spec or {}), "dimensions": tuple(model.config.dimensions)})
    model.config.sampling = Sampling.from_dict({**sampling, "family": model.config.family}).to_dict()
    model.config.tool_max_pixels, model.config.judge_spec = tool_px, spec.to_dict()
    collator = SFTCollator(model.processor, model.config.family, spec, model.config.reward_token,
                           cfg.loss.rationale_dropout, d.frame_cache, args.seed, d.max_length,
                           cfg.loss.critique_swap)  # fmt: skip
    dataset = Dataset.from_dict({"example": [json.dumps(e) for e in examples]})
    cache = None
    if model.config.freeze_vision and cfg.model.reuse_vision_features:
        cache = training_cache(model)
    if d.packing and cfg.model.attn_implementation == "sdpa":
        use_varlen_sdpa(model)  # else transformers builds one dense [N, N] mask: 3x slower than padding
    trainer = CotRmSFTTrainer(
        model,
        args,
        cfg.loss,
        cache,
        d.packing,
        data_collator=collator,
        train_dataset=dataset,
        processing_class=model.processor,
    )
    return trainer, examples


def check_dimensions(traces: list[dict], dims, source) -> None:
    """The traces' labels must be dimensions the model scores: the head would get no target for the
    others, while the LM learned to write them in its <answer>."""
    data = sorted({k for t in traces for k in t["scores"]})
    if extra := [k for k in data if k not in dims]:
        raise ValueError(
            f"{source}: the traces are labelled on {extra}, which model.dimensions {list(dims)} does not "
            f"list; set it to the data's dimensions, e.g. model.dimensions=[{','.join(data)}]"
        )


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p, SFTRunConfig, DESCRIPTION)
    p.add_argument("--no-report", action="store_true", help="skip the end-of-run judged report")


def main(args: argparse.Namespace) -> int:
    try:
        cfg = config_from_args(SFTRunConfig, args)
        check_trl_args(SFTConfig, cfg.train)
        model, trainer, traces, examples = build(cfg)
        resume = start_run(trainer, cfg, "cot-rm sft", f"{len(examples)} examples ({len(traces)} traces)")
    except (ConfigError, FileNotFoundError, ValueError) as err:  # SchemaError is a ValueError
        print(f"cot-rm sft: {err}", file=sys.stderr)
        return 2
    return train_and_finish(model, trainer, cfg, resume, "cot-rm sft", args.no_report)


def train_and_finish(model, trainer, cfg, resume: str | None, prog: str, no_report: bool) -> int:
    """Train (or resume) to the last step, then calibrate, save and report (printed and written to
    OUTPUT_DIR/report.json). Returns the exit status; shared with `cot-rm rft`."""
    if resume is not None:
        # The collator draws rationale-dropout masks from (seed, its call count): continue the count where
        # the killed run stood, so the resumed run sees the batches an uninterrupted run would.
        trainer.data_collator.calls = _batches_before(trainer, resume)
    if (status := train_to_the_end(trainer, resume, prog, ("cot_rm.json", "report.json"))) is not None:
        if status == 0:
            print((Path(trainer.args.output_dir) / "report.json").read_text().rstrip())
        return status
    trainer.save_state()  # trainer_state.json (log history) beside the final model
    model = whole_model(model, trainer)
    if trainer.is_world_process_zero():
        report = finish(model, trainer, cfg, skip_judging=no_report)
        print(json.dumps(report, indent=2))
    return 0


def _batches_before(trainer, checkpoint: str) -> int:
    """Micro-batches this process collated before `checkpoint` (the Trainer's own resume arithmetic)."""
    step = json.loads((Path(checkpoint) / "trainer_state.json").read_text())["global_step"]
    per_epoch = len(trainer.get_train_dataloader())
    ga = trainer.args.gradient_accumulation_steps
    updates_per_epoch = max(per_epoch // ga + int(per_epoch % ga > 0), 1)
    epochs, rest = divmod(step, updates_per_epoch)
    return epochs * per_epoch + rest * ga
