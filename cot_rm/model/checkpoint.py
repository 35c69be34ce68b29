"""Loading a trained cot-rm checkpoint for inference, one way for the judge, eval and the server."""

from __future__ import annotations

from pathlib import Path

import torch

from cot_rm.model.modeling import ThinkThenScore


class CheckpointError(ValueError):
    """Why a folder cannot be loaded as a cot-rm checkpoint, in one line."""


def resolve_device(device: str = "auto") -> str:
    """ "auto": CUDA when there is a GPU, else the CPU; anything else as given ("cpu", "cuda:1", ...)."""
    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


def resolve_dtype(dtype: str, device: str) -> str:
    """ "auto": bfloat16 on CUDA, float32 elsewhere (bf16 on a CPU is slow and gains nothing here)."""
    return ("bfloat16" if device.startswith("cuda") else "float32") if dtype == "auto" else dtype


def load_checkpoint(
    path: str | Path, device: str = "auto", dtype: str = "auto"
) -> tuple[ThinkThenScore, str, str]:
    """(the model in eval mode on the device, the device, the dtype name) of a `save_pretrained` folder.
    Raises `CheckpointError` for a missing folder, a folder without cot_rm.json, or weights that do not
    load."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint folder")
    if not (path / "cot_rm.json").is_file():
        raise CheckpointError(f"{path}: not a cot-rm checkpoint (no cot_rm.json; see save_pretrained)")
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    try:
        model = ThinkThenScore.from_pretrained(path, torch_dtype=getattr(torch, dtype)).to(device).eval()
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: cannot load the checkpoint ({first})") from None
    return model, device, dtype
