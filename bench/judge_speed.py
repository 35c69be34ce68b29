"""Benchmark: the local judge before and after its fast path, side by side on the demo's held-out videos.

"before" is `Judge(reuse=False)`, which re-renders and re-encodes the whole conversation (vision tower
included) for every tool round and for the scoring pass; "after" is the default `Judge`
(`cot_rm.judge.reuse`: each video and tool frame processed and through the tower once, each round and
the scoring pass continued from the keys and values already computed, the system prompt computed once).
Both judge the test split of a toy world with the same loaded checkpoint, batch by batch: each batch by
both, back to back, the order alternating, so drifting machine load hits both alike. The fast path's
stores are emptied at the start of each repeat, so a repeat is one pass over the videos as one
`cot-rm eval` run makes it (nothing carried over from an earlier pass). Reports videos per second for
each, the ratio, the language-model tokens and tower items each ran, and where the time goes (cProfile,
one extra pass per side); fails (no section written) unless both give the same judgments: the same text,
tool calls and parse errors, scores and answer probabilities within 1e-5.

    .venv/bin/cot-rm toyworld --out runs/judge_speed/toy --n 400 --seed 0
    .venv/bin/python bench/judge_speed.py --world runs/judge_speed/toy --model runs/judge_speed/sft

`--model` defaults to the shipped tiny base (assets/tiny-qwen2_5_vl-base) turned into a judge (an untrained
head, sampling 8 frames at 112x112 as the demo's SFT does): it describes the video and calls no tool, so a
trained checkpoint (the demo's SFT) is what shows tool rounds. `--samples K` times K seeded sampled draws
per video instead of greedy judgments.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

# ruff: noqa: E402  (the path and environment below must be set before the project and HF imports)
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
import transformers

from bench.generation import machine, need_inputs, publish
from cot_rm.judge.local import Judge
from cot_rm.judge.sampling import Draws, judge_items
from cot_rm.media.video import Sampling
from cot_rm.model.checkpoint import load_checkpoint
from cot_rm.model.modeling import ThinkThenScore

SIDES = ("before", "after")
BASE = ROOT / "assets" / "tiny-qwen2_5_vl-base"
TOLERANCE = 1e-5
NEAR = ("scores", "answer_probs", "samples")  # compared within TOLERANCE; every other key exactly
# cProfile rows: (label, functions whose cumulative seconds are summed). They nest; see `section`.
PROFILE = (
    ("judge, in all", ("judge",)),
    ("the rounds (generate)", ("_generate",)),
    ("- decode steps and prefill", ("_sample",)),
    ("- of which prefill, batched", ("_prefill",)),
    ("- prompt chunks run alone", ("_chunk",)),
    ("the scoring pass", ("_score",)),
    ("processor (tokens, pixel patches)", ("encode", "tokens")),
    ("vision tower", ("get_video_features", "get_image_features")),
    ("video decoding (first turn, tool frames)", ("open", "_run_tool")),
)


def held_out(world: Path, split: str, limit: int | None) -> list[tuple[str, str, str]]:
    """(id, video path, prompt) of the world's `split` videos, in file order."""
    rows = [json.loads(line) for line in (world / "pointwise.jsonl").read_text().splitlines() if line.strip()]
    items = [(r["id"], str(world / r["video"]), r["prompt"]) for r in rows if r.get("split") == split]
    return items[:limit] if limit else items


def load_model(args, tmp: Path):
    """The checkpoint to judge with, and how to name it: `--model`, else the shipped base as a judge."""
    path = Path(args.model) if args.model else tmp / "base_judge"
    if not args.model:
        sampling = Sampling(num_frames=8, max_pixels=12544)  # the demo's SFT data (recipes/tiny_cpu.sh)
        ThinkThenScore.from_base(BASE, sampling=sampling).save_pretrained(path)
    model, device, dtype = load_checkpoint(path, args.device, args.dtype)
    name = _rel(args.model) if args.model else f"{_rel(BASE)} as a judge (untrained head)"
    return model, name, device, dtype


def judge_batch(judge: Judge, batch: list, draws: Draws | None) -> tuple[float, list[dict]]:
    start = time.perf_counter()
    out = judge_items(judge, batch, draws)
    return time.perf_counter() - start, out


def run(judges: dict[str, Judge], batches: list, repeats: int, draws: Draws | None) -> dict:
    """Timed passes: seconds[side][repeat][batch]; the first pass's judgments; the fast path's counters."""
    for side in SIDES:  # warm-up (allocations, lazy imports), not timed
        judge_batch(judges[side], batches[0], draws)
    seconds = {side: [] for side in SIDES}
    judged = {side: [] for side in SIDES}
    loads = [os.getloadavg()[0]]
    judges["after"].reuse.counts.clear()
    judges["after"].reuse.media.counts.update(dict.fromkeys(judges["after"].reuse.media.counts, 0))
    for r in range(repeats):
        judges["after"].reuse.clear()  # one pass over the videos, as one eval run: nothing carried over
        for side in SIDES:
            seconds[side].append([])
        for b, batch in enumerate(batches):
            for side in SIDES if (r + b) % 2 == 0 else SIDES[::-1]:
                took, out = judge_batch(judges[side], batch, draws)
                seconds[side][r].append(took)
                if r == 0:
                    judged[side] += out
        loads.append(os.getloadavg()[0])
    reuse = judges["after"].reuse
    counts = {k: v / repeats for k, v in {**reuse.counts, **reuse.media.counts}.items()}
    return {"seconds": seconds, "judged": judged, "counts": counts, "loadavg_1min": loads}


