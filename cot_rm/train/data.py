"""SFT examples and the video collator: traces -> model inputs with masked labels and head targets.

An example is one trace (a single video) or a pair of traces (both videos of a pairwise record, in one
step, for the Bradley-Terry head loss). Each trace is rendered with the protocol's tool-capable chat
template and followed by the `<|reward|>` query token; its video is decoded with the trace's own
sampling (through the frame cache) and the frames its tool turns returned are decoded at
`tool_max_pixels`. Labels: assistant tokens only (the header's role is read from the tokens, so the
mask works for any tokenizer); system, user and tool turns, every vision token and the reward token
are masked. A rationale-free sequence (answer only) trains the head alone: its LM labels are masked, as
are those of a pair's critique swap (each video with the other's judgment, `loss.critique_swap`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from cot_rm import protocol
from cot_rm.media.frame_cache import FrameCache
from cot_rm.media.video import Sampling, read_frames_at, read_video
from cot_rm.model.processing import encode
from cot_rm.protocol import JudgeSpec
from cot_rm.schema import read_jsonl, resolve_media
from cot_rm.train.log import note

IGNORE = -100
PREF = {"A": 1, "B": -1, "tie": 0}  # pair labels for cot_rm.model.losses (1: A wins, -1: B wins, 0: tie)


def load_traces(path: str | Path, splits: Sequence[str] | None = None) -> list[dict]:
    """SFT traces (`cot-rm synthesize` output) with video paths made absolute; bad lines name file:line."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file; run `cot-rm synthesize` first")
    rows = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{lineno}: invalid JSON ({err.msg})") from None
        if splits and isinstance(row, dict) and row.get("split", "train") not in splits:
            continue
        row = {**row, "video": resolve_media(row["video"], path.resolve().parent)} if _has_video(row) else row
        if (bad := trace_problem(row)) is not None:  # now, not steps into training
            raise ValueError(f"{path}:{lineno}: {bad}")
        rows.append(row)
    return rows


def _has_video(row) -> bool:
    return isinstance(row, dict) and isinstance(row.get("video"), str) and bool(row["video"])


def trace_problem(row) -> str | None:
    """Why `row` (video path resolved) cannot be trained on, or None: an object with the trace keys,
    numeric labels on the traces' score scale, a sampling mapping and a video file that exists."""
    if not isinstance(row, dict):
        return f"expected a JSON object (an SFT trace), got {type(row).__name__}"
    if missing := [k for k in ("id", "messages", "video", "sampling", "scores", "prompt") if k not in row]:
        return f"not an SFT trace (missing {missing[0]!r})"
    try:
        spec = JudgeSpec.from_dict(row.get("judge_spec") or {})
    except (TypeError, ValueError, AttributeError) as err:
        return f"judge_spec: {err}"
    scores = row["scores"]
    if not isinstance(scores, dict) or not scores:
        return f"scores must be an object of dimension -> number, got {scores!r}"
    if bad := next(filter(None, (spec.label_problem(d, v) for d, v in scores.items())), None):
        return bad
    if (bad := _sampling_problem(row["sampling"])) is not None:
        return bad
    px = row.get("tool_max_pixels", protocol.TOOL_MAX_PIXELS)
    if isinstance(px, bool) or not isinstance(px, int) or px < 1:
        return f"tool_max_pixels must be a positive integer, got {px!r}"
    messages = row["messages"]
    if not isinstance(messages, list) or len(messages) < 3 or not all(isinstance(m, dict) for m in messages):
        return "messages must be the conversation (system, user, assistant turns), as cot-rm synthesize writes it"
    if not _has_video(row):
        return f"video must be a non-empty path, got {row['video']!r}"
    if not os.path.isfile(row["video"]):  # training reads local files (download URLs first)
        return f"{row['video']}: no such video file"
    return None


