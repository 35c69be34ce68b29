"""`cot-rm serve --backend local`: the judge routes answered by the local transformers judge, no vLLM engine.

Each request runs `cot_rm.judge.local.Judge` in this process (off the event loop), through the same
`judge_items` as `cot-rm judge` and `RewardModel`, so a request gives exactly what they give for the same
videos, prompts and sampling: with a seed, the same draws. Requests run one at a time: one model, and a
seeded request forks the process's global RNG, which two requests at once would share. No batching across
requests and no OpenAI routes (there is no engine to proxy): for a machine without vLLM, for tests, and
where a served judgment must equal a local one exactly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from cot_rm.judge.local import Judge, video_error_of
from cot_rm.judge.sampling import Draws, judge_items
from cot_rm.media.video import VideoError


class Tally:
    """What `/health` reports: one entry per model call, the judgments it made."""

    def __init__(self):
        self.batches: list[int] = []


class LocalServedJudge:
    """The served judge's interface (`run`, `run_many`, `judge`, `scorer`) over the local judge."""

    def __init__(self, judge: Judge):
        self.judge = judge
        self.scorer = Tally()
        self._lock = asyncio.Lock()

    def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def run(self, rid: str, path: str, prompt: str, on_event: Callable[[dict], None] | None = None,
                  draws: Draws | None = None) -> dict:  # fmt: skip
        """One Judgment, greedy or the summary of `draws`. The turns are not streamed (the local judge
        generates them in one call): `on_event` gets nothing before the judgment."""
        (judgment,) = await self.run_many([(rid, path, prompt)], draws)
        return judgment

    async def run_many(self, items: list[tuple[str, str, str]], draws: Draws | None = None) -> list[dict]:
        """The Judgments of (id, path, prompt) items judged together, as `cot-rm judge` judges its videos.
        Raises `VideoError` for a video that could not be read (the server answers 415)."""
        async with self._lock:
            judged = await asyncio.to_thread(judge_items, self.judge, items, draws)
        self.scorer.batches.append(len(judged))
        for j, (_, path, _) in zip(judged, items, strict=True):
            if why := video_error_of(j["parse_error"]):
                raise VideoError(path, why.removeprefix(f"{path}: "))
        return judged
