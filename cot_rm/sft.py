"""Stage 1, `cot-rm sft --config YAML [key=value ...]`: the SFT cold start.

A subclass of TRL's SFTTrainer trains the VLM and the regression head together:

    loss = lm_weight * LM loss (assistant tokens only)
         + head_weight * (regression on every trace's label + Bradley-Terry with ties on pairs)

Pairs put both videos in one step; rationale dropout (DeScore's random mask) adds the answer-only
version of a sample for the head. With a frozen vision tower each video's features are computed once
and reused (`cot_rm.vision_cache`). At the end the model is saved with score calibration fitted on
validation traces, and a report (LM loss trend, parse rate of greedy judgments, the head's pairwise
accuracy on held-out pairs) is printed and written to OUTPUT_DIR/report.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import set_seed
from trl import SFTConfig, SFTTrainer

from cot_rm import losses
from cot_rm.packing import sft_forward, use_varlen_sdpa

HEAD_KEYS = ("head_target", "head_mask", "pair_index", "pair_label", "pair_mask")


class CotRmSaveMixin:
    """cot-rm checkpoints for a Trainer of `ThinkThenScore` (shared by the SFT and GRPO trainers)."""

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        # Checkpoints are cot-rm checkpoints (VLM or adapter + head + processor + cot_rm.json); under
        # ZeRO-3 the Trainer passes the gathered full state.
        if self.args.should_save:
            model = self.accelerator.unwrap_model(self.model)
            model.save_pretrained(output_dir or self.args.output_dir, state_dict=state_dict)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        from cot_rm.modeling import ThinkThenScore

        model = model or self.model
        saved = ThinkThenScore.from_pretrained(resume_from_checkpoint, is_trainable=True)
        model.load_state_dict(saved.state_dict(), strict=True)

    def create_model_card(self, *args, **kwargs) -> None:
        return None  # the checkpoint's cot_rm.json and report.json describe the run


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
        self.packing = packing  # padding-free rows (cot_rm/packing.py); the collator still pads
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


def head_losses(
    rewards, log_var, head: dict, la, log_theta: float
) -> tuple[torch.Tensor, torch.Tensor, float | None]:
    """(pointwise loss, pairwise loss, pairwise accuracy or None) of head outputs [B, D].

    `head`: head_target/head_mask [B, D], pair_index [P, 2], pair_label/pair_mask [P, D]; `la`: an object
    with point_loss, pair_loss, margin (the SFT LossArgs or the GRPO head section)."""
    if la.point_loss == "mse":
        point = losses.mse_loss(rewards, head["head_target"], head["head_mask"])
    else:  # the head predicts a mean and a log-variance per dimension
        point = losses.gaussian_nll_loss(rewards, log_var, head["head_target"], head["head_mask"])
    index = head["pair_index"]
    if index.numel() == 0:
        return point, rewards.sum() * 0.0, None
    r_a, r_b = rewards[index[:, 0]], rewards[index[:, 1]]  # [P, D]
    if la.pair_loss == "bt_ties":
        pair = losses.bt_ties_loss(r_a, r_b, head["pair_label"], log_theta, head["pair_mask"])
    else:
        pair = losses.bt_margin_loss(r_a, r_b, head["pair_label"], la.margin, head["pair_mask"])
    decided = head["pair_mask"] & (head["pair_label"] != 0)
    acc = losses.pairwise_accuracy(r_a.detach(), r_b.detach(), head["pair_label"], decided)
    return point, pair, float(acc) if decided.any() else None


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy over the labelled (assistant) tokens of the micro-batch."""
    shift_logits, shift_labels = logits[:, :-1].float(), labels[:, 1:]
    if (shift_labels != -100).sum() == 0:  # only head-only sequences in this micro-batch
        return logits.sum() * 0.0
    return F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1), ignore_index=-100
    )


# --------------------------------------------------------------------------------------------- run


