"""Learning experiment: phase 1 of `cot-rm pretrain` (the vision tower alone on direct targets) under
variants of its heads and schedule, each from the same random tiny base, scored on held-out corpus videos.

Each variant trains the tower and merger with linear heads naming the drawn colour, shape, count, direction
and speed, and a per-slice head naming the events each temporal slice shows; it reports the heads'
accuracy, the per-slice event F1 (overall and per kind) and, per kind, the AUC of the event logits on
128 val videos. Videos are decoded once, up front. `--pixel-baseline` first prints the AUC of three
hand-made pixel features per kind (what the pixels hold, whatever the tower learns). Variants:

    feats=mean   each temporal slice's spatial mean (where things are is lost)
    feats=flat   each slice's tokens in place
    feats=both   the mean and the tokens (what `cot_rm.train.pretrain.tower.TowerProbe` reads)
    events_head=linear   one linear map over each slice's features (`TowerProbe`'s default)
    events_head=tokmax   an MLP on each token, the strongest answer per slice (`TokenMax`)
    events_head=ctx      one linear map over the slice's features and its two neighbours' (`Context`, what
                         `TowerProbe` has with `tower.events_context=1`): a jump, a reversal or a morph
                         between slices is only seen across them
    positions_weight     adds a per-slice regression head for where the objects are (their mean centre in
                         each of the slice's frames and the step between them, replayed from the video's
                         seed), to make the tokens hold positions a reader across slices can compare;
                         reports its R^2
    motion_weight        adds a per-slice head for the step the objects take within the slice (its
                         direction as a class, its length), with `--overlap` one step of the motion per
                         slice; reports its accuracy and R^2, and adds the `events+motion` score reader
    lr, steps, sched=const|cos, pos_weight (events), events_weight, vision_hidden, vision_depth

Tower shape and sampling: `--vision KEY=VALUE ...` (e.g. `patch_size=4 spatial_merge_size=4` with
`--max-pixels 4096`: 4-pixel patches on the native 64 px), `--frames N`, `--paired` (adjacent pairs of
source frames, 8 frames only), `--overlap` (the 8 sampled frames as the 7 slices (f0, f1), (f1, f2), ...:
every step of the motion inside one temporal patch; 14 frames through the tower). `--cache DIR` keeps the
decoded worlds, so a second run skips decoding.

`--judge TRAIN_WORLD TEST_WORLD` (two toy worlds, e.g. the demo's and a second one) adds, per variant, the
score probes: readers of the trained tower fitted to a video's scores on TRAIN_WORLD's train split, then
the pairwise accuracy without ties of their predictions on TEST_WORLD's test pairs (see `score_probe`:
`judge_ceiling.py`'s three readers of the tokens, and one of the events head's findings). No language
model, no critique: what a judge built on these features could reach on visual quality, physical
consistency and overall (text alignment needs the prompt, which the probes do not read).

    .venv/bin/python bench/tower_phase.py --corpus runs/pretrain/corpus --videos 2400 \
        feats=mean,steps=300,lr=4e-3 feats=both,steps=1200,lr=2e-3,sched=cos,pos_weight=5,events_weight=10

Measured figures: bench/RESULTS.md ("Learning").
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import sys
import time
from pathlib import Path

import torch
from judge_ceiling import (
    DIMS,
    apply_vision,
    pair_accuracy,
    paired_indices,
    ridge,
    transformer,
    with_differences,
)

from cot_rm.media import video as video_module
from cot_rm.media.video import Sampling
from cot_rm.model import tiny
from cot_rm.model.tower import slice_tokens
from cot_rm.train.pretrain import tower
from cot_rm.train.pretrain.config import CorpusArgs
from cot_rm.train.pretrain.tower import CLASSES, EVENTS, TowerCollator, with_neighbours
from cot_rm.train.pretrain.trainer import DescribeCollator
from data_synthesis.toyworld.world import object_centres

FAMILY = "qwen2_5_vl"
DEFAULTS = {"feats": "mean", "lr": 4e-3, "steps": 300, "sched": "const", "pos_weight": 1.0,
            "events_weight": 1.0, "vision_hidden": 64, "vision_depth": 2, "batch": 16, "events_head": "linear",
            "positions_weight": 0.0, "motion_weight": 0.0}  # fmt: skip


def encode_all(collator: TowerCollator, rows: list[dict]) -> list[dict]:
    """Each video's pixel values and targets, decoded once (in order)."""
    out = []  # two workers decode side by side: decoding, not the tower, is this bench's slow part
    examples = [{"example": json.dumps(r)} for r in rows]
    for b in torch.utils.data.DataLoader(examples, batch_size=32, collate_fn=collator, num_workers=2):
        pv = b["pixel_values_videos"].reshape(
            len(b["video_grid_thw"]), -1, b["pixel_values_videos"].shape[-1]
        )
        out += [
            {"pv": pv[j].half(), **{k: b[k][j] for k in ("video_grid_thw", "events", *CLASSES)}}
            for j in range(len(pv))
        ]
    return out


