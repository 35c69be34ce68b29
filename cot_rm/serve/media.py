"""Media a `cot-rm serve` request names: local paths under the allowed root, http(s) downloads (under
the media-URL policy of `cot_rm.serve.media_policy`), and the media URLs inside proxied chat completions,
whose http(s) ones are downloaded here too: the engine never fetches a URL itself.

Every refusal is a `ClientError` (HTTP status + message) that the server answers as `{"error": ...}`:
403 outside the root (after `..` and symlinks are resolved) or a URL the policy refuses, 404 no such
file, 400 a scheme we do not take or a URL that cannot be fetched, 408 a download that does not finish
in time, 413 one over the upload limit, 415 a file that is not a readable video.
"""

from __future__ import annotations

import asyncio
import base64
import os
import uuid
from pathlib import Path
from urllib.parse import unquote, urlparse

import httpx

from cot_rm.media.video import VideoError, probe
from cot_rm.serve.media_policy import SCHEMES, MediaPolicy, Refused, open_url, pinned_client

# Content parts of an OpenAI chat message that carry a media URL: `{"type": "image_url", "image_url":
# {"url": ...}}` and the like; vLLM also takes the bare string form (`"image_url": "..."`).
MEDIA_PART_KEYS = ("image_url", "video_url", "audio_url")
FETCHED_DATA_URL = "data:application/octet-stream;base64,"  # media a chat request named by http(s) URL


class ClientError(Exception):
    """A request the server refuses: HTTP `status` and a message for the caller."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def is_remote(ref: str) -> bool:
    try:
        return urlparse(ref).scheme.lower() in SCHEMES and "://" in ref
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
    try:
        probe(path)
    except VideoError as err:
        raise ClientError(415, f"video: {label}: {err.reason}") from None


def check_remote(url: str, policy: MediaPolicy, what: str = "video") -> None:
    """The rules of `policy` that need no DNS (scheme, allowed hosts), before a request takes a slot."""
    try:
        policy.check_url(httpx.URL(url))
    except Refused as err:
        raise ClientError(403, f"{what}: {err}") from None
    except httpx.InvalidURL as err:
        raise ClientError(400, f"{what}: {url[:200]!r}: not a valid URL ({err})") from None


async def fetch_media(url: str, dest_dir: Path, max_bytes: int, timeout_s: float, policy: MediaPolicy,
                      what: str = "video") -> Path:  # fmt: skip
    """Download an http(s) URL into `dest_dir` under `policy` (`cot_rm.serve.media_policy`: every hop
    checked, each connection to the address checked), streamed: at most `max_bytes` (the upload limit)
    and `timeout_s` for the whole transfer. Returns the file, which the caller deletes; a failure
    leaves nothing behind. A refused URL is a 403 naming the rule, and nothing was sent to it."""
    suffix = "".join(c for c in Path(urlparse(url).path).suffix[:8] if c.isalnum() or c == ".")
    dest = dest_dir / f"{uuid.uuid4().hex}{suffix}"
    try:
        # One deadline over resolving + connect + headers + body: a server dripping bytes cannot hold a request.
        async with asyncio.timeout(timeout_s), pinned_client(timeout_s) as client:
            resp = await open_url(client, url, policy, {"accept": "video/*, image/*, */*"})
            try:
                size = await _save(resp, dest, max_bytes, f"{what}: {url}")
            finally:
                await resp.aclose()
        if size == 0:
            raise ClientError(415, f"{what}: {url}: the download is empty")
        return dest
    except BaseException as err:
        dest.unlink(missing_ok=True)
        if isinstance(err, Refused):
            raise ClientError(403, f"{what}: {err}") from None
        if isinstance(err, (TimeoutError, httpx.TimeoutException)):
            raise ClientError(408, f"{what}: {url}: not downloaded within {timeout_s:g} s") from None
        if isinstance(err, (httpx.HTTPError, httpx.InvalidURL)):
            raise ClientError(400, f"{what}: could not fetch {url} ({type(err).__name__})") from None
        raise


async def _save(resp, dest: Path, max_bytes: int, label: str) -> int:
    """Write a 200 answer's body to `dest`, refusing it past `max_bytes`; its size."""
    if resp.status_code != 200:
        status = 404 if resp.status_code in (404, 410) else 400
        raise ClientError(status, f"{label} answered HTTP {resp.status_code}")
    too_big = f"{label} is larger than {max_bytes / 2**20:g} MB"
    declared = resp.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise ClientError(413, too_big)
    size = 0
    with open(dest, "wb") as f:
        async for chunk in resp.aiter_bytes():
            size += len(chunk)
            if size > max_bytes:
                raise ClientError(413, too_big)
            f.write(chunk)
    return size


