"""`cot-rm eval`: metrics from a predictions file, or a checkpoint judged on a benchmark.

    cot-rm eval --predictions FILE --out DIR [--tie-eps X | --val-predictions VAL]
    cot-rm eval --model CKPT --bench NAME --data PATH [--root VIDEOS] --out DIR [--split test] [--limit N]
    cot-rm eval --model CKPT --bench NAME --data PATH --out DIR --probes [--probe-videos N]

The predictions file format is in eval/metrics.py; the benchmark loaders in eval/benchmarks.py.
With --model, every distinct (video, prompt) is judged once, greedy, with the checkpoint's own frame
sampling and dimensions; DIR gets judgments.jsonl (a resumable cache: appended and fsynced per batch;
ids already there are not judged again unless their video file changed (resolved path, size, mtime) or
could not be read; keyed by checkpoint identity, bench and protocol),
predictions.jsonl (head scores), predictions_answer.jsonl (the generated <answer>'s scores),
metrics.json and report.md. --probes judges perturbed copies of the videos instead (eval/probes.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from cot_rm.config import positive
from eval import metrics
from eval.benchmarks import BENCHES, BenchError
from eval.faithfulness import faithfulness, toy_defects
from eval.report import write_report


class EvalError(Exception):
    """A one-line, user-facing reason to stop (exit 2)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Evaluate a predictions file (no model needed), or judge a benchmark with a cot-rm checkpoint "
        "(greedy, the checkpoint's own frame sampling; resumable), or run reward-hacking probes. "
        "Writes DIR/metrics.json (or probes.json) and DIR/report.md."
    )
    arg = p.add_argument
    # fmt: off
    arg("--predictions", type=Path, metavar="FILE", help="metrics from this predictions JSONL alone (format: README)")
    arg("--model", type=Path, metavar="CKPT", help="a cot-rm checkpoint (save_pretrained folder) to judge with")
    arg("--bench", choices=BENCHES, default="jsonl",
        help="benchmark loader for --data (default jsonl: the project's own records; the public ones "
        "and where to get them are listed in the README)")
    arg("--data", type=Path, metavar="PATH", help="the benchmark's annotation file (JSONL, CSV, JSON or Parquet)")
    arg("--root", type=Path, metavar="DIR", help="folder the video paths are relative to (default: --data's folder)")
    arg("--out", type=Path, required=True, metavar="DIR", help="output folder (also the resumable cache)")
    arg("--split", choices=("train", "val", "test"), help="jsonl only: keep records of this split (and records without one)")
    arg("--limit", type=int, metavar="N", help="evaluate the first N records only")
    tie = p.add_mutually_exclusive_group()
    tie.add_argument("--tie-eps", type=float, metavar="X",
                     help="also report accuracy with ties at this fixed eps (score scale; default: the "
                     "checkpoint's tie_margin when fitted)")
    tie.add_argument("--val-predictions", type=Path, metavar="FILE",
                     help="a predictions file on validation pairs (same model): each dimension's tie eps is "
                     "searched there and applied here, reported beside the eps searched on this set")
    arg("--probes", action="store_true",
        help="reward-hacking probes: judge static / duplicated / shuffled / colour-drifted copies and a "
        "swapped prompt, report how the scores move (DIR/probes.json)")
    arg("--probe-videos", type=int, default=32, metavar="N", help="with --probes: videos to perturb (default 32)")
    arg("--max-new-tokens", type=positive(int), default=512, metavar="N", help="per assistant turn (default 512)")
    arg("--batch-size", type=positive(int), default=4, metavar="N", help="videos per judging batch (default 4)")
    arg("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1, ...")
    arg("--dtype", choices=("auto", "bfloat16", "float16", "float32"), default="auto",
        help="auto: bfloat16 on CUDA, float32 on CPU")
    # fmt: on


