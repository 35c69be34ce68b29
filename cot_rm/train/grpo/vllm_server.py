"""The vLLM server that GRPO's `rollout.backend: vllm_server` generates with, started for a checkpoint.

    python -m cot_rm.train.grpo.vllm_server --model runs/qwen2_5_vl_7b/sft --port 8001 [-- VLLM ARGS...]

runs vLLM's OpenAI server in the foreground on the checkpoint's language model (a view of the folder
without the head; a LoRA checkpoint merged first), with the routes and environment the backend needs
(`cot_rm.train.grpo.vllm.SERVER_FLAGS`, VLLM_SERVER_DEV_MODE=1 for the weight reload), started through
`cot_rm/train/grpo/vllm_api_server.py` so that its tokens-in route takes Qwen3-VL's sparse video
placeholders. Point the GRPO config's
`rollout.vllm_url` at it. The trainer writes the synced weights to `rollout.vllm_sync_dir`, so the
server must run on the same host (or see the same folder). `recipes/multi_gpu.sh` starts it on its own GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from cot_rm.engine.vllm import default_vllm_python, engine_env, engine_view
from cot_rm.train.grpo.vllm import SERVER_ENV, SERVER_FLAGS

# vLLM's server with the placeholder masks of vllm_api_server.py. Run as a file through runpy, not as
# `python FILE`: that would put this folder, and its vllm.py, ahead of vLLM on sys.path.
API_SERVER = Path(__file__).with_name("vllm_api_server.py")
LAUNCH = "import runpy, sys; runpy.run_path(sys.argv.pop(1), run_name='__main__')"

# As `cot-rm serve`: one video and the tool's images per prompt, at most 448x448.
MM_LIMITS = {"image": {"count": 32, "width": 448, "height": 448},
             "video": {"count": 1, "num_frames": 32, "width": 448, "height": 448}}  # fmt: skip


def server_argv(python: str) -> list[str]:
    """The interpreter and script part of the rollout server's command (its vLLM arguments follow)."""
    return [python, "-c", LAUNCH, str(API_SERVER)]


def command(model: Path, port: int, python: str, host: str, extra: list[str]) -> list[str]:
    return [*server_argv(python), "--model", str(model), "--host", host, "--port", str(port),
            "--limit-mm-per-prompt", json.dumps(MM_LIMITS), *SERVER_FLAGS, *extra]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    p = argparse.ArgumentParser(
        prog="python -m cot_rm.train.grpo.vllm_server", description=__doc__.splitlines()[0]
    )
    p.add_argument("--model", type=Path, required=True, help="a cot-rm checkpoint (the SFT output)")
    p.add_argument("--port", type=int, default=8001, help="port (default 8001)")
    p.add_argument(
        "--host", default="127.0.0.1", help="interface (default 127.0.0.1; 0.0.0.0 for other hosts)"
    )
    p.add_argument("--vllm-python", default=default_vllm_python(), help="interpreter that has vllm")
    p.add_argument("--work", type=Path, default=None, help="folder for the model view (default: a temp dir)")
    args = p.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    if not (args.model / "cot_rm.json").is_file():
        p.error(f"{args.model} is not a cot-rm checkpoint (no cot_rm.json)")
    work = args.work or Path(tempfile.mkdtemp(prefix="cot-rm-rollout-"))
    view = engine_view(args.model, work)
    argv_vllm = command(view, args.port, args.vllm_python, args.host, extra)
    print("cot-rm rollout server:", " ".join(argv_vllm), file=sys.stderr, flush=True)
    # Foreground: the caller owns it. The environment of every private engine (no VLLM_API_KEY: the
    # trainer sends none), plus what the rollout routes need.
    os.execvpe(argv_vllm[0], argv_vllm, engine_env(**SERVER_ENV))
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
