"""Learning experiment: how well could a judge built on a base's vision features order toy-world pairs?

The SFT head reads the language model's state after the critique; whatever it knows of the video came
from the tokens the vision tower (and merger) hand the language model. This script skips the language
model and the critique and fits readers of those tokens straight to the scores, on one toy world's train
split, then scores them on another world's held-out test pairs (accuracy without ties, as `cot-rm eval`
reports it). No reader here may be part of a judge (stage 0 never sees a score); they bound what the
features hold. Readers:

    ridge        a ridge regression on each temporal slice's spatial mean (slices concatenated)
    ridge+diff   the same plus the mean and maximum over tokens of |token(slice t+1) - token(slice t)|
    transformer  a 2-layer, 128-wide transformer over all the video's tokens (the language model's size)
    cnn          no tower: a small conv net on the same sampled frames (halved to 56 px) and each frame's
                 difference to the next, a convolution over time, then scores: what the pixels hold

It also prints the bound that the score rule sets: with the true visual-quality and physical-consistency
scores and nothing of text alignment, how well is `overall` (their minimum with text alignment) ordered?
`--paired` samples frames in adjacent pairs (half as many evenly spaced positions, each with the next
source frame), so each temporal slice of the tower holds the motion at that moment: a sampling to try,
not the judge's. `--tune-tower STEPS` first trains the base's tower (a linear head on the slice means, the scores as
targets, batches of 16, lr 1e-3; `--tune-pool meanmax`: see `tune_tower`) on FIT's train split; the
readers then read the trained tower. `--base random --vision KEY=VALUE ...` starts from a random tiny
tower of another shape (finer patches, a longer temporal patch), to ask what a shape could learn.

    .venv/bin/cot-rm toyworld --out runs/w0 --n 400 --seed 0     # the demo's world
    .venv/bin/cot-rm toyworld --out runs/w7 --n 1600 --seed 7    # a second world: 320 test pairs
    .venv/bin/python bench/judge_ceiling.py --base assets/tiny-qwen2_5_vl-base --fit runs/w0 --test runs/w7

Measured figures: bench/RESULTS.md ("Learning", "What caps the judge").
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from cot_rm.media import video as video_module
from cot_rm.media.video import Sampling, read_video, smart_nframes
from cot_rm.model import tiny
from cot_rm.model.processing import encode
from cot_rm.model.tower import slice_tokens

DIMS = ("visual_quality", "text_alignment", "physical_consistency", "overall")


def load_world(folder: Path, split: str, sampling: Sampling) -> dict:
    """The videos of `split`'s pairs (decoded as the judge samples them), their scores, the pairs."""
    pairs = [p for p in map(json.loads, open(folder / "pairs.jsonl")) if p["split"] == split]
    wanted = {p["meta"][k] for p in pairs for k in ("id_a", "id_b")}
    rows = [r for r in map(json.loads, open(folder / "pointwise.jsonl")) if r["id"] in wanted]
    videos = [read_video(folder / r["video"], sampling) for r in rows]
    scores = torch.tensor([[r["scores"][d] for d in DIMS] for r in rows], dtype=torch.float)
    return {"videos": videos, "scores": scores, "index": {r["id"]: i for i, r in enumerate(rows)}, "pairs": pairs}  # fmt: skip


def tokens(vlm, processor, videos: list, grad: bool = False) -> torch.Tensor:
    """[videos, slices, 1 + tokens, width]: `slice_tokens` (the slice's mean first), in chunks."""
    out = []
    for i in range(0, len(videos), 32):
        chunk = videos[i : i + 32]
        b = encode(processor, ["<|vision_start|><|video_pad|><|vision_end|>"] * len(chunk), videos=chunk)
        with torch.set_grad_enabled(grad):
            out.append(torch.stack(slice_tokens(vlm, b["pixel_values_videos"], b["video_grid_thw"])))
    return torch.cat(out)


