"""Reading a request's body for `cot-rm serve`: size-capped, as a JSON object, or as the input of
/v1/judge and /v1/judge/pair (each video a path or http(s) URL in JSON, or a multipart upload; the prompts;
the sampling fields, `cot_rm.judge.sampling`)."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path

from fastapi import Request
from starlette.requests import ClientDisconnect

from cot_rm.judge.sampling import Draws
from cot_rm.serve.deps import Settings
from cot_rm.serve.media import ClientError, check_remote, is_remote, resolve_media

SAMPLING_FIELDS = ("samples", "temperature", "top_p", "seed")
MAX_SAMPLES = 16  # draws one request may ask for: each is a whole judgment


@dataclass(frozen=True)
class Route:
    """What a judge route takes: the JSON fields that name videos, the form's file fields, the prompts."""

    path: str
    videos: tuple[str, ...]
    files: tuple[str, ...]
    prompts: tuple[str, ...]  # the first is required; the others default to it

    @property
    def fields(self) -> list[str]:
        return sorted({*self.videos, *self.prompts, *SAMPLING_FIELDS})


JUDGE = Route("/v1/judge", ("video",), ("file",), ("prompt",))
PAIR = Route("/v1/judge/pair", ("video_a", "video_b"), ("file_a", "file_b"), ("prompt", "prompt_b"))


@dataclass
class VideoInput:
    source: Path | str  # a checked path under the media root, or an http(s) URL fetched inside the slot
    label: str  # the Judgment's id: the string as sent, or the uploaded file's name
    upload: Path | None = None  # a file of ours (an upload or a download), deleted once judged


@dataclass
class JudgeInput:
    videos: list[VideoInput]
    prompts: list[str]
    draws: Draws | None  # None: greedy

    def remove(self) -> None:
        """Delete what was uploaded or downloaded for this request."""
        for v in self.videos:
            remove(v.upload)


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


async def judge_input(request: Request, settings: Settings, route: Route = JUDGE) -> JudgeInput:
    """The videos (paths checked against the media root, http(s) URLs checked against the media-URL policy,
    not yet fetched; or uploads, saved), prompts and sampling of a judge request, from JSON or a
    multipart form; a bad one is the ClientError to answer."""
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        return await upload_input(request, settings, route)
    body = await json_object(request)
    if unknown := sorted(set(body) - set(route.fields)):
        raise ClientError(400, f"unknown field(s) {unknown}: {route.path} takes {route.fields}")
    prompts = _prompts(body, route)
    draws = _draws({k: body.get(k) for k in SAMPLING_FIELDS})
    videos = [_video(body.get(name), name, file, settings) for name, file in zip(route.videos, route.files, strict=True)]  # fmt: skip
    return JudgeInput(videos, prompts, draws)


def _prompts(fields, route: Route) -> list[str]:
    """One prompt per video: the first prompt field is required, the others (prompt_b) default to it."""
    first, *others = route.prompts
    prompt = fields.get(first)
    if not isinstance(prompt, str) or not prompt.strip():
        raise ClientError(400, f"{first}: a non-empty string is required")
    prompts = [prompt]
    for name in others:
        value = fields.get(name)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ClientError(400, f"{name}: a non-empty string, or leave it out to use {first}")
        prompts.append(prompt if value is None else value)
    return prompts + [prompt] * (len(route.videos) - len(prompts))


def _draws(values: dict) -> Draws | None:
    """The sampled draws asked for (None: greedy); a bad value is a 400 saying what to give."""
    try:
        draws = Draws.of(**values)
    except ValueError as err:
        raise ClientError(400, str(err)) from None
    if draws is not None and draws.k > MAX_SAMPLES:
        raise ClientError(
            400, f"samples: at most {MAX_SAMPLES} draws per request, got {draws.k}; ask for fewer"
        )
    return draws


def _video(value, name: str, file: str, settings: Settings) -> VideoInput:
    """One JSON video field: a path or file:// URL under the media root, or an http(s) URL to fetch."""
    if not isinstance(value, str) or not value.strip():
        raise ClientError(400, f"{name}: a path or URL (string) is required, or upload the file as `{file}`")
    value = value.strip()
    if not is_remote(value):
        return VideoInput(resolve_media(value, settings.media_root, name), value)
    if not settings.media_urls:
        raise ClientError(400, f"{name}: URLs are turned off on this server (--no-media-urls)")
    check_remote(value, settings.media_policy, name)  # refused before it waits for a slot
    return VideoInput(value, value)


async def upload_input(request: Request, settings: Settings, route: Route = JUDGE) -> JudgeInput:
    """A multipart form: one file field per video (each within the upload limit), the prompts and the
    sampling fields as text."""
    limit = settings.max_upload_bytes
    too_big = f"upload larger than {limit // 2**20} MB"
    request._body = await read_capped(request, len(route.files) * limit + 2**16, too_big)
    try:  # starlette replays the read body to form()
        form = await request.form(max_files=len(route.files), max_fields=16)
    except Exception as err:  # malformed multipart: the client's fault
        detail = getattr(err, "detail", None) or type(err).__name__
        raise ClientError(400, f"malformed multipart form ({detail}): send {' and '.join(route.files)} "
                               f"and a prompt") from None  # fmt: skip
    allowed = {*route.files, *route.prompts, *SAMPLING_FIELDS}
    if unknown := sorted(set(form) - allowed):
        raise ClientError(400, f"unknown form field(s) {unknown}: {route.path} takes {sorted(allowed)}")
    prompts = _prompts(form, route)
    draws = _draws({k: _form_number(form.get(k), k) for k in SAMPLING_FIELDS})
    videos: list[VideoInput] = []
    try:
        for name in route.files:
            videos.append(await _save_upload(form.get(name), name, settings))
    except BaseException:
        JudgeInput(videos, prompts, draws).remove()
        raise
    return JudgeInput(videos, prompts, draws)


def _form_number(value, name: str) -> int | float | None:
    """A form's text field as the number JSON would carry (an integer when it reads as one)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ClientError(400, f"{name}: a number is expected in the form, not a file")
    try:
        return int(value)
    except ValueError:
        try:
            return float(value)
        except ValueError:
            raise ClientError(400, f"{name}: {value[:50]!r} is not a number") from None


async def _save_upload(file, name: str, settings: Settings) -> VideoInput:
    if file is None or isinstance(file, str):
        raise ClientError(400, f"{name}: a video file is required in the form")
    data = await file.read()
    if len(data) > settings.max_upload_bytes:
        raise ClientError(413, f"upload larger than {settings.max_upload_bytes // 2**20} MB")
    if not data:
        raise ClientError(415, f"{name}: the upload is empty")
    suffix = "".join(c for c in Path(file.filename or "").suffix[:8] if c.isalnum() or c == ".")
    dest = settings.upload_dir / f"{uuid.uuid4().hex}{suffix}"
    dest.write_bytes(data)
    return VideoInput(dest, file.filename or dest.name, dest)


def remove(path: Path | None) -> None:
    if path is not None:
        path.unlink(missing_ok=True)
