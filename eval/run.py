"""`cot-rm eval`: metrics from a predictions file, or a checkpoint judged on a benchmark.

    cot-rm eval --predictions FILE --out DIR
    cot-rm eval --model CKPT --bench jsonl --data PATH --out DIR [--split test] [--limit N]

Predictions JSONL (one object a line, kind told by the keys):
    pairwise   {"id", "scores_a": {dim: x}, "scores_b": {dim: x}, "label": {dim: "A"|"B"|"tie"}}
    pointwise  {"id", "scores": {dim: x}, "label": {dim: x}}
optional: "parse_error" / "parse_error_a" / "parse_error_b" (null or a reason), "samples" /
"samples_a" / "samples_b" (lists of score dicts, for the score spread), "meta". A null score (or
scores object) is a failed judgment: counted, and wrong.

With --model, every distinct (video, prompt) is judged once, greedy, with the checkpoint's own frame
sampling and dimensions; DIR gets judgments.jsonl (a resumable cache: appended and fsynced per
batch, ids already there are not judged again), predictions.jsonl (head scores),
predictions_answer.jsonl (the generated <answer>'s scores), metrics.json and report.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
from pathlib import Path

from eval import metrics

BENCHES = ("jsonl",)
PAIR_KEYS = {"id", "label", "meta", *(f"{k}_{s}" for k in ("scores", "parse_error", "samples") for s in "ab")}
POINT_KEYS = {"id", "scores", "label", "parse_error", "samples", "meta"}


class EvalError(Exception):
    """A one-line, user-facing reason to stop (exit 2)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--predictions", type=Path, help="metrics from this predictions JSONL alone")
    p.add_argument("--model", type=Path, help="a cot-rm checkpoint (save_pretrained folder) to judge with")
    p.add_argument("--bench", choices=BENCHES, default="jsonl", help="benchmark loader (default: jsonl)")
    p.add_argument("--data", type=Path, help="the benchmark data (jsonl: pairwise or pointwise records)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument(
        "--split",
        choices=("train", "val", "test"),
        help="keep records of this split (and records without one)",
    )
    p.add_argument("--limit", type=int, help="evaluate the first N records only")
    p.add_argument(
        "--tie-eps",
        type=float,
        help="also report accuracy with ties at this fixed eps "
        "(score scale; default: the checkpoint's tie_margin when fitted)",
    )
    p.add_argument("--max-new-tokens", type=int, default=512, help="per assistant turn (default 512)")
    p.add_argument("--batch-size", type=int, default=4, help="videos per judging batch (default 4)")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1, ...")
    p.add_argument(
        "--dtype",
        choices=("auto", "bfloat16", "float16", "float32"),
        default="auto",
        help="auto: bfloat16 on CUDA, float32 on CPU",
    )