def pair_accuracy(pred: torch.Tensor, world: dict) -> dict[str, float]:
    """Per dimension, the share of non-tie pairs whose predicted order is the label's."""
    out = {}
    for j, d in enumerate(DIMS):
        gaps = [(p["dims"][d], pred[world["index"][p["meta"]["id_a"]], j] - pred[world["index"][p["meta"]["id_b"]], j])
                for p in world["pairs"] if p["dims"][d] != "tie"]  # fmt: skip
        right = sum(float(g > 0) if lab == "A" else float(g < 0) for lab, g in gaps)
        out[d] = round(right / max(len(gaps), 1), 3)
    return out


def ridge(x: torch.Tensor, y: torch.Tensor, xt: torch.Tensor, l2: float = 300.0) -> torch.Tensor:
    mean, std = x.mean(0), x.std(0) + 1e-4
    xs = (x - mean) / std
    w = torch.linalg.solve(xs.T @ xs + l2 * torch.eye(xs.shape[1]), xs.T @ (y - y.mean(0)))
    return ((xt - mean) / std) @ w + y.mean(0)


def with_differences(t: torch.Tensor) -> torch.Tensor:
    d = (t[:, 1:, 1:] - t[:, :-1, 1:]).abs()
    return torch.cat([t[:, :, 0].flatten(1), d.mean(2).flatten(1), d.amax(2).flatten(1)], 1)


class Reader(torch.nn.Module):
    """A 2-layer transformer over a video's tokens, a learned position per token, a summary token."""

    def __init__(self, positions: int, width: int, layers: int = 2):
        super().__init__()
        self.pos = torch.nn.Parameter(torch.zeros(1, positions + 1, width))
        self.summary = torch.nn.Parameter(torch.zeros(1, 1, width))
        layer = torch.nn.TransformerEncoderLayer(width, 2, 2 * width, 0.1, batch_first=True, norm_first=True)
        self.encoder = torch.nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.out = torch.nn.Linear(width, len(DIMS))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        x = t[:, :, 1:].flatten(1, 2)
        x = torch.cat([self.summary.expand(len(x), -1, -1), x], 1) + self.pos
        return self.out(self.encoder(x)[:, 0])


