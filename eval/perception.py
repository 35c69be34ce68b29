"""Does a base see? Linear probes on its vision features of toy-world videos it never saw.

The frozen tower (patch embedding, blocks, merger: what the language model receives) encodes each
video as the judge samples it; the features are averaged over space within each temporal slice and the
slices concatenated, so time order survives pooling. A linear classifier fitted on one part of the videos
is scored on the rest, for each question: the drawn colour, shape, count and direction, and whether the
video has a visual-quality / physical-consistency defect in the frames it is shown.

    probe_accuracy(base_dir, toy_dir, sampling) -> {"colour": 0.93, ..., "chance": {...}}

A random tower keeps some of this (it is a fixed function of the pixels); a pretrained one should keep
clearly more. `bench/perception.py` prints the table for two bases side by side.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from cot_rm.media.video import read_video
from cot_rm.model.processing import encode
from cot_rm.model.tower import slice_means
from data_synthesis.toyworld.describe import drawn_spec, visible_frames

QUESTIONS = ("colour", "shape", "count", "direction", "visual_quality", "physical_consistency")


def pooled_slices(model, processor, videos: Sequence) -> torch.Tensor:
    """[N, slices * width]: `cot_rm.model.tower.slice_means` of videos sampled with one frame count."""
    batch = encode(
        processor, ["<|vision_start|><|video_pad|><|vision_end|>"] * len(videos), videos=list(videos)
    )
    return slice_means(model, batch["pixel_values_videos"], batch["video_grid_thw"])


@torch.no_grad()
def pooled_features(model, processor, videos: Sequence) -> torch.Tensor:
    """`pooled_slices` one video at a time (any sizes), without gradients."""
    return torch.cat([pooled_slices(model, processor, [v]) for v in videos])


def labels(meta: dict, shown: Sequence[int]) -> dict[str, object]:
    """The answer to each question for one toy video, as shown at frames `shown`."""
    spec = drawn_spec(meta)
    seen = {d["dimension"] for d in meta["defects"] if visible_frames(d, shown)}
    return {
        **{k: spec[k] for k in ("colour", "shape", "count", "direction")},
        "visual_quality": "visual_quality" in seen,
        "physical_consistency": "physical_consistency" in seen,
    }


def linear_probe(x_train, y_train, x_test, y_test, steps: int = 300, l2: float = 1e-3) -> float:
    """Test accuracy of a multinomial logistic regression (standardised inputs, L-BFGS, L2)."""
    classes = sorted(set(y_train) | set(y_test), key=str)
    index = {c: i for i, c in enumerate(classes)}
    yt = torch.tensor([index[y] for y in y_train])
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    xt, xe = (x_train - mean) / std, (x_test - mean) / std
    w = torch.zeros(xt.shape[1], len(classes), requires_grad=True)
    b = torch.zeros(len(classes), requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xt @ w + b, yt) + l2 * (w**2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    pred = (xe @ w + b).argmax(1)
    return float((pred == torch.tensor([index[y] for y in y_test])).float().mean())


def probe_accuracy(base: str | Path, toy: str | Path, sampling, train_share: float = 0.7) -> dict:
    """Probe accuracy per question on the toy world in `toy` (its pointwise.jsonl), and chance (the
    majority class of the test part)."""
    model = AutoModelForImageTextToText.from_pretrained(str(base), dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(base)
    rows = [json.loads(line) for line in (Path(toy) / "pointwise.jsonl").open() if line.strip()]
    videos = [read_video(Path(toy) / r["video"], sampling) for r in rows]
    x = pooled_features(model, processor, videos)
    answers = [labels(r["meta"], v.indices) for r, v in zip(rows, videos)]
    cut = int(len(rows) * train_share)
    result, chance = {}, {}
    for q in QUESTIONS:
        y = [a[q] for a in answers]
        result[q] = round(linear_probe(x[:cut], y[:cut], x[cut:], y[cut:]), 3)
        chance[q] = round(Counter(y[cut:]).most_common(1)[0][1] / max(len(y) - cut, 1), 3)
    return {**result, "chance": chance, "videos": len(rows), "train": cut}
