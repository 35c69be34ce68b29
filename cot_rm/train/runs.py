"""A training run's folder, shared by every stage: its run_config.yaml, the checkpoint a killed run resumes
from (or the refusal to resume under settings that shaped the weights), and training to the last step."""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from cot_rm.config import dump_config, save_config
from cot_rm.train.log import note

# Settings a checkpoint's weights are shaped by: a run cannot resume under other values of these.
FIXED_KEYS = (
    "model.base",
    "model.checkpoint",
    "model.dimensions",
    "model.head",
    "model.lora",
    "model.freeze_vision",
)


def start_run(trainer, cfg, prog: str, what: str) -> str | None:
    """Shared by `cot-rm sft`, `cot-rm rft` and `cot-rm grpo`: the output folder and its run_config.yaml (main
    process), a line saying what trains where, and the checkpoint a killed run resumes from (or None).
    Raises ValueError when the folder holds another kind of run, or one the new settings cannot resume."""
    out = Path(trainer.args.output_dir)
    resume = last_checkpoint(out)
    changed = check_run_folder(out, cfg)
    if changed and resume is not None and trainer.is_world_process_zero():
        note(__name__, f"{prog}: resuming a run started with other settings ({', '.join(changed[:8])}); data and "
              "loss settings apply from here, the optimizer and learning-rate schedule continue from "
              "the checkpoint")  # fmt: skip
    if trainer.is_world_process_zero():
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "run_config.yaml")
        note(__name__, f"{prog}: {what} -> {out}")
    if resume is not None:
        note(__name__, f"{prog}: resuming from {resume}")
    return resume


def check_run_folder(out: Path, cfg) -> list[str]:
    """The dotted keys whose values differ from the earlier run's in `out` (none when there is none).
    Raises ValueError when `out` holds another kind of run, or one whose weight-shaping settings differ
    (`FIXED_KEYS`). Called before anything is written there (RFT calls it before it samples)."""
    if not (out / "run_config.yaml").is_file():  # an earlier run writes it first, with checkpoints or not
        return []
    changed = changed_keys(out / "run_config.yaml", cfg)
    if fixed := [k for k in changed if k.startswith(FIXED_KEYS)]:
        raise ValueError(
            f"{out} holds a run with other {', '.join(fixed[:4])}; it cannot continue (or be overwritten) "
            "under these settings: give another train.output_dir (or the old settings)"
        )
    return changed


def train_to_the_end(trainer, resume: str | None, prog: str, final: tuple[str, ...]) -> int | None:
    """Train, or resume, up to the run's last step. Returns an exit status to stop with (0: the run had
    finished and `final` files are in the output folder, nothing to do; 130: interrupted), or None to go
    on to the final save."""
    out = Path(trainer.args.output_dir)
    done = finished(trainer, resume)
    if done and all((out / name).is_file() for name in final):
        note(__name__, f"{prog}: the run in {out} is finished and its final model is there: nothing to do "
              "(another train.output_dir, or more train.max_steps or epochs, trains more)")  # fmt: skip
        return 0
    if done and resume is not None and not trainer.is_deepspeed_enabled:  # killed after its last step
        trainer.state = trainer.state.load_from_json(str(Path(resume) / "trainer_state.json"))
        trainer._load_from_checkpoint(resume)
        return None
    try:
        trainer.train(resume_from_checkpoint=resume)
    except KeyboardInterrupt:
        note(__name__, f"{prog}: interrupted; rerun the same command to resume from the last checkpoint")
        return 130
    return None


def finished(trainer, resume: str | None) -> bool:
    """Whether the run already reached its last step (a rerun of a finished run would otherwise train one
    step more): the newest checkpoint's state, or the output folder's own (a run that saves no
    checkpoints, `save_strategy: no`)."""
    where = Path(resume) if resume is not None else Path(trainer.args.output_dir)
    if not (where / "trainer_state.json").is_file():
        return False
    state = json.loads((where / "trainer_state.json").read_text())
    if trainer.args.max_steps > 0:
        target = trainer.args.max_steps
    elif trainer.args.num_train_epochs > state.get("num_train_epochs", 0):  # more epochs asked for now
        return False
    else:
        target = state.get("max_steps", 0)
    return bool(target) and state.get("global_step", 0) >= target


def changed_keys(path: Path, cfg) -> list[str]:
    """Dotted keys whose value differs between the saved run_config.yaml and `cfg`."""
    try:
        old = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return []

    def flat(d, prefix=""):
        if not isinstance(d, dict):
            return {prefix: d}
        return {k: v for key, sub in d.items() for k, v in flat(sub, f"{prefix}{key}.").items()}

    new = dump_config(cfg)
    if isinstance(old, dict) and set(old) != set(new):  # e.g. an SFT run's folder given to `cot-rm grpo`
        raise ValueError(
            f"{path.parent} holds another kind of run (its run_config.yaml has sections {sorted(old)}); "
            "give this one its own train.output_dir"
        )
    then = next(
        (line[7:].strip() for line in path.read_text().splitlines() if line.startswith("# cwd: ")), "."
    )
    a, b = flat(old), flat(new)
    return sorted(k.rstrip(".") for k in a.keys() | b.keys() if not _same(a.get(k), b.get(k), then))


def _same(a, b, then: str = ".") -> bool:
    """Equal values, or two spellings of one existing path (relative vs absolute, through a symlink);
    `a`, if relative, was given from the folder `then` (run_config.yaml's `# cwd:` line)."""
    if a == b:
        return True
    if not (isinstance(a, str) and isinstance(b, str)):
        return False
    a = os.path.join(then, a)  # an absolute `a` stays as it is
    return os.path.exists(a) and os.path.exists(b) and os.path.realpath(a) == os.path.realpath(b)


def last_checkpoint(out: Path) -> str | None:
    """The newest COMPLETE checkpoint-N folder of a killed run (None on a fresh run).

    The Trainer writes trainer_state.json last, so a folder without a readable one was cut short by the
    kill (resuming from it would crash or load half-written weights): it is skipped, with a note.
    """
    if not out.is_dir():
        return None
    found = []
    for path in out.iterdir():
        prefix, _, step = path.name.partition("-")
        if prefix == PREFIX_CHECKPOINT_DIR and step.isdigit() and path.is_dir():
            found.append((int(step), path))
    for _, path in sorted(found, reverse=True):
        try:
            json.loads((path / "trainer_state.json").read_text())
        except (OSError, ValueError):
            note(__name__, f"skipping {path}: incomplete (no readable trainer_state.json)")
            continue
        return str(path)
    return None
