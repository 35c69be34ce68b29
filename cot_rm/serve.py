"""`cot-rm serve`: one HTTP server for a checkpoint: the judge API, OpenAI routes, an interactive page.

    cot-rm serve --model runs/demo/grpo --port 8000 --allowed-media-root /data/videos

starts the vLLM OpenAI server (from the vLLM interpreter, on an internal port) for the checkpoint's
language model and loads the checkpoint's head here, then serves on PORT:

- `GET /health`: 200 once the engine and the head are ready (503 while starting);
- `GET /v1/models`, `POST /v1/chat/completions` (streaming too): proxied to vLLM, so the OpenAI client
  works against this one URL;
- `POST /v1/judge`: JSON `{"video": path-or-URL, "prompt": text}` or a multipart upload (`file` +
  `prompt`) -> the Judgment JSON of the README (greedy: the same request gives the same scores); an
  http(s) URL is downloaded into the server's temp folder (same size limit as uploads) first, under
  the media-URL policy (`cot_rm.media_policy`: no loopback, private or link-local targets unless
  `--allow-private-media-urls`, only `--allowed-media-domains` when given, every redirect checked);
  `?stream=1` answers NDJSON events instead (each turn as it arrives, then the judgment);
  `?report=1` adds `report_html` (`cot_rm.report`'s page: the critique beside its cited frames);
- `GET /`: the interactive page.

Bad input gets a 4xx with `{"error": ...}`; a full queue gets 503 with Retry-After. Paths and file://
URLs (chat requests' media too) must lie under `--allowed-media-root` after resolving `..` and
symlinks (`cot_rm.serve_media`); a chat request's http(s) media is downloaded here under the same
policy as /v1/judge's and handed to the engine as data (the engine is started unable to fetch). With
`--api-key` (or $COT_RM_API_KEY) every /v1 route wants `Authorization: Bearer KEY`.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import os
import sys
import tempfile
import uuid
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from fastapi import Request  # at module level: FastAPI resolves the routes' annotations here
from starlette.requests import ClientDisconnect

from cot_rm.config import positive
from cot_rm.media_policy import MediaPolicy, parse_domains
from cot_rm.serve_judge import Admission, Busy, EngineError, ServedJudge
from cot_rm.serve_media import (
    ClientError,
    check_chat_media,
    check_remote,
    check_video,
    fetch_chat_media,
    fetch_media,
    is_remote,
    resolve_media,
)

PROG = "cot-rm serve"
API_KEY_ENV = "COT_RM_API_KEY"
RETRY_AFTER_S = 2
# Fields a caller may not set on proxied completions: they steer the engine's media loading and
# templating, which the engine trusts (it is started with --trust-request-mm-kwargs for the judge).
ENGINE_ONLY_FIELDS = ("media_io_kwargs", "mm_processor_kwargs", "chat_template", "chat_template_kwargs")


@dataclass
class Settings:
    media_root: Path  # resolved
    upload_dir: Path  # uploads and downloads, deleted once judged
    api_key: str | None = None
    max_upload_bytes: int = 200 * 2**20  # uploads and http(s) downloads alike
    model_name: str = "cot-rm"
    media_urls: bool = True  # fetch http(s) media for /v1/judge and chat requests
    fetch_timeout_s: float = 60.0
    media_policy: MediaPolicy = MediaPolicy()  # which URLs may be fetched (default: public addresses)


def create_app(settings: Settings, served: ServedJudge | None, engine_url: str, ready=lambda: True,
               max_active: int = 64, on_startup=None, on_shutdown=None):  # fmt: skip
    """The FastAPI app. `served` None (unit tests) still answers every validation error."""
    import httpx
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
    from starlette.exceptions import HTTPException

    from cot_rm.video import VideoError

    admission = Admission(max_active)
    state = {"client": None}

    async def lifespan(_app):
        state["client"] = httpx.AsyncClient(timeout=600.0)
        if on_startup is not None:
            await on_startup()
        yield
        if on_shutdown is not None:
            await on_shutdown()
        await state["client"].aclose()

    app = FastAPI(title="cot-rm serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.admission = admission

    def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.exception_handler(ClientError)
    async def _client_error(_req, err: ClientError):
        return error(err.status, err.message, err.headers)

    @app.exception_handler(HTTPException)
    async def _http_error(_req, err: HTTPException):
        return error(err.status_code, str(err.detail))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_req, err: RequestValidationError):
        first = (err.errors() or [{}])[0]  # e.g. ?stream=abc: "query stream: Input should be a valid integer"
        where = " ".join(str(x) for x in first.get("loc", ()))
        return error(400, f"bad request: {where}: {first.get('msg', 'invalid')}")

    @app.exception_handler(Exception)
    async def _internal(_req, err: Exception):
        print(f"{PROG}: internal error: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        return error(500, f"internal error ({type(err).__name__})")

    def authorize(request: Request) -> None:
        if settings.api_key is None:
            return
        given = request.headers.get("authorization", "")
        token = (
            given[7:].strip() if given.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
        )
        if not hmac.compare_digest(token.encode(), settings.api_key.encode()):
            raise ClientError(401, "missing or wrong API key (send Authorization: Bearer KEY)")

    def require_ready() -> None:
        if served is None or not ready():
            raise ClientError(
                503, "the server is starting; retry shortly", {"Retry-After": str(RETRY_AFTER_S)}
            )

    def busy(err: Busy) -> ClientError:
        return ClientError(503, str(err), {"Retry-After": str(RETRY_AFTER_S)})

    @app.get("/health")
    async def health():
        if served is not None and ready():
            batches = served.scorer.batches  # head passes so far, and how many judgments each scored
            return {"status": "ok", "model": settings.model_name, "active": admission.active,
                    "judged": sum(batches), "head_passes": len(batches)}  # fmt: skip
        return error(503, "starting", {"Retry-After": "5"})

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return resources.files("cot_rm").joinpath("static", "serve.html").read_text(encoding="utf-8")

    @app.get("/v1/models")
    async def models(request: Request):
        authorize(request)
        require_ready()
        resp = await state["client"].get(engine_url + "/v1/models")
        return Response(resp.content, resp.status_code, media_type="application/json")

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        authorize(request)
        # Inline (base64) images may ride in a chat body: it gets the upload limit, a judge body 1 MB.
        too_big = f"the JSON body is over {settings.max_upload_bytes // 2**20} MB"
        body = await json_object(request, settings.max_upload_bytes, too_big)
        # Local media must lie under the root as /v1/judge's do (the engine checks too, but only its
        # own way): refused here with a 4xx, or rewritten to the real file the engine then loads.
        # http(s) media must pass the media-URL policy; it is downloaded below, inside a slot.
        remote = check_chat_media(body, settings.media_root, settings.media_urls, settings.media_policy)
        require_ready()
        for key in ENGINE_ONLY_FIELDS:
            body.pop(key, None)
        try:
            slot = admission.slot()
            await slot.__aenter__()
        except Busy as err:
            raise busy(err) from None
        try:  # the engine gets the bytes, never a URL to fetch
            await fetch_chat_media(remote, settings.upload_dir, settings.max_upload_bytes,
                                   settings.fetch_timeout_s, settings.media_policy)  # fmt: skip
        except BaseException:
            await slot.__aexit__(None, None, None)
            raise
        client = state["client"]
        if not body.get("stream"):
            try:
                resp = await client.post(engine_url + "/v1/chat/completions", json=body)
            finally:
                await slot.__aexit__(None, None, None)
            return Response(resp.content, resp.status_code, media_type="application/json")
        req = client.build_request("POST", engine_url + "/v1/chat/completions", json=body)
        resp = await client.send(req, stream=True)

        async def relay():
            try:
                async for chunk in resp.aiter_raw():
                    yield chunk
            finally:
                await resp.aclose()
                await slot.__aexit__(None, None, None)

        return StreamingResponse(relay(), resp.status_code, media_type=resp.headers.get("content-type"))

    @app.post("/v1/judge")
    async def judge(request: Request, stream: int = 0, report: int = 0):
        authorize(request)
        source, prompt, label, upload = await judge_input(request)
        try:
            if isinstance(source, Path):
                await asyncio.to_thread(check_video, source, label)
            require_ready()
            slot = admission.slot()
            try:
                await slot.__aenter__()
            except Busy as err:
                raise busy(err) from None
        except BaseException:
            _remove(upload)
            raise
        path = source
        if isinstance(source, str):  # an http(s) URL, fetched inside the slot (the queue bounds downloads)
            try:
                path = upload = await fetch_media(source, settings.upload_dir, settings.max_upload_bytes,
                                                  settings.fetch_timeout_s, settings.media_policy)  # fmt: skip
                await asyncio.to_thread(check_video, path, label)
            except BaseException:
                await slot.__aexit__(None, None, None)
                _remove(upload)
                raise
        rid = label

        async def run(on_event=None) -> dict:
            try:
                j = await served.run(rid, str(path), prompt, on_event)
                if report:
                    j = {**j, "report_html": await asyncio.to_thread(_report, j, served, str(path), prompt)}
                return j
            finally:
                await slot.__aexit__(None, None, None)
                _remove(upload)

        if not stream:
            try:
                return await run()
            except VideoError as err:
                raise ClientError(415, f"video: {label}: {err.reason}") from None
            except EngineError as err:
                raise ClientError(422 if err.status < 500 else 503, str(err)) from None

        events: asyncio.Queue = asyncio.Queue()

        async def produce():
            try:
                await events.put({"event": "judgment", "judgment": await run(events.put_nowait)})
            except VideoError as err:  # as the non-streamed answer says it: no server path in it
                await events.put({"event": "error", "status": 415, "error": f"video: {label}: {err.reason}"})
            except EngineError as err:
                await events.put(
                    {"event": "error", "status": 422 if err.status < 500 else 503, "error": str(err)}
                )
            except Exception as err:  # reported in the stream: the status line is already sent
                await events.put(
                    {"event": "error", "status": 500, "error": f"internal error ({type(err).__name__})"}
                )

        async def lines():
            task = asyncio.create_task(produce())
            try:
                while True:
                    ev = await events.get()
                    yield json.dumps(ev, ensure_ascii=False) + "\n"
                    if ev["event"] in ("judgment", "error"):
                        break
            finally:
                await task

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    async def json_object(request: Request, limit=2**20, too_big="the JSON body is over 1 MB") -> dict:
        try:
            body = json.loads(await read_capped(request, limit, too_big))
        except (ValueError, UnicodeDecodeError):
            raise ClientError(400, "the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise ClientError(400, f"the body must be a JSON object, not {type(body).__name__}")
        return body

    async def judge_input(request: Request) -> tuple[Path | str, str, str, Path | None]:
        """(video path or http(s) URL to fetch, prompt, label, upload to delete afterwards) from JSON or
        a multipart form."""
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("multipart/form-data"):
            return await upload_input(request)
        body = await json_object(request)
        if unknown := sorted(set(body) - JUDGE_KEYS):
            raise ClientError(400, f"unknown field(s) {unknown}: /v1/judge takes {sorted(JUDGE_KEYS)} (greedy, "
                                   "the checkpoint's own settings)")  # fmt: skip
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ClientError(400, "prompt: a non-empty string is required")
        video = body.get("video")
        if not isinstance(video, str) or not video.strip():
            raise ClientError(400, "video: a path or URL (string) is required, or upload a file")
        video = video.strip()
        if is_remote(video):
            if not settings.media_urls:
                raise ClientError(400, "video: URLs are turned off on this server (--no-media-urls)")
            check_remote(video, settings.media_policy)  # refused before it waits for a slot
            return video, prompt, video, None
        return resolve_media(video, settings.media_root), prompt, video, None

    async def upload_input(request: Request):
        too_big = f"upload larger than {settings.max_upload_bytes // 2**20} MB"
        request._body = await read_capped(request, settings.max_upload_bytes + 2**16, too_big)
        try:  # starlette replays the read body to form()
            form = await request.form(max_files=1, max_fields=8)
        except Exception as err:  # malformed multipart: the client's fault
            detail = getattr(err, "detail", None) or type(err).__name__
            raise ClientError(
                400, f"malformed multipart form ({detail}): send one file and a prompt"
            ) from None
        prompt, file = form.get("prompt"), form.get("file")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ClientError(400, "prompt: a non-empty form field is required")
        if file is None or isinstance(file, str):
            raise ClientError(400, "file: a video file is required in the form")
        data = await file.read()
        if len(data) > settings.max_upload_bytes:
            raise ClientError(413, f"upload larger than {settings.max_upload_bytes // 2**20} MB")
        if not data:
            raise ClientError(415, "file: the upload is empty")
        suffix = "".join(c for c in Path(file.filename or "").suffix[:8] if c.isalnum() or c == ".")
        dest = settings.upload_dir / f"{uuid.uuid4().hex}{suffix}"
        dest.write_bytes(data)
        return dest, prompt, file.filename or dest.name, dest

    return app


JUDGE_KEYS = frozenset({"video", "prompt"})


async def read_capped(request: Request, limit: int, too_big: str) -> bytes:
    """The body, refused (413, `too_big`) past `limit` bytes whether or not Content-Length says so."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ClientError(413, too_big)
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ClientError(413, too_big)
            chunks.append(chunk)
    except ClientDisconnect:
        raise ClientError(400, "the client went away before sending the whole body") from None
    return b"".join(chunks)


