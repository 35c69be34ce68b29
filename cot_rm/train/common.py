"""What the training stages share: cot-rm checkpoint saving for a Trainer of `ThinkThenScore`, the LM and
head losses of one micro-batch, and the DeepSpeed ZeRO-3 facts a stage must act on."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cot_rm.model import losses
from cot_rm.model.modeling import ThinkThenScore


class CotRmSaveMixin:
    """cot-rm checkpoints for a Trainer of `ThinkThenScore` (shared by the SFT and GRPO trainers)."""

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        # Checkpoints are cot-rm checkpoints (VLM or adapter + head + processor + cot_rm.json); under
        # ZeRO-3 the Trainer passes the gathered full state.
        if self.args.should_save:
            model = self.accelerator.unwrap_model(self.model)
            model.save_pretrained(output_dir or self.args.output_dir, state_dict=state_dict)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        model = model or self.model
        saved = ThinkThenScore.from_pretrained(resume_from_checkpoint, is_trainable=True)
        model.load_state_dict(saved.state_dict(), strict=True)

    def create_model_card(self, *args, **kwargs) -> None:
        return None  # the checkpoint's cot_rm.json and report.json describe the run


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


def zero3(trainer) -> bool:
    """Whether the trainer runs DeepSpeed ZeRO-3 (each rank holds a shard of every weight); accelerate has
    a DeepSpeed plugin only when DeepSpeed is on."""
    return getattr(getattr(trainer.accelerator.state, "deepspeed_plugin", None), "zero_stage", None) == 3


def whole_model(model, trainer):
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
    whole = ThinkThenScore.from_pretrained(out, torch_dtype=next(model.parameters()).dtype)
    return whole.to(trainer.args.device)
