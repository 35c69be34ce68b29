"""The consistency filter: does a teacher's answer agree with the human label?

The default follows VideoScore2: a rationale is dropped when any dimension is off by 2 or more;
rationales off by exactly `drop_at` (a near miss) may be sent back for a bounded rewrite first, and
anything off by `rewrite_below` or more is dropped outright.
"""

from __future__ import annotations

from dataclasses import dataclass

ACCEPT, NEAR_MISS, REJECT = "accept", "near_miss", "reject"


@dataclass(frozen=True)
class ConsistencyRule:
    drop_at: float = 2.0  # any |teacher - label| >= drop_at fails the filter
    rewrite_below: float = 3.0  # failures with every |diff| < rewrite_below are near misses (rewrite them)
    dims: tuple[str, ...] | None = None  # dimensions compared (None: every dimension of the label)

    def __post_init__(self):
        if not 0 < self.drop_at <= self.rewrite_below:
            raise ValueError(f"need 0 < drop_at ({self.drop_at}) <= rewrite_below ({self.rewrite_below})")


@dataclass(frozen=True)
class Verdict:
    status: str  # ACCEPT | NEAR_MISS | REJECT
    max_diff: float
    off: dict[str, float]  # dimension -> teacher - label, for every dimension that failed


def check(
    answer: dict[str, float], label: dict[str, float], rule: ConsistencyRule = ConsistencyRule()
) -> Verdict:
    """Compare a parsed answer with the label on the rule's dimensions (a missing one counts as failed)."""
    dims = rule.dims if rule.dims is not None else tuple(label)
    diffs = {d: (answer[d] - label[d]) if d in answer else float("inf") for d in dims if d in label}
    off = {d: x for d, x in diffs.items() if abs(x) >= rule.drop_at}
    worst = max((abs(x) for x in diffs.values()), default=0.0)
    if not off:
        return Verdict(ACCEPT, worst, {})
    return Verdict(NEAR_MISS if worst < rule.rewrite_below else REJECT, worst, off)