def main(args: argparse.Namespace) -> int:
    try:
        if (args.predictions is None) == (args.model is None):
            raise EvalError("give exactly one of --predictions FILE or --model CKPT")
        if args.predictions is not None:
            result = eval_predictions(args.predictions, args.tie_eps)
        else:
            result = eval_model(args)
    except EvalError as err:
        print(f"cot-rm eval: {err}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    write_report(args.out / "report.md", result)
    print(f"cot-rm eval: wrote {args.out / 'metrics.json'} and report.md", file=sys.stderr)
    return 0


# ------------------------------------------------------------------------------ predictions file


def eval_predictions(path: Path, tie_eps: float | None) -> dict:
    rows = read_predictions(path)
    result = metrics.evaluate(rows, tie_eps, "--tie-eps" if tie_eps is not None else None)
    return {**result, "source": {"predictions": str(path)}}


def read_predictions(path: Path) -> list[dict]:
    """Validated prediction rows (with their "kind"); the first bad line stops with `file:line: reason`."""
    if not path.is_file():
        raise EvalError(f"{path}: no such file")
    rows, seen = [], {}
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = parse_prediction(json.loads(line))
                if row["id"] in seen:
                    raise ValueError(f"duplicate id {row['id']!r} (first on line {seen[row['id']]})")
            except json.JSONDecodeError as err:
                raise EvalError(f"{path}:{lineno}: invalid JSON ({err.msg} at column {err.colno})") from None
            except ValueError as err:
                raise EvalError(f"{path}:{lineno}: {err}") from None
            seen[row["id"]] = lineno
            rows.append(row)
    if not rows:
        raise EvalError(f"{path}: no predictions")
    return rows


def parse_prediction(obj) -> dict:
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    if "scores_a" in obj or "scores_b" in obj:
        kind, keys, score_keys = "pairwise", PAIR_KEYS, ("scores_a", "scores_b")
    elif "scores" in obj:
        kind, keys, score_keys = "pointwise", POINT_KEYS, ("scores",)
    else:
        raise ValueError("cannot tell the kind: expected scores_a/scores_b (pairwise) or scores (pointwise)")
    for key in ("id", *score_keys, "label"):
        if key not in obj:
            raise ValueError(f"missing key {key!r} for a {kind} prediction")
    if unknown := sorted(set(obj) - keys):
        raise ValueError(f"unknown key {unknown[0]!r} for a {kind} prediction (allowed: {sorted(keys)})")
    if not isinstance(obj["id"], str) or not obj["id"]:
        raise ValueError(f"id must be a non-empty string, got {obj['id']!r}")
    for key in score_keys:
        _check_scores(obj[key], key)
    for key in ("samples", "samples_a", "samples_b"):
        if key in obj:
            if not isinstance(obj[key], list):
                raise ValueError(f"{key} must be a list of score objects")
            for i, sample in enumerate(obj[key]):
                _check_scores(sample, f"{key}[{i}]")
    for key in ("parse_error", "parse_error_a", "parse_error_b"):
        if obj.get(key) is not None and not isinstance(obj[key], str):
            raise ValueError(f"{key} must be null or a string, got {obj[key]!r}")
    _check_label(obj["label"], kind)
    return {**obj, "kind": kind}


def _check_scores(value, name: str) -> None:
    if value is None:
        return  # a failed judgment
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be an object of dimension -> number (or null), got {value!r}")
    for dim, v in value.items():
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise ValueError(f"{name}[{dim!r}] must be a finite number or null, got {v!r}")


def _check_label(label, kind: str) -> None:
    if not isinstance(label, dict) or not label:
        raise ValueError(f"label must be a non-empty object of dimension -> value, got {label!r}")
    for dim, v in label.items():
        if kind == "pairwise" and v not in metrics.LABELS:
            raise ValueError(f"label[{dim!r}] must be one of {list(metrics.LABELS)}, got {v!r}")
        if kind == "pointwise" and (
            isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v)
        ):
            raise ValueError(f"label[{dim!r}] must be a finite number, got {v!r}")


# ------------------------------------------------------------------------------------ benchmark


def load_bench(path: Path, split: str | None, limit: int | None) -> tuple[list, str]:
    """The project's own JSONL: all pairwise or all pointwise records (kind detected), filtered."""
    from cot_rm.schema import SchemaError, iter_jsonl

    if limit is not None and limit < 0:
        raise EvalError(f"--limit must be >= 0, got {limit}")
    records, seen = [], {}
    try:
        for rec in iter_jsonl(path):
            if rec.id in seen:
                raise EvalError(f"{path}: duplicate id {rec.id!r}")
            seen[rec.id] = True
            records.append(rec)
    except SchemaError as err:
        raise EvalError(str(err)) from None
    kinds = {type(r).__name__ for r in records}
    if kinds - {"PairRecord", "PointwiseRecord"} or len(kinds) > 1:
        raise EvalError(f"{path}: expected only pairwise or only pointwise records, found {sorted(kinds)}")
    records = [r for r in records if split is None or r.split in (None, split)][:limit]
    if not records:
        raise EvalError(f"{path}: no records to evaluate" + (f" in split {split!r}" if split else ""))
    return records, "pairwise" if kinds == {"PairRecord"} else "pointwise"


def video_id(video: str, prompt: str, base: Path) -> str:
    """A stable id for one (video, prompt) judgment: the video path as the data file names it, plus a
    short hash of the prompt (the same video judged under two prompts is two judgments)."""
    rel = video if "://" in video else os.path.relpath(video, base)
    return f"{rel}#{hashlib.sha1(prompt.encode()).hexdigest()[:8]}"


def _sides(r, kind: str) -> list[tuple[str, str]]:
    if kind == "pointwise":
        return [(r.video, r.prompt)]
    return [(r.video_a, r.prompt), (r.video_b, r.prompt_b or r.prompt)]


def plan(records: list, kind: str, base: Path) -> tuple[dict[str, tuple[str, str]], dict[str, list[str]]]:
    """({judgment id: (video path, prompt)}, each distinct pair once, in order; {record id: its ids})."""
    videos, ids = {}, {}
    for r in records:
        ids[r.id] = [video_id(video, prompt, base) for video, prompt in _sides(r, kind)]
        for vid, side in zip(ids[r.id], _sides(r, kind), strict=True):
            videos.setdefault(vid, side)
    return videos, ids


