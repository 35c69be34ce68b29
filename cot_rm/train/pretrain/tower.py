"""Phase 1 of `cot-rm pretrain` (`tower:` in configs/tiny/pretrain.yaml): the vision tower alone.

The tower and merger train with linear heads on what they hand the language model (`TowerProbe`): the
drawn colour, shape, count, direction and speed of the whole video, which events each temporal slice of
the shown frames holds (`slice_events`) and, with `tower.motion_weight`, the step the objects take within
each slice (`slice_motion`). The language model waits; the heads are dropped when the phase ends, and
phase 2 (cot_rm/train/pretrain/trainer.py) captions with the trained tower frozen.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from datasets import Dataset
from safetensors.torch import load_file, save_file
from transformers import Trainer
from trl import SFTConfig

from cot_rm.model.processing import encode
from cot_rm.model.tower import slice_tokens
from cot_rm.train.log import note
from cot_rm.train.runs import start_run, train_to_the_end
from data_synthesis.toyworld import world as toyworld
from data_synthesis.toyworld.describe import EVENT_WORDS, drawn_spec, visible_frames
from data_synthesis.toyworld.render import COLOURS, SHAPES

# What phase 1 names about a video: the drawn attributes (one class each) and the kinds of events shown.
CLASSES = {"colour": COLOURS, "shape": SHAPES, "count": (1, 2, 3), "direction": ("left", "right", "up", "down"),
           "speed": ("slow", "fast")}  # fmt: skip
EVENTS = tuple(EVENT_WORDS)


def slice_events(meta: dict, indices: list[int]) -> torch.Tensor:
    """[slices, events]: 1 where an event kind shows in a temporal slice (two consecutive frames of
    `indices`, the tower's temporal patch). A teleport shows in the slice holding both shown frames
    around its jump (overlapping sampling) or else in the slices of each of them."""
    slices = [set(indices[i : i + 2]) for i in range(0, len(indices) - 1, 2)]
    target = torch.zeros(len(slices), len(EVENTS))
    for d in meta["defects"]:
        if d["type"] in EVENTS:
            seen = set(visible_frames(d, indices))
            hit = [i for i, s in enumerate(slices) if seen & s]
            if d["type"] == "teleport" and (whole := [i for i in hit if seen <= slices[i]]):
                hit = whole
            target[hit, EVENTS.index(d["type"])] = 1.0
    return target


# About 4% of the (slice, event kind) targets are 1 (the corpus): positives weigh more, or the head
# learns "never".
EVENT_POS_WEIGHT = 5.0

# The step the objects take within a slice, as a class: the larger axis's sign, "still" under half a pixel.
MOTIONS = ("still", "right", "left", "down", "up")


def slice_motion(meta: dict, split: str, indices: list[int]) -> dict[str, torch.Tensor]:
    """Per temporal slice, the step the objects take between its two frames (replayed from the video's
    seed): `motion_dir` [slices] (a `MOTIONS` index) and `motion_len` [slices] (source pixels / 4). With
    overlapping sampling each slice is one step of the motion, so a reversal, a freeze or a change of
    speed is a slice whose step differs from its neighbours'; the tower must then hold each step."""
    track = toyworld.object_centres(meta, split).mean(1)  # the objects move together: one track
    centre = torch.tensor(track[indices], dtype=torch.float)
    return motion_of(centre[1::2] - centre[0::2])


def motion_of(step: torch.Tensor) -> dict[str, torch.Tensor]:
    """`slice_motion` from the steps [slices, (dx, dy)] in source pixels (y grows downwards)."""
    axis = step.abs().argmax(1)
    sign = (step.gather(1, axis[:, None])[:, 0] < 0).long()
    direction = torch.where(step.abs().amax(1) < 0.5, 0, 1 + 2 * axis + sign)
    return {"motion_dir": direction, "motion_len": step.norm(dim=1) / 4}


def motion_loss(m: torch.Tensor, motion_dir: torch.Tensor, motion_len: torch.Tensor) -> torch.Tensor:
    """The motion head's loss: cross-entropy on each slice's step direction (m[..., :-1]) plus the MSE
    of its length (m[..., -1])."""
    step = torch.nn.functional.cross_entropy(m[..., :-1].flatten(0, 1), motion_dir.flatten())
    return step + torch.nn.functional.mse_loss(m[..., -1], motion_len)


def with_neighbours(x: torch.Tensor, context: int) -> torch.Tensor:
    """[videos, slices, width] -> [videos, slices, (1 + 2 context) * width]: each slice's features
    beside its `context` neighbours on each side, in time order (zeros past the ends)."""
    n, padded = x.shape[1], torch.nn.functional.pad(x, (0, 0, context, context))
    return torch.cat([padded[:, k : k + n] for k in range(2 * context + 1)], -1)


class TowerProbe(torch.nn.Module):
    """The VLM's vision tower with linear heads that name what it sees, reading every slice's mean and
    tokens (positions matter: direction, count, a missing object): one head per attribute on the whole
    video, and one events head on each slice (when an event shows), reading `context` slices on each
    side too (zeros past the ends). With `motion_weight`, a motion head on each slice names the step the
    objects take in it (`slice_motion`). Only the tower, merger and heads train; the heads are dropped
    when phase 1 ends. One sampling (slices x tokens) for all videos."""

    def __init__(self, vlm, slices: int, tokens: int, events_weight: float = 10.0, context: int = 0,
                 motion_weight: float = 0.0):  # fmt: skip
        super().__init__()
        self.vlm, self.events_weight, self.context = vlm, events_weight, context
        self.motion_weight = motion_weight
        per_slice = (1 + tokens) * vlm.config.text_config.hidden_size  # the merger's output width
        self.heads = torch.nn.ModuleDict(
            {k: torch.nn.Linear(slices * per_slice, len(v)) for k, v in CLASSES.items()}
        )
        self.events = torch.nn.Linear((1 + 2 * context) * per_slice, len(EVENTS))
        if motion_weight:  # direction logits and the step's length, per slice
            self.motion = torch.nn.Linear(per_slice, len(MOTIONS) + 1)

    def predict(self, pixel_values_videos, video_grid_thw) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Attribute logits {name: [videos, classes]} (with the motion head: also "motion", [videos,
        slices, directions + 1]) and event logits [videos, slices, events]."""
        feats = torch.stack(slice_tokens(self.vlm, pixel_values_videos, video_grid_thw))
        per_slice = with_neighbours(feats.flatten(2), self.context)
        logits = {k: head(feats.flatten(1)) for k, head in self.heads.items()}
        if self.motion_weight:
            logits["motion"] = self.motion(feats.flatten(2))
        return logits, self.events(per_slice)

    def forward(
        self, pixel_values_videos, video_grid_thw, events, motion_dir=None, motion_len=None, **attributes
    ):
        logits, per_slice = self.predict(pixel_values_videos, video_grid_thw)
        loss = sum(torch.nn.functional.cross_entropy(logits[k], attributes[k]) for k in CLASSES)
        weight = torch.tensor(EVENT_POS_WEIGHT)
        bce = torch.nn.functional.binary_cross_entropy_with_logits(per_slice, events, pos_weight=weight)
        loss = loss + self.events_weight * bce
        if self.motion_weight:
            loss = loss + self.motion_weight * motion_loss(logits["motion"], motion_dir, motion_len)
        return {"loss": loss}


class TowerCollator:
    """Examples -> the videos as the judge samples them (phase 2's `DescribeCollator` samples them),
    their attribute classes and per-slice events (`motion`: and the step each slice holds, `slice_motion`)."""

    def __init__(self, describe_collator, motion: bool = False):
        self.describe, self.motion = describe_collator, motion

    def __call__(self, batch: list[dict]) -> dict[str, torch.Tensor]:
        rows = [json.loads(item["example"]) for item in batch]
        videos = [self.describe.video_sample(r, answer=False)[1] for r in rows]
        enc = encode(self.describe.processor, ["<|vision_start|><|video_pad|><|vision_end|>"] * len(rows),
                     videos=videos)  # fmt: skip
        specs = [drawn_spec(r["meta"]) for r in rows]
        batch = {
            "pixel_values_videos": enc["pixel_values_videos"],
            "video_grid_thw": enc["video_grid_thw"],
            "events": torch.stack([slice_events(r["meta"], list(v.indices)) for r, v in zip(rows, videos)]),
            **{k: torch.tensor([list(v).index(s[k]) for s in specs]) for k, v in CLASSES.items()},
        }
        if self.motion:
            steps = [slice_motion(r["meta"], r["split"], list(v.indices)) for r, v in zip(rows, videos)]
            batch.update({k: torch.stack([m[k] for m in steps]) for k in ("motion_dir", "motion_len")})
        return batch


class TowerTrainer(Trainer):
    """Phase 1 as a plain transformers Trainer (checkpoints, resume, logging, progress bar) on TowerProbe."""

    def create_model_card(self, *args, **kwargs) -> None:
        return None


@torch.no_grad()
def tower_report(probe: TowerProbe, collator: TowerCollator, rows: list[dict], batch_size: int = 16) -> dict:
    """Phase 1's heads on held-out corpus videos: attribute accuracy, and the F1 of the per-slice events,
    overall and per kind."""
    probe.eval()
    hits = dict.fromkeys(CLASSES, 0)
    steps, steps_right = 0, 0  # the motion head's slices and those whose direction it names
    tp, predicted, actual = (torch.zeros(len(EVENTS)) for _ in range(3))  # per event kind
    for start in range(0, len(rows), batch_size):
        batch = collator([{"example": json.dumps(r)} for r in rows[start : start + batch_size]])
        logits, per_slice = probe.predict(batch["pixel_values_videos"], batch["video_grid_thw"])
        for k in CLASSES:
            hits[k] += int((logits[k].argmax(1) == batch[k]).sum())
        if "motion" in logits:
            steps += batch["motion_dir"].numel()
            steps_right += int((logits["motion"][..., :-1].argmax(-1) == batch["motion_dir"]).sum())
        pred, truth = (per_slice > 0).float().flatten(0, -2), batch["events"].flatten(0, -2)
        tp, predicted, actual = tp + (pred * truth).sum(0), predicted + pred.sum(0), actual + truth.sum(0)
    n = max(len(rows), 1)
    f1 = 2 * tp / (predicted + actual).clamp(min=1.0)
    return {
        "videos": len(rows),
        "attribute_accuracy": {k: round(v / n, 3) for k, v in hits.items()},
        "slice_event_f1": round(float(2 * tp.sum() / max(float((predicted + actual).sum()), 1.0)), 3),
        "slice_event_f1_by_kind": {k: round(float(f), 3) for k, f, a in zip(EVENTS, f1, actual) if a},
        **({"slice_motion_accuracy": round(steps_right / steps, 3)} if steps else {}),
    }


TOWER_FINAL = "tower.safetensors"


def train_tower(cfg, model, collator, rows: list[dict]) -> dict | int:
    """Phase 1 in `output_dir/tower` (resumable like every stage): the tower, merger and heads train, the
    language model waits. Returns the heads' report on val videos, or an exit status to stop with."""
    out = Path(cfg.train["output_dir"]) / "tower"
    args = SFTConfig(**{**cfg.train, "output_dir": str(out), "max_steps": cfg.tower.steps,
                        "per_device_train_batch_size": cfg.tower.batch_size,
                        "learning_rate": cfg.tower.learning_rate, "lr_scheduler_type": "cosine",
                        "warmup_steps": 0, "remove_unused_columns": False})  # fmt: skip
    tower_collator = TowerCollator(collator, motion=cfg.tower.motion_weight > 0)
    train = [json.dumps(r) for r in rows if r["split"] == "train"]
    grid = tower_collator([{"example": train[0]}])["video_grid_thw"][0]  # the corpus's one sampling
    merge = model.config.vision_config.spatial_merge_size
    probe = TowerProbe(model, int(grid[0]), int(grid[1] * grid[2]) // merge**2, cfg.tower.events_weight,
                       cfg.tower.events_context, cfg.tower.motion_weight)  # fmt: skip
    model.requires_grad_(False)
    model.model.visual.requires_grad_(True)
    trainer = TowerTrainer(probe, args, data_collator=tower_collator,
                           train_dataset=Dataset.from_dict({"example": train}))  # fmt: skip
    if (out / TOWER_FINAL).is_file():  # phase 1 finished in an earlier run
        probe.load_state_dict(load_file(str(out / TOWER_FINAL)))
    else:
        resume = start_run(trainer, cfg, "cot-rm pretrain", f"phase 1 (tower): {len(train)} corpus videos")
        if (status := train_to_the_end(trainer, resume, "cot-rm pretrain", (TOWER_FINAL,))) is not None:
            return status
        save_file({k: v.contiguous() for k, v in probe.state_dict().items()}, str(out / TOWER_FINAL))
    model.requires_grad_(True)
    model.model.visual.requires_grad_(False)
    val = [r for r in rows if r["split"] == "val"][: cfg.corpus.eval_videos]
    report = tower_report(probe, tower_collator, val)
    note(__name__, f"cot-rm pretrain: phase 1 done: {json.dumps(report)}")
    return report
