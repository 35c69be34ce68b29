"""What every route of `cot-rm serve` shares: the server's settings, and the dependencies that check a
request before its handler runs (the API key, a ready engine) or that it gets (a slot in the queue)."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from pathlib import Path

from fastapi import Request

from cot_rm.serve.judge import Busy, ServedJudge
from cot_rm.serve.media import ClientError
from cot_rm.serve.media_policy import MediaPolicy

RETRY_AFTER_S = 2


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


def settings_of(request: Request) -> Settings:
    return request.app.state.settings


def authorize(request: Request) -> None:
    """With an API key set, every /v1 route wants `Authorization: Bearer KEY` (or `X-API-Key: KEY`)."""
    key = settings_of(request).api_key
    if key is None:
        return
    given = request.headers.get("authorization", "")
    token = given[7:].strip() if given.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
    if not hmac.compare_digest(token.encode(), key.encode()):
        raise ClientError(401, "missing or wrong API key (send Authorization: Bearer KEY)")


def ready_judge(request: Request) -> ServedJudge:
    """The served judge, or 503 with Retry-After while the engine or the head is still starting."""
    state = request.app.state
    if state.served is None or not state.ready():
        raise ClientError(503, "the server is starting; retry shortly", {"Retry-After": str(RETRY_AFTER_S)})
    return state.served


async def take_slot(request: Request):
    """An entered admission slot (the caller leaves it with `slot.__aexit__`), or 503 when the queue is
    full: a slot bounds the judgments, downloads and proxied completions in progress together."""
    slot = request.app.state.admission.slot()
    try:
        await slot.__aenter__()
    except Busy as err:
        raise ClientError(503, str(err), {"Retry-After": str(RETRY_AFTER_S)}) from None
    return slot
