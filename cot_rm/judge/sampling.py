"""Sampled judging, one rule for every path: `cot-rm judge --samples`, `cot-rm eval --samples`, the
`samples`/`temperature`/`top_p`/`seed` fields of `/v1/judge` and `/v1/judge/pair`, and `RewardModel`.

A request for K draws is a `Draws`; without one, judging is greedy. Draw s of a call is seeded with
`seed + s` (`Judge.judge_samples`), so the same videos, prompts and settings give the same draws on every
path that runs the local judge, and `Judge.judge_samples`' summary (`summarize_samples`: the mean of the
draws' scores and their spread) is the Judgment each path returns.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_TEMPERATURE = 0.7
MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class Draws:
    """K >= 1 sampled judgments per video at `temperature` > 0 and nucleus `top_p` in (0, 1], draw s
    seeded with `seed + s`. Bad values raise ValueError naming the field and what to give instead."""

    k: int
    temperature: float = DEFAULT_TEMPERATURE
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if not _is_int(self.k) or self.k < 1:
            raise ValueError(f"samples must be an integer >= 1 (the draws per video), got {self.k!r}")
        if not _is_number(self.temperature) or not 0 < self.temperature < math.inf:
            raise ValueError(
                f"temperature must be a number > 0 when sampling (e.g. 0.7), got {self.temperature!r}"
            )
        if not _is_number(self.top_p) or not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be a number in (0, 1] (1: no nucleus cut), got {self.top_p!r}")
        if not _is_int(self.seed) or not 0 <= self.seed <= MAX_SEED - self.k:
            raise ValueError(f"seed must be an integer from 0 to {MAX_SEED - self.k}, got {self.seed!r}")

    @classmethod
    def of(cls, samples=None, temperature=None, top_p=None, seed=None) -> Draws | None:
        """The request's draws from optional fields (None: not given), or None for greedy judging;
        temperature, top_p or seed without samples is refused rather than ignored."""
        if samples is None:
            extra = {"temperature": temperature, "top_p": top_p, "seed": seed}
            if given := [name for name, value in extra.items() if value is not None]:
                raise ValueError(f"{', '.join(given)}: for sampled judging only; add samples (K >= 1 draws), or "
                                 f"leave {'them' if len(given) > 1 else 'it'} out for one greedy judgment")  # fmt: skip
            return None
        return cls(samples, DEFAULT_TEMPERATURE if temperature is None else temperature,
                   1.0 if top_p is None else top_p, 0 if seed is None else seed)  # fmt: skip


def judge_items(judge, items: Sequence[tuple[str, object, str]], draws: Draws | None = None) -> list[dict]:
    """One Judgment per (id, video, prompt), in order: greedy, or the summary of `draws`."""
    if draws is None:
        return judge.judge(items)
    return judge.with_sampling(draws.temperature, draws.top_p).judge_samples(items, draws.k, draws.seed)


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)
