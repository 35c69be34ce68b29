"""Reading a request's body for `cot-rm serve`: size-capped, as a JSON object, or as /v1/judge's input
(a path or http(s) URL in JSON, or a multipart upload)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from fastapi import Request
from starlette.requests import ClientDisconnect

from cot_rm.serve.deps import Settings
from cot_rm.serve.media import ClientError, check_remote, is_remote, resolve_media

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


async def json_object(request: Request, limit=2**20, too_big="the JSON body is over 1 MB") -> dict:
    try:
        body = json.loads(await read_capped(request, limit, too_big))
    except (ValueError, UnicodeDecodeError):
        raise ClientError(400, "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ClientError(400, f"the body must be a JSON object, not {type(body).__name__}")
    return body


async def judge_input(request: Request, settings: Settings) -> tuple[Path | str, str, str, Path | None]:
    """(video path or http(s) URL to fetch, prompt, label, upload to delete afterwards) from JSON or a
    multipart form."""
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        return await upload_input(request, settings)
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


async def upload_input(request: Request, settings: Settings) -> tuple[Path, str, str, Path]:
    too_big = f"upload larger than {settings.max_upload_bytes // 2**20} MB"
    request._body = await read_capped(request, settings.max_upload_bytes + 2**16, too_big)
    try:  # starlette replays the read body to form()
        form = await request.form(max_files=1, max_fields=8)
    except Exception as err:  # malformed multipart: the client's fault
        detail = getattr(err, "detail", None) or type(err).__name__
        raise ClientError(400, f"malformed multipart form ({detail}): send one file and a prompt") from None
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


def remove(path: Path | None) -> None:
    if path is not None:
        path.unlink(missing_ok=True)
