"""`cot-rm rft --config YAML [key=value ...]`: rejection-sampling fine-tuning, between SFT and GRPO.

1. Sampling: the checkpoint (SFT's, or an earlier RFT's) judges every training video K times with
   GRPO's rollout code and backends (`cot_rm.train.rft.sampler`), each draw appended to
   OUTPUT_DIR/samples.jsonl as it is made; a killed run reads it back and draws only what is missing
   (`cot_rm.train.rft.samples`).
2. Keeping: `cot_rm.train.rft.keep` keeps the draws that parse and agree with the labels (pointwise:
   within `keep.tolerance` on every labelled dimension; pairs: ordered as labelled) and chooses one per
   video; a video with none falls back to its synthesized trace or is dropped. The counts go to
   OUTPUT_DIR/rft_summary.json (and stdout), the traces to OUTPUT_DIR/rft_data.jsonl, in SFT's format,
   each kept one naming the checkpoint that sampled it.
3. Training: SFT's trainer (masked LM loss + head losses, `cot_rm.train.sft.trainer`) on those traces,
   from the checkpoint; then calibration on the val traces of `data.train` and SFT's report.

RFT is the SFT and GRPO stages put together, so it is the one stage that uses both (tests/test_layout.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from accelerate import PartialState
from transformers import AutoProcessor, GenerationConfig, set_seed
from trl import SFTConfig

from cot_rm.config import ConfigError, add_config_arguments, check_trl_args, config_from_args, save_config
from cot_rm.model.config import CONFIG_NAME, CotRmConfig
from cot_rm.model.modeling import ThinkThenScore
from cot_rm.protocol import JudgeSpec
from cot_rm.schema import read_jsonl, write_jsonl
from cot_rm.train.data import load_traces
from cot_rm.train.log import note
from cot_rm.train.rft import data as rft_data
from cot_rm.train.rft.config import RFTRunConfig
from cot_rm.train.rft.keep import KeepRule, choose, summarize
from cot_rm.train.rft.sampler import draw_batches, generation_config, make_rollouts, turn_generator
from cot_rm.train.rft.samples import SampleLog, checkpoint_digest
from cot_rm.train.runs import check_run_folder, last_checkpoint, start_run
from cot_rm.train.sft.trainer import make_trainer, train_and_finish

# `cot-rm rft --help`
DESCRIPTION = (
    "Rejection-sampling fine-tuning (between SFT and GRPO): sample K tool-using judgments per training video "
    "from a checkpoint, keep those that agree with the labels, fine-tune on them with SFT's losses. A killed "
    "run resumes (its draws are logged in train.output_dir/samples.jsonl). Example: "
    "cot-rm rft --config configs/tiny/rft.yaml sampling.k=2"
)
SAMPLES, TRACES, SUMMARY = "samples.jsonl", "rft_data.jsonl", "rft_summary.json"
# Settings that choose the traces trained on (the sampling settings are the sample log's to check).
CHOICE_KEYS = ("keep.", "sampling.k", "data.train", "data.pairs", "data.splits", "data.limit")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p, RFTRunConfig, DESCRIPTION)
    p.add_argument("--sample-only", action="store_true",
                   help="draw, keep and write the traces and the summary, without training (a multi-process "
                        "run needs its draws made this way first, in one process)")  # fmt: skip
    p.add_argument("--no-report", action="store_true", help="skip the end-of-run judged report")


def main(args: argparse.Namespace) -> int:
    try:
        cfg = config_from_args(RFTRunConfig, args)
        check_trl_args(SFTConfig, cfg.train)
        check_folder(Path(cfg.train["output_dir"]), cfg)  # before a draw is written there
        config = checkpoint_config(cfg.model.checkpoint)
        # The data is read and checked before the model loads.
        videos = rft_data.load_videos(cfg.data, JudgeSpec.from_dict(config.judge_spec))
        if cfg.data.eval_pairs:
            read_jsonl(cfg.data.eval_pairs, kind="pairwise")
        # TrainingArguments first: under DeepSpeed ZeRO-3 it must exist before the model loads (sharded init).
        trl_args = SFTConfig(**cfg.train, max_length=cfg.data.max_length)
        set_seed(trl_args.seed)
        weights = not (args.sample_only and cfg.sampling.backend == "vllm_server")  # a server needs none here
        model, processor = load(cfg, weights)
        path = sample_and_keep(cfg, videos, model, processor, config, trl_args.device)
        if args.sample_only:
            return 0
        traces = load_traces(path)  # checked line by line, as SFT checks its data
        trainer = make_trainer(model, trl_args, cfg, traces, traces)[0]
        resume = start_run(trainer, cfg, "cot-rm rft", f"{len(trainer.train_dataset)} examples from {path}")
    except (ConfigError, FileNotFoundError, ValueError, NotImplementedError, ImportError,
            RuntimeError) as err:  # fmt: skip
        print(f"cot-rm rft: {err}", file=sys.stderr)
        return 2
    return train_and_finish(model, trainer, cfg, resume, "cot-rm rft", args.no_report)


def check_folder(out: Path, cfg) -> None:
    """`check_run_folder`, and once training began there, no change to what chose its traces: the
    checkpoint would have trained on other traces than `rft_data.jsonl` then holds."""
    changed = check_run_folder(out, cfg)
    began = last_checkpoint(out) is not None or (out / "trainer_state.json").is_file()
    if began and (choice := [k for k in changed if k.startswith(CHOICE_KEYS)]):
        raise ValueError(
            f"{out} holds a run that trained on traces chosen with other {', '.join(choice[:4])}; give another "
            "train.output_dir (or the old settings)"
        )


def checkpoint_config(folder: str) -> CotRmConfig:
    """The checkpoint's cot_rm.json: its dimensions and judging settings, before any weight is loaded."""
    if not (Path(folder) / CONFIG_NAME).is_file():
        raise FileNotFoundError(
            f"{folder}: not a cot-rm checkpoint (no {CONFIG_NAME}); give `cot-rm sft`'s output"
        )
    return CotRmConfig.load(folder)