def build(cfg):
    """Model, processor, datasets and trainer for a resolved `SFTRunConfig`."""
    from datasets import Dataset

    from cot_rm.modeling import ThinkThenScore
    from cot_rm.protocol import JudgeSpec
    from cot_rm.schema import read_jsonl
    from cot_rm.sft_data import SFTCollator, build_examples, load_traces, trace_settings
    from cot_rm.video import Sampling

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
    for path in (d.pairs, d.eval_pairs):  # fail now, not after the training time is spent
        if path:
            read_jsonl(path, kind="pairwise")
    # Every line checked now (the end-of-run report reads the val split too), not steps into training.
    every = load_traces(d.train)
    traces = [t for t in every if not d.splits or t.get("split", "train") in d.splits]
    check_dimensions(traces, m.dimensions, d.train)
    examples = build_examples(traces, d.pairs, d.splits)
    if not examples:
        raise ValueError(f"{d.train}: no traces in splits {d.splits}")
    # The checkpoint judges as the traces were written: their frames, tool resolution and budgets.
    sampling, tool_px, traced_spec = trace_settings(every, d.train)  # val traces too: the report uses them
    spec = JudgeSpec.from_dict({**(traced_spec or {}), "dimensions": tuple(m.dimensions)})
    model.config.sampling = Sampling.from_dict({**sampling, "family": model.config.family}).to_dict()
    model.config.tool_max_pixels, model.config.judge_spec = tool_px, spec.to_dict()
    collator = SFTCollator(model.processor, model.config.family, spec, model.config.reward_token,
                           cfg.loss.rationale_dropout, d.frame_cache, args.seed, d.max_length)  # fmt: skip
    dataset = Dataset.from_dict({"example": [json.dumps(e) for e in examples]})
    cache = None
    if m.freeze_vision and m.reuse_vision_features:
        from cot_rm.vision_cache import training_cache

        cache = training_cache(model)
    if d.packing and m.attn_implementation == "sdpa":
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
    return model, trainer, traces, examples


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
    from cot_rm.config import add_config_arguments
    from cot_rm.sft_config import SFTRunConfig

    p.description = (
        "Stage 1: SFT cold start of a think-then-score model (masked LM loss + regression/Bradley-Terry "
        "head loss). Resumes from the newest checkpoint in train.output_dir. Example: "
        "cot-rm sft --config configs/tiny/sft.yaml train.num_train_epochs=1"
    )
    add_config_arguments(p, SFTRunConfig)
    p.add_argument("--no-report", action="store_true", help="skip the end-of-run judged report")


def main(args: argparse.Namespace) -> int:
    from cot_rm.config import ConfigError, check_trl_args, config_from_args
    from cot_rm.sft_config import SFTRunConfig
    from cot_rm.sft_report import finish

    try:
        cfg = config_from_args(SFTRunConfig, args)
        check_trl_args(SFTConfig, cfg.train)
        model, trainer, traces, examples = build(cfg)
    except (ConfigError, FileNotFoundError, ValueError) as err:  # SchemaError is a ValueError
        print(f"cot-rm sft: {err}", file=sys.stderr)
        return 2
    try:
        resume = start_run(trainer, cfg, "cot-rm sft", f"{len(examples)} examples ({len(traces)} traces)")
    except ValueError as err:
        print(f"cot-rm sft: {err}", file=sys.stderr)
        return 2
    if resume is not None:
        # The collator draws rationale-dropout masks from (seed, its call count): continue the count where
        # the killed run stood, so the resumed run sees the batches an uninterrupted run would.
        trainer.data_collator.calls = _batches_before(trainer, resume)
    if (
        status := train_to_the_end(trainer, resume, "cot-rm sft", ("cot_rm.json", "report.json"))
    ) is not None:
        if status == 0:
            print((Path(trainer.args.output_dir) / "report.json").read_text().rstrip())
        return status
    trainer.save_state()  # trainer_state.json (log history) beside the final model
    model = _whole_model(model, trainer)
    if trainer.is_world_process_zero():
        report = finish(model, trainer, cfg, skip_judging=args.no_report)
        print(json.dumps(report, indent=2))
    return 0


