"""`cot-rm sft` end to end on the toy world with the tiny Qwen2.5-VL: it learns, it resumes after SIGKILL to
the same weights, it runs on two processes (DDP, CPU), and frozen-tower feature reuse changes nothing.

The toy world (24 videos), its synthesized traces and a frame cache are built once for the module; every
run is a few optimizer steps on 2 CPU cores.
"""

from __future__ import annotations

import json
import math
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "configs/tiny/sft.yaml"


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_qwen25vl_dir):
    """Toy world + oracle traces of its train/val records (as `cot-rm demo` makes them), and the tiny model."""
    from cot_rm.schema import read_jsonl
    from data_synthesis.pipeline import SynthConfig, synthesize
    from data_synthesis.teachers.oracle import OracleTeacher
    from data_synthesis.toyworld.world import ToyConfig, build

    root = tmp_path_factory.mktemp("sft")
    build(root / "toy", ToyConfig(n=24, seed=0), progress=False)
    recs = [r for r in read_jsonl(root / "toy" / "pointwise.jsonl") if r.split in ("train", "val")]
    summary = synthesize(recs, OracleTeacher(), root / "sft.jsonl", SynthConfig(), progress=False)
    assert summary["accepted"] == len(recs)
    return {
        "root": root,
        "model": tiny_qwen25vl_dir,
        "overrides": [
            f"model.base={tiny_qwen25vl_dir}",
            f"data.train={root / 'sft.jsonl'}",
            f"data.pairs={root / 'toy' / 'pairs.jsonl'}",
            f"data.eval_pairs={root / 'toy' / 'pairs.jsonl'}",
            f"data.frame_cache={root / 'frames'}",  # shared by the module's runs, never ~/.cache
            "data.eval_limit=2",
            "train.logging_steps=1",
            # In-process collation: the exact-resume and equality checks compare RNG streams.
            "train.dataloader_num_workers=0",
        ],
    }


def _sft_cmd(data, out: Path, *overrides: str, launcher: list[str] | None = None) -> list[str]:
    prefix = launcher or [sys.executable, "-m"]
    flags = [o for o in overrides if o.startswith("--")]  # argparse: options before the key=value list
    keys = [o for o in overrides if not o.startswith("--")]
    return [*prefix, "cot_rm.cli", "sft", "--config", CONFIG, *flags, *data["overrides"],
            f"train.output_dir={out}", *keys]  # fmt: skip


def _run(cmd: list[str], timeout: int = 240) -> subprocess.CompletedProcess:
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert run.returncode == 0, run.stderr[-4000:]
    return run


def _report(stdout: str) -> dict:
    """The report JSON that ends stdout (the Trainer's log lines come before it); asserts it is alone."""
    lines = stdout.splitlines()
    starts = [i for i, line in enumerate(lines) if line == "{"]
    assert len(starts) == 1, stdout[-3000:]  # printed once
    return json.loads("\n".join(lines[starts[0] :]))


def _state(checkpoint: Path) -> dict:
    return json.loads((checkpoint / "trainer_state.json").read_text())


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return {**load_file(folder / "model.safetensors"), **{f"head.{k}": v for k, v in load_file(folder / "head.safetensors").items()}}  # fmt: skip


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


TRAINER_STATE = {"optimizer.pt", "scheduler.pt", "trainer_state.json"}  # + rng_state*.pth: resume state


def _assert_cot_rm_checkpoint(folder: Path, trainer_checkpoint: bool = False) -> None:
    """A save_pretrained folder: VLM + head (safetensors only), processor, cot_rm.json. A Trainer's
    checkpoint-N also holds the Trainer's own resume state (optimizer, scheduler, RNG), nothing else."""
    names = {p.name for p in folder.iterdir() if p.is_file()}
    assert {"cot_rm.json", "head.safetensors", "model.safetensors", "config.json"} <= names, names
    if trainer_checkpoint:
        assert TRAINER_STATE <= names, names
        names = {n for n in names - TRAINER_STATE if not n.startswith("rng_state")}
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl"))], names  # safetensors only