def main(args: argparse.Namespace) -> int:
    try:
        if (args.predictions is None) == (args.model is None):
            raise EvalError("give exactly one of --predictions FILE or --model CKPT")
        if args.out.exists() and not args.out.is_dir():
            raise EvalError(f"--out {args.out}: exists and is not a folder; give a folder for the outputs")
        if args.probes and args.model is None:
            raise EvalError("--probes needs --model CKPT and --data (the videos to perturb)")
        if args.predictions is not None:
            name, result = (
                "metrics.json",
                eval_predictions(args.predictions, args.tie_eps, args.val_predictions),
            )
        elif args.probes:
            from eval import probes

            name, result = "probes.json", probes.run(args)
        else:
            name, result = "metrics.json", eval_model(args)
    except (EvalError, BenchError, metrics.PredictionsError) as err:
        print(f"cot-rm eval: {err}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / name).write_text(json.dumps(result, indent=2) + "\n")
    write_report(args.out)
    print((args.out / "report.md").read_text(encoding="utf-8"))  # the metrics, as tables
    print(f"cot-rm eval: wrote {args.out / name} and report.md", file=sys.stderr)
    return 0


# ------------------------------------------------------------------------------ predictions file


def eval_predictions(path: Path, tie_eps: float | None, val_path: Path | None = None) -> dict:
    rows = metrics.read_predictions(path)
    eps, source = fixed_eps(tie_eps, val_path)
    result = metrics.evaluate(rows, eps, source)
    return {**result, "source": {"predictions": str(path)}}


def fixed_eps(tie_eps: float | None, val_path: Path | None) -> tuple[metrics.Eps, str | None]:
    """The eps for accuracy with ties that is not searched on the evaluated set: --tie-eps, or each
    dimension's eps searched on --val-predictions; (None, None) when neither is given."""
    if tie_eps is not None:
        if not math.isfinite(tie_eps) or tie_eps < 0:
            raise EvalError(f"--tie-eps must be a finite number >= 0, got {tie_eps}")
        return tie_eps, "--tie-eps"
    if val_path is None:
        return None, None
    pairs = [r for r in metrics.read_predictions(val_path) if r["kind"] == "pairwise"]
    if not pairs:
        raise EvalError(f"{val_path}: no pairwise predictions to fit the tie eps on")
    return metrics.fit_tie_eps(pairs), f"searched per dimension on validation predictions {val_path}"


# ------------------------------------------------------------------------------------ benchmark


def video_id(video: str, prompt: str, base: Path) -> str:
    """A stable id for one (video, prompt) judgment: the video path as the data file names it, plus a
    short hash of the prompt (the same video judged under two prompts is two judgments)."""
    rel = video if "://" in video else os.path.relpath(video, base)
    return f"{rel}#{hashlib.sha1(prompt.encode()).hexdigest()[:8]}"


def _pair_label(r) -> dict[str, str]:
    """A pair's label per dimension: overall from `preference`, the rest from `dims`; a loader that
    labels some dimensions only (e.g. a chosen/rejected aspect) lists them in meta["labelled"]."""
    label = {"overall": r.preference, **r.dims}
    keep = r.meta.get("labelled")
    return {d: v for d, v in label.items() if d in keep} if keep else label


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


def unscored_dimensions(records: list, kind: str, dims: list[str]) -> list[str]:
    """Labelled dimensions the checkpoint has no score for (a typo, or another benchmark's names)."""
    labelled = {d for r in records for d in (r.scores if kind == "pointwise" else _pair_label(r))}
    return sorted(labelled - set(dims) - {"overall"})  # overall falls back to the mean (eval/metrics.py)


def predictions_for(
    records: list, kind: str, judged: dict, ids: dict, key: str, drop: Sequence[str] = ()
) -> list[dict]:
    """Prediction rows (the file format above) from the judgments' `key` ("scores" or "answer_scores");
    the labels of dimensions in `drop` are left out."""
    rows = []
    for r in records:
        if kind == "pointwise":
            j = judged[ids[r.id][0]]
            label = {d: v for d, v in r.scores.items() if d not in drop}
            rows.append({"id": r.id, "scores": j[key], "label": label, "parse_error": j["parse_error"]})
            continue
        ja, jb = judged[ids[r.id][0]], judged[ids[r.id][1]]
        rows.append(
            {
                "id": r.id,
                "scores_a": ja[key],
                "scores_b": jb[key],
                "label": {d: v for d, v in _pair_label(r).items() if d not in drop},
                "parse_error_a": ja["parse_error"],
                "parse_error_b": jb["parse_error"],
            }
        )
    return rows


# ----------------------------------------------------------------------------------- model path


def eval_model(args: argparse.Namespace) -> dict:
    from cot_rm.judge import video_error_of
    from cot_rm.schema import write_jsonl

    bench = load_bench(args)
    model, device, dtype = load_model(args.model, args.device, args.dtype)
    videos, ids = plan(bench.records, bench.kind, bench.root)
    args.out.mkdir(parents=True, exist_ok=True)
    unscored = unscored_dimensions(bench.records, bench.kind, model.config.dimensions)
    if unscored:
        print(f"cot-rm eval: {args.data}: labels for {unscored} left out: this checkpoint scores "
              f"{list(model.config.dimensions)}", file=sys.stderr)  # fmt: skip
    key = cache_key(args, model, device, dtype)
    judged = judge_videos(model, videos, args, args.out / "judgments.jsonl", key)
    head = predictions_for(bench.records, bench.kind, judged, ids, "scores", unscored)
    answer = predictions_for(bench.records, bench.kind, judged, ids, "answer_scores", unscored)
    write_jsonl(args.out / "predictions.jsonl", head)
    write_jsonl(args.out / "predictions_answer.jsonl", answer)
    eps, source = _model_eps(model, args)
    head_m = metrics.evaluate([{**r, "kind": bench.kind} for r in head], eps, source)
    answer_m = metrics.evaluate([{**r, "kind": bench.kind} for r in answer])
    errors = [judged[v]["parse_error"] for v in videos]
    bad = {judged[v]["video"]: why for v, e in zip(videos, errors) if (why := video_error_of(e))}
    truth = toy_defects(bench.records, bench.kind, args.data)  # {} unless toy-world data
    checked = [(judged[v], prompt, truth[where]) for v, (path, prompt) in videos.items()
               if (where := str(Path(path).resolve())) in truth and not video_error_of(judged[v]["parse_error"])]  # fmt: skip
    return {
        "pairwise": head_m["pairwise"],
        "pointwise": head_m["pointwise"],
        "answer": {"pairwise": answer_m["pairwise"], "pointwise": answer_m["pointwise"]},
        "parse_failure_rate": metrics.parse_failure_rate(errors),
        # Toy-world data only: critiques against the videos' known defects (eval/faithfulness.py).
        "faithfulness": faithfulness(checked),
        "n_video_errors": len(bad),
        "video_errors": dict(list(bad.items())[:50]),
        "unscored_dimensions": unscored,
        "n_videos": len(videos),
        "n_records": len(bench.records),
        "kind": bench.kind,
        "tie_handling": head_m["tie_handling"],
        "bench": bench.info,
        "protocol": protocol(model, args, key),
    }


def load_bench(args: argparse.Namespace):
    from eval import benchmarks

    if args.data is None:
        raise EvalError("--model needs --data (the benchmark's annotation file)")
    return benchmarks.load(args.bench, args.data, args.root, args.split, args.limit)


def _model_eps(model, args) -> tuple[metrics.Eps, str | None]:
    """--tie-eps or --val-predictions, else the checkpoint's fitted tie_margin (head unit scale) put on
    the score scale; applies to the head's scores."""
    if args.tie_eps is not None or args.val_predictions is not None:
        return fixed_eps(args.tie_eps, args.val_predictions)
    margin = float(model.config.tie_margin or 0.0)
    if margin <= 0:
        return None, None
    spec = model.config.judge_spec or {}
    half_range = (spec.get("score_max", 5.0) - spec.get("score_min", 1.0)) / 2
    return margin * half_range, f"checkpoint tie_margin {margin} (head unit scale) x {half_range}"


def protocol(model, args, key: dict) -> dict:
    """What the numbers depend on, pinned in metrics.json and report.md."""
    return {
        **key,
        "data": str(args.data.resolve()),
        "root": str(args.root.resolve()) if args.root else None,
        "split": args.split,
        "limit": args.limit,
        "decoding": "greedy (do_sample=False); one judgment per (video, prompt)",
        "greedy": True,
        "frames": {k: key["sampling"].get(k) for k in ("fps", "num_frames", "min_frames", "max_frames")},
        "pixels": {k: key["sampling"].get(k) for k in ("min_pixels", "max_pixels")},
        "dimensions": list(model.config.dimensions),
        "scores": "head scores on the judge's score scale (top level); the <answer>'s under 'answer'",
        "averaging": metrics.AVERAGING,
        "eval_key": key_id(key),
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


def checkpoint_id(path: Path) -> str:
    """A checkpoint's identity beyond its path: cot_rm.json's bytes plus each weight file's name, size
    and mtime (hashing gigabytes of weights per run would cost more than it saves). Retraining into the
    same folder changes it, so a stale cache is never reused."""
    h = hashlib.sha256((path / "cot_rm.json").read_bytes())
    for f in sorted(path.glob("*.safetensors")):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def cache_key(args, model, device: str, dtype: str) -> dict:
    """Everything a cached judgment depends on; judgments made under another key are never reused."""
    return {
        "model": str(args.model.resolve()),
        "checkpoint": checkpoint_id(args.model),
        "bench": args.bench,
        "protocol_version": model.config.protocol_version,
        "sampling": model.config.sampling,
        "judge_spec": model.config.judge_spec,
        "max_new_tokens": args.max_new_tokens,
        "tool_max_pixels": model.config.tool_max_pixels,
        "device": device.split(":")[0],  # greedy decoding can differ between CPU and GPU kernels
        "dtype": dtype,
    }


def key_id(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def judge_videos(model, videos: dict[str, tuple[str, str]], args, cache: Path, key: dict) -> dict[str, dict]:
    """Judgments for every video id, judging only those not yet in `cache` (appended and fsynced per
    batch, so a killed run resumes where it stopped), under `key` (written beside it as .key.json)."""
    from tqdm import tqdm

    from cot_rm.judge import Judge, video_error_of

    done = load_cache(cache, key)
    cache.with_suffix(".key.json").write_text(json.dumps(key, indent=2, sort_keys=True) + "\n")
    prints = {vid: fingerprint(path) for vid, (path, _) in videos.items()}
    # reused only when made from this very file, and not a failure to read it (the file may be fixed now)
    fresh = {v for v, j in done.items() if j.get("fingerprint") == prints.get(v)}
    fresh -= {v for v in fresh if video_error_of(done[v]["parse_error"])}
    todo = [(vid, path, prompt) for vid, (path, prompt) in videos.items() if vid not in fresh]
    redo = sum(vid in done for vid, _, _ in todo)
    print(
        f"cot-rm eval: {len(videos)} videos, {len(videos) - len(todo)} cached, judging {len(todo)}"
        + (f" ({redo} changed or unreadable since cached)" if redo else ""),
        file=sys.stderr,
    )
    judge = Judge.from_model(model, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                             name=key["model"])  # fmt: skip
    stamp = key_id(key)
    with (
        open(cache, "a", encoding="utf-8") as fh,
        tqdm(total=len(todo), desc="judging", unit="video", file=sys.stderr) as bar,
    ):
        for start in range(0, len(todo), args.batch_size):
            chunk = todo[start : start + args.batch_size]
            for (vid, path, prompt), j in zip(chunk, judge.judge(chunk), strict=True):
                extra = {"video": path, "prompt": prompt, "eval_key": stamp, "fingerprint": prints[vid]}
                done[vid] = {**j, **extra}
                if why := video_error_of(j["parse_error"]):
                    tqdm.write(f"cot-rm eval: {why}", file=sys.stderr)
                fh.write(json.dumps(done[vid], ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
            bar.update(len(chunk))
    return done


def fingerprint(path: str) -> str:
    """What a cached judgment of `path` was made from: the resolved file, its size and mtime (a URL as
    given), so a video regenerated under the same name, or another folder's file, is judged again."""
    from cot_rm.frame_cache import file_identity

    if "://" in path:
        return path
    try:
        return json.dumps(file_identity(os.path.realpath(path)), sort_keys=True)
    except OSError:
        return f"{os.path.realpath(path)}: missing"


def _key_mismatch(path: Path, found: str | None, key: dict) -> EvalError:
    try:
        old = json.loads(path.with_suffix(".key.json").read_text())
        diff = ", ".join(f"{k}: {old.get(k)!r} -> {v!r}" for k, v in key.items() if old.get(k) != v)
    except (OSError, ValueError, AttributeError):
        diff = ""
    why = f" ({diff[:300]})" if diff else ""
    return EvalError(
        f"{path}: judged under another checkpoint, bench or protocol (eval_key {found!r}, now "
        f"{key_id(key)!r}){why}; use another --out or delete the file to judge again"
    )


def load_cache(path: Path, key: dict) -> dict[str, dict]:
    """Judgments already in `path` by id. A torn last line (a run killed mid-write) is dropped and the
    file rewritten without it; a bad line elsewhere, or judgments under another key, stop the run."""
    if not path.exists():
        return {}
    lines = path.read_text(encoding="utf-8").split("\n")
    done, torn, stamp = {}, False, key_id(key)
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
        if obj.get("eval_key") != stamp:
            raise _key_mismatch(path, obj.get("eval_key"), key)
        done[obj["id"]] = obj
    if torn or (lines and lines[-1] != ""):
        from cot_rm.schema import write_jsonl

        write_jsonl(path, list(done.values()))  # atomic: no half line left to append onto
        if torn:
            print(f"cot-rm eval: {path}: dropped a torn last line", file=sys.stderr)
    return done