def load(cfg, weights: bool = True):
    """(model or None, processor) of `model.checkpoint`, the model trainable as in `cot-rm grpo`."""
    m = cfg.model
    if not weights:
        return None, AutoProcessor.from_pretrained(m.checkpoint)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[m.dtype]
    model = ThinkThenScore.from_pretrained(m.checkpoint, base_model=m.base_model, torch_dtype=dtype,
                                           attn_implementation=m.attn_implementation, is_trainable=True)  # fmt: skip
    return model, model.processor


def sample_and_keep(cfg, videos, model, processor, config, device) -> Path:
    """Draw what the log lacks, keep and choose, write the traces and the summary (main process; the
    others wait and read them). Returns the traces file."""
    out, state = Path(cfg.train["output_dir"]), PartialState()
    spec = JudgeSpec.from_dict(config.judge_spec)
    log = SampleLog(out / SAMPLES, sampling_settings(cfg))
    with state.main_process_first():  # the main process cuts a half-written line before the others read
        logged = log.load()
    if state.is_main_process:  # the log took these settings: a rerun is compared with them
        save_config(cfg, out / "run_config.yaml")
    before = len(logged)
    todo = [(row, d) for row in videos.rows for d in range(cfg.sampling.k) if (row["id"], d) not in logged]
    if todo and state.num_processes > 1:
        raise ValueError(f"{len(todo)} judgments are not drawn yet: draw them in one process first "
                         "(cot-rm rft --sample-only with the same config), then launch the training")  # fmt: skip
    if todo:
        for records in draw(cfg, todo, model, processor, config, device):
            log.append(records)
            logged.update({(r["video_id"], r["draw"]): r for r in records})
    counts = {"draws_in_log_before": before, "draws_made": len(todo), "cut_lines": int(log.cut_bytes > 0),
              "duplicate_lines": log.duplicates}  # fmt: skip
    traces, summary = choose_traces(cfg, videos, logged, spec, out, counts)  # on every process: the same
    if state.is_main_process:
        write_jsonl(out / TRACES, traces)
        _write_json(out / SUMMARY, summary)
        print(json.dumps(summary, indent=2), flush=True)
        note(__name__, sentence(summary))
    state.wait_for_everyone()
    return out / TRACES


