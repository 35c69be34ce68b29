"""The `cot-rm rft` run config: model, data, sampling, keep, loss sections and the verbatim `train:` dict.

    cfg = load_config(RFTRunConfig, "configs/tiny/rft.yaml", overrides)   # see cot_rm/config.py
    check_trl_args(trl.SFTConfig, cfg.train)

RFT samples with GRPO's rollout code and trains with SFT's trainer, so `data` and `loss` are the SFT
sections (plus `data.limit`) and `train` goes to `trl.SFTConfig` as in `cot-rm sft`. Torch-free, like the
other stages' configs: `cot-rm rft --help` lists these keys without importing the model stack.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cot_rm.config import check_choices, meta, require, train_section_rules
from cot_rm.train.grpo.config import BACKENDS
from cot_rm.train.options import DTYPES
from cot_rm.train.rft.keep import FALLBACKS, SELECTIONS
from cot_rm.train.sft.config import OWNED_TRL_KEYS, DataArgs, LossArgs


@dataclass
class RFTModelArgs:
    """The checkpoint that samples the judgments and is then fine-tuned on the kept ones."""

    checkpoint: str = field(
        metadata=meta(
            "a cot-rm checkpoint folder: the output of `cot-rm sft` (or of an earlier `cot-rm rft`)"
        )
    )
    base_model: str | None = field(
        default=None, metadata=meta("LoRA checkpoints: override the base VLM folder named in cot_rm.json")
    )
    reuse_vision_features: bool = field(
        default=True,
        metadata=meta("with a frozen tower, compute each video's features once and reuse them (both phases)"),
    )
    dtype: str = field(default="float32", metadata=meta("weights dtype when loading", choices=DTYPES))
    attn_implementation: str = field(default="sdpa", metadata=meta("transformers attention implementation"))

    def __post_init__(self):
        check_choices(self)
        require([(bool(self.checkpoint), "checkpoint must name a cot-rm checkpoint folder")])


@dataclass
class RFTDataArgs(DataArgs):
    """SFT's data section: the traces give the videos, their labels and the fallback traces."""

    train: str = field(
        metadata=meta(
            "SFT traces JSONL (`cot-rm synthesize` output): each video of `splits` is judged K times; its "
            "trace is the fallback when none is kept; the val split calibrates the head at the end"
        )
    )
    pairs: str | None = field(
        default=None,
        metadata=meta(
            "pairwise JSONL over the traces' videos: the keep rule's pair ordering (each video in at most "
            "one pair, the first in the file) and the Bradley-Terry head loss; null: pointwise only"
        ),
    )
    limit: int | None = field(
        default=None, metadata=meta("judge only the first N videos of the traces file (smaller runs)")
    )

    def __post_init__(self):
        super().__post_init__()
        require([(self.limit is None or self.limit >= 1, f"limit must be >= 1, got {self.limit}")])


