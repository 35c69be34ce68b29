"""`GET /v1/models` and `POST /v1/chat/completions` (streamed too), proxied to the vLLM engine so that an
OpenAI client works against the one URL. Local media must lie under the media root; http(s) media is
downloaded here under the media-URL policy and handed to the engine as data (it is started unable to
fetch)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse

from cot_rm.serve.deps import authorize, ready_judge, settings_of, take_slot
from cot_rm.serve.inputs import json_object
from cot_rm.serve.media import ClientError, check_chat_media, fetch_chat_media

router = APIRouter(dependencies=[Depends(authorize)])

# Fields a caller may not set on proxied completions: they steer the engine's media loading and
# templating, which the engine trusts (it is started with --trust-request-mm-kwargs for the judge).
ENGINE_ONLY_FIELDS = ("media_io_kwargs", "mm_processor_kwargs", "chat_template", "chat_template_kwargs")


def engine_url(request: Request) -> str:
    """The engine's URL; 404 on a server without one (`--backend local`)."""
    if request.app.state.engine_url is None:
        raise ClientError(
            404, "this server runs the local judge (--backend local): no OpenAI routes; use /v1/judge"
        )
    return request.app.state.engine_url


@router.get("/v1/models")
async def models(request: Request):
    ready_judge(request)
    resp = await request.app.state.client.get(engine_url(request) + "/v1/models")
    return Response(resp.content, resp.status_code, media_type="application/json")


@router.post("/v1/chat/completions")
async def chat(request: Request):
    settings = settings_of(request)
    url = engine_url(request) + "/v1/chat/completions"
    # Inline (base64) images may ride in a chat body: it gets the upload limit, a judge body 1 MB.
    too_big = f"the JSON body is over {settings.max_upload_bytes // 2**20} MB"
    body = await json_object(request, settings.max_upload_bytes, too_big)
    # Local media is refused here with a 4xx, or rewritten to the real file the engine then loads; http(s)
    # media must pass the media-URL policy, and is downloaded below, inside a slot.
    remote = check_chat_media(body, settings.media_root, settings.media_urls, settings.media_policy)
    ready_judge(request)
    for key in ENGINE_ONLY_FIELDS:
        body.pop(key, None)
    slot = await take_slot(request)
    try:  # the engine gets the bytes, never a URL to fetch
        await fetch_chat_media(remote, settings.upload_dir, settings.max_upload_bytes,
                               settings.fetch_timeout_s, settings.media_policy)  # fmt: skip
    except BaseException:
        await slot.__aexit__(None, None, None)
        raise
    client = request.app.state.client
    if not body.get("stream"):
        try:
            resp = await client.post(url, json=body)
        finally:
            await slot.__aexit__(None, None, None)
        return Response(resp.content, resp.status_code, media_type="application/json")
    resp = await client.send(client.build_request("POST", url, json=body), stream=True)

    async def relay():
        try:
            async for chunk in resp.aiter_raw():
                yield chunk
        finally:
            await resp.aclose()
            await slot.__aexit__(None, None, None)

    return StreamingResponse(relay(), resp.status_code, media_type=resp.headers.get("content-type"))
