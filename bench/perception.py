"""Linear probes on the vision features of one or more bases, on a fresh toy world (eval/perception.py).

Builds the world (`cot-rm toyworld --seed SEED --n N`) when it is missing, probes each base and appends a
table to bench/RESULTS.md: accuracy per question, and chance (the test part's majority class).

    .venv/bin/python bench/perception.py --base RANDOM_TINY_BASE --base assets/tiny-qwen2_5_vl-base

(a random base of the same shape: `BASE=random recipes/tiny_cpu.sh` builds one into OUT/tiny-qwen2_5_vl)
"""

from __future__ import annotations

import argparse
import datetime as dt
import shlex
import sys
from pathlib import Path

from cot_rm.media.video import Sampling
from data_synthesis.toyworld.world import ToyConfig, build
from eval.perception import QUESTIONS, probe_accuracy

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", action="append", required=True, help="a base folder (repeat to compare)")
    p.add_argument("--world", default="runs/perception_world", help="toy world folder (built when missing)")
    p.add_argument("--seed", type=int, default=5, help="its seed: not the corpus's (1001) nor the demo's (0)")
    p.add_argument("--n", type=int, default=600, help="videos")
    p.add_argument("--frames", type=int, default=8, help="frames sampled per video (the demo's 8)")
    p.add_argument("--max-pixels", type=int, default=12544, help="pixels per frame (the demo's 112x112)")
    p.add_argument("--results-md", default=str(ROOT / "bench" / "RESULTS.md"), help="appended to ('' : no)")
    args = p.parse_args()
    world = Path(args.world)
    if not (world / "pointwise.jsonl").is_file():
        build(world, ToyConfig(args.n, args.seed), progress=True)
    sampling = Sampling(
        fps=None, num_frames=args.frames, min_pixels=args.max_pixels, max_pixels=args.max_pixels
    )
    rows = {base: probe_accuracy(base, world, sampling) for base in args.base}
    chance = next(iter(rows.values()))["chance"]
    lines = [
        f"## perception — {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC (CPU)",
        "",
        f"`{shlex.join(['python', 'bench/perception.py', *sys.argv[1:]])}`",
        "",
        f"Linear probes (train {next(iter(rows.values()))['train']} / test the rest of {args.n} videos of toy "
        f"world seed {args.seed}) on the vision features each base hands its language model, mean-pooled "
        "over space per temporal slice (eval/perception.py).",
        "",
        "| base | " + " | ".join(QUESTIONS) + " |",
        "|---|" + "---|" * len(QUESTIONS),
        "| chance (majority) | " + " | ".join(f"{chance[q]:.2f}" for q in QUESTIONS) + " |",
    ]
    lines += [
        f"| `{base}` | " + " | ".join(f"{r[q]:.2f}" for q in QUESTIONS) + " |" for base, r in rows.items()
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.results_md:
        with open(args.results_md, "a", encoding="utf-8") as f:
            f.write("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