def positions(row: dict, frames: int = 8) -> torch.Tensor:
    """[slices, 6]: per temporal slice, the objects' mean centre in its two sampled frames (x, y, x, y,
    as fractions of the frame from its middle) and the step between them (x4, so it is not drowned)."""
    c = object_centres(row["meta"], row["split"]).mean(1)  # all objects share one track
    idx = video_module.sample_indices(len(c), 1.0, Sampling(fps=None, num_frames=frames))  # --paired too
    xy = torch.tensor(c[idx], dtype=torch.float) / row["meta"]["width"] * 2 - 1  # [frames, 2]
    a, b = xy[0::2], xy[1::2]
    return torch.cat([a, b, 4 * (b - a)], 1)


def motion_targets(row: dict, frames: int = 8) -> dict:
    """`tower.slice_motion` on the frames this bench samples (with `--overlap`, one step per slice)."""
    idx = video_module.sample_indices(row["meta"]["num_frames"], 1.0, Sampling(fps=None, num_frames=frames))
    return tower.slice_motion(row["meta"], row["split"], idx)


EVEN_INDICES = video_module.sample_indices  # the judge's sampling, before --paired or --overlap replace it


def overlap_indices(total_frames: int, video_fps: float, sampling: Sampling) -> list[int]:
    """The even sampling's frames f0..f(n-1) as the n-1 slices (f0, f1), (f1, f2), ... (`Sampling.overlap`,
    for this bench's own samplings)."""
    return EVEN_INDICES(total_frames, video_fps, dataclasses.replace(sampling, overlap=True))


# `slice_events` labels overlapping slices itself: a teleport only in the slice holding its jump.
overlap_slice_events = tower.slice_events


def cached(folder: str | None, name: str, make):
    """`make()`, saved to FOLDER/NAME.pt the first time and loaded after: decoding 10k videos takes
    25 min on 2 cores, a variant's training 5-15. The name must say what was decoded (corpus, pixels)."""
    if folder is None:
        return make()
    path = Path(folder) / f"{name}.pt"
    if path.exists():
        return torch.load(path)
    out = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, path)
    return out


def stack(items: list[dict]) -> dict:
    keys = [k for k in ("video_grid_thw", "events", "positions", "motion_dir", "motion_len", *CLASSES)
            if k in items[0]]  # fmt: skip
    return {"pixel_values_videos": torch.cat([x["pv"] for x in items]).float(),
            **{k: torch.stack([x[k] for x in items]) for k in keys}}  # fmt: skip


def features(vlm, batch: dict, feats: str) -> torch.Tensor:
    """[videos, slices, tokens, width] for the variant's reading of the tower's output."""
    s = torch.stack(slice_tokens(vlm, batch["pixel_values_videos"], batch["video_grid_thw"]))
    return {"mean": s[:, :, :1], "flat": s[:, :, 1:], "both": s}[feats]


class TokenMax(torch.nn.Module):
    """An events head that asks each token (an MLP shared by all) and keeps the strongest answer per
    slice: "does any place of this slice show X", which a linear map over the tokens in place cannot
    say for every place at once."""

    def __init__(self, width: int, events: int, hidden: int = 64):
        super().__init__()
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(width, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, events)
        )

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.mlp(f).amax(2)


class Context(torch.nn.Module):
    """An events head reading each slice beside the one before and after it (zeros past the ends): the
    tower attends only within a slice, so a change between slices can only be read across them."""

    def __init__(self, width: int, events: int):
        super().__init__()
        self.linear = torch.nn.Linear(3 * width, events)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.linear(with_neighbours(f.flatten(2), 1))


def event_logits(heads, f: torch.Tensor, kind: str) -> torch.Tensor:
    return heads["events"](f) if kind in ("tokmax", "ctx") else heads["events"](f.flatten(2))


