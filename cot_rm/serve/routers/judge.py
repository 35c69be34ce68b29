"""`POST /v1/judge`: a video (path under the media root, http(s) URL, or upload) and its prompt -> the
Judgment JSON; `?stream=1` answers NDJSON events (each turn as it arrives, then the judgment),
`?report=1` adds `report_html` (the critique beside its cited frames)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from cot_rm.judge.html import build_report
from cot_rm.media.video import VideoError
from cot_rm.serve.deps import authorize, ready_judge, settings_of, take_slot
from cot_rm.serve.inputs import judge_input, remove
from cot_rm.serve.judge import EngineError, ServedJudge
from cot_rm.serve.media import ClientError, check_video, fetch_media

router = APIRouter(dependencies=[Depends(authorize)])


@router.post("/v1/judge")
async def judge(request: Request, stream: int = 0, report: int = 0):
    settings = settings_of(request)
    source, prompt, label, upload = await judge_input(request, settings)
    try:
        if isinstance(source, Path):
            await asyncio.to_thread(check_video, source, label)
        served = ready_judge(request)
        slot = await take_slot(request)
    except BaseException:
        remove(upload)
        raise
    path = source
    if isinstance(source, str):  # an http(s) URL, fetched inside the slot (the queue bounds downloads)
        try:
            path = upload = await fetch_media(source, settings.upload_dir, settings.max_upload_bytes,
                                              settings.fetch_timeout_s, settings.media_policy)  # fmt: skip
            await asyncio.to_thread(check_video, path, label)
        except BaseException:
            await slot.__aexit__(None, None, None)
            remove(upload)
            raise

    async def run(on_event=None) -> dict:
        try:
            j = await served.run(label, str(path), prompt, on_event)
            if report:
                j = {**j, "report_html": await asyncio.to_thread(report_html, j, served, str(path), prompt)}
            return j
        finally:
            await slot.__aexit__(None, None, None)
            remove(upload)

    if not stream:
        try:
            return await run()
        except (VideoError, EngineError) as err:
            raise ClientError(*failure(err, label)) from None
    return StreamingResponse(events(run, label), media_type="application/x-ndjson")


def failure(err: VideoError | EngineError, label: str) -> tuple[int, str]:
    """The status and message a judgment that failed this way answers with (no server path in it)."""
    if isinstance(err, VideoError):
        return 415, f"video: {label}: {err.reason}"
    return (422 if err.status < 500 else 503), str(err)


async def events(run, label: str):
    """NDJSON lines: each turn as `run` reports it, then the judgment, or the error (the status line is
    already sent, so an error is an event too)."""
    queue: asyncio.Queue = asyncio.Queue()

    async def produce():
        try:
            await queue.put({"event": "judgment", "judgment": await run(queue.put_nowait)})
        except (VideoError, EngineError) as err:
            status, message = failure(err, label)
            await queue.put({"event": "error", "status": status, "error": message})
        except Exception as err:
            await queue.put(
                {"event": "error", "status": 500, "error": f"internal error ({type(err).__name__})"}
            )

    task = asyncio.create_task(produce())
    try:
        while True:
            ev = await queue.get()
            yield json.dumps(ev, ensure_ascii=False) + "\n"
            if ev["event"] in ("judgment", "error"):
                break
    finally:
        await task


def report_html(j: dict, served: ServedJudge, path: str, prompt: str) -> str:
    return build_report(
        [(j, path, prompt)], served.judge.sampling, served.judge.spec, title="cot-rm judgment"
    )
