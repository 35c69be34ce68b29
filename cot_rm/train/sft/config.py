"""The `cot-rm sft` run config: model, data, loss sections and the verbatim `train:` dict for TRL.

    cfg = load_config(SFTRunConfig, "configs/tiny/sft.yaml", overrides)   # see cot_rm/config.py
    check_trl_args(trl.SFTConfig, cfg.train)

Sections validate themselves in `__post_init__` (ranges, contradictions); the loader checks types, choices
and unknown keys. Torch-free: `cot-rm sft --help` lists these keys without importing the model stack.

`train` is a plain dict, not a mirror of TRL's ~130 options: it goes to `trl.SFTConfig(**train)` as is,
so TRL's own docs apply and a TRL upgrade needs no change here; `check_trl_args` catches typos early.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cot_rm.config import check_choices, meta, require, train_section_rules
from cot_rm.model.config import HEAD_KINDS
from cot_rm.model.modeling import LoraSettings
from cot_rm.protocol import DEFAULT_DIMENSIONS
from cot_rm.train.options import DTYPES, PAIR_LOSSES, POINT_LOSSES

# TRL options that this config owns elsewhere: two places for one setting would drift.
OWNED_TRL_KEYS = {
    "max_length": "data.max_length",
    "model_init_kwargs": "model.dtype / model.attn_implementation (the trainer builds the model itself)",
}


@dataclass
class LoraArgs:
    """LoRA settings; mirrors `cot_rm.model.modeling.LoraSettings` (a test keeps fields and defaults equal)."""

    r: int = field(default=16, metadata=meta("LoRA rank"))
    alpha: int = field(default=32, metadata=meta("LoRA alpha (scale = alpha / r)"))
    dropout: float = field(default=0.05, metadata=meta("dropout on the LoRA input"))
    target_modules: list[str] | str | None = field(
        default=None,
        metadata=meta("PEFT target modules (names or one regex); null: the LM's attention + MLP projections"),
    )
    lora_vision: bool = field(
        default=False, metadata=meta("also adapt the vision blocks (needs model.freeze_vision: false)")
    )

    def __post_init__(self):
        require(
            [
                (self.r >= 1, f"r must be >= 1, got {self.r}"),
                (self.alpha > 0, f"alpha must be > 0, got {self.alpha}"),
                (0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}"),
            ]
        )

    def to_settings(self):
        return LoraSettings(
            r=self.r,
            alpha=self.alpha,
            dropout=self.dropout,
            target_modules=self.target_modules,
            lora_vision=self.lora_vision,
        )


@dataclass
class ModelArgs:
    """Which VLM, what is trained (full, LoRA, frozen tower) and the head."""

    base: str = field(
        metadata=meta("a Qwen2.5-VL / Qwen3-VL folder or hub id (HF format), or a cot-rm checkpoint")
    )
    head: str = field(
        default="linear", metadata=meta("regression head on the <|reward|> state", choices=HEAD_KINDS)
    )
    freeze_vision: bool = field(
        default=True, metadata=meta("freeze the vision tower + merger (the published SFT recipes do)")
    )
    reuse_vision_features: bool = field(
        default=True,
        metadata=meta(
            "compute each video's features once and reuse them (needs freeze_vision; the tower is most "
            "of a naive step's time)"
        ),
    )
    lora: LoraArgs | None = field(
        default=None, metadata=meta("LoRA section; null = full fine-tuning (model.lora.r=16 enables it)")
    )
    dtype: str = field(default="float32", metadata=meta("weights dtype when loading", choices=DTYPES))
    attn_implementation: str = field(
        default="sdpa",
        metadata=meta("transformers attention: sdpa | eager | flash_attention_2 (if installed)"),
    )
    dimensions: list[str] = field(
        default_factory=lambda: list(DEFAULT_DIMENSIONS),
        metadata=meta(
            "score dimensions (head outputs, <answer> keys); must match the data (and a cot-rm "
            "checkpoint's own dimensions when base is one)"
        ),
    )

    def __post_init__(self):
        check_choices(self)
        require(
            [
                (bool(self.base), "base must name a model folder, hub id or cot-rm checkpoint"),
                (
                    not self.reuse_vision_features or self.freeze_vision,
                    "reuse_vision_features needs freeze_vision: true (cached features carry no gradient "
                    "to a trainable tower); set reuse_vision_features: false to train the tower",
                ),
                (
                    self.lora is None or not (self.lora.lora_vision and self.freeze_vision),
                    "lora.lora_vision: true contradicts freeze_vision: true",
                ),
                (len(self.dimensions) > 0, "dimensions must not be empty"),
                (
                    len(set(self.dimensions)) == len(self.dimensions),
                    f"duplicate dimensions: {self.dimensions}",
                ),
            ]
        )


@dataclass
class DataArgs:
    """Paths are relative to the directory `cot-rm sft` runs in (the repo root in every recipe)."""

    train: str = field(metadata=meta("SFT traces JSONL (the output of `cot-rm synthesize`)"))
    pairs: str | None = field(
        default=None,
        metadata=meta(
            "pairwise JSONL (README, Data formats) whose videos have traces: Bradley-Terry head loss, both videos in "
            "one step; null: pointwise head loss only"
        ),
    )
    splits: list[str] = field(
        default_factory=lambda: ["train"], metadata=meta("records of these splits are trained on")
    )
    eval_pairs: str | None = field(
        default=None,
        metadata=meta("held-out pairwise JSONL for the end-of-run report (greedy judgments + head accuracy)"),
    )
    eval_split: str = field(default="test", metadata=meta("split of eval_pairs to evaluate on"))
    eval_limit: int = field(default=64, metadata=meta("pairs judged at the end of the run"))
    frame_cache: str | None = field(
        default=None, metadata=meta("decoded-frame cache folder; null: the default cache; 'off': none")
    )
    max_length: int | None = field(default=None, metadata=meta(
        "longest sample in tokens, video tokens included; longer ones are skipped and counted "
        "(truncating would cut the answer and the reward token); null: no limit"))  # fmt: skip
    packing: bool = field(
        default=False,
        metadata=meta(
            "padding-free batches: each micro-batch's sequences in one row, attention per sequence "
            "(cot_rm/model/packing.py; sdpa or flash_attention_2; 1.85x tokens/s on the tiny model, bench/RESULTS.md)"
        ),
    )

    def __post_init__(self):
        require(
            [
                (bool(self.train), "train must name the SFT traces JSONL"),
                (len(self.splits) > 0, "splits must not be empty"),
                (len(set(self.splits)) == len(self.splits), f"duplicate splits: {self.splits}"),
                (
                    self.eval_limit >= 1,
                    f"eval_limit must be >= 1, got {self.eval_limit} (eval_pairs: null skips)",
                ),
                (
                    self.max_length is None or self.max_length >= 1,
                    f"max_length must be >= 1: {self.max_length}",
                ),
                (
                    not (
                        self.eval_pairs and self.eval_pairs == self.pairs and self.eval_split in self.splits
                    ),
                    f"eval_split {self.eval_split!r} is also trained on (splits {self.splits}) from the same "
                    "pairs file: the report would score training pairs",
                ),
            ]
        )


@dataclass
class LossArgs:
    """loss = lm_weight * masked LM loss + head_weight * (pairwise + pointwise head losses)."""

    lm_weight: float = field(default=1.0, metadata=meta("weight of the masked LM loss on the critique"))
    head_weight: float = field(default=1.0, metadata=meta("weight of the head loss (pairwise + pointwise)"))
    pair_loss: str = field(
        default="bt_ties",
        metadata=meta("bt_ties: Rao-Kupper, ties are data; bt_margin: ties skipped", choices=PAIR_LOSSES),
    )
    point_loss: str = field(
        default="mse",
        metadata=meta(
            "regression on labelled scores; gaussian_nll adds a variance output", choices=POINT_LOSSES
        ),
    )
    tie_theta: float = field(default=2.0, metadata=meta("Rao-Kupper theta (> 1) for bt_ties"))
    margin: float = field(default=0.0, metadata=meta("winner's required lead for bt_margin (>= 0)"))
    rationale_dropout: float = field(
        default=0.5,
        metadata=meta(
            "DeScore's random mask: chance that the head also/instead sees the sample without its critique"
        ),
    )
    critique_swap: float = field(
        default=0.0,
        metadata=meta(
            "chance that a pair's two videos are also scored, head only, each with the OTHER's critique and "
            "its own labels: the head learns not to trust a critique that is wrong about the video"
        ),
    )

    def __post_init__(self):
        check_choices(self)
        require(
            [
                (self.lm_weight >= 0 and self.head_weight >= 0, "lm_weight and head_weight must be >= 0"),
                (
                    self.lm_weight + self.head_weight > 0,
                    "lm_weight and head_weight are both 0: nothing to train",
                ),
                (self.tie_theta > 1.0, f"tie_theta must be > 1 (Rao-Kupper), got {self.tie_theta}"),
                (self.margin >= 0, f"margin must be >= 0, got {self.margin}"),
                (
                    self.margin == 0 or self.pair_loss == "bt_margin",
                    "margin is used by pair_loss bt_margin only",
                ),
                (
                    0.0 <= self.rationale_dropout <= 1.0,
                    f"rationale_dropout must be in [0, 1]: {self.rationale_dropout}",
                ),
                (0.0 <= self.critique_swap <= 1.0, f"critique_swap must be in [0, 1]: {self.critique_swap}"),
            ]
        )


@dataclass
class SFTRunConfig:
    """`cot-rm sft`: masked-loss SFT of the VLM plus the head loss (stage 1)."""

    model: ModelArgs = field(metadata=meta("the model to train"))
    data: DataArgs = field(metadata=meta("training and evaluation data"))
    loss: LossArgs = field(default_factory=LossArgs, metadata=meta("loss weights and kinds"))
    train: dict[str, Any] = field(
        default_factory=dict,
        metadata=meta(
            "passed verbatim to trl.SFTConfig (output_dir, learning_rate, num_train_epochs, "
            "per_device_train_batch_size, gradient_accumulation_steps, bf16, gradient_checkpointing, "
            "logging_steps, save_steps, seed, report_to, use_cpu, ...); output_dir is required"
        ),
    )

    def __post_init__(self):
        require(
            [
                *train_section_rules(self.train, OWNED_TRL_KEYS),
                (
                    not self.data.packing or self.model.attn_implementation in ("sdpa", "flash_attention_2"),
                    f"data.packing needs model.attn_implementation sdpa or flash_attention_2, not "
                    f"{self.model.attn_implementation}",
                ),
                (
                    self.data.pairs is None or self.loss.head_weight > 0,
                    "data.pairs is set but loss.head_weight is 0: the pairs would be loaded and never used",
                ),
            ]
        )
