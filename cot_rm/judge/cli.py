"""`cot-rm judge VIDEO... --model CKPT --prompt TEXT`: judge video files with the local judge
(`cot_rm.judge.local`) and print one Judgment JSON per video, in order; `--html` adds the critique page
(`cot_rm.judge.html`). `--pair A B` prints one pair judgment instead (`cot_rm.judge.pairwise`): both
Judgments and, per dimension, P(A better), P(tie), P(B better)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cot_rm.config import positive
from cot_rm.judge.html import write_report
from cot_rm.judge.local import Judge, video_error_of, video_error_record
from cot_rm.judge.pairwise import pair_judgment
from cot_rm.judge.sampling import Draws, judge_items
from cot_rm.media.frame_cache import FrameCache, default_cache_dir
from cot_rm.media.video import Sampling, VideoError, probe
from cot_rm.model.checkpoint import CheckpointError, load_checkpoint
from cot_rm.protocol import JudgeSpec

PROG = "cot-rm judge"


class UsageError(Exception):
    """A problem with the command line or its inputs, reported as one line (exit status 2)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Judge videos with a cot-rm checkpoint (local transformers): the model watches each video, "
        "inspects frames with select_frames, writes a critique and scores it; the head gives `scores`, "
        "the generated <answer> gives `answer_scores`. Prints one Judgment JSON per video, in order. "
        "Greedy by default (the same output every run). A video that cannot be read, or a model "
        "output that does not parse, gets one line on stderr and a Judgment whose parse_error says "
        "why; the exit status is 2 only when no video could be judged. --pair A B judges two videos and "
        "prints one pair judgment: per dimension P(A better), P(tie), P(B better) from the head, and both "
        "Judgments."
    )
    parser.add_argument("videos", nargs="*", metavar="VIDEO", help="video files (mp4, webm, mkv, ...)")
    parser.add_argument("--pair", nargs="+", metavar="VIDEO",
                        help="two videos, A and B (--pair A.mp4 B.mp4): one pair judgment, the probability "
                        "that A is better, that they tie, that B is better per dimension; --prompts-file "
                        "gives A and B a line each when their prompts differ")  # fmt: skip
    parser.add_argument("--model", required=True, type=Path, help="cot-rm checkpoint folder")
    prompts = parser.add_mutually_exclusive_group(required=True)
    prompts.add_argument("--prompt", help="the generation prompt, the same for every video")
    prompts.add_argument(
        "--prompts-file", type=Path, help="one prompt per line, for the videos in the order given"
    )
    parser.add_argument(
        "--html", type=Path, metavar="OUT", help="also write one self-contained HTML critique page"
    )
    parser.add_argument(
        "--samples",
        type=int,
        default=0,
        metavar="K",
        help="draw K >= 1 sampled judgments per video instead of one greedy one (the default, 0): `scores` and "
        "`answer_scores` become their means and `samples` holds the std and every draw",
    )
    parser.add_argument(
        "--temperature", type=float, default=0.7, help="sampling temperature with --samples (default 0.7)"
    )
    parser.add_argument(
        "--top-p", type=float, default=1.0, help="nucleus sampling with --samples (default 1)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="with --samples: draw s uses seed + s (default 0)"
    )
    parser.add_argument(
        "--max-new-tokens", type=positive(int), default=512, help="per assistant turn (default 512)"
    )
    parser.add_argument(
        "--batch-size", type=positive(int), default=8, help="videos judged together (default 8)"
    )
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="auto: bf16 on GPU",
    )
    parser.add_argument(
        "--cache-dir", default=None, help=f"frame cache directory (default {default_cache_dir()})"
    )
    parser.add_argument("--no-cache", action="store_true", help="decode without the frame cache")


def main(args: argparse.Namespace) -> int:
    try:
        args.videos = _videos(args)
        items = _items(args)
        draws = _draws(args)
        bad = _unreadable(items)  # before loading a model that may take minutes
        if args.pair and bad:
            raise UsageError("--pair: " + "; ".join(bad.values()))
        if len(bad) == len(items):
            name = str(args.model.resolve())
            return _finish([video_error_record(rid, bad[rid], name) for rid, _, _ in items], items, args)
        judge = _build_judge(args)
    except UsageError as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return 2
    return _finish(judge_items(judge, items, draws), items, args, judge)