def motion_summary(m: torch.Tensor) -> torch.Tensor:
    """[videos, 10] from the motion head's per-slice outputs: how often the direction changes between
    neighbouring slices, how sure the stillest slice is of standing still, the mean direction, and the
    step's largest, smallest, spread and largest change: what a step-by-step account of the motion
    could say of reversals, freezes, jumps and changes of speed."""
    p, length = m[..., :5].softmax(-1), m[..., 5]
    changes = (1 - (p[:, 1:] * p[:, :-1]).sum(-1)).sum(1, keepdim=True)
    jumps = (length[:, 1:] - length[:, :-1]).abs().amax(1, keepdim=True)
    return torch.cat([changes, p[..., 0].amax(1, keepdim=True), p[..., 1:].mean(1), length.amax(1, keepdim=True),
                      length.amin(1, keepdim=True), length.std(1, keepdim=True), jumps], 1)  # fmt: skip


def auc(scores: torch.Tensor, truth: torch.Tensor) -> float:
    """How often a slice that shows the event outscores one that does not (0.5: no signal)."""
    pos, neg = scores[truth > 0], scores[truth == 0]
    if not len(pos) or not len(neg):
        return float("nan")
    return round(float((pos[:, None] > neg[None, :]).float().mean()), 2)


def load_world(collator: TowerCollator, folder: Path, split: str) -> dict:
    """A toy world's videos of `split`'s pairs (encoded as the judge samples them), their scores, the
    pairs: what `judge_ceiling.pair_accuracy` reads."""
    pairs = [p for p in map(json.loads, open(folder / "pairs.jsonl")) if p["split"] == split]
    wanted = {p["meta"][k] for p in pairs for k in ("id_a", "id_b")}
    rows = [r for r in map(json.loads, open(folder / "pointwise.jsonl")) if r["id"] in wanted]
    items = encode_all(collator, [{"video": str(folder / r["video"]), "meta": r["meta"]} for r in rows])
    scores = torch.tensor([[r["scores"][d] for d in DIMS] for r in rows], dtype=torch.float)
    return {"items": items, "scores": scores, "index": {r["id"]: i for i, r in enumerate(rows)}, "pairs": pairs}  # fmt: skip


def score_probe(vlm, heads, kind: str, fit: dict, test: dict, motion: bool = False) -> dict:
    """`judge_ceiling`'s readers of the tower's tokens (ridge on the slice means, ridge with the slices'
    differences, a 2-layer transformer on all tokens), and `events`: a ridge on the events head's
    strongest logit per kind over the slices (what a description naming the events it finds could
    tell); fitted on `fit`, their pair accuracy on `test`."""

    @torch.no_grad()
    def tokens(world):
        return torch.cat([features(vlm, stack(world["items"][i : i + 64]), "both")
                          for i in range(0, len(world["items"]), 64)])  # fmt: skip

    @torch.no_grad()
    def events(t):
        return event_logits(heads, t, kind).amax(1)

    @torch.no_grad()
    def moves(t):
        return torch.cat([events(t), motion_summary(heads["motion"](t.flatten(2)))], 1)

    t, tt, y = tokens(fit), tokens(test), fit["scores"]
    readers = {
        "ridge": lambda: ridge(t[:, :, 0].flatten(1), y, tt[:, :, 0].flatten(1)),
        "ridge+diff": lambda: ridge(with_differences(t), y, with_differences(tt)),
        "transformer": lambda: transformer(t, y, tt),
        "events": lambda: ridge(events(t), y, events(tt), l2=1.0),
    }
    if motion:
        readers["events+motion"] = lambda: ridge(moves(t), y, moves(tt), l2=1.0)
    keep = ("visual_quality", "physical_consistency", "overall")
    return {
        name: {d: got[d] for d in keep}
        for name, read in readers.items()
        for got in [pair_accuracy(read(), test)]
    }


