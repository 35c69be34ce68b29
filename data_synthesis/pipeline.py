"""`cot-rm synthesize`: labelled videos -> teacher critiques -> consistency filter -> SFT tool traces.

    cot-rm synthesize --input data/pointwise.jsonl --teacher oracle --out data/sft.jsonl
    cot-rm synthesize --input ... --teacher openai:http://localhost:8000/v1 --out ...   # a vLLM-served VLM
    cot-rm synthesize --teacher import:cot.json --video-root videos/ --out ...   # rationales that exist

Resumable: every input record, kept or rejected, is logged in `OUT.progress.jsonl` after its lines are
flushed to OUT, with OUT's size at that point. A killed run truncates OUT back to the last logged
record and carries on, so it ends with exactly the records of an uninterrupted run. Each record's
randomness is seeded by (seed, id), never by its position or by earlier records.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import zlib
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from tqdm import tqdm

from cot_rm.media.video import Sampling, VideoError, read_frames_at, read_video_numpy, sample_indices
from cot_rm.protocol import PROTOCOL_VERSION, TOOL_MAX_PIXELS, JudgeSpec
from cot_rm.schema import PointwiseRecord, SchemaError, read_jsonl
from data_synthesis.filters import ConsistencyRule
from data_synthesis.negatives import write_negatives
from data_synthesis.rationale_import import mapping_from
from data_synthesis.rationalize import PROMPT_VERSION, Item, Outcome, RationaleConfig, label_spec, rationalize
from data_synthesis.teachers.base import TeacherUnavailableError
from data_synthesis.teachers.factory import make_teacher
from data_synthesis.teachers.oracle import check_annotated
from data_synthesis.traces import build_trace, tool_frames


@dataclass(frozen=True)
class SynthConfig:
    seed: int = 0
    batch_size: int = 16
    first_turn: Sampling = Sampling(fps=None, num_frames=8, max_pixels=112 * 112)  # K uniform low-res frames
    tool_max_pixels: int = TOOL_MAX_PIXELS  # tool results: the cited frames at higher resolution
    teacher_frames: int = 16
    teacher_max_pixels: int = 448 * 448
    rationale_free_p: float = 0.2
    splits: tuple[str, ...] | None = None  # only records of these splits (None: all)
    rationale: RationaleConfig = RationaleConfig()


class ResumeError(RuntimeError):
    pass


RETRIED = ("teacher_error", "bad_video")  # rejections a rerun tries again (see `synthesize`)


def record_seed(seed: int, rid: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(rid.encode())) % 2**31


def synthesize(
    records,
    teacher,
    out: Path,
    cfg: SynthConfig,
    restart: bool = False,
    progress: bool = True,
    extra: dict | None = None,
) -> dict:
    """Run (or resume) the pipeline over pointwise `records`; returns the summary written beside OUT
    (with `extra`'s keys added, e.g. an import's counts)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    log = out.with_name(out.name + ".progress.jsonl")
    header = {"fingerprint": _fingerprint(teacher, cfg, records)}
    # A teacher that could not be reached, or a video that could not be read, is no verdict on the
    # record: a rerun tries it again (its new entry, appended later in the log, is the one that counts).
    done = {rid: e for rid, e in _resume(out, log, header, restart).items() if e.get("reason") not in RETRIED}
    todo = [r for r in records if r.id not in done]
    bar = _bar(len(records), len(done), progress)
    counts = Counter(e["status"] for e in done.values())
    with open(out, "ab") as out_fh, open(log, "ab") as log_fh:
        for start in range(0, len(todo), cfg.batch_size):
            batch = todo[start : start + cfg.batch_size]
            for entry, lines in _process(batch, teacher, out, cfg):
                _append(out_fh, b"".join(lines))
                entry["end"] = out_fh.tell()
                _append(log_fh, (json.dumps(entry) + "\n").encode())
                counts[entry["status"]] += 1
                bar.update(1)
                bar.set_postfix(kept=counts["accepted"], rejected=counts["rejected"], refresh=False)
    bar.close()
    summary = {**_summary(log, teacher, cfg, out), **(extra or {})}
    Path(str(out).removesuffix(".jsonl") + ".summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _process(batch: list[PointwiseRecord], teacher, out: Path, cfg: SynthConfig):
    """Yield (progress entry, output lines) per record of the batch, in input order."""
    items, videos, errors = [], {}, {}
    for rec in batch:
        try:
            videos[rec.id], item = _prepare(rec, teacher, cfg)
            items.append(item)
        except VideoError as err:
            errors[rec.id] = str(err)
    outcomes = {o.id: o for o in rationalize(teacher, items, cfg.rationale)} if items else {}
    for rec in batch:
        if rec.id in errors:
            yield {"id": rec.id, "status": "rejected", "reason": "bad_video", "detail": errors[rec.id]}, []
            continue
        o = outcomes[rec.id]
        entry = {"id": rec.id, "parse_errors": o.parse_errors, "rewrites": o.rewrites}
        if o.judgment is None:
            yield {**entry, "status": "rejected", "reason": o.reason, "detail": o.detail}, []
            continue
        lines = _trace_lines(rec, videos[rec.id], o, teacher, out, cfg)
        calls = len(tool_frames(json.loads(lines[0])["messages"]))
        yield {**entry, "status": "accepted", "lines": len(lines), "tool_calls": calls}, lines


def _prepare(rec: PointwiseRecord, teacher, cfg: SynthConfig):
    """Decode the first-turn frames (the trace's video input) and the teacher's frames."""
    video = read_video_numpy(rec.video, cfg.first_turn)
    idx = sample_indices(video.total_frames, video.fps, Sampling(fps=None, num_frames=cfg.teacher_frames))
    images = (
        read_frames_at(rec.video, idx, cfg.teacher_max_pixels)
        if getattr(teacher, "needs_images", True)
        else []
    )
    captions = [f"frame {i} ({i / video.fps:.2f} s):" for i in idx] if images else []
    seed = record_seed(cfg.seed, rec.id)
    return video, Item(rec, images, captions, video.total_frames, video.fps, seed, tuple(video.shown))


def _trace_lines(rec, video, o: Outcome, teacher, out: Path, cfg: SynthConfig) -> list[bytes]:
    seed = record_seed(cfg.seed, rec.id)
    rng = random.Random(f"{seed}:trace")
    spec = label_spec(rec, cfg.rationale.spec)
    ref = os.path.relpath(rec.video, out.resolve().parent) if "://" not in rec.video else rec.video
    base = {
        "prompt": rec.prompt, "video": ref, "sampling": cfg.first_turn.to_dict(),
        "frame_indices": video.shown, "tool_max_pixels": cfg.tool_max_pixels, "judge_spec": spec.to_dict(),
        "scores": rec.scores, "teacher_scores": o.teacher_scores,
        "source_id": rec.id, **({"split": rec.split} if rec.split else {}),
        "provenance": {"teacher": teacher.name, "model": teacher.model, "prompt_version": PROMPT_VERSION,
                       "protocol_version": PROTOCOL_VERSION, "seed": seed, "rewrites": o.rewrites},
    }  # fmt: skip
    messages = build_trace(rec, video, o.judgment, ref, spec, rng)
    rows = [{"id": rec.id, **base, "messages": messages, "tool_frames": tool_frames(messages),
             "frames_cited": list(o.judgment.frames_cited), "rationale_free": False}]  # fmt: skip
    if rng.random() < cfg.rationale_free_p:
        plain = build_trace(rec, video, None, ref, spec, rng)
        rows.append({"id": f"{rec.id}#nr", **base, "messages": plain, "tool_frames": [], "frames_cited": [],
                     "rationale_free": True})  # fmt: skip
    return [(json.dumps(r, ensure_ascii=False) + "\n").encode() for r in rows]


def _append(fh, data: bytes) -> None:
    fh.write(data)
    fh.flush()
    os.fsync(fh.fileno())


def _resume(out: Path, log: Path, header: dict, restart: bool) -> dict[str, dict]:
    """Entries of records already done; OUT and the log are cut back to their last complete record."""
    if restart or not log.exists():
        out.write_bytes(b"")
        log.write_bytes((json.dumps(header) + "\n").encode())
        return {}
    raw = log.read_bytes()
    lines, good = raw.split(b"\n"), 0
    entries = []
    for line in lines[:-1]:  # the part after the last newline is a torn write
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            break
        good += len(line) + 1
    if not entries or entries[0] != header:
        raise ResumeError(
            f"{log} was written with other settings or input; use another --out, or --restart to start over"
        )
    end = entries[-1].get("end", 0) if len(entries) > 1 else 0
    if not out.exists() or out.stat().st_size < end:
        raise ResumeError(f"{out} is shorter than its progress log says; use --restart to start over")
    with open(out, "r+b") as fh:
        fh.truncate(end)
    with open(log, "r+b") as fh:
        fh.truncate(good)
    return {e["id"]: e for e in entries[1:]}


def _fingerprint(teacher, cfg: SynthConfig, records) -> str:
    desc = json.dumps([teacher.name, teacher.model, _jsonable(cfg), [r.id for r in records]], sort_keys=True)
    return f"{zlib.crc32(desc.encode()):08x}"


def _jsonable(cfg: SynthConfig) -> dict:
    return json.loads(json.dumps(asdict(cfg), default=str))


def _summary(log: Path, teacher, cfg: SynthConfig, out: Path) -> dict:
    by_id = {e["id"]: e for e in map(json.loads, log.read_text().splitlines()[1:])}  # a retry's entry wins
    entries = list(by_id.values())
    accepted = [e for e in entries if e["status"] == "accepted"]
    rejected = Counter(e["reason"] for e in entries if e["status"] == "rejected")
    examples = {e["reason"]: f"{e['id']}: {e['detail']}" for e in reversed(entries) if e.get("detail")}
    parse = Counter(r for e in entries for r in e.get("parse_errors", []))
    return {
        "accepted": len(accepted),
        "rejected": dict(sorted(rejected.items())),
        "rejected_example": dict(sorted(examples.items())),  # one record's reason per kind of rejection
        "keep_rate": round(len(accepted) / len(entries), 4) if entries else None,
        "parse_errors": dict(sorted(parse.items())),
        "records_written": sum(e["lines"] for e in accepted),
        "with_tool_calls": sum(1 for e in accepted if e["tool_calls"] > 0),
        "rewrites": sum(e.get("rewrites", 0) for e in entries),
        "output": str(out),
        "teacher": teacher.name,
        "model": teacher.model,
        "prompt_version": PROMPT_VERSION,
        "protocol_version": PROTOCOL_VERSION,
        "seed": cfg.seed,
    }


def _bar(total: int, initial: int, enabled: bool):
    return tqdm(
        total=total, initial=initial, desc="synthesize", unit="video", disable=not enabled, file=sys.stderr
    )


# --------------------------------------------------------------------------------------------- CLI


def _add_sampling_arguments(p: argparse.ArgumentParser) -> None:
    """The frames a trace shows: the first turn's sampling and the tool's image size."""
    p.add_argument("--frames", type=int, default=8, help="K uniform frames in the first turn")
    p.add_argument("--max-pixels", type=int, default=112 * 112, help="first-turn pixels per frame")
    p.add_argument(
        "--overlap", action="store_true", help="first-turn frames as overlapping pairs (f0 f1, f1 f2, ...)"
    )
    p.add_argument(
        "--tool-max-pixels", type=int, default=TOOL_MAX_PIXELS, help="pixels of frames returned by the tool"
    )
    p.add_argument("--family", default="qwen2_5_vl", choices=["qwen2_5_vl", "qwen3_vl"])


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Turn labelled videos (pointwise JSONL) into SFT traces: a teacher writes a critique anchored on "
        "each label, the consistency filter keeps those that agree, cited frames become select_frames "
        "calls. Resumable: rerun the same command after an interruption."
    )
    p.add_argument(
        "--input",
        help="pointwise JSONL (README, Data formats), e.g. toyworld's pointwise.jsonl (not with "
        "--teacher import:FILE, whose records come from FILE)",
    )
    p.add_argument(
        "--teacher",
        required=True,
        help="oracle[:plain|:fields] (toy world; README) | openai:URL[#MODEL] | hf:PATH | import:FILE "
        "(rationales that exist: VideoScore2's released CoT records, JSON array or Lines; docs/formats.md 11)",
    )
    p.add_argument(
        "--out",
        required=True,
        help="output SFT JSONL; beside it go the summary and the resume log (for data/sft.jsonl: "
        "data/sft.summary.json, data/sft.jsonl.progress.jsonl). Rerunning resumes; records the teacher "
        "could not be reached for, or whose video could not be read, are tried again",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--splits", default=None, help="comma-separated splits to use, e.g. train,val (default: all)"
    )
    p.add_argument("--limit", type=int, default=None, help="use only the first N input records")
    p.add_argument("--batch-size", type=int, default=16, help="records per teacher call batch")
    _add_sampling_arguments(p)
    p.add_argument("--drop-at", type=float, default=2.0, help="drop when any dimension is off by this much")
    p.add_argument("--rewrite-below", type=float, default=3.0, help="near misses (off < this) get rewrites")
    p.add_argument("--max-rewrites", type=int, default=1)
    p.add_argument(
        "--blind", action="store_true", help="also re-judge without the label; keep only agreement"
    )
    p.add_argument(
        "--rationale-free-p", type=float, default=0.2, help="chance of an extra answer-only sample"
    )
    p.add_argument("--max-tool-calls", type=int, default=3)
    p.add_argument("--max-frames-per-call", type=int, default=8)
    p.add_argument("--memory-window", type=int, default=1)
    p.add_argument("--max-tokens", type=int, default=1024, help="longest critique the teacher may write")
    p.add_argument("--concurrency", type=int, default=8, help="openai teacher: requests in flight")
    p.add_argument("--timeout", type=float, default=120.0, help="openai teacher: seconds per request")
    p.add_argument(
        "--negatives",
        default="",
        help="add deliberate negatives of these kinds before "
        "rationalising: comma-separated from prompt_swap,shuffle,reverse,drop (written to OUT.negatives/)",
    )
    p.add_argument(
        "--negatives-rate", type=float, default=0.25, help="chance of each negative kind per record"
    )
    p.add_argument(
        "--video-root",
        default=None,
        help="import: the folder the records' videos are in, found by video_name or the URL's file name "
        "(default: FILE's folder)",
    )
    p.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="KEY=FIELD",
        help="import: which field holds KEY, for layouts other than VideoScore2's (repeatable; KEY is one of "
        "id, video_name, video_url, prompt, visual_quality, text_alignment, physical_consistency, overall, "
        "rationale, comments, split; FIELD may be dotted, e.g. labels.visual; KEY= maps nothing)",
    )
    p.add_argument(
        "--map-file", default=None, help="import: the field mapping as a YAML or JSON object of KEY: FIELD"
    )
    p.add_argument("--restart", action="store_true", help="discard earlier progress for --out and start over")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def negatives_for(records, out: Path, kinds: list[str], rate: float, seed: int) -> list[PointwiseRecord]:
    """Deliberate negatives of `records` in OUT.negatives/ (made once; a resumed run reuses them)."""
    folder = out.with_name(out.name.removesuffix(".jsonl") + ".negatives")
    settings = {"kinds": sorted(kinds), "rate": rate, "seed": seed, "sources": [r.id for r in records]}
    stamp = folder / "settings.json"
    if not stamp.exists() or json.loads(stamp.read_text()) != settings:  # made for other records: remake
        shutil.rmtree(folder, ignore_errors=True)
        write_negatives(records, folder, kinds=kinds, seed=seed, rate=rate)
        stamp.write_text(json.dumps(settings) + "\n")  # written last: present means complete
    return read_jsonl(folder / "pointwise.jsonl", kind="pointwise")


