"""Choices both training stages' configs accept (torch-free, like the configs)."""

from __future__ import annotations

DTYPES = ("float32", "bfloat16")


PAIR_LOSSES = ("bt_ties", "bt_margin")


POINT_LOSSES = ("mse", "gaussian_nll")