def transformer(t: torch.Tensor, y: torch.Tensor, tt: torch.Tensor, steps: int = 2000) -> torch.Tensor:
    torch.manual_seed(0)
    mean, std = t.mean((0, 1, 2)), t.std((0, 1, 2)) + 1e-4
    ym, ys = y.mean(0), y.std(0)
    net = Reader(t.shape[1] * (t.shape[2] - 1), t.shape[3])
    opt = torch.optim.AdamW(net.parameters(), 1e-3, weight_decay=0.05)
    for _ in range(steps):
        idx = torch.randint(0, len(t), (32,))
        loss = ((net((t[idx] - mean) / std) - (y[idx] - ym) / ys) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return net.eval()((tt - mean) / std) * ys + ym


class PixelReader(torch.nn.Module):
    """Per frame: the frame and its difference to the next, three strided convolutions, mean and max
    over space; then a convolution over time, mean and max over time, a linear map to the scores."""

    def __init__(self, width: int = 64):
        super().__init__()
        act = torch.nn.GELU()
        self.frame = torch.nn.Sequential(
            torch.nn.Conv2d(6, 32, 3, 2, 1), act, torch.nn.Conv2d(32, width, 3, 2, 1), act,
            torch.nn.Conv2d(width, width, 3, 2, 1), act,
        )  # fmt: skip
        self.time = torch.nn.Sequential(torch.nn.Conv1d(2 * width, 2 * width, 3, padding=1), act)
        self.out = torch.nn.Linear(4 * width, len(DIMS))

    def forward(self, v: torch.Tensor) -> torch.Tensor:  # [N, T, 3, H, W] in [0, 1]
        diff = torch.cat([v[:, 1:] - v[:, :-1], torch.zeros_like(v[:, :1])], 1)
        n, t = v.shape[:2]
        f = self.frame(torch.cat([v, diff], 2).flatten(0, 1))
        f = torch.cat([f.mean((2, 3)), f.amax((2, 3))], 1).view(n, t, -1).transpose(1, 2)
        f = self.time(f)
        return self.out(torch.cat([f.mean(2), f.amax(2)], 1))


def pixels(world: dict) -> torch.Tensor:
    frames = torch.stack([torch.as_tensor(v.frames) for v in world["videos"]]).float() / 255
    return torch.nn.functional.avg_pool3d(frames.transpose(1, 2), (1, 2, 2)).transpose(1, 2)


def cnn(fit: dict, test: dict, steps: int = 2000) -> torch.Tensor:
    torch.manual_seed(0)
    x, xt, y = pixels(fit), pixels(test), fit["scores"]
    ym, ys = y.mean(0), y.std(0)
    net = PixelReader()
    opt = torch.optim.AdamW(net.parameters(), 2e-3, weight_decay=0.05)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (32,))
        loss = ((net(x[idx]) - (y[idx] - ym) / ys) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return torch.cat([net.eval()(xt[i : i + 64]) for i in range(0, len(xt), 64)]) * ys + ym


def tune_tower(vlm, processor, fit: dict, steps: int, pool: str = "mean") -> None:
    """Train the tower on the scores (a diagnostic only: stage 0 never sees a score). `pool` "mean": a
    linear head on each slice's mean, lr 1e-3 constant; "meanmax": on each slice's mean and its maximum
    over tokens (a defect in one place is not averaged away), lr 2e-3 one-cycle (5% warm-up)."""
    vlm.requires_grad_(False)
    vlm.model.visual.requires_grad_(True)
    width = vlm.config.text_config.hidden_size
    slices = tokens(vlm, processor, fit["videos"][:1]).shape[1]
    head = torch.nn.Linear((2 if pool == "meanmax" else 1) * slices * width, len(DIMS))
    params = [p for p in vlm.parameters() if p.requires_grad] + list(head.parameters())
    lr = 2e-3 if pool == "meanmax" else 1e-3
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    if pool == "meanmax":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.05)
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    y = (fit["scores"] - fit["scores"].mean(0)) / fit["scores"].std(0)
    for step in range(steps):
        idx = random.Random(step).sample(range(len(y)), 16)
        t = tokens(vlm, processor, [fit["videos"][i] for i in idx], grad=True)
        f = torch.cat([t[:, :, 0], t[:, :, 1:].amax(2)], 2) if pool == "meanmax" else t[:, :, 0]
        loss = ((head(f.flatten(1)) - y[idx]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()


def apply_vision(overrides: list[str], config, processor) -> None:
    """Vision config KEY=VALUE overrides (e.g. patch_size=4 spatial_merge_size=4, temporal_patch_size=8) on
    `config` and `processor` together; the frame sampling follows the new patch x merge and temporal patch:
    an experiment, not the judge's rule."""
    kv = {k: json.loads(v) for k, v in (o.split("=", 1) for o in overrides)}
    for key, value in kv.items():
        setattr(config.vision_config, key, value)
        name = {"spatial_merge_size": "merge_size"}.get(key, key)  # the processors' word for it
        for proc in (processor.image_processor, processor.video_processor):
            if hasattr(proc, name):
                setattr(proc, name, value)
    vision = config.vision_config
    factor = vision.patch_size * vision.spatial_merge_size
    for proc, tokens_max in ((processor.image_processor, 1280), (processor.video_processor, 768)):
        proc.size = {"shortest_edge": 4 * factor * factor, "longest_edge": tokens_max * factor * factor}
    video_module.FACTORS["qwen2_5_vl"] = factor  # looked up at call time, like the sampler below
    video_module.FRAME_FACTOR = vision.temporal_patch_size


def random_base(overrides: list[str], out: Path) -> Path:
    """A random tiny Qwen2.5-VL (`cot_rm.model.tiny`) with `apply_vision`'s overrides, saved to `out`."""
    tokenizer = tiny.build_tokenizer("qwen2_5_vl")
    processor = tiny.build_processor("qwen2_5_vl", tokenizer)
    config = tiny.build_config("qwen2_5_vl", tokenizer)
    apply_vision(overrides, config, processor)
    tiny.build_model(config).save_pretrained(out)
    tiny.save_processor(processor, out)
    return out


def paired_indices(total_frames: int, video_fps: float, sampling: Sampling) -> list[int]:
    """Adjacent pairs (p, p + 1) at evenly spaced positions p, as many frames as the even sampling."""
    starts = np.linspace(0, total_frames - 2, smart_nframes(total_frames, video_fps, sampling) // 2)
    return [i for p in starts.round().astype(int).tolist() for i in (p, p + 1)]


def score_rule_bound(test: dict) -> float:
    """`overall` ordered by min(true visual quality, true physical consistency), text alignment unknown."""
    s = test["scores"]
    return pair_accuracy(torch.stack([s[:, 0], s[:, 0], s[:, 2], s[:, [0, 2]].amin(1)], 1), test)["overall"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="a base or checkpoint folder (its tower is read), or random")
    p.add_argument("--fit", required=True, help="toy world whose train split the readers are fitted on")
    p.add_argument("--test", required=True, help="toy world whose test pairs score them")
    p.add_argument("--readers", default="ridge,ridge+diff,transformer", help="comma-separated (see above)")
    p.add_argument("--tune-tower", type=int, default=0, metavar="STEPS", help="train the tower on FIT first")
    p.add_argument("--frames", type=int, default=8, help="frames per video (the demo's 8)")
    p.add_argument("--max-pixels", type=int, default=12544, help="pixels per frame (the demo's 112x112)")
    p.add_argument("--paired", action="store_true", help="sample adjacent pairs of frames (see above)")
    p.add_argument("--tune-pool", choices=("mean", "meanmax"), default="mean", help="--tune-tower's head")
    p.add_argument("--vision", nargs="+", metavar="KEY=VALUE", help="--base random: its vision overrides")
    args = p.parse_args()
    torch.set_num_threads(2)
    if args.paired:  # read_video_numpy looks the sampler up at call time: an experiment, not the judge's rule
        video_module.sample_indices = paired_indices
    if args.base == "random":
        args.base = str(random_base(args.vision or [], Path(tempfile.mkdtemp(prefix="judge-ceiling-"))))
    sampling = Sampling(
        fps=None, num_frames=args.frames, min_pixels=args.max_pixels, max_pixels=args.max_pixels
    )
    fit, test = load_world(Path(args.fit), "train", sampling), load_world(Path(args.test), "test", sampling)
    print(json.dumps({"score_rule_bound_overall": score_rule_bound(test)}), flush=True)
    vlm = AutoModelForImageTextToText.from_pretrained(args.base, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(args.base)
    if args.tune_tower:
        tune_tower(vlm, processor, fit, args.tune_tower, args.tune_pool)
    t, tt, y = tokens(vlm, processor, fit["videos"]), tokens(vlm, processor, test["videos"]), fit["scores"]
    readers = {
        "ridge": lambda: ridge(t[:, :, 0].flatten(1), y, tt[:, :, 0].flatten(1)),
        "ridge+diff": lambda: ridge(with_differences(t), y, with_differences(tt)),
        "transformer": lambda: transformer(t, y, tt),
        "cnn": lambda: cnn(fit, test),
    }
    for name in args.readers.split(","):
        print(
            json.dumps({"reader": name, "fit_videos": len(y), **pair_accuracy(readers[name](), test)}),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