def compare(before: list[dict], after: list[dict]) -> dict:
    """How far the fast path's judgments are from the old path's (draws compared one by one)."""
    pairs = [(a, b) for x, y in zip(before, after, strict=True) for a, b in _draws(x, y)]
    text = [a["id"] for a, b in pairs if _text(a) != _text(b)]
    scores = [abs(a["scores"][d] - b["scores"][d]) for a, b in pairs if a["scores"] for d in a["scores"]]
    probs = [abs(p - q) for a, b in pairs for p, q in zip(_probs(a), _probs(b), strict=True)]
    if any((a["answer_probs"] is None) != (b["answer_probs"] is None) for a, b in pairs):
        text.append("answer_probs present on one side only")
    return {"judgments": len(pairs), "text_differs": text, "max_score_diff": max(scores, default=0.0),
            "max_prob_diff": max(probs, default=0.0)}  # fmt: skip


def _draws(a: dict, b: dict) -> list[tuple[dict, dict]]:
    if "samples" in a:
        return list(zip(a["samples"]["judgments"], b["samples"]["judgments"], strict=True))
    return [(a, b)]


def _text(j: dict) -> dict:
    return {k: v for k, v in j.items() if k not in NEAR}


def _probs(j: dict) -> list[float]:
    return [p for entry in (j.get("answer_probs") or {}).values() if entry for p in entry["probs"].values()]


def identical(diff: dict) -> bool:
    return not diff["text_differs"] and max(diff["max_score_diff"], diff["max_prob_diff"]) <= TOLERANCE


def summarize(res: dict, videos: int) -> dict:
    """Videos per second of each side (all timed passes), the ratio, and the per-batch paired ratios."""
    totals = {side: sum(map(sum, res["seconds"][side])) for side in SIDES}
    passes = len(res["seconds"]["before"])
    per_s = {side: videos * passes / totals[side] for side in SIDES}
    paired = [b / a for rb, ra in zip(res["seconds"]["before"], res["seconds"]["after"], strict=True)
              for b, a in zip(rb, ra, strict=True)]  # fmt: skip
    pass_ratios = [
        sum(b) / sum(a) for b, a in zip(res["seconds"]["before"], res["seconds"]["after"], strict=True)
    ]
    return {"videos": videos, "passes": passes, "seconds": totals, "videos_per_s": per_s,
            "ratio": per_s["after"] / per_s["before"], "pass_ratios": pass_ratios,
            "paired_median": statistics.median(paired), "paired_range": [min(paired), max(paired)]}  # fmt: skip


def profile(judges: dict[str, Judge], batches: list, draws: Draws | None) -> dict[str, dict[str, float]]:
    """One more pass per side under cProfile: cumulative seconds of the `PROFILE` rows."""
    out = {}
    for side in SIDES:
        if side == "after":
            judges[side].reuse.clear()
        prof = cProfile.Profile()
        prof.enable()
        for batch in batches:
            judge_items(judges[side], batch, draws)
        prof.disable()
        stats = pstats.Stats(prof).stats
        cum: dict[str, float] = {}
        for (path, _, name), (_, _, _, total, _) in stats.items():
            if "cot_rm" in path or "transformers" in path:
                cum[name] = max(cum.get(name, 0.0), total)
        out[side] = {label: sum(cum.get(n, 0.0) for n in names) for label, names in PROFILE}
    return out


def _rel(path) -> str:
    resolved = Path(path).resolve()
    return str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else str(path)


