"""Teachers: whatever writes the rationales that synthesis anchors on the human labels.

One interface, three implementations:

    teacher = make_teacher("openai:http://127.0.0.1:8000#Qwen/Qwen2.5-VL-72B-Instruct")
    replies = teacher.generate([TeacherRequest(id=..., system=..., text=..., images=[...], ...)])

- `oracle`: writes rationales from the toy world's exact annotations (`data_synthesis.oracle`);
- `openai:URL[#MODEL]`: any OpenAI-compatible chat endpoint (in real use a large VLM behind
  `vllm serve`); frames are sent inline as base64 data URLs, each after its caption;
- `hf:PATH`: a local transformers VLM (greedy by default), batched with left padding.

A failed request never raises out of `generate`: its reply has `text=None` and an `error` string,
so the synthesis pipeline can count and report failures instead of dying on request 9,000 of 10,000.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import random
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cot_rm.rewards import message_text

__all__ = [
    "HFTeacher",
    "OpenAITeacher",
    "Teacher",
    "TeacherReply",
    "TeacherRequest",
    "TeacherUnavailableError",
    "make_teacher",
]


@dataclass
class TeacherRequest:
    id: str
    system: str  # system prompt text
    text: str  # the user instruction, placed after the images
    images: list  # PIL.Image frames shown to the teacher (uniformly sampled from the video)
    captions: list[str]  # one per image, e.g. "frame 12 (1.50 s):", shown just before that image
    record: Any  # the labelled source record (cot_rm.schema.PointwiseRecord); the oracle reads it
    seed: int = 0
    max_tokens: int = 1024
    shown: tuple[int, ...] = ()  # frames the student will see in its first turn (the oracle describes them)


@dataclass
class TeacherReply:
    id: str
    text: str | None  # the raw completion, or None on failure
    error: str | None = None  # e.g. "timeout after 3 tries"; a failure is counted, never raised


class Teacher(Protocol):
    name: str  # "oracle" | "openai" | "hf"
    model: str  # what produced the text (model id / path): goes into provenance

    def generate(self, requests: list[TeacherRequest]) -> list[TeacherReply]: ...


def make_teacher(spec: str, **kw) -> Teacher:
    """Build a teacher from `oracle[:plain]`, `openai:URL[#MODEL]` or `hf:PATH`; `kw` go to its constructor."""
    kind, _, rest = spec.partition(":")
    if kind == "oracle" and rest in ("", "plain"):
        from data_synthesis.oracle import OracleTeacher  # lazily: it pulls in the toy world

        return OracleTeacher(plain=rest == "plain", **kw)
    if kind == "openai" and rest:
        url, _, model = rest.partition("#")
        kw_model = kw.pop("model", None)  # "#MODEL" in the spec wins over a model= keyword
        return OpenAITeacher(url, model=model or kw_model, **kw)
    if kind == "hf" and rest:
        if not (Path(rest) / "config.json").is_file():
            raise ValueError(
                f"hf:{rest}: no model folder there (no config.json); give a local checkpoint folder"
            )
        return HFTeacher(rest, **kw)
    raise ValueError(
        f"unknown teacher {spec!r}; expected 'oracle', 'oracle:plain', 'openai:URL[#MODEL]' or 'hf:PATH'"
    )


def _check_captions(request: TeacherRequest) -> None:
    if len(request.captions) != len(request.images):
        raise ValueError(
            f"request {request.id}: {len(request.images)} images but {len(request.captions)} captions"
        )


# ---------------------------------------------------------------------------------- OpenAI-compatible


class TeacherUnavailableError(RuntimeError):
    """The endpoint cannot be used at all (e.g. no model list at start-up): raised, not counted."""


class _Retryable(Exception):
    """A failure worth another try (timeout, connection error, 429, 5xx); str() is the reply's error."""


class _Fatal(Exception):
    """A failure that another try cannot fix (4xx other than 429, an unreadable body)."""