def zero3(trainer) -> bool:
    """Whether the trainer runs DeepSpeed ZeRO-3 (each rank holds a shard of every weight); accelerate has
    a DeepSpeed plugin only when DeepSpeed is on."""
    return getattr(getattr(trainer.accelerator.state, "deepspeed_plugin", None), "zero_stage", None) == 3


def _whole_model(model, trainer):
    """The trained model as one process can use it. Under DeepSpeed ZeRO-3 each rank holds a shard of
    every weight, so a forward pass on the main process alone (calibration, the report) would wait for
    the others forever: every rank gathers the weights into the output folder (`save_model`), and the
    main process loads them back whole (`finish` then calibrates and saves that copy)."""
    if not zero3(trainer):
        return model
    out = trainer.args.output_dir
    trainer.save_model(out)
    if not trainer.is_world_process_zero():
        return None
    from cot_rm.modeling import ThinkThenScore

    whole = ThinkThenScore.from_pretrained(out, torch_dtype=next(model.parameters()).dtype)
    return whole.to(trainer.args.device)


# Settings a checkpoint's weights are shaped by: a run cannot resume under other values of these.
FIXED_KEYS = (
    "model.base",
    "model.checkpoint",
    "model.dimensions",
    "model.head",
    "model.lora",
    "model.freeze_vision",
)


def start_run(trainer, cfg, prog: str, what: str) -> str | None:
    """Shared by `cot-rm sft` and `cot-rm grpo`: the output folder and its run_config.yaml (main
    process), a line saying what trains where, and the checkpoint a killed run resumes from (or None).
    Raises ValueError when the folder holds another kind of run, or one the new settings cannot resume."""
    from cot_rm.config import save_config

    out = Path(trainer.args.output_dir)
    resume = last_checkpoint(out)
    if (out / "run_config.yaml").is_file():  # an earlier run here, with checkpoints or not (save_strategy no)
        changed = _changed_keys(out / "run_config.yaml", cfg)
        if fixed := [k for k in changed if k.startswith(FIXED_KEYS)]:
            raise ValueError(
                f"{out} holds a run with other {', '.join(fixed[:4])}; it cannot continue (or be overwritten) "
                "under these settings: give another train.output_dir (or the old settings)"
            )
        if changed and resume is not None and trainer.is_world_process_zero():
            print(f"{prog}: resuming a run started with other settings ({', '.join(changed[:8])}); data and "
                  "loss settings apply from here, the optimizer and learning-rate schedule continue from "
                  "the checkpoint", file=sys.stderr)  # fmt: skip
    if trainer.is_world_process_zero():
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "run_config.yaml")
        print(f"{prog}: {what} -> {out}", file=sys.stderr)
    if resume is not None:
        print(f"{prog}: resuming from {resume}", file=sys.stderr)
    return resume


def train_to_the_end(trainer, resume: str | None, prog: str, final: tuple[str, ...]) -> int | None:
    """Train, or resume, up to the run's last step. Returns an exit status to stop with (0: the run had
    finished and `final` files are in the output folder, nothing to do; 130: interrupted), or None to go
    on to the final save."""
    out = Path(trainer.args.output_dir)
    done = finished(trainer, resume)
    if done and all((out / name).is_file() for name in final):
        print(f"{prog}: the run in {out} is finished and its final model is there: nothing to do "
              "(another train.output_dir, or more train.max_steps or epochs, trains more)", file=sys.stderr)  # fmt: skip
        return 0
    if done and resume is not None and not trainer.is_deepspeed_enabled:  # killed after its last step
        trainer.state = trainer.state.load_from_json(str(Path(resume) / "trainer_state.json"))
        trainer._load_from_checkpoint(resume)
        return None
    try:
        trainer.train(resume_from_checkpoint=resume)
    except KeyboardInterrupt:
        print(
            f"{prog}: interrupted; rerun the same command to resume from the last checkpoint", file=sys.stderr
        )
        return 130
    return None