def run(v: dict, train: list[dict], val: list[dict], tok, judge: tuple | None = None, shape=None) -> dict:
    size = tiny.TinySize(128, 2, int(v["vision_hidden"]), int(v["vision_depth"]))
    config = tiny.build_config(FAMILY, tok, size)
    if shape:
        shape(config)  # --vision: the tower's patch, merge and temporal patch
    vlm = tiny.build_model(config, 0)
    vlm.requires_grad_(False)
    vlm.model.visual.requires_grad_(True)
    slices, tokens, width = features(vlm, stack(val[:1]), v["feats"]).shape[1:]
    heads = torch.nn.ModuleDict(
        {k: torch.nn.Linear(slices * tokens * width, len(c)) for k, c in CLASSES.items()}
    )
    heads["events"] = {
        "tokmax": lambda: TokenMax(width, len(EVENTS)),
        "ctx": lambda: Context(tokens * width, len(EVENTS)),
        "linear": lambda: torch.nn.Linear(tokens * width, len(EVENTS)),
    }[v["events_head"]]()
    heads["positions"] = torch.nn.Linear(tokens * width, 6)
    heads["motion"] = torch.nn.Linear(tokens * width, 6)  # 5 direction logits, the step's length
    params = [p for p in [*vlm.parameters(), *heads.parameters()] if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=v["lr"], weight_decay=0.0)
    steps, start = int(v["steps"]), time.time()
    for step in range(steps):
        if v["sched"] == "cos":
            opt.param_groups[0]["lr"] = v["lr"] * 0.5 * (1 + math.cos(math.pi * step / steps))
        b = stack(random.Random(step).sample(train, int(v["batch"])))
        f = features(vlm, b, v["feats"])
        loss = sum(torch.nn.functional.cross_entropy(heads[k](f.flatten(1)), b[k]) for k in CLASSES)
        loss = loss + v["events_weight"] * torch.nn.functional.binary_cross_entropy_with_logits(
            event_logits(heads, f, v["events_head"]), b["events"], pos_weight=torch.tensor(v["pos_weight"])
        )
        if v["positions_weight"]:
            moved = heads["positions"](f.flatten(2))
            loss = loss + v["positions_weight"] * torch.nn.functional.mse_loss(moved, b["positions"])
        if v["motion_weight"]:
            loss = loss + v["motion_weight"] * tower.motion_loss(
                heads["motion"](f.flatten(2)), b["motion_dir"], b["motion_len"]
            )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad()
    with torch.no_grad():
        b = stack(val)
        f = features(vlm, b, v["feats"])
        got = {k: round(float((heads[k](f.flatten(1)).argmax(1) == b[k]).float().mean()), 2) for k in CLASSES}
        pred, truth = (
            (event_logits(heads, f, v["events_head"]) > 0).float().flatten(0, 1),
            b["events"].flatten(0, 1),
        )
        got["slice_event_f1"] = round(float(2 * (pred * truth).sum() / (pred.sum() + truth.sum())), 2)
        per_kind = 2 * (pred * truth).sum(0) / (pred.sum(0) + truth.sum(0)).clamp(min=1.0)
        got["by_kind"] = {k: round(float(x), 2) for k, x in zip(EVENTS, per_kind)}
        logits = event_logits(heads, f, v["events_head"]).flatten(0, 1)
        got["auc_by_kind"] = {k: auc(logits[:, i], truth[:, i]) for i, k in enumerate(EVENTS)}
        if v["positions_weight"]:  # R^2 of the positions head on the val videos
            err = (heads["positions"](f.flatten(2)) - b["positions"]).pow(2).mean((0, 1))
            got["positions_r2"] = [round(float(x), 2) for x in 1 - err / b["positions"].var((0, 1))]
        if v["motion_weight"]:  # direction accuracy and R^2 of the step's length, per slice
            m = heads["motion"](f.flatten(2))
            got["motion_dir_acc"] = round(float((m[..., :5].argmax(-1) == b["motion_dir"]).float().mean()), 2)
            err = (m[..., 5] - b["motion_len"]).pow(2).mean()
            got["motion_len_r2"] = round(float(1 - err / b["motion_len"].var()), 2)
    if judge:
        got["score_probe"] = score_probe(
            vlm, heads, v["events_head"], *judge, motion=bool(v["motion_weight"])
        )
    return {**got, "seconds": round(time.time() - start)}


