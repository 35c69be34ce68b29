"""`POST /v1/judge`: a video (path under the media root, http(s) URL, or upload) and its prompt -> the
Judgment JSON; `?stream=1` answers NDJSON events (each turn as it arrives, then the judgment),
`?report=1` adds `report_html` (the critique beside its cited frames). `POST /v1/judge/pair`: two videos,
taken the same ways -> the pair judgment (`cot_rm.judge.pairwise`). Both take `samples`, `temperature`,
`top_p` and `seed` (`cot_rm.judge.sampling`)."""

from __future__ import annotations

import asyncio
import json

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from cot_rm.judge.html import build_report
from cot_rm.judge.pairwise import pair_judgment
from cot_rm.media.video import VideoError
from cot_rm.serve.deps import authorize, ready_judge, settings_of, take_slot
from cot_rm.serve.inputs import JUDGE, PAIR, JudgeInput, judge_input
from cot_rm.serve.judge import EngineError, ServedJudge
from cot_rm.serve.media import ClientError, check_video, fetch_media

router = APIRouter(dependencies=[Depends(authorize)])


@router.post("/v1/judge")
async def judge(request: Request, stream: int = 0, report: int = 0):
    given = await judge_input(request, settings_of(request), JUDGE)
    served, slot = await admit(request, given)
    (video,), (prompt,) = given.videos, given.prompts

    async def run(on_event=None) -> dict:
        try:
            j = await served.run(video.label, str(video.source), prompt, on_event, draws=given.draws)
            if report:
                j = {
                    **j,
                    "report_html": await asyncio.to_thread(report_html, j, served, str(video.source), prompt),
                }
            return j
        finally:
            await slot.__aexit__(None, None, None)
            given.remove()

    if not stream:
        try:
            return await run()
        except (VideoError, EngineError) as err:
            raise ClientError(*failure(err, video.label)) from None
    return StreamingResponse(events(run, video.label), media_type="application/x-ndjson")


@router.post("/v1/judge/pair")
async def judge_pair(request: Request):
    given = await judge_input(request, settings_of(request), PAIR)
    served, slot = await admit(request, given)
    a, b = given.videos
    ids = [a.label, b.label if b.label != a.label else f"{b.label}#2"]  # as `cot-rm judge` names a repeat
    items = [(rid, str(v.source), p) for rid, v, p in zip(ids, given.videos, given.prompts, strict=True)]
    try:
        judged = await served.run_many(items, draws=given.draws)
    except (VideoError, EngineError) as err:
        label = next((v.label for v in given.videos if str(v.source) == getattr(err, "path", None)), a.label)
        raise ClientError(*failure(err, label)) from None
    finally:
        await slot.__aexit__(None, None, None)
        given.remove()
    return pair_judgment(*judged, served.judge.model.config)


async def admit(request: Request, given: JudgeInput):
    """(the served judge, an entered admission slot) once the request's videos are usable: local files are
    checked before the slot is taken, URLs are fetched inside it (the queue bounds downloads too). On any
    failure the slot is left and the request's uploads and downloads are deleted."""
    settings = settings_of(request)
    try:
        for v in given.videos:
            if not isinstance(v.source, str):
                await asyncio.to_thread(check_video, v.source, v.label)
        served = ready_judge(request)
        slot = await take_slot(request)
    except BaseException:
        given.remove()
        raise
    try:
        for v in given.videos:
            if isinstance(v.source, str):  # an http(s) URL
                v.source = v.upload = await fetch_media(v.source, settings.upload_dir, settings.max_upload_bytes,
                                                        settings.fetch_timeout_s, settings.media_policy)  # fmt: skip
                await asyncio.to_thread(check_video, v.source, v.label)
    except BaseException:
        await slot.__aexit__(None, None, None)
        given.remove()
        raise
    return served, slot


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
