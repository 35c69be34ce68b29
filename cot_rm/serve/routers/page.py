"""`GET /` (the interactive page) and `GET /health` (200 once the engine and the head are ready)."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse

router = APIRouter()


@router.get("/health")
async def health(request: Request):
    state = request.app.state
    if state.served is not None and state.ready():
        batches = state.served.scorer.batches  # head passes so far, and how many judgments each scored
        return {"status": "ok", "model": state.settings.model_name, "active": state.admission.active,
                "judged": sum(batches), "head_passes": len(batches)}  # fmt: skip
    return JSONResponse({"error": "starting"}, status_code=503, headers={"Retry-After": "5"})


@router.get("/", response_class=HTMLResponse)
async def page():
    return resources.files("cot_rm.serve").joinpath("static", "serve.html").read_text(encoding="utf-8")
