"""The one `cot-rm` entry point. Each subcommand lives in its own module; this file only wires them.

A subcommand module exposes `add_arguments(parser)` and `main(args) -> int`. Modules are imported
lazily so that `cot-rm --help` and light commands stay fast (torch is not imported for them).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# name -> (module, one-line help). Commands whose module does not exist yet say so when run.
COMMANDS: dict[str, tuple[str, str]] = {
    "video-info": ("cot_rm.video_cli", "Decode a video and print its sampling plan as JSON."),
    "toyworld": ("data_synthesis.toyworld", "Generate the procedural toy world (videos + labels)."),
    "synthesize": ("data_synthesis.pipeline", "Teacher rationales -> filtered tool traces (SFT data)."),
    "pretrain": (
        "cot_rm.pretrain",
        "Stage 0 (tiny model only): perception pretraining on toy-world descriptions.",
    ),
    "sft": ("cot_rm.sft", "Stage 1: SFT cold start with masked loss and the regression head."),
    "grpo": ("cot_rm.grpo", "Stage 2: GRPO with tool rollouts and the head co-trained."),
    "eval": ("eval.run", "Evaluate predictions or a checkpoint on a benchmark."),
    "judge": ("cot_rm.judge", "Judge videos with a checkpoint (local transformers)."),
    "serve": ("cot_rm.serve", "Serve a checkpoint: judge API, OpenAI routes, interactive page."),
    "demo": ("cot_rm.demo", "Run the whole tiny pipeline on the toy world (CPU)."),
}


def _load(module: str):
    """The subcommand's module, or None while it is not built (or is a library without a command yet)."""
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name == module:
            return None
        raise
    return mod if hasattr(mod, "add_arguments") and hasattr(mod, "main") else None


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cot-rm",
        description="cot-rm: trainer, judge and server for reasoning video reward models.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    # Only the chosen subcommand's module is imported (the others only lend their help line).
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_line) in COMMANDS.items():
        p = sub.add_parser(name, help=help_line, description=help_line)
        if name == chosen:
            mod = _load(module)
            if mod is not None:
                mod.add_arguments(p)
                p.set_defaults(_main=mod.main)
            else:
                p.set_defaults(_missing=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")  # nothing leaves the machine
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args, extra = parser.parse_known_args(argv)
    # KEY=VALUE overrides after a flag (`sft --config X --no-report a=b`): argparse takes positionals in one
    # run only, so it leaves those over; they are overrides all the same.
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command is None:
        parser.print_help()
        return 0
    if getattr(args, "_missing", None):
        print(f"cot-rm {args.command}: not available yet in this version.", file=sys.stderr)
        return 2
    return int(args._main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