def _sampling_problem(sampling) -> str | None:
    """A trace's frame sampling must be complete and valid: the checkpoint records it."""
    if not isinstance(sampling, dict) or not sampling:
        return f"sampling must be the object cot-rm synthesize writes, got {sampling!r}"
    known = {f.name for f in dataclasses.fields(Sampling)}
    if unknown := sorted(set(sampling) - known):
        return f"sampling: unknown key {unknown[0]!r} (known: {sorted(known)})"
    try:
        Sampling.from_dict(sampling)
    except (TypeError, ValueError) as err:
        return f"sampling: {err}"
    return None


def trace_settings(traces: list[dict], source) -> tuple[dict, int, dict | None]:
    """The frame sampling, tool resolution and tool budgets (`judge_spec`, None in traces written before
    it was recorded) the traces were synthesized with: one of each, which the checkpoint records so that
    it judges the way it was trained."""

    def one(key: str, default=None):
        def value(t):
            v = t.get(key, default)  # a spec's dimensions are each record's labels: only its budgets count
            return {k: x for k, x in v.items() if k != "dimensions"} if key == "judge_spec" and v else v

        seen = {json.dumps(value(t), sort_keys=True) for t in traces}
        if len(seen) > 1:
            raise ValueError(
                f"{source}: the traces mix {len(seen)} {key} settings (e.g. {sorted(seen)[:2]}); "
                "synthesize one file with one setting, as the checkpoint judges with one"
            )
        return json.loads(seen.pop()) if seen else default

    return one("sampling"), one("tool_max_pixels", protocol.TOOL_MAX_PIXELS), one("judge_spec")


def build_examples(traces: list[dict], pairs_path: str | None = None, splits=None) -> list[dict]:
    """Pairs whose two videos both have a trace, then every trace not in such a pair, as singles."""
    # Real paths on both sides: a pairs file reached through a symlinked folder names the same videos.
    by_video = {(os.path.realpath(t["video"]), t["prompt"]): t for t in traces if not t.get("rationale_free")}
    examples, used, unmatched = [], set(), 0
    if pairs_path:
        for p in read_jsonl(pairs_path, kind="pairwise"):
            if splits and (p.split or "train") not in splits:  # as traces: no split means train
                continue
            a = by_video.get((os.path.realpath(p.video_a), p.prompt))
            b = by_video.get((os.path.realpath(p.video_b), p.prompt_b or p.prompt))
            if a is not None and b is not None:
                dims = p.dims or {"overall": p.preference}
                examples.append({"rows": [a, b], "dims": dims})
                used.update((a["id"], b["id"]))
            else:
                unmatched += 1
    if unmatched:  # said, not silently dropped: usually another prompt text or another video path
        note(__name__, f"note: {pairs_path}: {unmatched} of {unmatched + len(examples)} pairs unused: no trace of both "
              "videos with the pair's prompt (same video path and prompt text needed)")  # fmt: skip
    examples += [{"rows": [t]} for t in traces if t["id"] not in used]
    return examples


@dataclass
class _Seq:
    text: str
    video: Any
    images: list
    scores: dict
    head_only: bool
    video_key: str = ""  # what identifies the pixels (path + sampling), for the vision-feature cache
    image_keys: list = field(default_factory=list)


