"""`RewardModel`: a cot-rm checkpoint as a reward function inside your own program.

    from cot_rm import RewardModel

    rm = RewardModel.from_pretrained("runs/demo/grpo", device="cuda")
    out = rm.score(frames, prompts, fps=8)   # frames: uint8 [B, T, H, W, 3], or a list of videos
    out.rewards          # [B, D] float32: each video's `scores` (docs/formats.md, section 6)
    out["overall"]       # [B]
    out.std              # [B, D]: the head's std (`scores_std`) when it predicts one, else None
    out.judgments        # with judgments=True: each video's Judgment JSON, as `cot-rm judge` prints it
    rm.score(frames, prompts, fps=8, samples=4, temperature=0.7, seed=0)   # the mean of 4 seeded draws
    pair = rm.compare("a.mp4", "b.mp4", "a red circle moving left")      # as `cot-rm judge --pair` prints it
    pair["probs"]["overall"]   # {"A": P(A better), "tie": P(tie), "B": P(B better)}

A video is a file path, or frames held in memory: a uint8 NumPy array or torch tensor [T, H, W, 3]
(RGB, upright, any device) with its frames per second. Each is judged exactly as `cot-rm judge` judges
a file (the same `Judge`: the checkpoint's frame sampling and tool budgets, the select_frames loop,
greedy decoding, then the head's pass), so the scores equal the command's; frames in memory are
sampled and resized the way a file's are (`cot_rm.media.clip`), so a file's frames decoded at full size
score as the file does. Everything runs in this process (no subprocess, no file written); the returned
tensors live on the CPU, outside any autograd graph.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cot_rm.judge.local import Judge
from cot_rm.judge.pairwise import judge_pair
from cot_rm.judge.sampling import Draws, judge_items
from cot_rm.media.clip import Clip, as_clip
from cot_rm.media.frame_cache import FrameCache
from cot_rm.model.checkpoint import load_checkpoint

Video = str | os.PathLike | np.ndarray | torch.Tensor | Clip


@dataclass
class Scores:
    """What `RewardModel.score` returns for B videos and the checkpoint's D dimensions.

    `rewards` [B, D]: the Judgment's `scores` (the head through the checkpoint's calibration; NaN for a
    file that could not be read). `std` [B, D]: `scores_std`, or None for a head without one.
    `answer_scores` [B, D]: the generated answer's scores (NaN where it did not parse). `answer_probs`
    [B, D, K] over the scale's K integer scores (`scale`) and their expectation `answer_expected` [B, D]
    (NaN where not read). `judgments`: the Judgment JSON of each video when asked for, else None.
    """

    dimensions: list[str]
    rewards: torch.Tensor
    std: torch.Tensor | None
    answer_scores: torch.Tensor
    answer_probs: torch.Tensor
    answer_expected: torch.Tensor
    scale: list[int]
    judgments: list[dict] | None = None

    def __getitem__(self, dim: str) -> torch.Tensor:
        """One dimension's rewards [B]."""
        if dim not in self.dimensions:
            raise KeyError(f"{dim!r} is not a dimension of this checkpoint; it scores {self.dimensions}")
        return self.rewards[:, self.dimensions.index(dim)]

    def as_dict(self) -> dict[str, torch.Tensor]:
        """{dimension: rewards [B]}."""
        return {d: self[d] for d in self.dimensions}

    @classmethod
    def from_judgments(
        cls, judgments: list[dict], dims: list[str], scale: list[int], uncertain: bool, keep: bool
    ) -> Scores:
        """From the Judgment JSON of each video; `uncertain`: the head predicts a std."""

        def table(key: str) -> torch.Tensor:
            return torch.tensor([[_num((j.get(key) or {}).get(d)) for d in dims] for j in judgments])

        probs = [[_probs((j.get("answer_probs") or {}).get(d), scale) for d in dims] for j in judgments]
        expected = [[_num(((j.get("answer_probs") or {}).get(d) or {}).get("expected")) for d in dims]
                    for j in judgments]  # fmt: skip
        return cls(
            dimensions=list(dims),
            rewards=table("scores"),
            std=table("scores_std") if uncertain else None,
            answer_scores=table("answer_scores"),
            answer_probs=torch.tensor(probs).reshape(len(judgments), len(dims), len(scale)),
            answer_expected=torch.tensor(expected).reshape(len(judgments), len(dims)),
            scale=list(scale),
            judgments=judgments if keep else None,
        )


def _num(x) -> float:
    return math.nan if x is None else float(x)


def _probs(entry: dict | None, scale: list[int]) -> list[float]:
    return [_num((entry or {}).get("probs", {}).get(str(k))) for k in scale]