def pixel_baseline(items: list[dict]) -> dict:
    """AUC per event kind of three hand-made features of the processor's patches (no training): the
    slice's mean and median (over patches) absolute difference between neighbouring pixels, and the
    mean absolute difference between the slice's two frames. What the pixels hold, beside what the
    tower learns to read."""
    feats, truth = [], []
    for it in items:
        t, h, w = (int(x) for x in it["video_grid_thw"])
        # slices, patches, channels, frames, rows, columns
        p = it["pv"].float().reshape(t, h * w, 3, 2, 14, 14)
        edges = (p[..., 1:, :] - p[..., :-1, :]).abs().mean((-1, -2)) + (p[..., 1:] - p[..., :-1]).abs().mean(
            (-1, -2)
        )
        motion = (p[:, :, :, 1] - p[:, :, :, 0]).abs().mean((-1, -2, -3))
        feats.append(
            torch.stack([edges.mean((1, 2, 3)), edges.median(1).values.mean((1, 2)), motion.mean(1)], 1)
        )
        truth.append(it["events"])
    f, y = torch.cat(feats), torch.cat(truth)
    names = ("edges_mean", "edges_median", "frame_difference")
    return {k: {n: auc(f[:, j], y[:, i]) for j, n in enumerate(names)} for i, k in enumerate(EVENTS)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", required=True, help="a corpus folder `cot-rm pretrain` built (corpus.folder)")
    p.add_argument("--videos", type=int, default=2400, help="train videos used")
    p.add_argument("variants", nargs="*", help="key=value,key=value (see above)")
    p.add_argument("--pixel-baseline", action="store_true",
                   help="first, the AUC of hand-made pixel features per event kind on the val videos")  # fmt: skip
    p.add_argument("--judge", nargs=2, metavar=("TRAIN_WORLD", "TEST_WORLD"),
                   help="toy worlds for the score probe (see above)")  # fmt: skip
    p.add_argument("--vision", nargs="+", default=[], metavar="KEY=VALUE",
                   help="tower overrides for every variant, e.g. patch_size=4 spatial_merge_size=4")  # fmt: skip
    p.add_argument("--max-pixels", type=int, default=12544, help="pixels per frame (the demo's 112x112)")
    p.add_argument("--frames", type=int, default=8, help="frames sampled per video (the demo's 8)")
    p.add_argument("--paired", action="store_true",
                   help="sample adjacent pairs of frames, so each slice holds two consecutive frames")  # fmt: skip
    p.add_argument("--overlap", action="store_true",
                   help="slices of consecutive sampled frames (f0 f1, f1 f2, ...): every change in one slice")  # fmt: skip
    p.add_argument(
        "--cache", help="a folder keeping the decoded videos between runs (one per corpus, pixels, shape)"
    )
    args = p.parse_args()
    corpus = Path(args.corpus)
    rows = [{"video": str(corpus / r["video"]), "meta": r["meta"], "split": r["split"]}
            for r in map(json.loads, open(corpus / "pointwise.jsonl"))]  # fmt: skip
    tok = tiny.build_tokenizer(FAMILY)
    processor = tiny.build_processor(FAMILY, tok)
    apply_vision(args.vision, tiny.build_config(FAMILY, tok), processor)

    def shape(config):
        apply_vision(args.vision, config, processor)

    if args.paired:  # read_video_numpy looks the sampler up at call time: an experiment, not the judge's rule
        video_module.sample_indices = paired_indices
    if args.overlap:  # the same: slices of frames (f_i, f_i+1)
        video_module.sample_indices = overlap_indices
    corpus_args = CorpusArgs(folder=str(corpus), max_pixels=args.max_pixels, frames=args.frames)
    collator = TowerCollator(DescribeCollator(processor, FAMILY, corpus_args))
    if args.paired or args.overlap:  # the frame cache keys on the sampling's settings, not on the sampler
        collator.describe.cache = None
    train_rows, val_rows = (
        [r for r in rows if r["split"] == "train"][: args.videos],
        [r for r in rows if r["split"] == "val"][:128],
    )
    train = cached(args.cache, f"train{args.videos}", lambda: encode_all(collator, train_rows))
    val = cached(args.cache, "val128", lambda: encode_all(collator, val_rows))
    for item, row in zip(train + val, train_rows + val_rows, strict=True):
        item["positions"] = positions(row, args.frames)
        item.update(motion_targets(row, args.frames))
    if args.pixel_baseline:
        print(json.dumps({"pixel_baseline_auc": pixel_baseline(val)}), flush=True)
    judge = args.judge and (
        cached(args.cache, "judge_fit", lambda: load_world(collator, Path(args.judge[0]), "train")),
        cached(args.cache, "judge_test", lambda: load_world(collator, Path(args.judge[1]), "test")),
    )
    for spec in args.variants:
        v = dict(DEFAULTS)
        for item in spec.split(","):
            key, value = item.split("=")
            v[key] = value if key in ("feats", "sched", "events_head") else float(value)
        print(json.dumps({"variant": spec, **run(v, train, val, tok, judge, shape)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
