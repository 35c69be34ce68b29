"""bench/sft_packing.py on the tiny model and a small toy world, CPU, tiny sizes: every mode steps through the
same batches, sees the same real tokens and computes the same losses; ratios and the markdown section are
written. Runs the script as a subprocess, as a user would; never appends to bench/RESULTS.md."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from bench_run import run_bench

MODES = {"padded", "padded_nomask", "packed", "packed_varlen"}
BATCHES, REPEATS = 2, 2


@pytest.fixture(scope="module")
def bench(tmp_path_factory, tiny_rm) -> tuple[dict, str, Path]:
    from cot_rm.schema import read_jsonl
    from data_synthesis.pipeline import SynthConfig, synthesize
    from data_synthesis.teachers.oracle import OracleTeacher
    from data_synthesis.toyworld.world import ToyConfig, build

    root = tmp_path_factory.mktemp("sft_packing")
    build(root / "toy", ToyConfig(n=12, seed=0), progress=False)
    recs = [r for r in read_jsonl(root / "toy" / "pointwise.jsonl") if r.split == "train"]
    synthesize(recs, OracleTeacher(), root / "sft.jsonl", SynthConfig(), progress=False)
    return run_bench("sft_packing.py", root, "--model", tiny_rm, "--data", root / "sft.jsonl",
                     "--pairs", root / "toy" / "pairs.jsonl", "--batches", BATCHES, "--batch-size", 2,
                     "--repeats", REPEATS, "--threads", 1)  # fmt: skip


def test_every_mode_did_the_same_work(bench):
    res, _, _ = bench
    s = res["summary"]
    assert set(s["modes"]) == MODES and len(res["batches"]) == BATCHES
    real = sum(b["real_tokens"] for b in res["batches"])
    assert s["real_tokens"] == real and s["padded_tokens"] >= real
    for name, m in s["modes"].items():
        assert m["steps_per_pass"] == BATCHES and len(m["pass_seconds"]) == REPEATS, name
        assert m["tokens_seen_per_pass"] == [real] * REPEATS, name  # packed rows hold exactly the real tokens
        assert m["real_tokens_per_pass"] == real and math.isclose(m["tokens_per_s"], real / m["median_s"])
    # lr 0: the weights never change, so every mode's LM and head losses on a batch equal the padded step's
    assert s["max_loss_diff"] < 1e-4
    lengths = [n for b in res["batches"] for n in b["lengths"]]
    assert len(set(lengths)) > 1 and s["pad_fraction"] > 0  # the batches really were padded


def test_ratios_and_the_markdown_section(bench):
    res, stdout, md = bench
    s = res["summary"]
    keys = {f"{m}_vs_padded" for m in MODES - {"padded"}}
    assert set(s["ratios"]) == set(s["ratios_best"]) == set(s["ratios_paired_median"]) == keys
    assert all(v > 0 and math.isfinite(v) for r in ("ratios", "ratios_paired_median") for v in s[r].values())
    tps = {k: v["tokens_per_s"] for k, v in s["modes"].items()}
    assert math.isclose(s["ratios"]["packed_vs_padded"], tps["packed"] / tps["padded"])
    text = md.read_text()
    assert text.startswith("# results\n") and "## sft_packing — " in text and "| packed_varlen |" in text
    assert "--batches 2" in text and "packed_varlen vs padded" in stdout  # the exact command, the ratios