@dataclass
class SamplingArgs:
    """K tool-using judgments per video, drawn by GRPO's rollout code (`cot_rm.train.grpo.rollout`)."""

    k: int = field(default=4, metadata=meta("judgments drawn per training video"))
    temperature: float = field(default=1.0, metadata=meta("sampling temperature (> 0)"))
    top_p: float = field(default=1.0, metadata=meta("nucleus sampling (1: off)"))
    top_k: int = field(default=0, metadata=meta("top-k sampling (0: off)"))
    max_completion_length: int = field(
        default=1024, metadata=meta("generated + tool-result + query tokens of one judgment")
    )
    max_turn_tokens: int = field(default=512, metadata=meta("most new tokens per assistant turn"))
    batch_size: int = field(
        default=16,
        metadata=meta("judgments generated together; each batch is appended to the sample log as it ends"),
    )
    seed: int = field(default=0, metadata=meta("each batch of draws is seeded from this and its draws' keys"))
    backend: str = field(
        default="hf",
        metadata=meta(
            "hf: transformers generate; vllm_server: a vLLM server at vllm_url serving model.checkpoint "
            "(python -m cot_rm.train.grpo.vllm_server --model CKPT); vllm_colocate: vllm.LLM "
            "in-process (GPU, vllm importable), the checkpoint's weights loaded into it first",
            choices=BACKENDS,
        ),
    )
    vllm_url: str | None = field(default=None, metadata=meta("vllm_server: base URL of the server"))
    vllm_timeout_s: float = field(default=600.0, metadata=meta("vllm_server: seconds per request"))
    vllm_gpu_memory_utilization: float = field(
        default=0.3, metadata=meta("vllm_colocate: GPU memory fraction for the engine")
    )
    vllm_max_model_len: int | None = field(
        default=None, metadata=meta("vllm_colocate: context length (null: the model's)")
    )

    def __post_init__(self):
        check_choices(self)
        require(
            [
                (self.k >= 1, f"k must be >= 1, got {self.k}"),
                (
                    self.temperature > 0,
                    f"temperature must be > 0 (draws must differ), got {self.temperature}",
                ),
                (0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}"),
                (self.top_k >= 0, f"top_k must be >= 0, got {self.top_k}"),
                (self.max_turn_tokens >= 1, f"max_turn_tokens must be >= 1, got {self.max_turn_tokens}"),
                (
                    self.max_completion_length >= 8,
                    f"max_completion_length must be >= 8: {self.max_completion_length}",
                ),
                (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
                (
                    self.backend != "vllm_server" or bool(self.vllm_url),
                    "vllm_url is required with vllm_server",
                ),
            ]
        )


@dataclass
class KeepArgs:
    """Which draws are kept and which one a video trains on (`cot_rm.train.rft.keep`)."""

    tolerance: float = field(
        default=0.0,
        metadata=meta("a kept judgment's answer is within this of the label on every labelled dimension"),
    )
    pair_order: bool = field(
        default=True,
        metadata=meta(
            "on a pair of data.pairs, keep only draws that order the two videos as the label does on every "
            "dimension it orders (ties are not checked), against a kept draw of the other video"
        ),
    )
    allow_invalid_calls: bool = field(
        default=False,
        metadata=meta("keep judgments with an invalid select_frames call (false: training would teach it)"),
    )
    selection: str = field(
        default="shortest",
        metadata=meta(
            "among a video's kept draws: shortest (fewest generated tokens), most_frames (most frames "
            "cited, then shortest) or first (lowest draw index)",
            choices=SELECTIONS,
        ),
    )
    fallback: str = field(
        default="synthesized",
        metadata=meta("a video with no kept draw: its synthesized trace, or drop it", choices=FALLBACKS),
    )

    def __post_init__(self):
        check_choices(self)
        require([(self.tolerance >= 0, f"tolerance must be >= 0, got {self.tolerance}")])


@dataclass
class RFTRunConfig:
    """`cot-rm rft`: sample K judgments per video, keep those that agree with the labels, fine-tune."""

    model: RFTModelArgs = field(metadata=meta("the checkpoint that samples and is fine-tuned"))
    data: RFTDataArgs = field(metadata=meta("the traces (videos, labels, fallbacks) and pairs"))
    sampling: SamplingArgs = field(default_factory=SamplingArgs, metadata=meta("drawing the judgments"))
    keep: KeepArgs = field(default_factory=KeepArgs, metadata=meta("the keep and selection rules"))
    loss: LossArgs = field(default_factory=LossArgs, metadata=meta("SFT's loss weights and kinds"))
    train: dict[str, Any] = field(
        default_factory=dict,
        metadata=meta(
            "passed verbatim to trl.SFTConfig, as in `cot-rm sft` (output_dir, learning_rate, "
            "num_train_epochs, ...); output_dir is required and also holds the samples and kept traces"
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
                    self.data.pairs is None or self.loss.head_weight > 0 or self.keep.pair_order,
                    "data.pairs is set but neither loss.head_weight nor keep.pair_order uses it",
                ),
            ]
        )
