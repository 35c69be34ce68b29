"""bench/grpo_step.py on the tiny architecture (random init, synthetic videos), CPU, tiny sizes: the same
code path a GPU run of the 7B shape takes. Both settings run the same groups, sample the same rollouts,
and the reuse setting runs the tower once per group; the phases add up to the step. Runs the script as a
subprocess, as a user would; never appends to bench/RESULTS.md."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from bench_run import run_bench

GROUPS, WARMUP, G = 3, 1, 2


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> tuple[dict, str, Path]:
    tmp = tmp_path_factory.mktemp("grpo_step")
    return run_bench("grpo_step.py", tmp, "--random-init", "tiny", "--frames", 4, "--resolution", 56,
                     "--groups", GROUPS, "--warmup", WARMUP, "--threads", 1, "--set", f"train.num_generations={G}",
                     "--set", "train.max_completion_length=48", "--set", "rollout.max_turn_tokens=16",
                     "--work", tmp / "work")  # fmt: skip


def test_both_settings_did_the_same_work(bench):
    res, _, _ = bench
    steps = res["steps"]
    assert set(steps) == {"reuse", "recompute"}
    for a, b in zip(steps["reuse"], steps["recompute"], strict=True):
        assert a["rollouts"] == b["rollouts"] == G
        assert a["completions"] == b["completions"]  # same seed, same weights (lr 0): the same rollouts
        assert a["completion_tokens"] == b["completion_tokens"] and a["logps_calls"] == b["logps_calls"] >= 1
    s = res["summary"]
    assert (
        s["identical_rollouts"] == s["rollouts"] == G * (GROUPS - WARMUP)
        and s["timed_groups"] == GROUPS - WARMUP
    )


def test_reuse_runs_the_tower_once_per_group(bench):
    res, _, _ = bench
    for a, b in zip(res["steps"]["reuse"], res["steps"]["recompute"], strict=True):
        assert a["tower_calls"] == 1 and a["cache_misses"] == 1 and a["cache_hits"] >= 2 * G - 1
        # recompute: every generation round's prefill and the log-prob pass, each on all G copies
        assert b["tower_calls"] >= 2 and b["tower_patches"] >= 2 * G * a["tower_patches"]
        assert "cache_hits" not in b


def test_phases_add_up_and_ratios(bench):
    res, stdout, md = bench
    for rows in res["steps"].values():
        for r in rows:
            parts = r["generation"] + r["logps"] + r["update"] + r["other"]
            assert (
                math.isclose(parts, r["total"], rel_tol=1e-6) and min(parts, r["generation"], r["logps"]) > 0
            )
    s = res["summary"]
    assert set(s["ratios_recompute_over_reuse"]) == set(s["ratios_paired_median"]) == {"tower",
        "generation", "logps", "update", "other", "total"}  # fmt: skip
    assert all(v > 0 and math.isfinite(v) for v in s["ratios_recompute_over_reuse"].values())
    text = md.read_text()
    assert (
        text.startswith("# results\n")
        and "## grpo_step — " in text
        and "| recompute / reuse (sums) |" in text
    )
    assert "--random-init tiny" in text and "faster per GRPO step" in stdout
