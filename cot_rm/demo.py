"""`cot-rm demo`: the whole tiny pipeline on a CPU, which is `recipes/tiny_cpu.sh` with OUT=runs/demo.

One definition of the pipeline (the recipe), so the demo and the recipe can never drift apart:
toy world -> oracle synthesis -> SFT (configs/tiny/sft.yaml) -> [RFT (configs/tiny/rft.yaml), with --rft]
-> GRPO (configs/tiny/grpo.yaml) -> eval on the held-out toy pairs -> one judged HTML critique. Each stage
is echoed, skippable (SKIP="sft grpo") and resumable: a rerun skips the stages that finished (their
markers are in OUT/.done/).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "tiny_cpu.sh"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument("--n", type=int, default=None, help="toy-world videos (default: the recipe's)")
    p.add_argument("--sft-steps", type=int, default=None, help="stop SFT after this many steps")
    p.add_argument("--grpo-steps", type=int, default=None, help="stop GRPO after this many steps")
    p.add_argument(
        "--rft",
        action="store_true",
        help="add the optional RFT stage between SFT and GRPO (configs/tiny/rft.yaml; GRPO starts from it)",
    )
    p.add_argument(
        "--fresh", action="store_true", help="start over: delete OUT (a folder an earlier demo wrote) first"
    )


def main(args: argparse.Namespace) -> int:
    if not RECIPE.is_file():
        print(f"cot-rm demo: {RECIPE} not found; run it from a source checkout (git clone + make demo)",
              file=sys.stderr)  # fmt: skip
        return 2
    env = dict(os.environ, OUT=str(Path(args.out).resolve()))
    if args.n is not None:
        env["N"] = str(args.n)
    for key, steps in (("SFT_ARGS", args.sft_steps), ("GRPO_ARGS", args.grpo_steps)):
        if steps is not None:  # appended to what the caller's environment already asks for
            env[key] = f"{env.get(key, '')} train.max_steps={steps}".strip()
    if args.rft:  # the recipe runs from the repo root
        env["RFT_CONFIG"] = "configs/tiny/rft.yaml"
    out = Path(env["OUT"])
    if args.fresh and out.exists():
        # Markers alone are not enough: sft and grpo resume from what their folders already hold.
        if not (out / ".done").is_dir():
            print(f"cot-rm demo: --fresh: {out} has no .done/, so no demo wrote it; not deleting it",
                  file=sys.stderr)  # fmt: skip
            return 2
        shutil.rmtree(out)
    return subprocess.run(["bash", str(RECIPE)], env=env).returncode