def finished(trainer, resume: str | None) -> bool:
    """Whether the run already reached its last step (a rerun of a finished run would otherwise train one
    step more): the newest checkpoint's state, or the output folder's own (a run that saves no
    checkpoints, `save_strategy: no`)."""
    where = Path(resume) if resume is not None else Path(trainer.args.output_dir)
    if not (where / "trainer_state.json").is_file():
        return False
    state = json.loads((where / "trainer_state.json").read_text())
    if trainer.args.max_steps > 0:
        target = trainer.args.max_steps
    elif trainer.args.num_train_epochs > state.get("num_train_epochs", 0):  # more epochs asked for now
        return False
    else:
        target = state.get("max_steps", 0)
    return bool(target) and state.get("global_step", 0) >= target


def _changed_keys(path: Path, cfg) -> list[str]:
    """Dotted keys whose value differs between the saved run_config.yaml and `cfg`."""
    import yaml

    from cot_rm.config import dump_config

    try:
        old = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return []

    def flat(d, prefix=""):
        if not isinstance(d, dict):
            return {prefix: d}
        return {k: v for key, sub in d.items() for k, v in flat(sub, f"{prefix}{key}.").items()}

    new = dump_config(cfg)
    if isinstance(old, dict) and set(old) != set(new):  # e.g. an SFT run's folder given to `cot-rm grpo`
        raise ValueError(
            f"{path.parent} holds another kind of run (its run_config.yaml has sections {sorted(old)}); "
            "give this one its own train.output_dir"
        )
    then = next(
        (line[7:].strip() for line in path.read_text().splitlines() if line.startswith("# cwd: ")), "."
    )
    a, b = flat(old), flat(new)
    return sorted(k.rstrip(".") for k in a.keys() | b.keys() if not _same(a.get(k), b.get(k), then))


def _same(a, b, then: str = ".") -> bool:
    """Equal values, or two spellings of one existing path (relative vs absolute, through a symlink);
    `a`, if relative, was given from the folder `then` (run_config.yaml's `# cwd:` line)."""
    if a == b:
        return True
    if not (isinstance(a, str) and isinstance(b, str)):
        return False
    a = os.path.join(then, a)  # an absolute `a` stays as it is
    return os.path.exists(a) and os.path.exists(b) and os.path.realpath(a) == os.path.realpath(b)


def last_checkpoint(out: Path) -> str | None:
    """The newest COMPLETE checkpoint-N folder of a killed run (None on a fresh run).

    The Trainer writes trainer_state.json last, so a folder without a readable one was cut short by the
    kill (resuming from it would crash or load half-written weights): it is skipped, with a note.
    """
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    if not out.is_dir():
        return None
    found = []
    for path in out.iterdir():
        prefix, _, step = path.name.partition("-")
        if prefix == PREFIX_CHECKPOINT_DIR and step.isdigit() and path.is_dir():
            found.append((int(step), path))
    for _, path in sorted(found, reverse=True):
        try:
            json.loads((path / "trainer_state.json").read_text())
        except (OSError, ValueError):
            print(f"skipping {path}: incomplete (no readable trainer_state.json)", file=sys.stderr)
            continue
        return str(path)
    return None


def _batches_before(trainer, checkpoint: str) -> int:
    """Micro-batches this process collated before `checkpoint` (the Trainer's own resume arithmetic)."""
    step = json.loads((Path(checkpoint) / "trainer_state.json").read_text())["global_step"]
    per_epoch = len(trainer.get_train_dataloader())
    ga = trainer.args.gradient_accumulation_steps
    updates_per_epoch = max(per_epoch // ga + int(per_epoch % ga > 0), 1)
    epochs, rest = divmod(step, updates_per_epoch)
    return epochs * per_epoch + rest * ga