def predictions_for(records: list, kind: str, judged: dict, ids: dict, key: str) -> list[dict]:
    """Prediction rows (the file format above) from the judgments' `key` ("scores" or "answer_scores")."""
    rows = []
    for r in records:
        if kind == "pointwise":
            j = judged[ids[r.id][0]]
            rows.append({"id": r.id, "scores": j[key], "label": r.scores, "parse_error": j["parse_error"]})
            continue
        ja, jb = judged[ids[r.id][0]], judged[ids[r.id][1]]
        rows.append(
            {
                "id": r.id,
                "scores_a": ja[key],
                "scores_b": jb[key],
                "label": {"overall": r.preference, **r.dims},
                "parse_error_a": ja["parse_error"],
                "parse_error_b": jb["parse_error"],
            }
        )
    return rows


# ----------------------------------------------------------------------------------- model path


def eval_model(args: argparse.Namespace) -> dict:
    from cot_rm.schema import write_jsonl

    if args.data is None:
        raise EvalError("--model needs --data (the benchmark file)")
    records, kind = load_bench(args.data, args.split, args.limit)
    model, device, dtype = load_model(args.model, args.device, args.dtype)
    base = args.data.resolve().parent
    videos, ids = plan(records, kind, base)
    args.out.mkdir(parents=True, exist_ok=True)
    judged = judge_videos(model, videos, args)
    head = predictions_for(records, kind, judged, ids, "scores")
    answer = predictions_for(records, kind, judged, ids, "answer_scores")
    write_jsonl(args.out / "predictions.jsonl", head)
    write_jsonl(args.out / "predictions_answer.jsonl", answer)
    fixed_eps, source = _fixed_eps(model, args.tie_eps)
    rows_head = [{**r, "kind": kind} for r in head]
    rows_answer = [{**r, "kind": kind} for r in answer]
    head_m = metrics.evaluate(rows_head, fixed_eps, source)
    answer_m = metrics.evaluate(rows_answer)
    errors = [judged[v]["parse_error"] for v in videos]
    return {
        "pairwise": head_m["pairwise"],
        "pointwise": head_m["pointwise"],
        "answer": {"pairwise": answer_m["pairwise"], "pointwise": answer_m["pointwise"]},
        "parse_failure_rate": metrics.parse_failure_rate(errors),
        "n_video_errors": sum(bool(e and e.startswith("video_error")) for e in errors),
        "n_videos": len(videos),
        "n_records": len(records),
        "kind": kind,
        "tie_handling": head_m["tie_handling"],
        "protocol": _protocol(model, args, device, dtype, fixed_eps),
    }


def _fixed_eps(model, tie_eps: float | None) -> tuple[float | None, str | None]:
    """--tie-eps, else the checkpoint's fitted tie_margin (head unit scale) put on the score scale."""
    if tie_eps is not None:
        return tie_eps, "--tie-eps"
    margin = float(model.config.tie_margin or 0.0)
    if margin <= 0:
        return None, None
    spec = model.config.judge_spec or {}
    half_range = (spec.get("score_max", 5.0) - spec.get("score_min", 1.0)) / 2
    return margin * half_range, f"checkpoint tie_margin {margin} (head unit scale) x {half_range}"


def _protocol(model, args, device: str, dtype: str, fixed_eps: float | None) -> dict:
    return {
        "model": str(args.model.resolve()),
        "bench": args.bench,
        "data": str(args.data.resolve()),
        "split": args.split,
        "limit": args.limit,
        "greedy": True,
        "max_new_tokens": args.max_new_tokens,
        "sampling": model.config.sampling,
        "dimensions": list(model.config.dimensions),
        "judge_spec": model.config.judge_spec,
        "protocol_version": model.config.protocol_version,
        "scores": "head scores on the judge's score scale (top level); the <answer>'s under 'answer'",
        "tie_eps_fixed": fixed_eps,
        "device": device,
        "dtype": dtype,
    }


# -------------------------------------------------------------------------------------- judging


def load_model(path: Path, device: str, dtype: str):
    """(ThinkThenScore in eval mode on `device`, device, dtype); a bad path is an EvalError."""
    if not path.is_dir():
        raise EvalError(f"{path}: no such checkpoint folder")
    if not (path / "cot_rm.json").is_file():
        raise EvalError(f"{path}: not a cot-rm checkpoint (no cot_rm.json; see save_pretrained)")
    import torch

    from cot_rm.modeling import ThinkThenScore

    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    dtype = ("bfloat16" if device.startswith("cuda") else "float32") if dtype == "auto" else dtype
    try:
        model = ThinkThenScore.from_pretrained(path, torch_dtype=getattr(torch, dtype))
    except (OSError, ValueError, KeyError) as err:
        raise EvalError(f"{path}: cannot load the checkpoint ({str(err).splitlines()[0]})") from None
    return model.to(device).eval(), device, dtype


