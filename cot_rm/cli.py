"""The one `cot-rm` entry point. Each subcommand lives in its own module; this file only wires them.

A subcommand module exposes `add_arguments(parser)` and `main(args) -> int`. Modules are imported
lazily so that `cot-rm --help` and light commands stay fast (torch is not imported for them).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# name -> (module, one-line help). Each module exposes `add_arguments(parser)` and `main(args) -> int`.
COMMANDS: dict[str, tuple[str, str]] = {
    "video-info": ("cot_rm.media.cli", "Decode a video and print its sampling plan as JSON."),
    "toyworld": ("data_synthesis.toyworld.world", "Generate the procedural toy world (videos + labels)."),
    "synthesize": ("data_synthesis.pipeline", "Teacher rationales -> filtered tool traces (SFT data)."),
    "pretrain": (
        "cot_rm.train.pretrain.trainer",
        "Stage 0 (tiny model only): perception pretraining on toy-world descriptions.",
    ),
    "sft": ("cot_rm.train.sft.trainer", "Stage 1: SFT cold start with masked loss and the regression head."),
    "rft": (
        "cot_rm.train.rft.trainer",
        "Between stages 1 and 2: rejection-sampling fine-tune on the model's own agreeing judgments.",
    ),
    "grpo": ("cot_rm.train.grpo.trainer", "Stage 2: GRPO with tool rollouts and the head co-trained."),
    "eval": ("eval.cli", "Evaluate predictions or a checkpoint on a benchmark."),
    "judge": ("cot_rm.judge.cli", "Judge videos with a checkpoint (local transformers)."),
    "serve": ("cot_rm.serve.cli", "Serve a checkpoint: judge API, OpenAI routes, interactive page."),
    "demo": ("cot_rm.demo", "Run the whole tiny pipeline on the toy world (CPU)."),
}


# Packages of optional extras: a command that needs one says which extra to install.
EXTRAS = {"fastapi": "serve", "uvicorn": "serve", "starlette": "serve", "multipart": "serve"}


class MissingExtra(Exception):
    """A command's module needs a package of an optional extra that is not installed."""


def _load(module: str):
    """The subcommand's module (imported only when that command runs: the registry is what keeps
    `cot-rm --help` and light commands fast, without torch)."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        extra = EXTRAS.get((err.name or "").split(".")[0])
        if extra is None:
            raise
        raise MissingExtra(f"needs the {extra!r} extra ({err.name} is missing): pip install 'cot-rm[{extra}]' "
                           "(`make setup` installs it)") from None  # fmt: skip


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
            try:
                mod = _load(module)
            except MissingExtra as err:
                p.set_defaults(_missing=str(err))
                continue
            mod.add_arguments(p)
            p.set_defaults(_main=mod.main)
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
        print(f"cot-rm {args.command}: {args._missing}", file=sys.stderr)
        return 2
    return int(args._main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
