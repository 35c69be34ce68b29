"""bench/generation.py on the tiny model, CPU, tiny sizes: HF `generate` (batch 1, batched) and offline
vLLM (.venv-vllm) on the same protocol requests, each producing exactly M new tokens, with throughput
and ratios reported. Runs the script as a subprocess, as a user would; never appends to RESULTS.md.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from bench_run import VLLM_PYTHON, needs_vllm, run_bench

N, M = 2, 8

pytestmark = needs_vllm


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> tuple[dict, str, Path]:
    tmp = tmp_path_factory.mktemp("generation")
    return run_bench("generation.py", tmp, "--n", N, "--max-new-tokens", M, "--repeats", 1, "--videos", 2,
                     "--max-frames", 4, "--max-pixels", 112 * 112, "--vllm-python", VLLM_PYTHON,
                     "--work", tmp / "work")  # fmt: skip


def test_both_sides_generate_exactly_m_tokens_per_request(bench):
    res, _, _ = bench
    modes = res["summary"]["modes"]
    assert set(modes) == {"hf_batch1", "hf_batched", "vllm"}
    for name, r in modes.items():
        assert r["new_tokens"] == [M] * N, name
        assert len(r["token_ids"]) == N and all(len(t) == M for t in r["token_ids"]), name
        assert len(r["seconds"]) == 1 and r["median_s"] > 0, name
        assert r["tokens_per_s"] > 0 and r["requests_per_s"] > 0, name
        assert math.isclose(r["tokens_per_s"], N * M / r["median_s"])
    # the same inputs on both sides: vLLM counted the same prompt tokens (video tokens included) as HF
    assert res["summary"]["agreement"]["prompt_tokens_match"]
    assert modes["vllm"]["prompt_tokens"] == modes["hf_batched"]["prompt_tokens"]
    assert len(set(modes["hf_batched"]["prompt_tokens"])) == 2  # two clips of different sizes: real padding


def test_ratios_and_the_markdown_section(bench):
    res, stdout, md = bench
    ratios = res["summary"]["ratios"]
    assert set(ratios) == {"vllm_vs_hf_batched", "vllm_vs_hf_batch1", "hf_batched_vs_hf_batch1"}
    assert all(v > 0 and math.isfinite(v) for v in ratios.values())
    assert set(res["summary"]["ratios_best"]) == set(ratios)
    tps = {k: v["tokens_per_s"] for k, v in res["summary"]["modes"].items()}
    assert math.isclose(ratios["vllm_vs_hf_batched"], tps["vllm"] / tps["hf_batched"])
    text = md.read_text()
    assert text.startswith("# results\n") and "## generation — " in text and "| vllm |" in text
    assert "vLLM vs HF batched" in stdout and "--max-new-tokens 8" in text  # the exact command