def image_data_url(image, fmt: str = "PNG") -> str:
    """A PIL image as a `data:image/...;base64,` URL (PNG is lossless: the teacher sees our pixels)."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format=fmt)
    mime = "jpeg" if fmt.upper() in ("JPG", "JPEG") else fmt.lower()
    return f"data:image/{mime};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


def chat_messages(request: TeacherRequest, image_format: str = "PNG") -> list[dict]:
    """OpenAI chat messages: system, then a user turn of (caption, image)* followed by the instruction."""
    _check_captions(request)
    parts: list[dict] = []
    for caption, image in zip(request.captions, request.images):
        parts.append({"type": "text", "text": caption})
        parts.append({"type": "image_url", "image_url": {"url": image_data_url(image, image_format)}})
    parts.append({"type": "text", "text": request.text})
    return [{"role": "system", "content": request.system}, {"role": "user", "content": parts}]


def _error_detail(err: urllib.error.HTTPError) -> str:
    """The start of an error response's body (the server's reason), or "" if it cannot be read."""
    try:
        return err.read()[:300].decode("utf-8", "replace")
    except (OSError, http.client.HTTPException):
        return ""


class OpenAITeacher:
    """A teacher behind any OpenAI-compatible `/v1/chat/completions` endpoint.

    Requests run `concurrency` at a time in a thread pool (HTTP waits release the GIL). Timeouts,
    connection errors, 429 and 5xx are retried with exponential backoff and jitter, up to
    `max_retries` tries in all; any other 4xx fails at once. Plain `urllib`: no client dependency.
    """

    name = "openai"
    needs_images = True  # the pipeline decodes frames only for teachers that look at them

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        api_key: str | None = None,
        concurrency: int = 8,
        timeout_s: float = 120.0,
        max_retries: int = 3,
        backoff_s: float = 1.0,
        temperature: float = 0.7,
        image_format: str = "PNG",
    ):
        if concurrency < 1 or max_retries < 1:
            raise ValueError("concurrency and max_retries must be >= 1")
        # Accept both "http://host:port" and "http://host:port/v1" (the OpenAI SDK's base_url form).
        url = base_url.rstrip("/")
        self.base_url = url if url.endswith("/v1") else url + "/v1"
        # The key comes from the caller or the environment only, never from a file on disk.
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.temperature = temperature
        self.image_format = image_format
        self.model = model or self._discover_model()

    # -- HTTP

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def _call_once(self, method: str, path: str, body: dict | None = None) -> dict:
        """One HTTP exchange; raises `_Retryable` or `_Fatal` with a short, loggable reason."""
        data = None if body is None else json.dumps(body).encode("utf-8")
        req = urllib.request.Request(self.base_url + path, data=data, headers=self._headers(), method=method)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            msg = f"HTTP {e.code}"
            if e.code == 429 or e.code >= 500:
                raise _Retryable(msg) from e
            raise _Fatal(f"{msg}: {_error_detail(e)}") from e
        except TimeoutError as e:  # socket.timeout is TimeoutError since Python 3.10
            raise _Retryable("timeout") from e
        except urllib.error.URLError as e:
            # urlopen wraps connect-phase timeouts in URLError.
            if isinstance(e.reason, TimeoutError):
                raise _Retryable("timeout") from e
            raise _Retryable(f"connection error ({e.reason})") from e
        except (OSError, http.client.HTTPException) as e:  # reset / closed / truncated mid-response
            raise _Retryable(f"connection error ({type(e).__name__}: {e})") from e
        try:
            return json.loads(raw)
        except ValueError as e:
            raise _Fatal(f"bad JSON from server: {raw[:200]!r}") from e

    def _call(self, method: str, path: str, body: dict | None = None) -> dict:
        """`_call_once` with retries: sleeps backoff_s * 2**k (+ up to 10% jitter) between tries."""
        for attempt in range(self.max_retries):
            try:
                return self._call_once(method, path, body)
            except _Retryable as e:
                if attempt + 1 == self.max_retries:
                    plural = "try" if self.max_retries == 1 else "tries"
                    raise _Retryable(f"{e} after {self.max_retries} {plural}") from e
                # Jitter keeps a pool of workers from hammering a recovering server in lockstep.
                delay = self.backoff_s * 2**attempt
                time.sleep(delay * (1 + 0.1 * random.random()))
        raise AssertionError("unreachable")

    def _discover_model(self) -> str:
        """The first model the server lists (a `vllm serve` endpoint serves exactly one)."""
        try:
            listing = self._call("GET", "/models")
        except (_Retryable, _Fatal) as e:
            raise TeacherUnavailableError(f"cannot list models at {self.base_url}/models: {e}") from e
        models = listing.get("data") or []
        if not models:
            raise TeacherUnavailableError(f"{self.base_url}/models lists no models")
        return models[0]["id"]

    # -- generation

    def payload(self, request: TeacherRequest) -> dict:
        return {
            "model": self.model,
            "messages": chat_messages(request, self.image_format),
            "max_tokens": request.max_tokens,
            "temperature": self.temperature,
            "seed": request.seed,
        }

    def _one(self, request: TeacherRequest) -> TeacherReply:
        try:
            out = self._call("POST", "/chat/completions", self.payload(request))
            message = out["choices"][0]["message"]
            # A server with a reasoning parser returns the <think> body apart (`reasoning_content`): put
            # the turn back together as the parser reads it.
            text = message_text(message) if message.get("content") is not None else None
        except (_Retryable, _Fatal) as e:
            return TeacherReply(request.id, None, str(e))
        except (KeyError, IndexError, TypeError) as e:
            return TeacherReply(request.id, None, f"unexpected response shape: {e!r}")
        except Exception as e:  # e.g. an image that cannot be encoded: count it, keep going
            return TeacherReply(request.id, None, f"{type(e).__name__}: {e}")
        if text is None:
            return TeacherReply(request.id, None, "empty completion (content is null)")
        return TeacherReply(request.id, text)

    def generate(self, requests: list[TeacherRequest]) -> list[TeacherReply]:
        if not requests:
            return []
        pool = ThreadPoolExecutor(max_workers=min(self.concurrency, len(requests)))
        try:
            return list(pool.map(self._one, requests))  # map keeps the request order
        finally:
            # On Ctrl-C, drop the queued requests instead of sending all of them before exiting.
            pool.shutdown(wait=True, cancel_futures=True)


# ------------------------------------------------------------------------------ local transformers


def hf_messages(request: TeacherRequest) -> list[dict]:
    """Qwen chat messages: system, then a user turn of (caption, image)* and the instruction."""
    _check_captions(request)
    parts: list[dict] = []
    for caption in request.captions:
        parts.append({"type": "text", "text": caption})
        parts.append({"type": "image"})  # the pixels travel separately, in this order
    parts.append({"type": "text", "text": request.text})
    return [
        {"role": "system", "content": [{"type": "text", "text": request.system}]},
        {"role": "user", "content": parts},
    ]


class HFTeacher:
    """A local transformers VLM as the teacher: batched `generate` with left padding.

    Greedy by default (temperature 0), so the same requests give the same replies; with a
    temperature > 0 each batch is seeded from its first request's seed.
    """

    name = "hf"
    needs_images = True

    def __init__(
        self,
        path: str,
        device: str = "cpu",
        temperature: float = 0.0,
        max_new_tokens: int | None = None,
        batch_size: int = 4,
        dtype: str | None = None,
    ):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        from cot_rm.rope import use_qwen_positions

        self.model = str(path)
        self.device = device
        self.temperature = temperature
        self.max_new_tokens = max_new_tokens  # None: each request's max_tokens
        self.batch_size = max(1, batch_size)
        self.processor = AutoProcessor.from_pretrained(path)
        kwargs = {"dtype": dtype} if dtype else {}
        self.vlm = AutoModelForImageTextToText.from_pretrained(path, **kwargs).to(device).eval()
        use_qwen_positions(self.vlm)

    def _render(self, request: TeacherRequest) -> str:
        return self.processor.apply_chat_template(
            hf_messages(request), tokenize=False, add_generation_prompt=True
        )

    def _generate_batch(self, batch: list[TeacherRequest]) -> list[TeacherReply]:
        import torch

        from cot_rm.processing import encode

        texts = [self._render(r) for r in batch]
        images = [im.convert("RGB") for r in batch for im in r.images]
        inputs = encode(self.processor, texts, images=images or None, padding_side="left").to(self.device)
        max_new = self.max_new_tokens or max(r.max_tokens for r in batch)
        sample = self.temperature > 0
        gen_kw: dict[str, Any] = {"max_new_tokens": max_new, "do_sample": sample}
        if sample:
            gen_kw["temperature"] = self.temperature
        # Seeding forks the RNG so the caller's global random state is left as it was.
        with torch.random.fork_rng(devices=[] if self.device == "cpu" else None), torch.inference_mode():
            torch.manual_seed(batch[0].seed)
            out = self.vlm.generate(**inputs, **gen_kw)
        new = out[:, inputs["input_ids"].shape[1] :]  # left padding: prompts all end at the same column
        texts_out = self.processor.batch_decode(new, skip_special_tokens=True)
        return [TeacherReply(r.id, t) for r, t in zip(batch, texts_out, strict=True)]

    def generate(self, requests: list[TeacherRequest]) -> list[TeacherReply]:
        replies: list[TeacherReply] = []
        for start in range(0, len(requests), self.batch_size):
            batch = requests[start : start + self.batch_size]
            try:
                replies.extend(self._generate_batch(batch))
            except Exception as e:  # a bad batch is counted per request, the run goes on
                replies.extend(TeacherReply(r.id, None, f"{type(e).__name__}: {e}") for r in batch)
        return replies
