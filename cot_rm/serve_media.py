"""Media a `cot-rm serve` request names: local paths under the allowed root, http(s) downloads, and the
media URLs inside proxied chat completions.

Every refusal is a `ClientError` (HTTP status + message) that the server answers as `{"error": ...}`:
403 outside the root (after `..` and symlinks are resolved), 404 no such file, 400 a scheme we do not
take or a URL that cannot be fetched, 408 a download that does not finish in time, 413 one over the
upload limit, 415 a file that is not a readable video.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path
from urllib.parse import unquote, urlparse

REMOTE_SCHEMES = ("http", "https")
# Content parts of an OpenAI chat message that carry a media URL: `{"type": "image_url", "image_url":
# {"url": ...}}` and the like; vLLM also takes the bare string form (`"image_url": "..."`).
MEDIA_PART_KEYS = ("image_url", "video_url", "audio_url")


class ClientError(Exception):
    """A request the server refuses: HTTP `status` and a message for the caller."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def is_remote(ref: str) -> bool:
    try:
        return urlparse(ref).scheme.lower() in REMOTE_SCHEMES and "://" in ref
    except ValueError as err:  # e.g. an unclosed IPv6 bracket
        raise ClientError(400, f"{ref[:200]!r}: not a valid URL ({err})") from None


def resolve_media(ref: str, root: Path, what: str = "video") -> Path:
    """A path or file:// URL -> the real file under `root`, or the ClientError to answer."""
    if "\0" in ref:
        raise ClientError(400, f"{what}: the path contains a NUL byte")
    if ref.startswith("data:"):
        raise ClientError(400, f"{what}: data: URLs are not taken; upload the file (multipart) instead")
    if ref.startswith("file://"):
        url = urlparse(ref)
        if url.netloc not in ("", "localhost"):
            raise ClientError(400, f"{what}: {ref!r}: a file:// URL names no other host")
        ref = unquote(url.path)
    elif "://" in ref:
        raise ClientError(
            400, f"{what}: give a path, a file:// URL under the allowed media root or an http(s) URL"
        )
    real = Path(os.path.realpath(ref))  # `..` and symlinks resolved before the check
    if real != root and root not in real.parents:
        raise ClientError(403, f"{what}: {ref!r} is outside the allowed media root")
    if not real.exists():
        raise ClientError(404, f"{what}: {ref!r}: no such file")
    if not real.is_file():
        raise ClientError(400, f"{what}: {ref!r} is not a file")
    return real


def check_video(path: Path, label: str) -> None:
    from cot_rm.video import VideoError, probe

    try:
        probe(path)
    except VideoError as err:
        raise ClientError(415, f"video: {label}: {err.reason}") from None


async def fetch_video(url: str, dest_dir: Path, max_bytes: int, timeout_s: float) -> Path:
    """Download an http(s) URL into `dest_dir`, streamed: at most `max_bytes` (the upload limit) and
    `timeout_s` for the whole transfer, redirects followed (httpx refuses any that leave http(s)).
    Returns the file, which the caller deletes; a failure leaves nothing behind."""
    import httpx

    limit = f"{max_bytes / 2**20:g} MB"
    suffix = "".join(c for c in Path(urlparse(url).path).suffix[:8] if c.isalnum() or c == ".")
    dest = dest_dir / f"{uuid.uuid4().hex}{suffix}"
    try:
        # One deadline over connect + headers + body: a server dripping bytes cannot hold a request.
        async with asyncio.timeout(timeout_s):
            async with httpx.AsyncClient(timeout=timeout_s, follow_redirects=True, max_redirects=5) as client:
                async with client.stream("GET", url, headers={"accept": "video/*, */*"}) as resp:
                    if resp.status_code != 200:
                        status = 404 if resp.status_code in (404, 410) else 400
                        raise ClientError(status, f"video: {url} answered HTTP {resp.status_code}")
                    declared = resp.headers.get("content-length", "")
                    if declared.isdigit() and int(declared) > max_bytes:
                        raise ClientError(413, f"video: {url} is larger than {limit}")
                    size = 0
                    with open(dest, "wb") as f:
                        async for chunk in resp.aiter_bytes():
                            size += len(chunk)
                            if size > max_bytes:
                                raise ClientError(413, f"video: {url} is larger than {limit}")
                            f.write(chunk)
        if size == 0:
            raise ClientError(415, f"video: {url}: the download is empty")
        return dest
    except BaseException as err:
        dest.unlink(missing_ok=True)
        if isinstance(err, (TimeoutError, httpx.TimeoutException)):
            raise ClientError(408, f"video: {url}: not downloaded within {timeout_s:g} s") from None
        if isinstance(err, (httpx.HTTPError, httpx.InvalidURL)):
            raise ClientError(400, f"video: could not fetch {url} ({type(err).__name__})") from None
        raise


def checked_media_url(url: str, root: Path, remote_ok: bool) -> str:
    """One media URL of a chat request: data: and (when allowed) http(s) pass; a path or file:// URL
    must lie under `root` and comes back as the file:// URL of the real file (what was checked is
    what the engine loads); any other scheme is refused."""
    if url[:5].lower() == "data:":
        return url
    if is_remote(url):
        if not remote_ok:
            raise ClientError(400, "media URLs are turned off on this server (--no-media-urls)")
        return url
    return resolve_media(url, root, what="media").as_uri()


def check_chat_media(body: dict, root: Path, remote_ok: bool) -> None:
    """Check (and rewrite in place) every media URL in a chat completion's messages."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return  # the engine answers the malformed request
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        for part in content:
            if not isinstance(part, dict):
                continue
            for key in MEDIA_PART_KEYS:
                value = part.get(key)
                holder, field = (value, "url") if isinstance(value, dict) else (part, key)
                if isinstance(holder.get(field), str):
                    holder[field] = checked_media_url(holder[field], root, remote_ok)
