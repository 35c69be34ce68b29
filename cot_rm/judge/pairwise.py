"""The pair judgment: two videos, each judged as `cot-rm judge` judges one, and per dimension P(A better),
P(tie) and P(B better) from the head's pairwise model (`cot_rm.model.pairwise`).

`cot-rm judge --pair`, `POST /v1/judge/pair` and `RewardModel.compare` all build their answer with
`pair_judgment`, so the same two Judgments give the same record on every path (docs/formats.md, section 6).
"""

from __future__ import annotations

from collections.abc import Sequence

from cot_rm import protocol
from cot_rm.judge.sampling import Draws, judge_items
from cot_rm.model import pairwise


def pair_judgment(a: dict, b: dict, cfg) -> dict:
    """The pair record of Judgments `a` and `b` under the checkpoint config `cfg` (its dimensions,
    calibration and `tie_theta`)."""
    return {
        "probs": pairwise.probabilities(a["scores"], b["scores"], cfg),
        "tie_theta": cfg.tie_theta,
        "a": a,
        "b": b,
        "model": a["model"],
        "protocol_version": protocol.PROTOCOL_VERSION,
    }


def judge_pair(judge, items: Sequence[tuple[str, object, str]], draws: Draws | None = None) -> dict:
    """Judge the two (id, video, prompt) items together (one batch, greedy or `draws`) and pair them."""
    if len(items) != 2:
        raise ValueError(f"a pair is two videos, A and B; got {len(items)}")
    a, b = judge_items(judge, items, draws)
    return pair_judgment(a, b, judge.model.config)