def _scores(folder: Path, data, n: int = 3) -> torch.Tensor:
    """Load a checkpoint the way a user does and score a few training traces with its head."""
    from cot_rm.model.modeling import ThinkThenScore
    from cot_rm.protocol import JudgeSpec
    from cot_rm.train.data import SFTCollator, load_traces
    from cot_rm.train.report import head_scores

    model = ThinkThenScore.from_pretrained(folder)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    spec = JudgeSpec(dimensions=tuple(model.config.dimensions))
    collator = SFTCollator(model.processor, model.config.family, spec, model.config.reward_token,
                           cache_dir=str(data["root"] / "frames"))  # fmt: skip
    rows = [r for r in load_traces(data["root"] / "sft.jsonl") if not r.get("rationale_free")][:n]
    return torch.tensor(head_scores(model, collator, rows))


# ------------------------------------------------------------------------------------------- learns


def test_short_run_learns_and_writes_a_cot_rm_checkpoint(data, tmp_path):
    out = tmp_path / "run"
    # One Trainer checkpoint at the last step keeps trainer_state.json (the log history) for the test.
    run = _run(_sft_cmd(data, out, "train.max_steps=20", "train.save_strategy=steps", "train.save_steps=20"))

    history = _state(out / "checkpoint-20")["log_history"]
    lm = [h["lm_loss"] for h in history if "lm_loss" in h]
    assert len(lm) == 20 and all(math.isfinite(v) for v in lm)
    k = len(lm) // 5
    first, last = sum(lm[:k]) / k, sum(lm[-k:]) / k
    assert last < first - 0.3, (first, last)  # the critiques' LM loss clearly fell (~7.0 -> ~6.0 here)
    for key in ("head_point_loss", "head_pair_loss", "vision_cache_hit_rate"):
        assert all(key in h and math.isfinite(h[key]) for h in history if "lm_loss" in h), key
    assert any("head_pair_accuracy" in h for h in history)  # pairs reached the head

    report = json.loads((out / "report.json").read_text())
    assert _report(run.stdout) == report  # printed once, and the same as the file
    assert {"checkpoint", "lm_loss_first", "lm_loss_last", "lm_loss_fell", "judged_videos", "parse_rate",
            "pairs", "head_pairwise_accuracy", "answer_pairwise_accuracy",
            "head_pairwise_accuracy_video_only", "lm_loss_val_video_swapped"} <= report.keys()  # fmt: skip
    for name in ("head_pairwise_accuracy", "head_pairwise_accuracy_video_only"):
        assert set(report[name]) == {"visual_quality", "text_alignment", "physical_consistency", "overall"}
        assert all(v is None or 0.0 <= v <= 1.0 for v in report[name].values()), report
    assert report["lm_loss_fell"] is True and report["lm_loss_last"] < report["lm_loss_first"]
    assert report["pairs"] == 2 and 0.0 <= report["parse_rate"] <= 1.0
    assert (out / "run_config.yaml").is_file()

    _assert_cot_rm_checkpoint(out)
    _assert_cot_rm_checkpoint(
        out / "checkpoint-20", trainer_checkpoint=True
    )  # Trainer checkpoints are cot-rm checkpoints too
    meta = json.loads((out / "cot_rm.json").read_text())
    assert set(meta["calibration"]) == set(meta["dimensions"])  # fitted on the val traces
    assert 1 < meta["tie_theta"] < 1e4 and meta["tie_theta"] != 2.0  # fitted on the val pairs
    assert meta["sampling"]["num_frames"] == 8 and meta["freeze_vision"] is True
    scores = _scores(out, data)
    assert scores.shape == (3, 4) and torch.isfinite(scores).all()
    assert scores.std(0).max() > 0  # not a constant head


# ------------------------------------------------------------------------------------------- resume