class SFTCollator:
    """Turns a list of examples ({"example": json}) into one padded batch (picklable for workers)."""

    def __init__(
        self,
        processor,
        family: str,
        spec: JudgeSpec,
        reward_token: str = "<|reward|>",
        rationale_dropout: float = 0.0,
        cache_dir: str | None = None,
        seed: int = 0,
        max_length: int | None = None,
        critique_swap: float = 0.0,
    ):
        self.processor, self.family, self.spec = processor, family, spec
        self.reward_token, self.rationale_dropout, self.seed = reward_token, rationale_dropout, seed
        self.critique_swap = critique_swap
        self.cache = None if cache_dir == "off" else FrameCache(cache_dir)
        self.calls = 0
        self.max_length = max_length
        tok = processor.tokenizer
        self.im_start, self.im_end = (
            tok.convert_tokens_to_ids("<|im_start|>"),
            tok.convert_tokens_to_ids("<|im_end|>"),
        )

    def __call__(self, batch: list[dict]) -> dict[str, torch.Tensor]:
        # Fresh masks each step, reproducible per run: a data-loader worker's torch seed differs per worker
        # and per epoch (its call count restarts), and ranks differ by RANK.
        rng = random.Random(f"{self.seed}:{os.environ.get('RANK', 0)}:{torch.initial_seed()}:{self.calls}")
        self.calls += 1
        seqs, pairs, skipped = [], [], 0
        for item in batch:
            ex = json.loads(item["example"]) if "example" in item else item
            variants = [False] + ([True] if rng.random() < self.rationale_dropout else [])
            for rationale_free in variants:  # DeScore's random mask: the head ALSO sees it without critique
                group = [self.sequence(row, rationale_free) for row in ex["rows"]]
                if self.max_length and max(self.length(s) for s in group) > self.max_length:
                    skipped += 1  # truncating would cut the answer and the reward token
                    continue
                if len(group) == 2:
                    pairs.append((len(seqs), len(seqs) + 1, ex["dims"]))
                seqs += group
            if len(ex["rows"]) == 2 and self.critique_swap and rng.random() < self.critique_swap:
                # Each video of the pair with the OTHER's judgment, its own labels (head only): a critique
                # that is wrong about the video must not move the head, so it learns to check the video.
                a, b = ex["rows"]
                swapped = [self.sequence(a, judgment_of=b), self.sequence(b, judgment_of=a)]
                if self.max_length and max(self.length(s) for s in swapped) > self.max_length:
                    skipped += 1
                    continue
                pairs.append((len(seqs), len(seqs) + 1, ex["dims"]))
                seqs += swapped
        if not seqs:
            raise ValueError(
                f"every sample of a batch is longer than data.max_length={self.max_length}; raise it"
            )
        batch = self.encode(seqs, pairs)
        # Counted per batch and carried with it: a data-loader worker's own counter never reaches the trainer.
        batch["skipped_too_long"] = torch.tensor(skipped)
        return batch

    def length(self, seq: _Seq) -> int:
        """Tokens of one sequence, vision tokens included (what max_length limits)."""
        return int(
            encode(self.processor, [seq.text], videos=[seq.video], images=seq.images or None)[
                "input_ids"
            ].shape[1]
        )

    def sequence(self, row: dict, rationale_free: bool = False, judgment_of: dict | None = None) -> _Seq:
        """One trace as a sequence; `judgment_of`: another trace whose judgment (its assistant and tool
        turns) replaces this one's, for the head only, the tool's frames read from THIS video."""
        sampling = replace(Sampling.from_dict(row["sampling"]), family=self.family)
        video = read_video(row["video"], sampling, self.cache)
        head_only = rationale_free or bool(row.get("rationale_free"))
        # The head's sample without a rationale (DeScore's random mask) drops the WHOLE judgment, answer
        # included: with the gold `<answer>` in front of it the head only learns to read those numbers
        # back, and scores nothing but the model's own answer at judging time. Video + prompt only.
        messages = row["messages"][:2] if head_only else row["messages"]
        if judgment_of is not None:
            messages = row["messages"][:2] + judgment_of["messages"][2:]
        frames = [c["image"]["frame"] for m in messages if m["role"] == "tool" for c in m["content"]
                  if c.get("type") == "image"]  # fmt: skip
        if judgment_of is not None:  # the other trace's frame numbers may lie past this video's end
            frames = [min(f, video.total_frames - 1) for f in frames]
        tool_px = row.get("tool_max_pixels", protocol.TOOL_MAX_PIXELS)
        images = read_frames_at(row["video"], frames, tool_px, self.family)
        text = protocol.render(
            self.processor, messages, self.family, self._spec(row), add_generation_prompt=head_only
        )
        text += self.reward_token
        key = f"{row['video']}|{json.dumps(sampling.to_dict(), sort_keys=True)}"
        return _Seq(
            text,
            video,
            images,
            row["scores"],
            head_only or judgment_of is not None,
            key,
            [f"{row['video']}|{f}|{tool_px}" for f in frames],
        )

    def _spec(self, row: dict) -> JudgeSpec:
        return replace(self.spec, dimensions=tuple(row["scores"]))

    def encode(self, seqs: list[_Seq], pairs: list[tuple]) -> dict[str, torch.Tensor]:
        images = [img for s in seqs for img in s.images]
        batch = encode(
            self.processor, [s.text for s in seqs], videos=[s.video for s in seqs], images=images or None
        )
        batch = dict(batch)
        labels = torch.full_like(batch["input_ids"], IGNORE)
        for i, s in enumerate(seqs):
            if not s.head_only:
                mask = assistant_mask(
                    batch["input_ids"][i].tolist(), self.im_start, self.im_end, self.processor.tokenizer
                )
                labels[i, mask] = batch["input_ids"][i, mask]
        batch["labels"] = labels
        batch.update(self.head_targets(seqs, pairs))
        batch["vision_keys"] = {
            "videos": [s.video_key for s in seqs],
            "images": [k for s in seqs for k in s.image_keys],
        }
        return batch

    def head_targets(self, seqs: list[_Seq], pairs: list[tuple]) -> dict[str, torch.Tensor]:
        dims = self.spec.dimensions
        target = torch.zeros(len(seqs), len(dims))
        mask = torch.zeros(len(seqs), len(dims), dtype=torch.bool)
        for i, s in enumerate(seqs):
            for j, d in enumerate(dims):
                if s.scores.get(d) is not None:  # null: unlabelled, as a missing key
                    target[i, j], mask[i, j] = self.spec.to_unit(s.scores[d]), True
        index = torch.tensor([[a, b] for a, b, _ in pairs], dtype=torch.long).reshape(-1, 2)
        pref = torch.tensor([[PREF.get(dd.get(d), 0) for d in dims] for _, _, dd in pairs], dtype=torch.long)
        pmask = torch.tensor([[d in dd for d in dims] for _, _, dd in pairs], dtype=torch.bool)
        return {
            "head_target": target,
            "head_mask": mask,
            "pair_index": index,
            "pair_label": pref.reshape(-1, len(dims)),
            "pair_mask": pmask.reshape(-1, len(dims)),
        }


