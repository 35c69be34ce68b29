"""`cot_rm.json`: what a checkpoint needs to judge the way it was trained (no torch import here)."""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from cot_rm.media.video import Sampling
from cot_rm.protocol import DEFAULT_DIMENSIONS, FAMILIES, PROTOCOL_VERSION, TOOL_MAX_PIXELS, JudgeSpec

CONFIG_NAME = "cot_rm.json"
HEAD_KINDS = ("linear", "mlp")
REWARD_TOKEN = "<|reward|>"
DEFAULT_TIE_THETA = 2.0  # = exp(losses.DEFAULT_LOG_THETA), without importing torch here


@dataclass
class CotRmConfig:
    """What a checkpoint needs to judge the way it was trained; stored as `cot_rm.json`.

    `calibration` ({dim: {"mean", "std"}}), `tie_margin` and `tie_theta` are fitted on validation data
    with `fit_calibration` / `fit_tie_margin` / `fit_tie_theta`; `reward_token_added` records that `from_base` added the
    token, so a LoRA checkpoint re-creates the same (deterministic) new rows on a fresh base.
    """

    dimensions: list[str] = field(default_factory=lambda: list(DEFAULT_DIMENSIONS))
    family: str = "qwen2_5_vl"
    base_model: str = ""
    hidden_size: int = 0
    head: str = "linear"
    uncertainty: bool = False
    reward_token: str = REWARD_TOKEN
    reward_token_added: bool = False
    protocol_version: str = PROTOCOL_VERSION
    sampling: dict[str, Any] | None = None
    judge_spec: dict[str, Any] | None = None
    tool_max_pixels: int = TOOL_MAX_PIXELS  # frames the select_frames tool returns, as in training
    calibration: dict[str, dict[str, float]] = field(default_factory=dict)
    tie_margin: float = 0.0
    # Rao-Kupper's tie parameter for the pair probabilities (`cot_rm.model.pairwise`). A checkpoint saved
    # before it was fitted loads 2.0, the `loss.tie_theta` every stage trains with by default.
    tie_theta: float = DEFAULT_TIE_THETA
    lora: dict[str, Any] | None = None
    freeze_vision: bool = False
    format_version: int = 1

    def __post_init__(self):
        self.dimensions = list(self.dimensions)
        if self.family not in FAMILIES:
            raise ValueError(f"family {self.family!r}: expected one of {FAMILIES}")
        if self.head not in HEAD_KINDS:
            raise ValueError(f"head {self.head!r}: expected one of {HEAD_KINDS}")
        # Round trips through the owners' own classes validate the stored dicts.
        spec = JudgeSpec.from_dict(self.judge_spec or {"dimensions": tuple(self.dimensions)})
        if list(spec.dimensions) != self.dimensions:
            raise ValueError(f"judge_spec dimensions {spec.dimensions} != head dimensions {self.dimensions}")
        self.judge_spec = spec.to_dict()
        sampling = Sampling.from_dict(self.sampling or {"family": self.family})
        if sampling.family != self.family:
            raise ValueError(f"sampling family {sampling.family!r} != model family {self.family!r}")
        self.sampling = sampling.to_dict()
        if (
            isinstance(self.tool_max_pixels, bool)
            or not isinstance(self.tool_max_pixels, int)
            or self.tool_max_pixels < 1
        ):
            raise ValueError(f"tool_max_pixels must be a positive integer, got {self.tool_max_pixels!r}")
        theta = self.tie_theta
        if isinstance(theta, bool) or not isinstance(theta, int | float) or not 1 < theta < math.inf:
            raise ValueError(f"tie_theta must be a number > 1 (Rao-Kupper), got {self.tie_theta!r}")
        self.tie_theta = float(self.tie_theta)
        if unknown := set(self.calibration) - set(self.dimensions):
            raise ValueError(f"calibration for unknown dimensions {sorted(unknown)}")

    # TRL's trainers read `model.config.model_type` and `get_text_config()` (its fused LM head patch
    # reads logit scaling there; none applies: the LM loss goes through the VLM's own head).
    @property
    def model_type(self) -> str:
        return "cot_rm"

    def get_text_config(self, *args, **kwargs) -> CotRmConfig:
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CotRmConfig:
        names = {f.name for f in fields(cls)}
        if unknown := set(d) - names:
            warnings.warn(
                f"{CONFIG_NAME}: ignoring unknown keys {sorted(unknown)} (newer cot-rm?)", stacklevel=2
            )
        return cls(**{k: v for k, v in d.items() if k in names})

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / CONFIG_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> CotRmConfig:
        path = Path(directory) / CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(
                f"{directory}: not a cot-rm checkpoint (no {CONFIG_NAME}); `cot-rm sft` writes one, "
                "a released base model is the `model.base` of an SFT run"
            )
        return cls.from_dict(json.loads(path.read_text()))