def _remove(path: Path | None) -> None:
    if path is not None:
        path.unlink(missing_ok=True)


def _report(j: dict, served: ServedJudge, path: str, prompt: str) -> str:
    from cot_rm.report import build_report

    return build_report(
        [(j, path, prompt)], served.judge.sampling, served.judge.spec, title="cot-rm judgment"
    )


# --------------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Serve a cot-rm checkpoint on one port: POST /v1/judge (the select_frames tool loop on vLLM, "
        "then the head: Judgment JSON), the OpenAI-compatible /v1/models and /v1/chat/completions, "
        'GET /health and an interactive page at /. /v1/judge takes JSON {"video": PATH or http(s) URL, '
        '"prompt": TEXT} or a multipart form (file, prompt); ?stream=1 streams the turns as NDJSON, '
        "?report=1 adds the HTML critique. Starts vLLM's OpenAI server for the checkpoint's "
        "language model as a child process; the head runs here with transformers."
    )
    parser.add_argument("--model", required=True, type=Path, help="cot-rm checkpoint folder")
    parser.add_argument("--port", type=int, default=8000, help="port to serve on (default 8000)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--allowed-media-root", required=True, type=Path,
                        help="videos named by path must lie under this folder (after resolving symlinks)")  # fmt: skip
    parser.add_argument("--api-key", default=None,
                        help=f"require `Authorization: Bearer KEY` on /v1 routes (default: ${API_KEY_ENV})")  # fmt: skip
    parser.add_argument(
        "--max-queue", type=positive(int), default=64, help="requests in progress before 503 (default 64)"
    )
    parser.add_argument("--max-upload-mb", type=positive(float), default=200,
                        help="largest upload or http(s) download (default 200 MB)")  # fmt: skip
    parser.add_argument("--media-urls", action=argparse.BooleanOptionalAction, default=True,
                        help="fetch http(s) media URLs given to /v1/judge and in chat requests, under "
                        "the two options below (default on; --no-media-urls refuses every URL)")  # fmt: skip
    parser.add_argument("--allowed-media-domains", type=_domains, default=frozenset(), metavar="HOST,HOST",
                        help="fetch media URLs from these hosts only (exact names, comma-separated; "
                        "default: any host whose addresses are public)")  # fmt: skip
    parser.add_argument("--allow-private-media-urls", action="store_true",
                        help="also fetch from loopback, private, link-local and other non-public "
                        "addresses (default: refused; only on a trusted network, best with "
                        "--allowed-media-domains)")  # fmt: skip
    parser.add_argument("--fetch-timeout", type=positive(float), default=60,
                        help="seconds for one request's http(s) downloads, all of them (default 60)")  # fmt: skip
    parser.add_argument(
        "--max-new-tokens", type=positive(int), default=512, help="per assistant turn (default 512)"
    )
    parser.add_argument(
        "--score-batch-size", type=positive(int), default=8, help="judgments per head pass (default 8)"
    )
    parser.add_argument("--served-model-name", default=None, help="model name on /v1 (default: folder name)")
    parser.add_argument("--device", default="auto", help="the head's device: auto, cpu, cuda, cuda:1 ...")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                        help="auto: bf16 on GPU, float32 on CPU (head and engine)")  # fmt: skip
    parser.add_argument("--vllm-python", default=None,
                        help="interpreter with vLLM (default: $COT_RM_VLLM_PYTHON, else .venv-vllm)")  # fmt: skip
    parser.add_argument("--vllm-port", type=int, default=0, help="the engine's internal port (default: free)")
    parser.add_argument(
        "--max-model-len", type=positive(int), default=8192, help="engine context length (default 8192)"
    )
    parser.add_argument("--vllm-arg", action="append", default=[], metavar="ARG",
                        help="extra argument for vLLM, repeatable (--vllm-arg=--gpu-memory-utilization=0.5)")  # fmt: skip
    parser.add_argument("--engine-url", default=None,
                        help="use a vLLM server already running there instead of starting one")  # fmt: skip
    parser.add_argument("--start-timeout", type=positive(float), default=900,
                        help="seconds for the engine to come up (default 900)")  # fmt: skip


def _domains(text: str) -> frozenset[str]:
    try:
        return parse_domains(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def main(args: argparse.Namespace) -> int:
    from cot_rm.serve_app import run

    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    root = Path(os.path.realpath(args.allowed_media_root))
    if not root.is_dir():
        print(f"{PROG}: --allowed-media-root {args.allowed_media_root}: not a folder", file=sys.stderr)
        return 2
    if not (args.model / "cot_rm.json").is_file():
        print(f"{PROG}: {args.model}: not a cot-rm checkpoint (no cot_rm.json)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="cot-rm-serve-"))
    (work / "uploads").mkdir()
    policy = MediaPolicy(allow_private=args.allow_private_media_urls, domains=args.allowed_media_domains)
    settings = Settings(root, work / "uploads", api_key, int(args.max_upload_mb * 2**20),
                        args.served_model_name or args.model.resolve().name, args.media_urls,
                        args.fetch_timeout, policy)  # fmt: skip
    return run(args, settings, work)