def draw(cfg, todo, model, processor, config, device):
    """The sample records of `todo`, batch by batch (GRPO's rollouts, the configured backend)."""
    s = cfg.sampling
    eos = model.vlm.generation_config.eos_token_id if model is not None else _saved_eos(cfg.model.checkpoint)
    gen_cfg = generation_config(processor, config.reward_token, s, eos)
    if model is not None:
        model.to(device).eval()
    generate_turn, cache = turn_generator(
        s, model, processor, config.family, gen_cfg, cfg.train["output_dir"]
    )
    try:
        with torch.inference_mode():
            yield from draw_batches(
                make_rollouts(processor, config, s, generate_turn, cfg.data.frame_cache), todo, s
            )
    finally:
        if cache is not None:
            cache.remove()  # the trainer installs its own
        if model is not None:
            model.train()


def sampling_settings(cfg) -> dict:
    """What the draws depend on: a log is continued only under the same (`cot_rm.train.rft.samples`)."""
    s, ckpt = cfg.sampling, Path(cfg.model.checkpoint)
    return {"checkpoint": str(ckpt.resolve()), "checkpoint_digest": checkpoint_digest(ckpt),
            "temperature": s.temperature, "top_p": s.top_p, "top_k": s.top_k, "seed": s.seed,
            "max_completion_length": s.max_completion_length, "max_turn_tokens": s.max_turn_tokens}  # fmt: skip


def choose_traces(
    cfg, videos, logged: dict, spec: JudgeSpec, out: Path, counts: dict
) -> tuple[list[dict], dict]:
    """The traces to train on (a kept draw, or the fallback, per video) and the summary of the choice."""
    k = cfg.keep
    rule = KeepRule(k.tolerance, k.pair_order, k.allow_invalid_calls, k.selection)
    draws = {r["id"]: [logged[(r["id"], d)] for d in range(cfg.sampling.k) if (r["id"], d) in logged]
             for r in videos.rows}  # fmt: skip
    outcome = choose(videos.labels, draws, videos.pairs, rule)
    sampled_by = {"model": str(Path(cfg.model.checkpoint).resolve()),
                  "checkpoint_digest": checkpoint_digest(cfg.model.checkpoint)}  # fmt: skip
    traces = []
    for row in videos.rows:
        ref = rft_data.video_ref(row["video"], out)
        if row["id"] in outcome.chosen:
            chosen = outcome.chosen[row["id"]]
            traces.append(rft_data.kept_trace(row, chosen, videos.labels[row["id"]], spec, ref, sampled_by))
        elif k.fallback == "synthesized":
            traces.append(rft_data.fallback_trace(row, ref))
    summary = {**sampled_by, "k": cfg.sampling.k, "tolerance": k.tolerance, "pair_order": k.pair_order,
               "selection": k.selection, "fallback": k.fallback,
               **summarize(outcome, videos.labels, draws, rule, k.fallback), **counts,
               "traces_written": len(traces), "samples": str(out / SAMPLES), "traces": str(out / TRACES)}  # fmt: skip
    summary["pairs"]["skipped"] = sum(videos.pairs_skipped.values())
    if not traces:
        raise ValueError(
            f"no judgment was kept and keep.fallback is drop: nothing to train on ({out / SUMMARY})"
        )
    return traces, summary


def sentence(s: dict) -> str:
    """The summary in one line, for the log."""
    r = s["rejected"]
    return (f"cot-rm rft: {s['draws']} judgments of {s['videos']} videos: {s['kept']} kept; rejected {r['unparsed']} "
            f"unparsed, {r['invalid_tool_call']} with an invalid tool call, {r['tolerance']} off the label, "
            f"{r['pair_order']} misordering a pair; {s['videos_with_kept']} videos train on their own judgment, "
            f"{s['fallback_synthesized']} on their synthesized trace, {s['dropped']} dropped")  # fmt: skip


def _saved_eos(checkpoint: str):
    """The end tokens in the checkpoint's generation_config.json (None without one: a LoRA adapter's)."""
    try:
        return GenerationConfig.from_pretrained(checkpoint).eos_token_id
    except OSError:
        return None


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    tmp.replace(path)
