"""`cot-rm eval`: metrics from a predictions file, or a checkpoint judged on a benchmark.

    cot-rm eval --predictions FILE --out DIR [--tie-eps X | --val-predictions VAL]
    cot-rm eval --model CKPT --bench NAME --data PATH [--root VIDEOS] --out DIR [--split test] [--limit N]
    cot-rm eval --model CKPT --bench NAME --data PATH --out DIR --probes [--probe-videos N]

This module is the command line; the work is in `eval.run` (judging and metrics), `eval.probes` (the
reward-hacking probes) and `eval.report` (report.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cot_rm.config import positive
from eval import metrics, probes
from eval.benchmarks import BENCHES, BenchError
from eval.report import write_report
from eval.run import EvalError, eval_model, eval_predictions


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Evaluate a predictions file (no model needed), or judge a benchmark with a cot-rm checkpoint "
        "(greedy or --samples K, the checkpoint's own frame sampling; resumable), or run reward-hacking "
        "probes. On pairs, the head's probabilities of A better / tie / B better are scored too (log-loss, "
        "Brier, ECE). "
        "Writes DIR/metrics.json (or probes.json) and DIR/report.md."
    )
    arg = p.add_argument
    # fmt: off
    arg("--predictions", type=Path, metavar="FILE", help="metrics from this predictions JSONL alone (format: README)")
    arg("--model", type=Path, metavar="CKPT", help="a cot-rm checkpoint (save_pretrained folder) to judge with")
    arg("--bench", choices=BENCHES, default="jsonl",
        help="benchmark loader for --data (default jsonl: the project's own records; the public ones "
        "and where to get them are listed in the README)")
    arg("--data", type=Path, metavar="PATH", help="the benchmark's annotation file (JSONL, CSV, JSON or Parquet)")
    arg("--root", type=Path, metavar="DIR", help="folder the video paths are relative to (default: --data's folder)")
    arg("--out", type=Path, required=True, metavar="DIR", help="output folder (also the resumable cache)")
    arg("--split", choices=("train", "val", "test"), help="jsonl only: keep records of this split (and records without one)")
    arg("--limit", type=int, metavar="N", help="evaluate the first N records only")
    tie = p.add_mutually_exclusive_group()
    tie.add_argument("--tie-eps", type=float, metavar="X",
                     help="also report accuracy with ties at this fixed eps (score scale; default: the "
                     "checkpoint's tie_margin when fitted)")
    tie.add_argument("--val-predictions", type=Path, metavar="FILE",
                     help="a predictions file on validation pairs (same model): each dimension's tie eps is "
                     "searched there and applied here, reported beside the eps searched on this set")
    arg("--probes", action="store_true",
        help="reward-hacking probes: judge static / duplicated / shuffled / colour-drifted copies and a "
        "swapped prompt, report how the scores move (DIR/probes.json)")
    arg("--probe-videos", type=int, default=32, metavar="N", help="with --probes: videos to perturb (default 32)")
    arg("--samples", type=int, default=0, metavar="K",
        help="score each video by the mean of K >= 1 sampled judgments instead of one greedy one (default "
        "0: greedy); metrics.json adds the draws' spread")
    arg("--temperature", type=float, default=0.7, help="with --samples: sampling temperature (default 0.7)")
    arg("--top-p", type=float, default=1.0, help="with --samples: nucleus sampling (default 1)")
    arg("--seed", type=int, default=0, help="with --samples: draw s of each batch uses seed + s (default 0)")
    arg("--max-new-tokens", type=positive(int), default=512, metavar="N", help="per assistant turn (default 512)")
    arg("--batch-size", type=positive(int), default=4, metavar="N", help="videos per judging batch (default 4)")
    arg("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1, ...")
    arg("--dtype", choices=("auto", "bfloat16", "float16", "float32"), default="auto",
        help="auto: bfloat16 on CUDA, float32 on CPU")


def main(args: argparse.Namespace) -> int:
    try:
        if (args.predictions is None) == (args.model is None):
            raise EvalError("give exactly one of --predictions FILE or --model CKPT")
        if args.out.exists() and not args.out.is_dir():
            raise EvalError(f"--out {args.out}: exists and is not a folder; give a folder for the outputs")
        if args.probes and args.model is None:
            raise EvalError("--probes needs --model CKPT and --data (the videos to perturb)")
        if args.predictions is not None:
            name, result = (
                "metrics.json",
                eval_predictions(args.predictions, args.tie_eps, args.val_predictions),
            )
        elif args.probes:
            name, result = "probes.json", probes.run(args)
        else:
            name, result = "metrics.json", eval_model(args)
    except (EvalError, BenchError, metrics.PredictionsError) as err:
        print(f"cot-rm eval: {err}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / name).write_text(json.dumps(result, indent=2) + "\n")
    write_report(args.out)
    print((args.out / "report.md").read_text(encoding="utf-8"))  # the metrics, as tables
    print(f"cot-rm eval: wrote {args.out / name} and report.md", file=sys.stderr)
    return 0
