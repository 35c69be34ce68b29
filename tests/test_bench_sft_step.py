"""bench/sft_step.py on the tiny model, CPU: the same code path the 7B GPU run takes, small sizes.

The script runs as a subprocess from the repo root (as on the GPU machine, where the package is not
installed); its JSON must hold every configuration with positive tokens/s, token counts equal to the
real tokens of the collated batches, and the frozen tower's features served from the cache after the
first step.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--size", "tiny", "--frames", "4", "--resolution", "224", "--prompt-tokens", "0",
         "--rationale-tokens", "64", "--warmup", "1", "--steps", "2", "--grad-accum", "2",
         "--set", "train.dataloader_num_workers=0"]  # fmt: skip


def _bench(tmp_path: Path, *extra: str) -> dict:
    out = tmp_path / "sft_step.json"
    cmd = [
        sys.executable,
        "bench/sft_step.py",
        *SMALL,
        *extra,
        "--work",
        str(tmp_path / "work"),
        "--out",
        str(out),
        "--results-md",
        str(tmp_path / "RESULTS.md"),
    ]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, (run.stdout[-3000:], run.stderr[-3000:])
    assert "| reuse |" in run.stdout  # the markdown table
    md = (tmp_path / "RESULTS.md").read_text()  # the section a user's run appends to bench/RESULTS.md
    assert (
        md.startswith("\n## sft_step — ")
        and "| reuse |" in md
        and "- Command: `python3 bench/sft_step.py" in md
    )
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    return _bench(tmp_path_factory.mktemp("sft_step"))


def test_every_configuration_reports_throughput_and_losses(results):
    assert set(results["configs"]) == {"reuse", "no_reuse", "naive"}
    for name, r in results["configs"].items():
        assert "error" not in r, (name, r["error"])
        assert r["model_freed"], name  # freed before the next configuration is built
        assert r["tokens_per_s"] > 0 and r["timed_steps"] == 2 and len(r["steps"]) == 3, name
        assert math.isclose(r["tokens_per_s"], r["timed_tokens"] / r["timed_seconds"])
        # both losses of the 7B config ran: the critique's LM loss and the head's regression loss
        for key in ("lm_loss", "head_point_loss"):
            assert r["losses"][key] and all(math.isfinite(v) and v > 0 for v in r["losses"][key]), (name, key)
    assert results["ratios"]["reuse_vs_naive"] > 0


def test_token_counts_are_the_real_tokens_of_the_batches(results):
    sample = results["sample"]
    assert sample["video_tokens"] == 2 * 8 * 8  # 4 frames of 224x224: 2 x 16 x 16 patches / 4
    assert sample["rationale_tokens"] >= 64
    # what the trainer's own collator built (attention_mask sums, vision tokens included) matches the
    # counts of the rendered traces: one example per micro-batch, no padding
    for r in results["configs"].values():
        for step in r["steps"]:
            assert step["micro_batches"] == 2 and step["rows"] == 2
            assert step["tokens"] == step["padded_tokens"] == 2 * sample["tokens_per_sample"]
        assert r["timed_tokens"] == 2 * 2 * sample["tokens_per_sample"]


def test_reuse_serves_the_tower_from_the_cache_after_the_first_step(results):
    reuse = results["configs"]["reuse"]
    assert reuse["freeze_vision"] and reuse["reuse_vision_features"]
    first, *later = reuse["steps"]
    assert first["cache_misses"] >= 1  # the one video computed once
    for step in later:
        assert step["cache_misses"] == 0 and step["cache_hits"] == step["micro_batches"]
        assert step["cache_tower_calls"] == 0
    assert reuse["hit_steps"] == 2 and reuse["vision_cache"]["hits"] >= 4
    assert "vision_cache" not in results["configs"]["no_reuse"]
    assert results["configs"]["reuse"]["params_trainable"] < results["configs"]["reuse"]["params_total"]


def test_naive_trains_and_checkpoints_the_whole_model(results):
    naive = results["configs"]["naive"]
    assert not naive["freeze_vision"] and not naive["reuse_vision_features"]
    assert naive["vision_checkpointed"] and naive["checkpointing"] == "whole model"
    assert naive["params_trainable"] == naive["params_total"]
    # the project's own path checkpoints the language model only
    assert not any(results["configs"][n]["vision_checkpointed"] for n in ("reuse", "no_reuse"))


def test_pairs_put_both_videos_in_one_step_with_the_pair_loss(tmp_path):
    r = _bench(tmp_path, "--pair", "--configs", "reuse", "--warmup", "0", "--steps", "1")["configs"]["reuse"]
    assert "error" not in r, r["error"]
    assert all(step["rows"] == 2 * step["micro_batches"] for step in r["steps"])
    assert any(v > 0 for v in r["losses"]["head_pair_loss"])
    assert r["vision_cache"]["misses"] >= 2  # two distinct videos