def judge_videos(model, videos: dict[str, tuple[str, str]], args) -> dict[str, dict]:
    """Judgments for every video id, judging only those not yet in DIR/judgments.jsonl (appended and
    fsynced per batch, so a killed run resumes where it stopped)."""
    from tqdm import tqdm

    from cot_rm.judge import Judge
    from cot_rm.protocol import JudgeSpec
    from cot_rm.video import Sampling

    name = str(args.model.resolve())
    cache = args.out / "judgments.jsonl"
    done = load_cache(cache, name)
    todo = [(vid, path, prompt) for vid, (path, prompt) in videos.items() if vid not in done]
    print(
        f"cot-rm eval: {len(videos)} videos, {len(videos) - len(todo)} cached, judging {len(todo)}",
        file=sys.stderr,
    )
    spec = JudgeSpec.from_dict(model.config.judge_spec or {"dimensions": model.config.dimensions})
    sampling = Sampling.from_dict(model.config.sampling)
    judge = Judge(
        model, sampling, spec, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, name=name
    )
    with (
        open(cache, "a", encoding="utf-8") as fh,
        tqdm(total=len(todo), desc="judging", unit="video", file=sys.stderr) as bar,
    ):
        for start in range(0, len(todo), args.batch_size):
            chunk = todo[start : start + args.batch_size]
            for (vid, path, prompt), j in zip(chunk, judge.judge(chunk), strict=True):
                done[vid] = {**j, "video": path, "prompt": prompt}
                fh.write(json.dumps(done[vid], ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
            bar.update(len(chunk))
    return done


def load_cache(path: Path, model_name: str) -> dict[str, dict]:
    """Judgments already in `path` by id. A torn last line (a run killed mid-write) is dropped and the
    file rewritten without it; a bad line elsewhere, or judgments by another model, stop the run."""
    if not path.exists():
        return {}
    lines = path.read_text(encoding="utf-8").split("\n")
    done, torn = {}, False
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict) or not isinstance(obj.get("id"), str):
                raise ValueError("not a judgment object with an id")
        except ValueError as err:
            if any(rest.strip() for rest in lines[lineno:]):
                raise EvalError(f"{path}:{lineno}: {err}; delete the file to judge again") from None
            torn = True
            break
        if obj.get("model") != model_name:
            raise EvalError(
                f"{path}:{lineno}: judged by {obj.get('model')!r}, not {model_name!r}; "
                "use another --out or delete the file"
            )
        done[obj["id"]] = obj
    if torn or (lines and lines[-1] != ""):
        from cot_rm.schema import write_jsonl

        write_jsonl(path, list(done.values()))  # atomic: no half line left to append onto
        if torn:
            print(f"cot-rm eval: {path}: dropped a torn last line", file=sys.stderr)
    return done


# --------------------------------------------------------------------------------------- report


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def report_markdown(result: dict) -> str:
    """A short table of the metrics (head and, when judged, the generated answer)."""
    answer = result.get("answer", {})
    lines = ["# cot-rm eval", ""]
    for key in ("n_records", "n_videos", "parse_failure_rate", "n_pairs", "n_pointwise"):
        if key in result:
            lines.append(f"- {key}: {_fmt(result[key])}")
    if result.get("pairwise"):
        src = " / answer" if answer else ""
        lines += [
            "",
            f"## Pairwise (head{src})",
            "",
            "| dimension | acc w/o ties | acc w/ ties | eps | n | ties |",
            "|---|---|---|---|---|---|",
        ]
        for dim, m in result["pairwise"].items():
            a = answer.get("pairwise", {}).get(dim, {})
            cells = [(m.get(k), a.get(k)) for k in ("acc_without_ties", "acc_with_ties", "tie_eps")]
            cells = [_fmt(h) + (f" / {_fmt(x)}" if answer else "") for h, x in cells]
            lines.append(f"| {dim} | {' | '.join(cells)} | {m['n']} | {m['n_ties']} |")
    if result.get("pointwise"):
        lines += [
            "",
            "## Pointwise (head" + (" / answer)" if answer else ")"),
            "",
            "| dimension | SRCC | PLCC | KRCC | n |",
            "|---|---|---|---|---|",
        ]
        for dim, m in result["pointwise"].items():
            a = answer.get("pointwise", {}).get(dim, {})
            cells = [
                _fmt(m.get(k)) + (f" / {_fmt(a.get(k))}" if answer else "") for k in ("srcc", "plcc", "krcc")
            ]
            lines.append(f"| {dim} | {' | '.join(cells)} | {m['n']} |")
    lines += ["", f"Ties: {metrics.TIE_RULE}; eps searched on this set (VideoAlign's protocol)."]
    return "\n".join(lines) + "\n"


def write_report(path: Path, result: dict) -> None:
    path.write_text(report_markdown(result), encoding="utf-8")