def first_pairs(pairs_path, splits, index: dict) -> tuple[list, Counter]:
    """The pairs of `pairs_path` in `splits` whose two (video, prompt) keys are in `index` (realpath of
    the video, prompt -> a row key), each row in at most one pair, the first in the file (a row's draws
    are chosen once, so they cannot serve two partners). Returns [(pair, key_a, key_b)] and the skipped
    counts by reason ("no_video", "video_in_another_pair")."""
    out, used, skipped = [], set(), Counter()
    for p in read_jsonl(pairs_path, kind="pairwise"):
        if (p.split or "train") not in splits:
            continue
        a = index.get((os.path.realpath(p.video_a), p.prompt))
        b = index.get((os.path.realpath(p.video_b), p.prompt_b or p.prompt))
        if a is None or b is None or a == b:
            skipped["no_video"] += 1
        elif a in used or b in used:
            skipped["video_in_another_pair"] += 1
        else:
            used.update((a, b))
            out.append((p, a, b))
    return out, skipped


def assistant_mask(ids: list[int], im_start: int, im_end: int, tokenizer) -> torch.Tensor:
    """True on the tokens of every assistant turn: its content and its closing <|im_end|>."""
    mask = torch.zeros(len(ids), dtype=torch.bool)
    i = 0
    while i < len(ids):
        if ids[i] != im_start:
            i += 1
            continue
        j, header = i + 1, ""
        while j < len(ids) and "\n" not in header:  # the role header: "assistant\n", "user\n", ...
            header += tokenizer.decode([ids[j]])
            j += 1
        k = j
        while k < len(ids) and ids[k] != im_end:
            k += 1
        if header.strip() == "assistant":
            mask[j : k + 1] = True  # content + <|im_end|> (so the model learns to stop)
        i = k + 1
    return mask
