"""recipes/*.sh: they parse, name real configs and subcommands, and tiny_cpu.sh runs end to end and resumes."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from cot_rm.cli import COMMANDS, _load

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.sh"))
# cot-rm subcommands a recipe may call while they are unbuilt, provided it guards them (`available X`).
MAY_BE_UNBUILT = {"grpo", "serve"}


def _code(path: Path) -> str:
    """The recipe without its full-line comments (future config paths are named only in comments)."""
    return "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#"))


def test_recipes_exist():
    names = {p.name for p in RECIPES}
    assert {"tiny_cpu.sh", "qwen2_5_vl_7b.sh", "qwen3_vl_8b.sh"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_bash_syntax(path):
    subprocess.run(["bash", "-n", str(path)], check=True)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_config_paths_exist(path):
    for cfg in re.findall(r"configs/[\w./-]+\.yaml", _code(path)):
        assert (ROOT / cfg).is_file(), f"{path.name} names {cfg}, which does not exist"


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_subcommands_are_real(path):
    code = _code(path)
    # `$COT_RM sft`, `cot-rm eval`, `-m cot_rm.cli sft`
    called = set(re.findall(r'(?:\$COT_RM"?|\bcot-rm|-m cot_rm\.cli)\s+([a-z][\w-]*)', code))
    for cmd in called:
        assert cmd in COMMANDS, f"{path.name} calls cot-rm {cmd}, which is not a subcommand"
        if _load(COMMANDS[cmd][0]) is None:
            assert cmd in MAY_BE_UNBUILT, f"{path.name} calls unbuilt cot-rm {cmd}"
            guarded = f"available {cmd}" in code or f"{cmd}_ready " in code  # lib.sh's grpo_ready
            assert guarded, f"{path.name} calls cot-rm {cmd} without `available {cmd}`"


def _run_tiny(out: Path) -> str:
    # Tiny sizes: 24 videos, 2 SFT steps, 2 pairs in the SFT report, 2 eval pairs, short turns.
    env = dict(os.environ, OUT=str(out), N="24", EVAL_LIMIT="2", MAX_NEW_TOKENS="32")
    env["SFT_ARGS"] = "train.max_steps=2 data.eval_limit=2"
    # RFT (optional in the recipe) on: 4 videos judged twice with short turns, 2 steps.
    env["RFT_CONFIG"] = "configs/tiny/rft.yaml"
    env["RFT_ARGS"] = (
        "data.limit=4 sampling.k=2 sampling.max_turn_tokens=16 train.max_steps=2 data.eval_limit=2"
    )
    env["GRPO_ARGS"] = "train.max_steps=1"
    proc = subprocess.run(
        ["bash", str(ROOT / "recipes" / "tiny_cpu.sh")], env=env, capture_output=True, text=True, timeout=400
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_tiny_cpu_runs_and_resumes(tmp_path):
    out = tmp_path / "recipe"
    log = _run_tiny(out)
    assert (out / "sft" / "cot_rm.json").is_file() and (out / "grpo" / "cot_rm.json").is_file()
    assert (out / "rft" / "rft_summary.json").is_file() and (out / "rft" / "cot_rm.json").is_file()
    assert "model.checkpoint=" + str(out / "rft") in (out / "grpo" / "run_config.yaml").read_text().replace(
        "checkpoint: ", "model.checkpoint="
    )  # GRPO started from RFT's checkpoint
    assert (out / "eval" / "metrics.json").is_file()
    html = (out / "critique.html").read_text()
    assert "<html" in html.lower()
    stages = ["toyworld", "synth", "sft", "rft", "grpo", "eval", "judge"]
    assert sorted(p.name for p in (out / ".done").iterdir()) == sorted(stages)

    # Second run: every finished stage is skipped, nothing is redone.
    t0 = time.time()
    log = _run_tiny(out)
    assert log.count("already done") == len(stages), log
    assert time.time() - t0 < 30


def test_skip_names_stages(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path / "r"), SKIP="toyworld,synth sft rft grpo eval judge")
    proc = subprocess.run(
        ["bash", str(ROOT / "recipes" / "tiny_cpu.sh")], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("skipped: SKIP names it") == 7
    assert not (tmp_path / "r" / ".done").exists()
    # RFT is optional here: without RFT_CONFIG it says so and leaves no marker
    env = dict(os.environ, OUT=str(tmp_path / "r"), SKIP="toyworld,synth sft grpo eval judge", RFT_CONFIG="")
    proc = subprocess.run(
        ["bash", str(ROOT / "recipes" / "tiny_cpu.sh")], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and "skipped: optional; RFT_CONFIG=" in proc.stdout, proc.stderr
    assert not (tmp_path / "r" / ".done").exists()


def _bash(script: str, cwd: Path, env: dict | None = None) -> str:
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, capture_output=True, text=True,
                          timeout=60, env=dict(os.environ, **(env or {})))  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_a_stage_runs_again_when_the_model_it_judges_changed(tmp_path):
    """lib.sh: the marker records the stage's input (the model judged); another input runs the stage
    again, with the earlier input in PREVIOUS_INPUT, and set_aside keeps the earlier results."""
    script = f"""
        OUT={tmp_path}/out SKIP= ; source {ROOT}/recipes/lib.sh
        stage_eval() {{ echo "ran prev=[$PREVIOUS_INPUT]"; set_aside "$OUT/eval"; mkdir -p "$OUT/eval"; }}
        run_stage eval "eval" runs/sft
        run_stage eval "eval" runs/sft
        run_stage eval "eval" runs/grpo
        run_stage eval "eval" runs/grpo
        cat "$OUT/.done/eval"; echo
    """
    out = _bash(script, tmp_path)
    assert out.count("ran prev=") == 2 and "ran prev=[]" in out and "ran prev=[runs/sft]" in out
    assert out.count("already done") == 2 and "now with runs/grpo: running again" in out
    assert out.rstrip().endswith("runs/grpo")
    assert (tmp_path / "out" / "eval.before-1").is_dir() and (tmp_path / "out" / "eval").is_dir()


def _stubbed(tmp_path: Path) -> tuple[Path, dict]:
    """A copy of recipes/ and configs/ with accelerate, vllm, curl, cot-rm and python stubs that print
    their command lines: what the 8-GPU recipes launch, without GPUs."""
    import shutil

    work = tmp_path / "repo"
    for name in ("recipes", "configs"):
        shutil.copytree(ROOT / name, work / name)
    stubs = work / "bin"
    stubs.mkdir()
    for cmd in ("accelerate", "vllm", "curl", "cot-rm", "python"):
        (stubs / cmd).write_text(f'#!/bin/bash\necho "STUB {cmd} $*"\n')
        (stubs / cmd).chmod(0o755)
    # The recipe stops a background server as soon as its stage is done: the stubbed health check waits
    # until every server started so far has logged its command line (else the kill could come first).
    (stubs / "curl").write_text(CURL_STUB)
    return work, {"PATH": f"{stubs}:{os.environ['PATH']}", "OUT": "runs/q"}


CURL_STUB = """#!/bin/bash
n=$(( $(cat "$OUT/.curl-calls" 2>/dev/null || echo 0) + 1 ))
echo "$n" >"$OUT/.curl-calls"
for _ in $(seq 100); do
    (( $(cat "$OUT"/*server.log 2>/dev/null | grep -c "^STUB") >= n )) && break
    sleep 0.05
done
echo "STUB curl $*"
"""


def test_multi_gpu_recipe_launches_with_pairs_and_skipped_synthesis(tmp_path):
    work, env = _stubbed(tmp_path)
    (work / "runs" / "q").mkdir(parents=True)
    (work / "runs" / "q" / "sft_data.jsonl").write_text("")
    # a second node with the SFT data already made: no wait for a synthesis that never runs
    out = _bash("recipes/qwen2_5_vl_7b.sh", work, {**env, "NNODES": "2", "NODE_RANK": "1", "SKIP": "synth"})
    assert "waiting for node 0" not in out and "--machine_rank 1" in out
    # node 0: the pairs reach GRPO too, and the rollout server gets the config's context length
    out = _bash(
        "recipes/qwen2_5_vl_7b.sh", work, {**env, "SKIP": "synth sft eval serve", "PAIRS": "/d/p.jsonl"}
    )
    grpo = next(line for line in out.splitlines() if "cot_rm.cli grpo" in line)
    assert "data.pairs=/d/p.jsonl" in grpo and "rollout.vllm_url=http://127.0.0.1:8001" in grpo
    # RFT ran first: its judgments drawn in one process (the rollout server up), then ZeRO-3 training on
    # every GPU; GRPO starts from its checkpoint
    lines = out.splitlines()
    draws = next(i for i, line in enumerate(lines) if "STUB cot-rm rft" in line and "--sample-only" in line)
    train = next(i for i, line in enumerate(lines) if "cot_rm.cli rft" in line)
    assert draws < train < lines.index(grpo) and "--num_processes 8" in lines[train]
    assert any("waiting for http://127.0.0.1:8001/health" in line for line in lines[:draws])
    q = work / "runs" / "q"  # OUT=runs/q is the caller's: made absolute
    assert f"cot_rm.train.grpo.vllm_server --model {q}/sft " in (q / "rft_server.log").read_text()
    assert "data.pairs=/d/p.jsonl" in lines[train] and f"model.checkpoint={q}/rft " in grpo
    # RFT_CONFIG="" skips it; GRPO then starts from SFT
    out = _bash("recipes/qwen2_5_vl_7b.sh", work, {**env, "SKIP": "synth sft eval serve", "OUT": "runs/q2",
                                                    "RFT_CONFIG": ""})  # fmt: skip
    grpo = next(line for line in out.splitlines() if "cot_rm.cli grpo" in line)
    assert "cot-rm rft" not in out and f"model.checkpoint={work}/runs/q2/sft " in grpo


def test_qwen3_vl_recipe_draws_and_rolls_out_on_the_rollout_server(tmp_path):
    """The Qwen3-VL recipe as the Qwen2.5-VL one: RFT's draws and GRPO's rollouts come from the rollout
    server (`cot_rm.train.grpo.vllm_server`, whose placeholder masks Qwen3-VL's video needs), GRPO trains
    on the other 7 GPUs with ZeRO-2."""
    work, env = _stubbed(tmp_path)
    q = work / "runs" / "q"
    q.mkdir(parents=True)
    (q / "sft_data.jsonl").write_text("")
    out = _bash("recipes/qwen3_vl_8b.sh", work, {**env, "SKIP": "synth sft eval serve"})
    assert f"cot_rm.train.grpo.vllm_server --model {q}/sft " in (q / "rft_server.log").read_text()
    assert f"cot_rm.train.grpo.vllm_server --model {q}/rft " in (q / "rollout_server.log").read_text()
    grpo = next(line for line in out.splitlines() if "cot_rm.cli grpo" in line)
    assert "zero2.yaml" in grpo and "--num_processes 7" in grpo
    assert "configs/qwen3_vl_8b/grpo.yaml" in grpo and "rollout.vllm_url=http://127.0.0.1:8001" in grpo


def test_relative_paths_are_the_callers(tmp_path):
    """A recipe runs from the repo root, but OUT=rel (and the 8-GPU recipes' data paths) mean the
    caller's folder, as any command line would."""
    env = dict(os.environ, OUT="rel", SKIP="toyworld synth sft grpo eval judge")
    proc = subprocess.run(["bash", str(ROOT / "recipes" / "tiny_cpu.sh")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0 and f"OUT={tmp_path}/rel " in proc.stdout, proc.stdout + proc.stderr
