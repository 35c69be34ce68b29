"""The `openai:URL[#MODEL]` teacher: any OpenAI-compatible `/v1/chat/completions` endpoint (in real use a
large VLM behind `vllm serve`), through the `openai` client; frames are sent inline as base64 data URLs,
each after its caption."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import openai

from cot_rm.media.images import image_data_url
from cot_rm.protocol import message_text
from data_synthesis.teachers.base import TeacherReply, TeacherRequest, TeacherUnavailableError, check_captions


def chat_messages(request: TeacherRequest, image_format: str = "PNG") -> list[dict]:
    """OpenAI chat messages: system, then a user turn of (caption, image)* followed by the instruction."""
    check_captions(request)
    parts: list[dict] = []
    for caption, image in zip(request.captions, request.images):
        parts.append({"type": "text", "text": caption})
        parts.append({"type": "image_url", "image_url": {"url": image_data_url(image, image_format)}})
    parts.append({"type": "text", "text": request.text})
    return [{"role": "system", "content": request.system}, {"role": "user", "content": parts}]


def failure(err: openai.OpenAIError, tries: int) -> str:
    """A failed request as the reply's error: what went wrong, and after how many tries when the client
    retried it (timeouts, connection errors, 408/409/429 and 5xx are retried; other 4xx fail at once)."""
    after = f" after {tries} {'try' if tries == 1 else 'tries'}"
    if isinstance(err, openai.APITimeoutError):
        return "timeout" + after
    if isinstance(err, openai.APIConnectionError):
        return f"connection error ({err.__cause__ or err})" + after
    if isinstance(err, openai.APIStatusError):
        code = err.status_code
        if code in (408, 409, 429) or code >= 500:
            return f"HTTP {code}" + after
        return f"HTTP {code}: {err.message[:300]}"  # the server's reason, for the report
    return f"{type(err).__name__}: {err}"


class OpenAITeacher:
    """A teacher behind any OpenAI-compatible `/v1/chat/completions` endpoint.

    Requests run `concurrency` at a time in a thread pool (HTTP waits release the GIL), through one
    `openai.OpenAI` client: `max_retries` tries in all, with the client's exponential backoff and jitter
    (0.5 s, 1 s, 2 s, ... or the server's Retry-After), each within `timeout_s`. A request that fails for
    good becomes a reply with its error, counted by the pipeline, never raised.
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
        temperature: float = 0.7,
        image_format: str = "PNG",
    ):
        if concurrency < 1 or max_retries < 1:
            raise ValueError("concurrency and max_retries must be >= 1")
        # Accept both "http://host:port" and "http://host:port/v1" (the OpenAI SDK's base_url form).
        url = base_url.rstrip("/")
        self.base_url = url if url.endswith("/v1") else url + "/v1"
        # The key comes from the caller or the environment only, never from a file on disk; without one
        # no Authorization header is sent at all (a local `vllm serve` wants none).
        key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.client = openai.OpenAI(base_url=self.base_url, api_key=key or "unused", timeout=timeout_s,
                                    max_retries=max_retries - 1)  # fmt: skip
        self.headers = {} if key else {"Authorization": openai.Omit()}  # per request: the client checks there
        self.concurrency, self.max_retries = concurrency, max_retries
        self.temperature, self.image_format = temperature, image_format
        self.model = model or self._discover_model()

    def _discover_model(self) -> str:
        """The first model the server lists (a `vllm serve` endpoint serves exactly one)."""
        try:
            models = self.client.models.list(extra_headers=self.headers).data
        except openai.OpenAIError as e:
            reason = failure(e, self.max_retries)
            raise TeacherUnavailableError(f"cannot list models at {self.base_url}/models: {reason}") from e
        if not models:
            raise TeacherUnavailableError(f"{self.base_url}/models lists no models")
        return models[0].id

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
            out = self.client.chat.completions.create(**self.payload(request), extra_headers=self.headers)
            message = out.choices[0].message.model_dump(exclude_none=True)
            # A server with a reasoning parser returns the <think> body apart (`reasoning_content`): put
            # the turn back together as the parser reads it.
            text = message_text(message) if message.get("content") is not None else None
        except openai.OpenAIError as e:
            return TeacherReply(request.id, None, failure(e, self.max_retries))
        except (KeyError, IndexError, TypeError, AttributeError) as e:
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
