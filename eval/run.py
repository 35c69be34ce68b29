"""The library half of `cot-rm eval` (its command line is `eval.cli`): metrics from a predictions file, or
a checkpoint judged on a benchmark.

The predictions file format is in eval/metrics.py; the benchmark loaders in eval/benchmarks.py.
With --model, every distinct (video, prompt) is judged once, greedy (or by the mean of K seeded draws with
--samples K, `cot_rm.judge.sampling`), with the checkpoint's own frame sampling and dimensions; DIR gets judgments.jsonl (a resumable cache: appended and fsynced per batch;
ids already there are not judged again unless their video file changed (resolved path, size, mtime) or
could not be read; keyed by checkpoint identity, bench and protocol),
predictions.jsonl (head scores, and on pairs the head's probabilities of A / tie / B,
`cot_rm.model.pairwise`), predictions_answer.jsonl (the generated <answer>'s scores), metrics.json and
report.md. --probes judges perturbed copies of the videos instead (eval/probes.py).
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

from tqdm import tqdm

from cot_rm.judge.local import Judge, video_error_of
from cot_rm.judge.sampling import Draws, judge_items
from cot_rm.media.frame_cache import CACHE_VERSION, file_identity
from cot_rm.model import calibration, pairwise
from cot_rm.model.checkpoint import CheckpointError, load_checkpoint
from cot_rm.protocol import JudgeSpec
from cot_rm.schema import write_jsonl
from eval import benchmarks, metrics
from eval.faithfulness import description_accuracy, faithfulness, toy_truth


class EvalError(Exception):
    """A one-line, user-facing reason to stop (exit 2)."""

    # fmt: on


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
    records: list, kind: str, judged: dict, ids: dict, key: str, drop: Sequence[str] = (), cfg=None
) -> list[dict]:
    """Prediction rows (the file format above) from the judgments' `key` ("scores" or "answer_scores");
    the labels of dimensions in `drop` are left out. Sampled judgments add each draw's scores (`samples`);
    `cfg` (the checkpoint's config) adds each pair's probabilities (`probs`, from the head's scores)."""
    rows = []
    for r in records:
        js = [judged[vid] for vid in ids[r.id]]
        sides = ("",) if kind == "pointwise" else ("_a", "_b")
        labels = r.scores if kind == "pointwise" else _pair_label(r)
        row = {"id": r.id, "label": {d: v for d, v in labels.items() if d not in drop}}
        for side, j in zip(sides, js, strict=True):
            row[f"scores{side}"] = j[key]
            row[f"parse_error{side}"] = j["parse_error"]
            if "samples" in j:
                row[f"samples{side}"] = [draw[key] for draw in j["samples"]["judgments"]]
        if cfg is not None and kind == "pairwise":
            row["probs"] = pairwise.probabilities(js[0]["scores"], js[1]["scores"], cfg)
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------------- model path


def eval_model(args: argparse.Namespace) -> dict:
    bench = load_bench(args)
    draws_of(args)  # a bad --samples, --temperature, --top-p or --seed stops here, before the model loads
    model, device, dtype = load_model(args.model, args.device, args.dtype)
    videos, ids = plan(bench.records, bench.kind, bench.root)
    args.out.mkdir(parents=True, exist_ok=True)
    unscored = unscored_dimensions(bench.records, bench.kind, model.config.dimensions)
    if unscored:
        print(f"cot-rm eval: {args.data}: labels for {unscored} left out: this checkpoint scores "
              f"{list(model.config.dimensions)}", file=sys.stderr)  # fmt: skip
    key = cache_key(args, model, device, dtype)
    judged = judge_videos(model, videos, args, args.out / "judgments.jsonl", key)
    head = predictions_for(bench.records, bench.kind, judged, ids, "scores", unscored, model.config)
    answer = predictions_for(bench.records, bench.kind, judged, ids, "answer_scores", unscored)
    write_jsonl(args.out / "predictions.jsonl", head)
    write_jsonl(args.out / "predictions_answer.jsonl", answer)
    eps, source = _model_eps(model, args)
    head_m = metrics.evaluate([{**r, "kind": bench.kind} for r in head], eps, source)
    answer_m = metrics.evaluate([{**r, "kind": bench.kind} for r in answer])
    errors = [judged[v]["parse_error"] for v in videos]
    bad = {judged[v]["video"]: why for v, e in zip(videos, errors) if (why := video_error_of(e))}
    truth, shown = toy_truth(bench.records, bench.kind, args.data)  # {} unless toy-world data
    checked = [(judged[v], prompt, truth[where]) for v, (path, prompt) in videos.items()
               if (where := str(Path(path).resolve())) in truth and not video_error_of(judged[v]["parse_error"])]  # fmt: skip
    drawn = [(judged[v], shown[where]) for v, (path, _) in videos.items()
             if (where := str(Path(path).resolve())) in shown and not video_error_of(judged[v]["parse_error"])]  # fmt: skip
    return {
        "pairwise": head_m["pairwise"],
        "pointwise": head_m["pointwise"],
        # the head's P(A better), P(tie), P(B better) against the labels: log-loss, Brier, ECE
        "pair_probs": head_m.get("pair_probs", {}),
        **({"score_spread": head_m["score_spread"]} if "score_spread" in head_m else {}),
        "answer": {"pairwise": answer_m["pairwise"], "pointwise": answer_m["pointwise"]},
        "parse_failure_rate": metrics.parse_failure_rate(errors),
        # Toy-world data only: critiques against the videos' known defects (eval/faithfulness.py).
        "faithfulness": faithfulness(checked),
        "described": description_accuracy(drawn),  # what the critiques say is drawn, per attribute
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
    if args.data is None:
        raise EvalError("--model needs --data (the benchmark's annotation file)")
    return benchmarks.load(args.bench, args.data, args.root, args.split, args.limit)


def _model_eps(model, args) -> tuple[metrics.Eps, str | None]:
    """--tie-eps or --val-predictions, else the checkpoint's fitted tie_margin (head unit scale) put on
    the head's scores by the calibration rule (`cot_rm.model.calibration`: the same ties on either scale).
    One number when every dimension gets the same eps, else one per dimension."""
    if args.tie_eps is not None or args.val_predictions is not None:
        return fixed_eps(args.tie_eps, args.val_predictions)
    cfg = model.config
    margin = float(cfg.tie_margin or 0.0)
    if margin <= 0:
        return None, None
    spec = JudgeSpec.from_dict(cfg.judge_spec or {"dimensions": cfg.dimensions})
    eps = calibration.margin_on_scores(margin, cfg.dimensions, cfg.calibration, spec)
    source = f"checkpoint tie_margin {margin} (head unit scale) x {(spec.score_max - spec.score_min) / 2}"
    if len(set(eps.values())) == 1:
        return next(iter(eps.values())), source
    return eps, source + " / each dimension's calibration std"


def draws_of(args) -> Draws | None:
    """The draws `--samples K` asks for (None: greedy); a bad value is an EvalError."""
    if not getattr(args, "samples", 0):
        return None
    try:
        return Draws(args.samples, args.temperature, args.top_p, args.seed)
    except ValueError as err:
        raise EvalError(f"--{err}".replace("top_p", "top-p")) from None


def decoding(draws: Draws | None) -> str:
    if draws is None:
        return "greedy (do_sample=False); one judgment per (video, prompt)"
    return (f"sampled: {draws.k} draws per (video, prompt) at temperature {draws.temperature}, top_p "
            f"{draws.top_p}, draw s of each batch seeded {draws.seed} + s; scores are the draws' means")  # fmt: skip


def protocol(model, args, key: dict) -> dict:
    """What the numbers depend on, pinned in metrics.json and report.md."""
    draws = draws_of(args)
    return {
        **key,
        "data": str(args.data.resolve()),
        "root": str(args.root.resolve()) if args.root else None,
        "split": args.split,
        "limit": args.limit,
        "decoding": decoding(draws),
        "greedy": draws is None,
        "frames": {k: key["sampling"].get(k) for k in ("fps", "num_frames", "min_frames", "max_frames")},
        "pixels": {k: key["sampling"].get(k) for k in ("min_pixels", "max_pixels")},
        "dimensions": list(model.config.dimensions),
        "scores": "head scores through the checkpoint's calibration on the judge's score scale (top level); "
        "the <answer>'s under 'answer'",
        "averaging": metrics.AVERAGING,
        "pair_probs": f"P(A better), P(tie), P(B better) from the head's Bradley-Terry-with-ties (Rao-Kupper) "
        f"model on its raw outputs, tie_theta {model.config.tie_theta} (cot_rm.model.pairwise); log-loss, "
        f"Brier and ECE ({metrics.ECE_BINS} confidence bins) as in eval/metrics.py",
        "eval_key": key_id(key),
    }


# -------------------------------------------------------------------------------------- judging


def load_model(path: Path, device: str, dtype: str):
    """(ThinkThenScore in eval mode on `device`, device, dtype); a bad path is an EvalError."""
    try:
        return load_checkpoint(path, device, dtype)
    except CheckpointError as err:
        raise EvalError(str(err)) from None


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
        "frames": CACHE_VERSION,  # how frames are decoded and resized
        "scores_rule": calibration.RULE,  # how the head's outputs become `scores`
        # only when sampling, so greedy caches made before sampling existed stay valid
        **({"draws": vars(draws)} if (draws := draws_of(args)) else {}),
    }


def key_id(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def judge_videos(model, videos: dict[str, tuple[str, str]], args, cache: Path, key: dict) -> dict[str, dict]:
    """Judgments for every video id, judging only those not yet in `cache` (appended and fsynced per
    batch, so a killed run resumes where it stopped), under `key` (written beside it as .key.json)."""
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
    draws, stamp = draws_of(args), key_id(key)
    with (
        open(cache, "a", encoding="utf-8") as fh,
        tqdm(total=len(todo), desc="judging", unit="video", file=sys.stderr) as bar,
    ):
        for start in range(0, len(todo), args.batch_size):
            chunk = todo[start : start + args.batch_size]
            for (vid, path, prompt), j in zip(chunk, judge_items(judge, chunk, draws), strict=True):
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
        write_jsonl(path, list(done.values()))  # atomic: no half line left to append onto
        if torn:
            print(f"cot-rm eval: {path}: dropped a torn last line", file=sys.stderr)
    return done
