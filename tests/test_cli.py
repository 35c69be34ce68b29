"""The `cot-rm` entry point, the demo and the video-cache benchmark, run as a user runs them."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DESIGN_COMMANDS = ["video-info", "toyworld", "synthesize", "sft", "grpo", "eval", "judge", "serve", "demo"]


def _run(*args, cwd=ROOT):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_help_lists_every_subcommand():
    out = _run("-m", "cot_rm.cli", "--help")
    assert out.returncode == 0
    for name in DESIGN_COMMANDS:
        assert name in out.stdout
    sub = _run("-m", "cot_rm.cli", "video-info", "--help")
    assert sub.returncode == 0 and "--max-pixels" in sub.stdout and "--no-cache" in sub.stdout


def test_unbuilt_command_says_so_instead_of_pretending():
    from cot_rm.cli import COMMANDS, _load

    missing = [name for name, (module, _) in COMMANDS.items() if _load(module) is None]
    for name in missing:
        out = _run("-m", "cot_rm.cli", name)
        assert out.returncode == 2
        assert "not available yet" in out.stderr and out.stdout == ""


def test_demo_runs_toy_world_synthesis_sft_and_grpo(tmp_path):
    demo = tmp_path / "demo"
    out = _run(
        "-m", "cot_rm.cli", "demo", "--out", str(demo), "--n", "40", "--sft-steps", "2", "--grpo-steps", "1"
    )
    assert out.returncode == 0, out.stderr
    assert (demo / "toy" / "pointwise.jsonl").exists()
    summary = json.loads((demo / "sft_data.summary.json").read_text())
    assert summary["accepted"] > 30 and summary["with_tool_calls"] > summary["accepted"] / 2
    assert (demo / "sft" / "cot_rm.json").exists() and (demo / "sft" / "head.safetensors").exists()
    report = json.loads((demo / "sft" / "report.json").read_text())
    assert {"lm_loss_first", "parse_rate", "head_pairwise_accuracy"} <= set(report)
    state = json.loads((demo / "grpo" / "trainer_state.json").read_text())
    assert any("reward" in h for h in state["log_history"]) and (demo / "grpo" / "cot_rm.json").exists()
    assert "Not in this version yet" in out.stdout and "serve" in out.stdout


def test_video_cache_bench_appends_a_measured_section(tmp_path):
    results = tmp_path / "RESULTS.md"
    out = _run(str(ROOT / "bench" / "video_cache.py"), "--n", "4", "--repeats", "1", "--out", str(results))
    assert out.returncode == 0, out.stderr
    text = results.read_text()
    assert "## video_cache" in text and "x faster than decoding on the fly" in text and "cores" in text