def _videos(args) -> list[str]:
    """The videos to judge: the arguments, or the two of --pair."""
    if args.pair is None:
        if not args.videos:
            raise UsageError("no video given: name the videos to judge, or --pair A.mp4 B.mp4")
        return args.videos
    if args.videos:
        raise UsageError("give the videos as arguments or as --pair A.mp4 B.mp4, not both")
    if len(args.pair) != 2:
        raise UsageError(f"--pair takes two videos, A and B, got {len(args.pair)}: --pair A.mp4 B.mp4")
    return args.pair


def _draws(args) -> Draws | None:
    """The sampled draws --samples asks for, or None (greedy)."""
    if args.samples < 0 or (args.samples and args.temperature <= 0):
        raise UsageError("--samples needs K >= 1 and --temperature > 0")
    if not args.samples:
        return None
    try:
        return Draws(args.samples, args.temperature, args.top_p, args.seed)
    except ValueError as err:
        raise UsageError(f"--{err}".replace("top_p", "top-p")) from None


def _items(args) -> list[tuple[str, str, str]]:
    """(id, path, prompt) per video; the id is the path as given (#2, #3 ... on repeats)."""
    if args.prompts_file is not None:
        try:
            prompts = args.prompts_file.read_text(encoding="utf-8").splitlines()
        except OSError as err:
            raise UsageError(f"{args.prompts_file}: cannot read the prompts file ({err.strerror})") from None
        if len(prompts) != len(args.videos):
            raise UsageError(
                f"{args.prompts_file}: {len(prompts)} prompts for {len(args.videos)} videos; "
                "write one line per video, in the order the videos are given"
            )
        for lineno, prompt in enumerate(prompts, 1):
            if not prompt.strip():
                raise UsageError(f"{args.prompts_file}:{lineno}: empty prompt; every video needs its prompt")
    else:
        if not args.prompt.strip():
            raise UsageError("--prompt is empty; give the prompt the videos were generated from")
        prompts = [args.prompt] * len(args.videos)
    items, seen = [], {}
    for path, prompt in zip(args.videos, prompts, strict=True):
        seen[path] = seen.get(path, 0) + 1
        items.append((path if seen[path] == 1 else f"{path}#{seen[path]}", path, prompt))
    return items


def _unreadable(items) -> dict[str, str]:
    """Videos whose header cannot be read, by id (decoding errors later are caught by the judge)."""
    bad = {}
    for rid, path, _ in items:
        try:
            probe(path)
        except VideoError as err:
            bad[rid] = str(err)
    return bad


def _build_judge(args) -> Judge:
    try:
        model, _, _ = load_checkpoint(args.model, args.device, args.dtype)
    except CheckpointError as err:
        raise UsageError(str(err)) from None
    return Judge.from_model(model, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                            cache=None if args.no_cache else FrameCache(args.cache_dir),
                            name=str(args.model.resolve()))  # fmt: skip


def _finish(results: list[dict], items, args, judge: Judge | None = None) -> int:
    """Print the Judgments (or the pair judgment) and a line per problem, write the HTML page; 2 when
    nothing was judged, or a pair got no probability."""
    records = [pair_judgment(*results, judge.model.config)] if args.pair else results
    for record in records:
        print(json.dumps(record, ensure_ascii=False), flush=True)
    for j, (_, path, _) in zip(results, items, strict=True):
        if j["scores"] is None:
            print(f"{PROG}: {video_error_of(j['parse_error'])}", file=sys.stderr)
        elif j["parse_error"] is not None:
            print(f"{PROG}: {path}: model output did not parse ({j['parse_error']}); "
                  "answer_scores is null, scores are the head's", file=sys.stderr)  # fmt: skip
    judged = sum(j["scores"] is not None for j in results)
    parsed = sum(j["parse_error"] is None for j in results)
    print(f"{PROG}: {len(results)} videos: {judged} judged ({parsed} parsed), "
          f"{len(results) - judged} unreadable", file=sys.stderr)  # fmt: skip
    wrote = args.html is None or _write_html(results, items, args, judge)
    if args.pair and not any(records[0]["probs"].values()):
        judged = 0  # a video of the pair could not be scored: no probability to give
    return 0 if judged and wrote else 2


def _write_html(results, items, args, judge: Judge | None) -> bool:
    sampling = judge.sampling if judge is not None else Sampling()
    spec = judge.spec if judge is not None else JudgeSpec()
    entries = [(j, path, prompt) for j, (_, path, prompt) in zip(results, items, strict=True)]
    try:
        write_report(args.html, entries, sampling, spec)
    except OSError as err:
        print(f"{PROG}: {args.html}: cannot write the HTML page ({err.strerror})", file=sys.stderr)
        return False
    print(f"{PROG}: wrote {args.html}", file=sys.stderr)
    return True