def checked_media_url(url: str, root: Path, remote_ok: bool, policy: MediaPolicy) -> str:
    """One media URL of a chat request: data: passes; http(s) (when allowed) must pass the policy's
    scheme and host rules and is fetched later (`fetch_chat_media`); a path or file:// URL must lie
    under `root` and comes back as the file:// URL of the real file (what was checked is what the
    engine loads); any other scheme is refused."""
    if url[:5].lower() == "data:":
        return url
    if is_remote(url):
        if not remote_ok:
            raise ClientError(400, "media URLs are turned off on this server (--no-media-urls)")
        check_remote(url, policy, what="media")
        return url
    return resolve_media(url, root, what="media").as_uri()


def check_chat_media(body: dict, root: Path, remote_ok: bool, policy: MediaPolicy) -> list[tuple[dict, str]]:
    """Check (and rewrite in place) every media URL in a chat completion's messages. Returns where the
    http(s) ones sit, (holder, key) pairs, for `fetch_chat_media`."""
    remote = []
    for holder, field in _media_refs(body):
        holder[field] = checked_media_url(holder[field], root, remote_ok, policy)
        if is_remote(holder[field]):
            remote.append((holder, field))
    return remote


def _media_refs(body: dict) -> list[tuple[dict, str]]:
    """(holder, key) of every media URL string in a chat completion's messages."""
    refs = []
    messages = body.get("messages")
    if not isinstance(messages, list):
        return refs  # the engine answers the malformed request
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
                    refs.append((holder, field))
    return refs


async def fetch_chat_media(remote: list[tuple[dict, str]], dest_dir: Path, max_bytes: int, timeout_s: float,
                           policy: MediaPolicy) -> None:  # fmt: skip
    """Download each http(s) media URL of a chat request under `policy` and put its bytes in its place
    as a data: URL, so the engine fetches nothing. All of a request's downloads share `max_bytes` (a
    chat body's own limit) and `timeout_s`; each file is deleted once read.

    A data: URL rather than a file:// one: vLLM reads local files under one `--allowed-local-media-path`
    (the media root) after resolving symlinks, so a download folder elsewhere could only be allowed by
    widening that path, and the engine would then read more than the root. The media type is neutral
    on purpose: vLLM takes `video/jpeg` as a sequence of JPEG frames, not as a video file."""
    budget = max_bytes
    try:
        async with asyncio.timeout(timeout_s):
            for holder, field in remote:
                url = holder[field]
                try:
                    path = await fetch_media(url, dest_dir, budget, timeout_s, policy, what="media")
                except ClientError as err:
                    if err.status == 413 and budget < max_bytes:
                        raise ClientError(413, f"media: the media URLs of one request come to more than "
                                               f"{max_bytes / 2**20:g} MB") from None  # fmt: skip
                    raise
                try:
                    data = await asyncio.to_thread(path.read_bytes)
                finally:
                    path.unlink(missing_ok=True)
                budget -= len(data)
                holder[field] = FETCHED_DATA_URL + base64.b64encode(data).decode("ascii")
    except TimeoutError:
        raise ClientError(408, f"media: the media URLs were not downloaded within {timeout_s:g} s") from None
