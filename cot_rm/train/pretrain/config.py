"""The `cot-rm pretrain` run config: the tiny model's size, its toy-world corpus, the verbatim `train:` dict.

    cfg = load_config(PretrainRunConfig, "configs/tiny/pretrain.yaml", overrides)   # see cot_rm/config.py

Torch-free, like the other stage configs, so `cot-rm pretrain --help` lists the keys without the model stack.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cot_rm.config import check_choices, meta, require, train_section_rules
from cot_rm.protocol import FAMILIES


@dataclass
class PretrainModelArgs:
    """The tiny Qwen-VL that is built (random, from `seed`) and then trained, tower included."""

    family: str = field(default="qwen2_5_vl", metadata=meta("model family", choices=FAMILIES))
    text_hidden: int = field(default=128, metadata=meta("language model width (a multiple of 128)"))
    text_layers: int = field(default=2, metadata=meta("language model layers"))
    vision_hidden: int = field(default=64, metadata=meta("vision tower width (a multiple of 64)"))
    vision_depth: int = field(default=2, metadata=meta("vision tower blocks"))
    seed: int = field(default=0, metadata=meta("seed of the random initial weights"))

    def __post_init__(self):
        check_choices(self)
        require(
            [
                (self.text_hidden >= 128 and self.text_hidden % 128 == 0, "text_hidden: a multiple of 128"),
                (
                    self.vision_hidden >= 64 and self.vision_hidden % 64 == 0,
                    "vision_hidden: a multiple of 64",
                ),
                (
                    self.text_layers >= 1 and self.vision_depth >= 1,
                    "text_layers and vision_depth must be >= 1",
                ),
            ]
        )

    def size(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in ("text_hidden", "text_layers", "vision_hidden", "vision_depth")}


@dataclass
class CorpusArgs:
    """The toy-world corpus: its own seed, never the seed of a world you evaluate on."""

    folder: str = field(metadata=meta("where the corpus is (built there by `cot-rm toyworld` when missing)"))
    seed: int = field(default=1001, metadata=meta("corpus seed; keep it apart from the worlds you judge"))
    videos: int = field(default=10000, metadata=meta("videos in the corpus (test-split prompts are dropped)"))
    size: int = field(default=64, metadata=meta("frame size of the corpus videos (pixels, square)"))
    frames: int = field(default=8, metadata=meta("frames sampled per video (the judge's num_frames)"))
    max_pixels: int = field(default=12544, metadata=meta("pixels per sampled frame (the judge's max_pixels)"))
    overlap: bool = field(
        default=False,
        metadata=meta("sample frames as overlapping pairs (f0 f1, f1 f2, ...; the judge's overlap)"),
    )
    frame_task: float = field(
        default=0.25,
        metadata=meta("share of samples that describe one frame shown as an image (the tool's view)"),
    )
    quote_task: float = field(
        default=0.0,
        metadata=meta("share of video samples that also quote a random prompt given beside the video"),
    )
    copy_task: float = field(
        default=0.0,
        metadata=meta(
            "share of samples that are text only: repeat a random word sequence (in-context copying)"
        ),
    )
    frame_max_pixels: int = field(default=50176, metadata=meta("pixels of that image (the tool's)"))
    eval_videos: int = field(default=96, metadata=meta("val videos captioned greedily in the end report"))

    def __post_init__(self):
        require(
            [
                (self.seed >= 0 and self.videos >= 12, "corpus: seed >= 0 and at least 12 videos"),
                (self.frames >= 2 and self.frames % 2 == 0, "frames: an even number >= 2"),
                (0.0 <= self.frame_task < 1.0, "frame_task must be in [0, 1)"),
                (0.0 <= self.quote_task <= 1.0, "quote_task must be in [0, 1]"),
                (0.0 <= self.copy_task < 1.0, "copy_task must be in [0, 1)"),
                (self.eval_videos >= 0, "eval_videos must be >= 0"),
            ]
        )


@dataclass
class TowerArgs:
    """Phase 1: the vision tower and merger alone, with linear heads naming what is drawn and which events
    each temporal slice shows. Captioning end to end from a random base wipes the tower's features (the
    language loss's gradient reaches it as noise); trained directly first, then frozen, they survive."""

    steps: int = field(default=6000, metadata=meta("phase-1 steps (0: caption end to end, tower trained)"))
    batch_size: int = field(default=16, metadata=meta("videos per phase-1 step"))
    learning_rate: float = field(default=2.0e-3, metadata=meta("phase-1 peak learning rate (cosine)"))
    events_weight: float = field(
        default=10.0, metadata=meta("weight of the events loss beside the attributes'")
    )
    events_context: int = field(
        default=0,
        metadata=meta(
            "slices on each side the events head reads beside a slice's own (a change between "
            "slices, such as a jump, shows only across them)"
        ),
    )

    motion_weight: float = field(
        default=0.0,
        metadata=meta(
            "weight of a per-slice head naming the step the objects take (direction, length); with "
            "overlapping slices each slice holds one step, so changes of motion become comparable"
        ),
    )

    def __post_init__(self):
        require([(self.steps >= 0 and self.batch_size >= 1 and self.learning_rate > 0 and self.events_weight >= 0
                  and self.events_context >= 0 and self.motion_weight >= 0,
                  "tower: steps >= 0, batch_size >= 1, learning_rate > 0, events_weight >= 0, "
                  "events_context >= 0, motion_weight >= 0")])  # fmt: skip


@dataclass
class PretrainRunConfig:
    """`cot-rm pretrain`: the tiny base's perception pretraining (stage 0) on toy-world descriptions."""

    corpus: CorpusArgs = field(metadata=meta("the toy-world corpus"))
    save_to: str = field(
        metadata=meta("folder the pretrained base is written to (what sft's model.base names)")
    )
    model: PretrainModelArgs = field(default_factory=PretrainModelArgs, metadata=meta("the model built"))
    tower: TowerArgs = field(default_factory=TowerArgs, metadata=meta("phase 1: the tower on direct targets"))
    train: dict[str, Any] = field(
        default_factory=dict,
        metadata=meta("phase 2 (captioning; the tower frozen after phase 1), verbatim to trl.SFTConfig"),
    )

    def __post_init__(self):
        require(
            [
                *train_section_rules(self.train),
                ("max_length" not in self.train, "train.max_length: samples are never truncated here"),
            ]
        )
