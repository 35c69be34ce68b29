"""Benchmark: one GRPO group (rollouts, log-probs, update) with a frozen tower's features reused vs recomputed.

The project's GRPO path (`cot_rm.train.grpo.trainer.build`: `CotRmGRPOTrainer`, select_frames rollouts on HF generate,
the head co-trained) with `configs/tiny/grpo.yaml`'s shape, one group per step (one prompt x
`num_generations` rollouts), in two settings:

    reuse      the vision-feature cache, emptied before each group: each video (and tool frame) goes through
               the tower once, then every rollout, every turn and the log-prob pass reuse its features
    recompute  no cache: the frozen tower runs in every generation round's prefill and in the log-prob pass

Each group runs in both settings back to back (the order alternating from group to group), from the same
seed and the same weights (learning rate 0: the optimizer still steps, the weights do not change), so both
settings sample the same rollouts (the JSON counts how many came out identical) and do the same work.
Phases of a step, timed by wrapping the trainer's methods (synchronized on a GPU):

    generation  `_generate`: the multi-turn rollouts (prefill + decoding + tool rounds)
    log-probs   every `_get_per_token_logps_and_entropies` call: the policy's forward in the loss (and the
                old-policy pass when TRL computes one: not with one iteration per generation, as here)
    update      the loss's backward + the AdamW step
    other       rewards, advantages and the rest of TRL's batch preparation

    .venv/bin/python bench/grpo_step.py [--groups 6] [--out /tmp/grpo_step.json]          # CPU, the demo's model
    python bench/grpo_step.py --random-init 7b --out grpo_step_7b.json                       # GPU, Qwen2.5-VL-7B shape
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import hashlib
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

# ruff: noqa: E402  (the path and environment below must be set before the project and HF imports)
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
import transformers
import trl
from transformers import set_seed

from bench.generation import machine, need_inputs, publish
from bench.sft_step import random_init_loader, write_model_dir, write_videos
from cot_rm.config import check_trl_args, load_config
from cot_rm.media.video import Sampling
from cot_rm.model.modeling import ThinkThenScore
from cot_rm.model.vision_cache import inner_vision_model
from cot_rm.train.grpo import trainer as grpo
from cot_rm.train.grpo.config import GRPORunConfig

SETTINGS = ("reuse", "recompute")
PHASES = ("generation", "logps", "update", "other", "total")
COLUMNS = (*PHASES, "tower")  # the tower's own seconds, inside generation and log-probs


# ---- --random-init: the 7B shape on a GPU (or the tiny one), random weights, synthetic videos
def write_random(work: Path, args, device: torch.device) -> tuple[Path, Path]:
    """A cot-rm checkpoint folder without VLM weights (built from config.json at load) + pointwise rows."""
    model_dir, ckpt = write_model_dir(work / "model", args.random_init), work / "ckpt"
    px = args.resolution**2
    sampling = Sampling(fps=None, num_frames=args.frames, min_pixels=px, max_pixels=px, family="qwen2_5_vl")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32  # only the head is kept
    with random_init_loader(device):
        model = ThinkThenScore.from_base(model_dir, freeze_vision=True, sampling=sampling, torch_dtype=dtype)
    # The folder gets the head, processor and cot_rm.json; the VLM is built from config.json at load.
    ckpt.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    from cot_rm.model.modeling import HEAD_NAME

    save_file(
        {k: v.detach().contiguous().cpu() for k, v in model.head.state_dict().items()}, str(ckpt / HEAD_NAME)
    )
    model.processor.save_pretrained(str(ckpt))
    for sub in (model.processor.image_processor, model.processor.video_processor):
        sub.save_pretrained(str(ckpt))
    model.config.save(ckpt)
    for name in ("config.json", "generation_config.json"):
        if (model_dir / name).exists():
            (ckpt / name).write_bytes((model_dir / name).read_bytes())
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    videos = write_videos(work / "videos", args.groups, args.frames, args.resolution)
    rows = [{"id": f"g{i}", "video": str(v), "prompt": f"a clip with a moving gradient, take {i}",
             "scores": {"visual_quality": 1 + i % 5, "text_alignment": 3, "physical_consistency": 2 + i % 3,
                        "overall": 1 + (i + 2) % 5}, "split": "train"} for i, v in enumerate(videos)]  # fmt: skip
    data = work / "pointwise.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return ckpt, data


# ---- timing
class PhaseTimer:
    """Seconds per phase of the current step, from wrappers around the trainer's own methods."""

    def __init__(self, trainer, device: torch.device):
        keys = ("generation", "logps_grad", "logps_nograd", "prepare", "loss_forward")
        self.device, self.acc, self.logps_calls = device, dict.fromkeys(keys, 0.0), 0
        self._wrap(trainer, "_generate", lambda: "generation")
        # the policy's forward in the loss runs with grad; an old-policy pass (inside the preparation) without
        self._wrap(trainer, "_get_per_token_logps_and_entropies",
                   lambda: "logps_grad" if torch.is_grad_enabled() else "logps_nograd")  # fmt: skip
        self._wrap(trainer, "_prepare_inputs", lambda: "prepare")
        self._wrap(trainer, "compute_loss", lambda: "loss_forward")

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _wrap(self, trainer, name: str, phase) -> None:
        original = getattr(trainer, name)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            key = phase()
            self.sync()
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.sync()
                self.acc[key] += time.perf_counter() - t0
                self.logps_calls += name == "_get_per_token_logps_and_entropies"

        setattr(trainer, name, timed)

    def reset(self) -> None:
        self.acc = dict.fromkeys(self.acc, 0.0)
        self.logps_calls = 0


