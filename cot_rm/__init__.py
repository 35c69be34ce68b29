"""cot-rm: trainer, judge and server for reasoning (think-then-score) video reward models.

`from cot_rm import RewardModel` gives the Python reward API (`cot_rm/api.py`).
"""

__version__ = "0.1.0"
__all__ = ["RewardModel", "__version__"]


def __getattr__(name: str):
    if name == "RewardModel":  # on first use, so that `cot-rm --help` does not load torch
        from cot_rm.api import RewardModel  # lazy: every command imports this package

        return RewardModel
    raise AttributeError(f"module 'cot_rm' has no attribute {name!r}")
