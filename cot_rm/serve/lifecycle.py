"""Start-up and shutdown of `cot-rm serve`: the engine, the head, the HTTP server, in that order of care
(`--backend local`: no engine, the local judge answers, `cot_rm.serve.local`).

The HTTP server listens at once (GET /health answers 503 until ready); the vLLM engine starts as a
child process while the head loads here; once both are up, /health turns 200. If either fails the
server exits with the reason (and the engine's log tail). On SIGINT/SIGTERM the engine's whole
process group is stopped; the engine also dies with this process (PDEATHSIG) if we are killed.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
from pathlib import Path

import uvicorn

from cot_rm.engine.vllm import Engine, EngineSettings, default_vllm_python, free_port
from cot_rm.judge.local import Judge
from cot_rm.model.checkpoint import load_checkpoint
from cot_rm.model.config import CotRmConfig
from cot_rm.serve.app import create_app
from cot_rm.serve.judge import ServedJudge
from cot_rm.serve.local import LocalServedJudge

PROG = "cot-rm serve"


def _log(msg: str) -> None:
    print(f"{PROG}: {msg}", file=sys.stderr, flush=True)


def load_judge(args: argparse.Namespace):
    """The checkpoint's head and judge settings, as `cot-rm judge` loads them."""
    model, _, _ = load_checkpoint(args.model, args.device, args.dtype)
    return Judge.from_model(model, max_new_tokens=args.max_new_tokens, batch_size=args.score_batch_size,
                            name=str(args.model.resolve()))  # fmt: skip


def run(args: argparse.Namespace, settings, work: Path) -> int:
    config = CotRmConfig.load(args.model)
    engine = None
    if args.backend == "local":  # the local judge answers; no engine, so no OpenAI routes
        engine_url = None
    elif args.engine_url:
        engine_url = args.engine_url.rstrip("/")
    else:
        dtype = {"auto": "auto", "float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}[
            args.dtype
        ]
        es = EngineSettings(python=args.vllm_python or default_vllm_python(), port=args.vllm_port or free_port(),
                            allowed_media_root=str(settings.media_root), served_model_name=settings.model_name,
                            family=config.family, max_model_len=args.max_model_len,
                            max_num_seqs=max(8, min(args.max_queue, 256)), dtype=dtype,
                            extra_args=["--trust-request-mm-kwargs", *args.vllm_arg])  # fmt: skip
        engine = Engine(args.model, es, work)
        engine_url = engine.base_url
    status = {"ready": False, "failed": None}
    holder: dict = {}

    def ready() -> bool:
        return status["ready"] and (engine is None or engine.alive())

    async def prepare():
        try:
            if engine is not None:
                _log(f"starting the vLLM engine on port {engine.settings.port} (log: {engine.log_path})")
                engine.start()
            _log(f"loading the head from {args.model}")
            judge = await asyncio.to_thread(load_judge, args)
            if engine_url is None:
                served = LocalServedJudge(judge)
            else:
                served = ServedJudge(
                    judge, engine_url, settings.model_name, args.max_new_tokens, args.score_batch_size
                )
            served.start()
            holder["served"] = served
            if engine is not None:
                await asyncio.to_thread(engine.wait_healthy, args.start_timeout)
            status["ready"] = True
            _log(f"ready: http://{args.host}:{args.port}/ (model {settings.model_name})")
        except Exception as err:  # start-up failed: say why and stop serving
            status["failed"] = f"{type(err).__name__}: {err}"
            _log(f"start-up failed: {status['failed']}")
            server.should_exit = True

    async def on_startup():
        holder["prepare"] = asyncio.create_task(prepare())

    def cleanup():
        if engine is not None:
            engine.stop()
        shutil.rmtree(work, ignore_errors=True)

    async def on_shutdown():
        if (served := holder.get("served")) is not None:
            await served.stop()
        # Here, not only after server.run(): uvicorn re-raises SIGTERM/SIGINT once it has shut down,
        # which ends the process before any code after run() (the engine would go by PDEATHSIG alone).
        await asyncio.to_thread(cleanup)

    class _Lazy:  # the app needs the ServedJudge before it exists: look it up per call
        def __getattr__(self, name):
            return getattr(holder["served"], name)

    app = create_app(settings, _Lazy(), engine_url, ready=ready, max_active=args.max_queue,
                     on_startup=on_startup, on_shutdown=on_shutdown)  # fmt: skip
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="warning",
                                           timeout_graceful_shutdown=5))  # fmt: skip
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C once shut down: the shutdown above was clean
        _log("stopped (interrupted)")
        return 130
    finally:
        cleanup()
    return 1 if status["failed"] or not status["ready"] else 0