class TowerCounter:
    """Vision-tower forward calls, the patch rows they encoded and their seconds (hooks on `visual`)."""

    def __init__(self, model, timer: PhaseTimer):
        self.timer, self.calls, self.patches, self.seconds = timer, 0, 0, 0.0
        visual = inner_vision_model(model).visual
        visual.register_forward_pre_hook(self._start)
        visual.register_forward_hook(self._stop)

    def reset(self) -> None:
        self.calls, self.patches, self.seconds = 0, 0, 0.0

    def _start(self, _module, args) -> None:
        self.timer.sync()
        self.t0 = time.perf_counter()

    def _stop(self, _module, args, _out) -> None:
        self.timer.sync()
        self.seconds += time.perf_counter() - self.t0
        self.calls += 1
        self.patches += int(args[0].shape[0]) if args else 0


def set_setting(trainer, cache, setting: str) -> None:
    if setting == "reuse":
        cache.install()
        cache.clear()  # reuse across the group only: nothing carried over from an earlier step
        cache.reset_stats()
        trainer.vision_cache = cache
    else:
        cache.remove()
        trainer.vision_cache = None


def one_step(trainer, model, optimizer, row: dict, seed: int, timer: PhaseTimer, tower: TowerCounter) -> dict:
    """One group through `training_step` + the optimizer step; its phase times and what it did."""
    group = [dict(row) for _ in range(trainer.num_generations)]  # TRL's sampler repeats each row G times
    set_seed(seed)  # the same sampling draws in both settings
    timer.reset()
    tower.reset()
    timer.sync()
    t0 = time.perf_counter()
    trainer.training_step(model, group, None)
    timer.sync()
    t1 = time.perf_counter()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    timer.sync()
    t2 = time.perf_counter()
    a, batch = timer.acc, trainer._batch
    step = {
        "generation": a["generation"], "logps": a["logps_grad"] + a["logps_nograd"],
        "update": (t1 - t0) - a["prepare"] - a["loss_forward"] + (t2 - t1),  # backward + AdamW step
        # rewards, advantages, padding (preparation) and the loss terms around the log-prob forward
        "other": a["prepare"] - a["generation"] - a["logps_nograd"] + a["loss_forward"] - a["logps_grad"],
        "total": t2 - t0, "logps_calls": timer.logps_calls, "tower_calls": tower.calls, "tower_patches": tower.patches, "tower": tower.seconds,
        "rollouts": len(batch.completion_ids), "completion_tokens": sum(map(len, batch.completion_ids)),
        "policy_tokens": sum(map(sum, batch.tool_mask)), "tool_calls": sum(batch.tool_calls),
        "completions": [_digest(c) for c in batch.completion_ids],  # to compare the settings' rollouts
    }  # fmt: skip
    if trainer.vision_cache is not None:
        stats = trainer.vision_cache.stats()
        step |= {"cache_hits": stats["hits"], "cache_misses": stats["misses"]}
    return step


def _digest(ids) -> str:
    return hashlib.blake2b(json.dumps(list(ids)).encode(), digest_size=8).hexdigest()


def summarize(steps: dict[str, list[dict]], warmup: int) -> dict:
    timed = {s: v[warmup:] for s, v in steps.items()}
    settings = {}
    for s, rows in timed.items():
        settings[s] = {f"{p}_s_median": statistics.median(r[p] for r in rows) for p in COLUMNS}
        settings[s] |= {f"{p}_s_sum": sum(r[p] for r in rows) for p in COLUMNS}
        for key in (
            "tower_calls",
            "tower_patches",
            "completion_tokens",
            "policy_tokens",
            "tool_calls",
            "rollouts",
        ):
            settings[s][key] = sum(r[key] for r in rows)
    a, b = timed["recompute"], timed["reuse"]
    # recompute / reuse per phase: of the sums over the timed groups, and the median of per-group ratios
    ratios = {p: settings["recompute"][f"{p}_s_sum"] / settings["reuse"][f"{p}_s_sum"] for p in COLUMNS}
    paired = {p: statistics.median(x[p] / y[p] for x, y in zip(a, b) if y[p] > 0) for p in COLUMNS}
    same = sum(x == y for r, q in zip(a, b) for x, y in zip(r["completions"], q["completions"]))
    return {"settings": settings, "ratios_recompute_over_reuse": ratios, "ratios_paired_median": paired,
            "identical_rollouts": same, "rollouts": settings["reuse"]["rollouts"], "timed_groups": len(b)}  # fmt: skip