def config_from_args(args: argparse.Namespace) -> SynthConfig:
    spec = JudgeSpec(max_tool_calls=args.max_tool_calls, max_frames_per_call=args.max_frames_per_call,
                     memory_window=args.memory_window)  # fmt: skip
    rule = ConsistencyRule(drop_at=args.drop_at, rewrite_below=args.rewrite_below)
    return SynthConfig(
        seed=args.seed,
        batch_size=args.batch_size,
        first_turn=Sampling(
            fps=None,
            num_frames=args.frames,
            max_pixels=args.max_pixels,
            family=args.family,
            overlap=args.overlap,
        ),  # fmt: skip
        tool_max_pixels=args.tool_max_pixels,
        rationale_free_p=args.rationale_free_p,
        splits=tuple(args.splits.split(",")) if args.splits else None,
        rationale=RationaleConfig(
            spec=spec, rule=rule, max_rewrites=args.max_rewrites, blind=args.blind, max_tokens=args.max_tokens
        ),
    )


def main(args: argparse.Namespace) -> int:
    try:
        cfg = config_from_args(args)
        if args.teacher.startswith("import:"):
            records, teacher, cfg = _imported(args, cfg)
            extra = {"import": teacher.imported.summary()}
        else:
            records, teacher = _labelled(args, cfg)
            extra = None
        summary = synthesize(records, teacher, Path(args.out), cfg, args.restart, not args.no_progress, extra)
    except (SchemaError, ResumeError, TeacherUnavailableError, VideoError, ValueError) as err:
        print(f"cot-rm synthesize: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cot-rm synthesize: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    print(json.dumps(summary, indent=2))
    for reason, example in summary["rejected_example"].items():
        n = summary["rejected"][reason]
        print(f"cot-rm synthesize: {n} rejected as {reason}, e.g. {example}", file=sys.stderr)
    if "import" in summary:
        print(f"cot-rm synthesize: {_import_line(summary)}", file=sys.stderr)
    if not summary["accepted"]:
        print(
            "cot-rm synthesize: no record was accepted (reasons above); nothing to train on", file=sys.stderr
        )
        return 1
    return 0


def _labelled(args, cfg: SynthConfig):
    """The --input records (and their negatives) and the teacher that writes their critiques."""
    if not args.input:
        raise ValueError("--input is required (the labelled records), unless the teacher is import:FILE")
    if args.video_root or args.map or args.map_file:
        raise ValueError("--video-root, --map and --map-file go with --teacher import:FILE only")
    records = _select(read_jsonl(args.input, kind="pointwise"), cfg, args, args.input)
    if args.negatives:
        kinds = args.negatives.split(",")
        records += negatives_for(records, Path(args.out), kinds, args.negatives_rate, args.seed)
    openai = args.teacher.startswith("openai:")
    teacher = make_teacher(
        args.teacher, **({"concurrency": args.concurrency, "timeout_s": args.timeout} if openai else {})
    )
    if teacher.name == "oracle":
        check_annotated(records, args.input)
    return records, teacher


def _imported(args, cfg: SynthConfig):
    """The records of an import file with their stored rationales as the teacher (`import:FILE`); its
    malformed records and missing videos are reported now, before the work."""
    source = args.teacher.partition(":")[2]
    for given, why in [(args.input, "reads its records from FILE; leave out --input"),
                       (args.negatives, "has no rationale for deliberate negatives; leave out --negatives"),
                       (args.blind, "cannot re-judge a stored rationale; leave out --blind")]:  # fmt: skip
        if given:
            raise ValueError(f"--teacher import:FILE {why}")
    mapping = mapping_from(args.map, args.map_file)
    teacher = make_teacher(
        args.teacher, video_root=args.video_root, mapping=mapping, judge_spec=cfg.rationale.spec
    )
    for line in teacher.imported.problems():
        print(f"cot-rm synthesize: {line}", file=sys.stderr)
    if not teacher.records:
        raise ValueError(f"{source}: no usable record ({teacher.imported.rows} read, all malformed or none)")
    # A stored rationale cannot be rewritten: a near miss is as inconsistent as any other miss.
    cfg = replace(cfg, rationale=replace(cfg.rationale, max_rewrites=0))
    return _select(teacher.records, cfg, args, source), teacher, cfg


def _import_line(summary: dict) -> str:
    imp = summary["import"]
    return (
        f"imported {imp['file']}: {imp['rows']} rows, {summary['accepted']} kept, "
        f"{summary['rejected'].get('inconsistent', 0)} disagree with their labels, "
        f"{imp['missing_videos']} missing videos, {imp['malformed']} malformed; "
        f"{imp['label_lines_stripped']} label lines stripped"
    )


def _select(records: list[PointwiseRecord], cfg: SynthConfig, args, source: str) -> list[PointwiseRecord]:
    """The records to synthesise (--splits, --limit), their labels checked against the judge's scale."""
    kept = [r for r in records if not cfg.splits or r.split in cfg.splits][: args.limit]
    if not kept:
        unsplit = sum(r.split is None for r in records)
        why = f" ({unsplit} of {len(records)} records have no split)" if cfg.splits and unsplit else ""
        raise ValueError(f"{source}: no record to synthesise with --splits {args.splits}{why}")
    spec = cfg.rationale.spec
    for r in kept:
        if bad := next(filter(None, (spec.label_problem(d, v) for d, v in r.scores.items())), None):
            raise ValueError(f"{source}: record {r.id!r}: {bad}")
    return kept
