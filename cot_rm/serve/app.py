"""The FastAPI app of `cot-rm serve` (started by `cot_rm.serve.cli`): one HTTP server for a checkpoint: the judge API, OpenAI routes, an interactive page.

    cot-rm serve --model runs/demo/grpo --port 8000 --allowed-media-root /data/videos

starts the vLLM OpenAI server (from the vLLM interpreter, on an internal port) for the checkpoint's
language model and loads the checkpoint's head here, then serves on PORT:

- `GET /health`: 200 once the engine and the head are ready (503 while starting);
- `GET /v1/models`, `POST /v1/chat/completions` (streaming too): proxied to vLLM, so the OpenAI client
  works against this one URL;
- `POST /v1/judge`: JSON `{"video": path-or-URL, "prompt": text}` or a multipart upload (`file` +
  `prompt`) -> the Judgment JSON of the README (greedy: the same request gives the same scores); an
  http(s) URL is downloaded into the server's temp folder (same size limit as uploads) first, under
  the media-URL policy (`cot_rm.serve.media_policy`: no loopback, private or link-local targets unless
  `--allow-private-media-urls`, only `--allowed-media-domains` when given, every redirect checked);
  `?stream=1` answers NDJSON events instead (each turn as it arrives, then the judgment);
  `?report=1` adds `report_html` (`cot_rm.judge.html`'s page: the critique beside its cited frames);
  `samples`, `temperature`, `top_p`, `seed` ask for sampled judging (`cot_rm.judge.sampling`);
- `POST /v1/judge/pair`: `{"video_a", "video_b", "prompt"[, "prompt_b"]}` (or a form with `file_a`,
  `file_b`) -> the pair judgment (`cot_rm.judge.pairwise`: P(A better), P(tie), P(B better) per dimension);
- `GET /`: the interactive page.

Bad input gets a 4xx with `{"error": ...}`; a full queue gets 503 with Retry-After. Paths and file://
URLs (chat requests' media too) must lie under `--allowed-media-root` after resolving `..` and
symlinks (`cot_rm.serve.media`); a chat request's http(s) media is downloaded here under the same
policy as /v1/judge's and handed to the engine as data (the engine is started unable to fetch). With
`--api-key` (or $COT_RM_API_KEY) every /v1 route wants `Authorization: Bearer KEY`.
"""

from __future__ import annotations

import sys

import httpx
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from cot_rm.serve.deps import Settings
from cot_rm.serve.judge import Admission, ServedJudge
from cot_rm.serve.media import ClientError
from cot_rm.serve.routers import judge, openai, page

PROG = "cot-rm serve"


def create_app(settings: Settings, served: ServedJudge | None, engine_url: str | None, ready=lambda: True,
               max_active: int = 64, on_startup=None, on_shutdown=None) -> FastAPI:  # fmt: skip
    """The app, its shared state in `app.state` (settings, the served judge, the engine's URL, the
    admission queue, one HTTP client to the engine) and its routers. `served` None (unit tests) still
    answers every validation error; `engine_url` None: no engine (`--backend local`, `served` a
    `cot_rm.serve.local.LocalServedJudge`)."""

    async def lifespan(app: FastAPI):
        app.state.client = httpx.AsyncClient(timeout=600.0)
        if on_startup is not None:
            await on_startup()
        yield
        if on_shutdown is not None:
            await on_shutdown()
        await app.state.client.aclose()

    app = FastAPI(title="cot-rm serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.settings, app.state.served, app.state.engine_url = settings, served, engine_url
    app.state.ready, app.state.admission, app.state.client = ready, Admission(max_active), None
    for name, handler in ERROR_HANDLERS.items():
        app.add_exception_handler(name, handler)
    for module in (page, openai, judge):
        app.include_router(module.router)
    return app


def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def client_error(_req, err: ClientError):
    return error(err.status, err.message, err.headers)


async def http_error(_req, err: HTTPException):
    return error(err.status_code, str(err.detail))


async def invalid(_req, err: RequestValidationError):
    first = (err.errors() or [{}])[0]  # e.g. ?stream=abc: "query stream: Input should be a valid integer"
    where = " ".join(str(x) for x in first.get("loc", ()))
    return error(400, f"bad request: {where}: {first.get('msg', 'invalid')}")


async def internal(_req, err: Exception):
    print(f"{PROG}: internal error: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
    return error(500, f"internal error ({type(err).__name__})")


# Every error answers `{"error": ...}` with its status; a bug answers 500 without its details.
ERROR_HANDLERS = {ClientError: client_error, HTTPException: http_error, RequestValidationError: invalid,
                  Exception: internal}  # fmt: skip