def section(res: dict) -> str:
    s, inp = res["summary"], res["inputs"]
    st, r, rp = s["settings"], s["ratios_recompute_over_reuse"], s["ratios_paired_median"]
    rows = "\n".join(
        f"| {name} | " + " | ".join(f"{v[f'{p}_s_median']:.3f}" for p in COLUMNS)
        + f" | {v['tower_calls']} | {v['completion_tokens']:,} | {v['tool_calls']} |"
        for name, v in st.items()
    )  # fmt: skip
    ratio_row = "| recompute / reuse (sums) | " + " | ".join(f"{r[p]:.2f}x" for p in COLUMNS) + " | | | |"
    paired_row = (
        "| recompute / reuse (paired median) | " + " | ".join(f"{rp[p]:.2f}x" for p in COLUMNS) + " | | | |"
    )
    flat = [x for pair in res["loadavg_1min"] for x in pair]
    loads = f"{min(flat):.1f}-{max(flat):.1f} (first {flat[0]:.1f}, last {flat[-1]:.1f})"
    return f"""
## grpo_step — {dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")} ({res["device"]})

- Machine: {res["machine"]}; Python {platform.python_version()}, torch {res["versions"]["torch"]}, transformers {res["versions"]["transformers"]}, trl {res["versions"]["trl"]}; {res["threads"]} torch threads
- Command: `{res["command"]}`
- Model: `{inp["model"]}` ({inp["dtype"]}, {inp["params"] / 1e6:,.1f} M parameters, tower frozen); `{inp["config"]}`'s shape: {inp["num_generations"]} rollouts per group, max {inp["max_turn_tokens"]} tokens a turn, {inp["max_completion_length"]} a rollout, temperature {inp["temperature"]}, HF generate; learning rate 0
- {inp["groups"]} groups (one prompt + video each, from `{inp["data"]}`), each run in both settings back to back, order alternating; the first {inp["warmup"]} left out: {s["timed_groups"]} timed groups, {s["rollouts"]} rollouts per setting; {s["identical_rollouts"]}/{s["rollouts"]} rollouts identical in both settings
- Load average (1 min) over the groups: {loads}

Seconds per group (median over the timed groups); tower calls, completion tokens and tool calls summed over them:

| setting | generation | log-probs | update | other | total | of which the tower | tower calls | completion tokens | tool calls |
|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|
{rows}
{ratio_row}
{paired_row}

**Reusing the group's visual features: {r["total"]:.2f}x faster per GRPO step than recomputing them** (generation {r["generation"]:.2f}x, log-probs {r["logps"]:.2f}x, update {r["update"]:.2f}x; sums over the timed groups). The tower itself took {st["recompute"]["tower_s_sum"] / st["recompute"]["total_s_sum"]:.1%} of a recomputing step ({st["recompute"]["tower_s_sum"]:.2f} s over the timed groups) and {st["reuse"]["tower_s_sum"]:.2f} s with reuse.
"""


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = ap.add_argument
    add("--model", default=str(ROOT / "runs" / "demo" / "sft"), help="cot-rm checkpoint, tower frozen")
    add("--data", default=str(ROOT / "runs" / "demo" / "sft_data.jsonl"), help="traces or pointwise rows")
    add("--random-init", choices=("7b", "tiny"), help="instead of --model/--data: this architecture with random "
        "weights (7b: Qwen2.5-VL-7B, needs a GPU) on synthetic videos")  # fmt: skip
    add("--config", default=str(ROOT / "configs" / "tiny" / "grpo.yaml"), help="GRPO YAML (the shape)")
    add("--groups", type=int, default=6, help="groups, each timed in both settings")
    add("--warmup", type=int, default=1, help="first groups left out of the figures")
    add("--frames", type=int, default=16, help="--random-init: frames per synthetic video")
    add("--resolution", type=int, default=448, help="--random-init: frame side in pixels (multiple of 28)")
    add("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    add("--seed", type=int, default=0)
    add("--set", action="append", default=[], metavar="KEY=VALUE", help="extra config override")
    add("--work", help="scratch folder (default: a temp dir, removed)")
    add("--out", help="write the full results (JSON) here")
    add("--results-md", default=str(ROOT / "bench" / "RESULTS.md"), help="markdown to append to")
    add("--no-append", action="store_true", help="print the section, do not append it")
    args = ap.parse_args(argv)
    if not args.random_init:
        need_inputs(ap, str(Path(args.model) / "cot_rm.json"), args.data)
    args.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.random_init == "7b" and args.device.type != "cuda":
        ap.error("--random-init 7b needs a GPU")
    if args.resolution % 28:
        ap.error("--resolution must be a multiple of 28 (patch 14 x merge 2)")
    if args.warmup >= args.groups:
        ap.error("--groups must exceed --warmup")
    return args


def _rel(path) -> str:
    resolved = Path(path).resolve()
    return str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else str(path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join(["python", "bench/grpo_step.py", *(sys.argv[1:] if argv is None else argv)])
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="grpo-step-") as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        ckpt, data = write_random(work, args, args.device) if args.random_init else (args.model, args.data)
        overrides = [f"model.checkpoint={ckpt}", f"data.train={data}", "data.pairs=null", "data.frame_cache='off'",
                     "model.reuse_vision_features=true", f"train.output_dir={work / 'out'}", "train.learning_rate=0.0",
                     "train.save_strategy='no'", "train.report_to=none", "train.logging_steps=1000000",
                     f"train.seed={args.seed}"]  # fmt: skip
        if args.device.type == "cuda":
            overrides += ["train.use_cpu=false", "train.bf16=true", "model.dtype=bfloat16"]
        if args.random_init == "7b":  # full fine-tuning of 7.6 B parameters on one GPU
            overrides += ["train.gradient_checkpointing=true"]
        cfg = load_config(GRPORunConfig, args.config, [*overrides, *args.set])
        g = int(cfg.train.get("num_generations", 8))
        cfg.train["per_device_train_batch_size"] = g  # one group per step
        cfg.train["gradient_accumulation_steps"] = 1
        check_trl_args(trl.GRPOConfig, cfg.train)
        loader = random_init_loader(args.device) if args.random_init else contextlib.nullcontext()
        with loader:
            model, trainer, rows = grpo.build(cfg)
        cache = trainer.vision_cache
        if cache is None:
            raise SystemExit(f"{ckpt}: the tower is not frozen (cot_rm.json freeze_vision): nothing to reuse")
        trainer.create_optimizer()
        trainer.current_gradient_accumulation_steps = 1  # set by train(); the loss pass reads it
        model.train()
        timer = PhaseTimer(trainer, args.device)
        tower = TowerCounter(model, timer)
        steps: dict[str, list] = {s: [] for s in SETTINGS}
        loads = []
        for i in range(args.groups):
            row = rows[i % len(rows)]
            loads.append([os.getloadavg()[0]])
            for setting in SETTINGS if i % 2 == 0 else SETTINGS[::-1]:
                set_setting(trainer, cache, setting)
                steps[setting].append(
                    one_step(trainer, model, trainer.optimizer, row, args.seed + i, timer, tower)
                )
            loads[-1].append(os.getloadavg()[0])
            print(f"grpo_step: group {i}: " + ", ".join(f"{s} {steps[s][-1]['total']:.2f} s" for s in SETTINGS),
                  flush=True)  # fmt: skip
        set_setting(trainer, cache, "reuse")
        random = f"{args.groups} synthetic {args.frames}-frame {args.resolution}x{args.resolution} mp4s"
        inputs = {"model": f"Qwen2.5-VL {args.random_init} architecture, random init" if args.random_init else _rel(ckpt),
                  "data": random if args.random_init else _rel(data), "config": _rel(args.config), "groups": args.groups,
                  "warmup": args.warmup, "num_generations": g, "dtype": cfg.model.dtype,
                  "max_turn_tokens": cfg.rollout.max_turn_tokens, "temperature": cfg.train.get("temperature", 1.0),
                  "max_completion_length": cfg.train.get("max_completion_length"),
                  "params": sum(p.numel() for p in model.parameters()), "overrides": [*overrides, *args.set]}  # fmt: skip
    res = {"bench": "grpo_step", "command": command, "machine": machine(), "device": args.device.type,
           "threads": torch.get_num_threads(), "inputs": inputs, "loadavg_1min": loads,
           "versions": {m.__name__: m.__version__ for m in (torch, transformers, trl)},
           "steps": steps, "summary": summarize(steps, args.warmup)}  # fmt: skip
    text = section(res)
    publish(res, text, args.out, args.results_md, append=not args.no_append)
    return 0


if __name__ == "__main__":
    sys.exit(main())