def test_killed_run_resumes_to_the_same_weights(data, tmp_path):
    steps = ["train.max_steps=12", "train.save_strategy=steps", "train.save_steps=5"]
    full, killed = tmp_path / "full", tmp_path / "killed"
    _run(_sft_cmd(data, full, "--no-report", *steps))

    # Same command, SIGKILLed once checkpoint-5 is complete (the Trainer writes trainer_state.json last).
    log = open(tmp_path / "killed.log", "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(_sft_cmd(data, killed, "--no-report", *steps), cwd=ROOT, stdout=log, stderr=log)
    deadline = time.monotonic() + 180
    try:
        while not (killed / "checkpoint-5" / "trainer_state.json").exists():
            assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint-5 in 180 s"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        log.close()
    assert not (killed / "checkpoint-12").exists() and not (killed / "model.safetensors").exists()
    # A save cut short by the kill: a checkpoint folder without trainer_state.json must not be resumed from.
    partial = killed / "checkpoint-10"
    resume_from = partial if (partial / "trainer_state.json").exists() else killed / "checkpoint-5"
    if resume_from != partial:
        partial.mkdir(exist_ok=True)
        (partial / "cot_rm.json").write_text("{}")

    run = _run(_sft_cmd(data, killed, "--no-report", *steps))
    assert f"resuming from {resume_from}" in run.stderr

    state, reference = _state(killed / "checkpoint-12"), _state(full / "checkpoint-12")
    assert state["global_step"] == reference["global_step"] == 12
    start, start_ref = (next(h for h in s["log_history"] if "lm_loss" in h) for s in (state, reference))
    assert start["head_point_loss"] == pytest.approx(start_ref["head_point_loss"], abs=1e-6), (
        "two fresh runs with one train.seed start from different heads: build() must seed "
        "(transformers.set_seed(args.seed)) before ThinkThenScore.from_base initialises the head"
    )
    logged = [h["step"] for h in state["log_history"] if "lm_loss" in h]
    assert logged == list(range(1, 13))  # each step once: resumed at 6, not restarted
    lm = [h["lm_loss"] for h in state["log_history"] if "lm_loss" in h]
    lm_ref = [h["lm_loss"] for h in reference["log_history"] if "lm_loss" in h]
    assert lm == pytest.approx(lm_ref, abs=1e-5)  # same batches, same rationale-dropout masks after resume
    _assert_cot_rm_checkpoint(killed)
    assert _max_diff(_weights(killed), _weights(full)) < 1e-5

    # The finished run again: nothing to train (it used to take a 13th step), the same final model.
    before = _weights(full)
    run = _run(_sft_cmd(data, full, "--no-report", *steps))
    assert "nothing to do" in run.stderr and not (full / "checkpoint-13").exists()
    assert _state(full / "checkpoint-12")["global_step"] == 12 and _max_diff(_weights(full), before) == 0
    # Settings the checkpoint's weights depend on cannot change under a resume: one line, exit 2.
    bad = subprocess.run(_sft_cmd(data, full, "--no-report", *steps, "model.head=mlp"), cwd=ROOT,
                         capture_output=True, text=True, timeout=240)  # fmt: skip
    assert bad.returncode == 2 and "holds a run with other model.head" in bad.stderr, bad.stderr[-2000:]


# ------------------------------------------------------------------------------------------ two procs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_save_once_and_report_once(data, tmp_path):
    out = tmp_path / "ddp"
    # `accelerate launch --cpu --num_processes 2` starts ONE process (the simple launcher; multi-CPU needs
    # mpirun). `--multi_gpu` goes through torchrun; with train.use_cpu (the tiny config) that is CPU DDP
    # over gloo. ddp_find_unused_parameters=false: every trainable parameter (LM, head) gets a gradient
    # each step and the frozen tower has none to reduce, so DDP must not need the unused-parameter search
    # that TRL turns on for VLMs (it would fail loudly at step 2 if some trainable parameter went unused).
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", str(_free_port()), "-m"]  # fmt: skip
    overrides = ["train.max_steps=4", "train.save_strategy=steps", "train.save_steps=4"]
    run = _run(_sft_cmd(data, out, *overrides, "train.ddp_find_unused_parameters=false", launcher=launcher))
    state = _state(out / "checkpoint-4")
    assert state["global_step"] == 4
    # Really two processes: 4 examples per device and step, so an epoch has ceil(n / 8) steps (n / 4 on one).
    n = int(re.search(r"cot-rm sft: (\d+) examples", run.stderr)[1])
    assert math.ceil(n / 8) != math.ceil(n / 4)
    assert state["epoch"] == pytest.approx(4 / math.ceil(n / 8))
    assert {p.name for p in (out / "checkpoint-4").glob("rng_state*.pth")} == {
        "rng_state_0.pth",
        "rng_state_1.pth",
    }
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["checkpoint-4"]
    assert _report(run.stdout) == json.loads((out / "report.json").read_text())  # rank 0 only
    _assert_cot_rm_checkpoint(out)
    scores = _scores(out, data, n=2)
    assert torch.isfinite(scores).all()


# ------------------------------------------------------------------------------- frozen tower reuse


def _train_in_process(data, out: Path, *overrides: str):
    from transformers import set_seed

    from cot_rm.config import load_config
    from cot_rm.train.sft.config import SFTRunConfig
    from cot_rm.train.sft.trainer import build

    cfg = load_config(
        SFTRunConfig, ROOT / CONFIG, [*data["overrides"], f"train.output_dir={out}", *overrides]
    )
    set_seed(cfg.train["seed"])  # the head's random init happens in build(), before the Trainer seeds
    model, trainer, _, _ = build(cfg)
    trainer.train()
    return model, trainer


def test_reused_vision_features_train_exactly_like_the_tower(data, tmp_path):
    common = ["train.max_steps=4", "model.freeze_vision=true"]
    _, reuse = _train_in_process(data, tmp_path / "reuse", *common, "model.reuse_vision_features=true")
    _, plain = _train_in_process(data, tmp_path / "plain", *common, "model.reuse_vision_features=false")
    # The 7B configs' path: the Trainer enables checkpointing (LM only) with its own keyword arguments.
    _, ckpt = _train_in_process(data, tmp_path / "ckpt", *common, "model.reuse_vision_features=true",
                                "train.gradient_checkpointing=true")  # fmt: skip
    steps = [h for h in reuse.state.log_history if "lm_loss" in h]
    steps_plain = [h for h in plain.state.log_history if "lm_loss" in h]
    steps_ckpt = [h for h in ckpt.state.log_history if "lm_loss" in h]
    assert len(steps) == len(steps_plain) == len(steps_ckpt) == 4
    for key in ("lm_loss", "loss", "head_point_loss", "head_pair_loss"):
        assert [h[key] for h in steps] == pytest.approx([h[key] for h in steps_plain], abs=1e-5), key
        assert [h[key] for h in steps_ckpt] == pytest.approx([h[key] for h in steps_plain], abs=1e-5), key
    assert reuse.vision_cache is not None and plain.vision_cache is None
    assert steps[-1]["vision_cache_hit_rate"] > 0  # later batches reuse earlier batches' videos
    assert all("vision_cache_hit_rate" not in h for h in steps_plain)
    assert reuse.vision_cache.stats()["hits"] > 0


def test_packed_batches_train_like_padded_ones(data, tmp_path):
    common = ["train.max_steps=3", "train.per_device_train_batch_size=3"]
    _, padded = _train_in_process(data, tmp_path / "padded", *common)
    model, packed = _train_in_process(data, tmp_path / "packed", *common, "data.packing=true")
    steps = [[h for h in t.state.log_history if "lm_loss" in h] for t in (padded, packed)]
    assert len(steps[0]) == len(steps[1]) == 3
    for key in ("lm_loss", "loss", "head_point_loss", "head_pair_loss"):
        assert [h[key] for h in steps[1]] == pytest.approx([h[key] for h in steps[0]], abs=1e-4), key
    text = model.base_vlm.model.language_model.config
    assert text._attn_implementation == "cot_rm_varlen_sdpa"  # the per-sequence attention, not a dense mask


def test_video_reliance_reads_the_same_critique_on_another_video(data, tmp_path):
    """The report's look-at-the-video check: one critique's LM loss on its own video and on another one of
    the same length. A copy of the very same video as the "other" one must give the same loss (so both
    sides run the same computation), and a different video a different loss on a model that reads it."""
    import shutil

    from cot_rm.media.video import probe
    from cot_rm.model.modeling import ThinkThenScore
    from cot_rm.protocol import JudgeSpec
    from cot_rm.train.data import SFTCollator, load_traces
    from cot_rm.train.report import video_reliance

    torch.manual_seed(0)
    model = ThinkThenScore.from_base(data["model"], freeze_vision=True).eval()
    spec = JudgeSpec(dimensions=tuple(model.config.dimensions))
    collator = SFTCollator(
        model.processor, model.config.family, spec, model.config.reward_token, cache_dir="off"
    )
    row = next(t for t in load_traces(data["root"] / "sft.jsonl") if not t.get("rationale_free"))
    twin = shutil.copy(row["video"], tmp_path / "twin.mp4")
    scores = {**row["scores"], "overall": row["scores"]["overall"] % 5 + 1}  # labels differ: a valid partner
    same = video_reliance(model, collator, [row, {**row, "video": str(twin), "scores": scores}])
    assert same["rows"] == 2 and same["own_video"] == pytest.approx(same["other_video"], abs=1e-6)
    n = probe(row["video"])["total_frames"]
    other = next(t for t in load_traces(data["root"] / "sft.jsonl") if t["video"] != row["video"]
                 and probe(t["video"])["total_frames"] == n and t["scores"] != row["scores"])  # fmt: skip
    differ = video_reliance(model, collator, [row, other])
    assert differ["rows"] == 2 and abs(differ["own_video"] - differ["other_video"]) > 1e-4
    assert video_reliance(model, collator, [row]) is None  # nothing to swap with


def test_no_validation_traces_leave_scores_uncalibrated_and_say_so(capsys):
    from cot_rm.train.report import calibrate

    calibrate(None, None, [{"video": "v.mp4"}], None)  # returns before it needs a model
    err = capsys.readouterr().err
    assert "1 validation trace(s)" in err and "uncalibrated" in err and "--splits train,val" in err


def test_zero3_final_model_is_gathered_then_loaded_whole(tiny_rm, tmp_path):
    """Under ZeRO-3 every rank gathers the weights into the output folder and the main process goes on
    with a whole copy loaded from there (a forward pass on sharded weights alone would hang)."""
    from types import SimpleNamespace

    from cot_rm.model.modeling import ThinkThenScore
    from cot_rm.train.common import whole_model

    model = ThinkThenScore.from_pretrained(tiny_rm)
    saved = []

    def trainer(stage, main=True):
        return SimpleNamespace(
            is_deepspeed_enabled=stage is not None,
            accelerator=SimpleNamespace(
                state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(zero_stage=stage))
            ),
            args=SimpleNamespace(output_dir=str(tmp_path / "out"), device="cpu"),
            save_model=lambda out: saved.append(model.save_pretrained(out)),
            is_world_process_zero=lambda: main,
        )

    assert whole_model(model, trainer(None)) is model and whole_model(model, trainer(2)) is model
    assert saved == []
    assert whole_model(model, trainer(3, main=False)) is None and len(saved) == 1  # gathered, then done
    whole = whole_model(model, trainer(3))
    assert whole is not model and len(saved) == 2
    for (name, a), (_, b) in zip(model.state_dict().items(), whole.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_one_path_spelled_two_ways_is_not_a_changed_setting(tmp_path, monkeypatch):
    from cot_rm.train.runs import _same

    (tmp_path / "base").mkdir()
    monkeypatch.chdir(tmp_path)
    assert _same("base", str(tmp_path / "base")) and _same(3, 3)
    assert not _same("base", str(tmp_path)) and not _same("missing", str(tmp_path / "missing"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # started in tmp_path, resumed from here with absolute paths
    assert _same("base", str(tmp_path / "base"), then=str(tmp_path))
    assert not _same("base", str(tmp_path / "base"))  # read from here, "base" names nothing


def test_a_run_without_checkpoints_is_still_protected(tmp_path):
    """`save_strategy: no` (the tiny config) leaves no checkpoint-N: the output folder's own
    trainer_state.json and run_config.yaml still mark a finished run and what it was trained with."""
    from types import SimpleNamespace

    from cot_rm.config import load_config, save_config
    from cot_rm.train.runs import finished, start_run
    from cot_rm.train.sft.config import SFTRunConfig

    out = tmp_path / "run"
    out.mkdir()
    (out / "trainer_state.json").write_text(
        json.dumps({"global_step": 20, "max_steps": 20, "num_train_epochs": 1})
    )

    def trainer(max_steps=-1, epochs=1.0):
        args = SimpleNamespace(output_dir=str(out), max_steps=max_steps, num_train_epochs=epochs)
        return SimpleNamespace(args=args, is_world_process_zero=lambda: True)

    assert finished(trainer(), None) and finished(trainer(max_steps=20), None)
    assert not finished(trainer(max_steps=30), None) and not finished(trainer(epochs=2.0), None)
    cfg = load_config(SFTRunConfig, CONFIG, [f"train.output_dir={out}"])
    save_config(cfg, out / "run_config.yaml")
    assert start_run(trainer(), cfg, "cot-rm sft", "x") is None  # same settings: fine
    other = load_config(SFTRunConfig, CONFIG, [f"train.output_dir={out}", "model.head=mlp"])
    with pytest.raises(ValueError, match="holds a run with other model.head"):
        start_run(trainer(), other, "cot-rm sft", "x")
