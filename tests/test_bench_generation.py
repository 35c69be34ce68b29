"""bench/generation.py on the tiny model, CPU, tiny sizes: HF `generate` (batch 1, batched) and offline
vLLM (.venv-vllm) on the same protocol requests, each producing exactly M new tokens, with throughput
and ratios reported. Runs the script as a subprocess, as a user would; never appends to RESULTS.md.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VLLM_PYTHON = Path(os.environ.get("COT_RM_VLLM_PYTHON") or ROOT / ".venv-vllm" / "bin" / "python")
N, M = 2, 8

pytestmark = pytest.mark.skipif(
    not VLLM_PYTHON.exists(),
    reason=f"no vLLM interpreter at {VLLM_PYTHON}: run `make setup-vllm` (`make test` builds it)",
)


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> tuple[dict, str, Path]:
    tmp = tmp_path_factory.mktemp("generation")
    md, out = tmp / "RESULTS.md", tmp / "generation.json"
    md.write_text("# results\n")
    cmd = [sys.executable, "bench/generation.py", "--n", str(N), "--max-new-tokens", str(M),
           "--repeats", "1", "--videos", "2", "--max-frames", "4", "--max-pixels", str(112 * 112),
           "--vllm-python", str(VLLM_PYTHON), "--work", str(tmp / "work"), "--out", str(out),
           "--results-md", str(md)]  # fmt: skip
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, (run.stdout[-3000:], run.stderr[-3000:])
    return json.loads(out.read_text()), run.stdout, md


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