class RewardModel:
    """A cot-rm checkpoint that scores videos, judging them as `cot-rm judge` does."""

    def __init__(self, model, *, name: str | None = None, max_new_tokens: int = 512, batch_size: int = 8,
                 cache_dir: str | os.PathLike | None = None):  # fmt: skip
        """`model`: a loaded `ThinkThenScore` in eval mode. `cache_dir`: a frame cache for video files
        (none by default: nothing is written); `max_new_tokens` per assistant turn and `batch_size`
        (videos judged together) as for `cot-rm judge`."""
        self.model = model
        cache = FrameCache(cache_dir) if cache_dir is not None else None
        self.judge = Judge.from_model(model, max_new_tokens=max_new_tokens, batch_size=batch_size, cache=cache,
                                      name=name)  # fmt: skip

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, device: str = "auto", dtype: str = "auto", **kwargs
    ) -> RewardModel:
        """Load a checkpoint folder onto `device` ("auto": CUDA when there is a GPU, else the CPU;
        "cpu", "cuda", "cuda:1", ...) in `dtype` ("auto": bfloat16 on CUDA, float32 on the CPU;
        "float32", "bfloat16", "float16"). A folder that is not a checkpoint raises
        `cot_rm.model.checkpoint.CheckpointError` (a ValueError) saying why. `kwargs` as for `__init__`."""
        model, _, _ = load_checkpoint(path, device, dtype)
        return cls(model, name=str(Path(path).resolve()), **kwargs)

    @property
    def dimensions(self) -> list[str]:
        return list(self.model.config.dimensions)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def score(
        self,
        videos: Video | Sequence[Video],
        prompts: str | Sequence[str],
        *,
        fps: float | Sequence[float | None] | None = None,
        judgments: bool = False,
        samples: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int | None = None,
    ) -> Scores:
        """Judge each video against its prompt and return its rewards (see `Scores`).

        `videos`: a list (one entry per video: a file path, or frames [T, H, W, 3] uint8 as a NumPy array
        or torch tensor), a batch of frames [B, T, H, W, 3], or one video. `prompts`: one per video, or
        one string for all. `fps`: the frame rate of videos given as frames, one number for all or one
        per video (ignored for files, which know theirs). `judgments=True` adds each Judgment JSON
        (critique, answer, tool calls) to the result. Greedy unless `samples` (K >= 1): then each reward
        is the mean of K draws at `temperature` (default 0.7) and `top_p` (default 1), draw s seeded with
        `seed + s` (default seed 0), as `cot-rm judge --samples K` does (`cot_rm.judge.sampling`).
        """
        items = _items(videos, prompts, fps)
        results = judge_items(self.judge, items, Draws.of(samples, temperature, top_p, seed))
        scale = sorted(self.judge.score_tokens or {})
        uncertain = bool(self.model.config.uncertainty)
        return Scores.from_judgments(results, self.dimensions, scale, uncertain=uncertain, keep=judgments)

    @torch.no_grad()
    def compare(
        self,
        video_a: Video,
        video_b: Video,
        prompt: str,
        *,
        prompt_b: str | None = None,
        fps: float | Sequence[float | None] | None = None,
        samples: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int | None = None,
    ) -> dict:
        """Judge two videos and return the pair judgment `cot-rm judge --pair` prints: `probs` (per
        dimension P(A better), P(tie), P(B better) from the head's pairwise model, `cot_rm.model.pairwise`),
        `tie_theta`, and both Judgments (`a`, `b`). `prompt_b`: B's prompt when it differs from A's; `fps`
        and the sampling arguments as for `score`."""
        items = _items([video_a, video_b], [prompt, prompt if prompt_b is None else prompt_b], fps)
        return judge_pair(self.judge, items, Draws.of(samples, temperature, top_p, seed))


# ------------------------------------------------------------------------------------------ inputs


def _as_list(videos) -> list:
    """One entry per video: a batch [B, T, H, W, 3] splits along B; a lone video becomes a list of one."""
    if isinstance(videos, str | os.PathLike | Clip):
        return [videos]
    if isinstance(videos, np.ndarray | torch.Tensor):
        if videos.ndim == 5:
            return list(videos)
        return [videos]
    if isinstance(videos, Sequence):
        return list(videos)
    raise ValueError(
        "videos must be a list of videos (file paths, or frames [T, H, W, 3]) or a batch of frames "
        f"[B, T, H, W, 3], got {type(videos).__name__}"
    )


def _per_video(value, n: int, what: str, example: str) -> list:
    if value is None or isinstance(value, str | int | float):
        return [value] * n
    value = list(value)
    if len(value) != n:
        raise ValueError(f"{n} videos but {len(value)} {what}: give one per video, or {example} for all")
    return value


def _items(videos, prompts, fps) -> list[tuple[str, object, str]]:
    """(id, source, prompt) per video, checked; the ids are `cot-rm judge`'s (the path as given, `#2`
    on a repeat) for files and `video I` for frames."""
    videos = _as_list(videos)
    if not videos:
        raise ValueError("no videos given")
    prompts = _per_video(prompts, len(videos), "prompts", "one string")
    rates = _per_video(fps, len(videos), "fps values", "one number")
    items, seen = [], {}
    for i, (video, prompt, rate) in enumerate(zip(videos, prompts, rates, strict=True)):
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(
                f"prompt {i} is empty or not a string; every video needs the prompt it was made from"
            )
        if isinstance(video, str | os.PathLike):
            source = label = os.fspath(video)
        else:
            label = f"video {i}"
            source = video if isinstance(video, Clip) else as_clip(video, rate, name=label)
        seen[label] = seen.get(label, 0) + 1
        items.append((label if seen[label] == 1 else f"{label}#{seen[label]}", source, prompt))
    return items