def section(res: dict) -> str:
    s, inp, c, diff = res["summary"], res["inputs"], res["counts"], res["compare"]
    per_video = lambda key: c.get(key, 0) / s["videos"]  # noqa: E731
    mode = (
        f"{inp['samples']} sampled draws per video (temperature 0.7, seed 0)" if inp["samples"] else "greedy"
    )
    rows = "\n".join(
        f"| {label} | {res['profile']['before'][label]:.3f} | {res['profile']['after'][label]:.3f} |"
        for label, _ in PROFILE
    )
    loads = res["loadavg_1min"]
    return f"""
## judge_speed — {time.strftime("%Y-%m-%d %H:%M %Z")} ({res["where"]})

- Machine: {res["machine"]}; Python {sys.version.split()[0]}, torch {res["versions"]["torch"]}, transformers {res["versions"]["transformers"]}; {res["threads"]} torch threads
- Command: `{res["command"]}`
- Model: {inp["model"]} ({inp["family"]}, {inp["dtype"]}, {inp["device"]}); max {inp["max_new_tokens"]} new tokens a turn, {mode}
- Videos: the `{inp["split"]}` split of `{inp["world"]}`, {s["videos"]} videos in batches of {inp["batch_size"]}; {s["passes"]} timed passes, each batch judged by both sides back to back, the order alternating; the fast path's stores emptied before each pass
- Same judgments: {diff["judgments"]} judgments (first pass), the same text, tool calls and parse errors on both sides ({res["tool_calls"]} tool calls in all, {res["parse_errors"]} parse errors); scores differ by at most {diff["max_score_diff"]:.1e}, answer probabilities by {diff["max_prob_diff"]:.1e}
- Load average (1 min) over the passes: {min(loads):.1f}-{max(loads):.1f}

| | before (`reuse=False`) | after (fast path) |
|---|---:|---:|
| seconds, all passes | {s["seconds"]["before"]:.2f} | {s["seconds"]["after"]:.2f} |
| videos / s | {s["videos_per_s"]["before"]:.2f} | {s["videos_per_s"]["after"]:.2f} |
| language-model tokens run / video | {per_video("tokens"):,.0f} | {per_video("tokens_run"):,.0f} |
| vision-tower items / video | {per_video("media"):.1f} | {per_video("tower_calls"):.1f} |

**The fast path judges {s["ratio"]:.2f}x as many videos per second** (per pass: {", ".join(f"{r:.2f}x" for r in s["pass_ratios"])}; per batch, paired: median {s["paired_median"]:.2f}x, {s["paired_range"][0]:.2f}-{s["paired_range"][1]:.2f}x).

Where the time goes (cProfile, one more pass per side, seconds; rows nest: the rounds hold their decode steps and prefill, the processor and tower rows overlap the others):

| | before | after |
|---|---:|---:|
{rows}
"""


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = ap.add_argument
    add("--world", default=str(ROOT / "runs" / "demo" / "toy"), help="a toy world (cot-rm toyworld --out)")
    add("--model", default=None, help="cot-rm checkpoint (default: the shipped tiny base as a judge)")
    add("--split", default="test")
    add("--limit", type=int, default=None, help="at most this many videos")
    add("--batch-size", type=int, default=8)
    add("--repeats", type=int, default=3, help="timed passes over the videos")
    add("--max-new-tokens", type=int, default=512)
    add("--samples", type=int, default=None, help="K seeded sampled draws per video instead of greedy")
    add("--device", default="auto")
    add("--dtype", default="auto")
    add("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    add("--no-profile", action="store_true", help="skip the cProfile pass")
    add("--out", help="write the full results (JSON) here")
    add("--results-md", default=str(ROOT / "bench" / "RESULTS.md"), help="markdown to append to")
    add("--no-append", action="store_true", help="print the section, do not append it")
    args = ap.parse_args(argv)
    need_inputs(
        ap, str(Path(args.world) / "pointwise.jsonl"), args.model and str(Path(args.model) / "cot_rm.json")
    )
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join(["python", "bench/judge_speed.py", *(sys.argv[1:] if argv is None else argv)])
    if args.threads:
        torch.set_num_threads(args.threads)
    items = held_out(Path(args.world), args.split, args.limit)
    batches = [items[i : i + args.batch_size] for i in range(0, len(items), args.batch_size)]
    draws = Draws(args.samples) if args.samples else None
    with tempfile.TemporaryDirectory(prefix="judge-speed-") as tmp:
        model, name, device, dtype = load_model(args, Path(tmp))
    kw = {"max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size}
    judges = {"before": Judge.from_model(model, reuse=False, **kw), "after": Judge.from_model(model, **kw)}
    print(f"judge_speed: {len(items)} videos, {len(batches)} batches, {args.repeats} passes", flush=True)
    res = run(judges, batches, args.repeats, draws)
    res["compare"] = compare(res["judged"]["before"], res["judged"]["after"])
    judged = [d for j in res["judged"]["after"] for d, _ in _draws(j, j)]
    res["tool_calls"] = sum(len(j["tool_calls"]) for j in judged)
    res["parse_errors"] = sum(j["parse_error"] is not None for j in judged)
    res["summary"] = summarize(res, len(items))
    res["profile"] = profile(judges, batches, draws) if not args.no_profile else {s: {label: 0.0 for label, _ in PROFILE} for s in SIDES}  # fmt: skip
    where = f"CPU, {os.cpu_count()} cores" if device == "cpu" else machine()
    res |= {"bench": "judge_speed", "command": command, "machine": machine(), "where": where, "threads": torch.get_num_threads(),
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
            "inputs": {"model": name, "family": model.config.family, "dtype": dtype,
                       "device": str(device), "world": _rel(args.world), "split": args.split,
                       "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
                       "samples": args.samples}}  # fmt: skip
    del res["judged"]  # compared above; the JSON keeps the numbers
    if not identical(res["compare"]):
        publish(res, "", args.out, args.results_md, append=False)
        print(f"judge_speed: the two paths judged differently: {res['compare']}", file=sys.stderr)
        return 1
    publish(res, section(res), args.out, args.results_md, append=not args.no_append)
    return 0


if __name__ == "__main__":
    sys.exit(main())
