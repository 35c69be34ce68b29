"""The end of an SFT run: calibration on validation data, the final checkpoint, and the report.

The report answers "did it learn?": the LM loss at the start and end of training, the share of greedy
judgments (with the tool loop) that parse on held-out videos, and the head's pairwise accuracy
(without ties) on held-out pairs, reading the model's own critique and, beside it, reading only the video
and prompt (where the head's accuracy comes from); and whether the model looks at the video at all (the
LM loss on val critiques with their own video vs another one). Printed and written to OUTPUT_DIR/report.json.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from cot_rm.judge.local import Judge
from cot_rm.media.video import VideoError, probe
from cot_rm.model import losses
from cot_rm.model.packing import use_varlen_sdpa
from cot_rm.model.processing import encode
from cot_rm.schema import read_jsonl
from cot_rm.train.data import PREF, load_traces
from cot_rm.train.log import note


def finish(model, trainer, cfg, skip_judging: bool = False) -> dict:
    out = Path(trainer.args.output_dir)
    model.eval()
    if getattr(trainer, "packing", False) and cfg.model.attn_implementation == "sdpa":
        use_varlen_sdpa(model, False)  # judge and save with transformers' own sdpa
    collator = trainer.data_collator
    val = validation_traces(cfg.data.train)
    model.config.tie_theta = cfg.loss.tie_theta  # the theta trained with, unless validation pairs refit it
    calibrate(model, collator, val, cfg.data.pairs)
    model.save_pretrained(out)
    history = trainer.state.log_history
    runtime = next((h["train_runtime"] for h in reversed(history) if "train_runtime" in h), None)
    report = {"checkpoint": str(out), "train_seconds": runtime and round(runtime), **lm_trend(history)}
    report["lm_loss_val_video_swapped"] = video_reliance(model, collator, val)
    if not skip_judging and cfg.data.eval_pairs:
        report.update(judged_report(model, cfg))
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def validation_traces(path) -> list[dict]:
    """The traces with a critique in the val split: what calibration and the video-reliance check read."""
    return [t for t in load_traces(path) if t.get("split") == "val" and not t.get("rationale_free")]


@torch.inference_mode()
def video_reliance(model, collator, rows: list[dict]) -> dict | None:
    """The LM loss on held-out (val) critiques with their own video and with another val video of the same
    length whose labels differ (same text, same labels): near-equal losses say the model writes its
    critique without looking at the video."""
    device = next(model.parameters()).device
    try:
        length = {v: probe(v)["total_frames"] for v in {r["video"] for r in rows}}
    except VideoError:
        return None
    own, other = [], []
    for i, row in enumerate(rows):
        rest = rows[i + 1 :] + rows[:i]  # the next one that fits: deterministic
        swap = next((q for q in rest if length[q["video"]] == length[row["video"]] and q["scores"] != row["scores"]), None)  # fmt: skip
        if swap is not None:
            own.append(_lm_loss(model, collator, row, device))
            other.append(_lm_loss(model, collator, {**row, "video": swap["video"]}, device))
    if not own:
        return None
    return {"own_video": sum(own) / len(own), "other_video": sum(other) / len(other), "rows": len(own)}


def _lm_loss(model, collator, row: dict, device) -> float:
    seq = collator.sequence(row)
    batch = collator.encode([seq], [])
    drop = {*collator.head_targets([seq], []), "vision_keys"}  # the training step's own inputs
    return model(**{k: v.to(device) for k, v in batch.items() if k not in drop}).loss.item()


@torch.inference_mode()
def head_scores(model, collator, rows: list[dict], batch_size: int = 8) -> list[list[float]]:
    """Raw head outputs [N, D] for traces rendered as in training (critique + reward token)."""
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(rows), batch_size):
        seqs = [collator.sequence(r) for r in rows[start : start + batch_size]]
        images = [img for s in seqs for img in s.images]
        batch = encode(
            model.processor, [s.text for s in seqs], videos=[s.video for s in seqs], images=images or None
        )
        out += model.score(**{k: v.to(device) for k, v in batch.items()}).tolist()
    return out


def calibrate(model, collator, val_rows: list[dict], pairs_path: str | None) -> None:
    """Per-dimension mean/std of the head on validation traces (VideoAlign's normalisation); on the
    validation pairs, the tie margin (on the head's raw scale) that best separates ties on overall, and
    Rao-Kupper's tie parameter, the pair probabilities' (`cot_rm.model.pairwise`)."""
    if len(val_rows) < 2:
        note(__name__, f"note: {len(val_rows)} validation trace(s) (split 'val'): scores left uncalibrated and "
              "the tie margin at 0; synthesise val records too (`--splits train,val`) to fit them")  # fmt: skip
        return
    raw = head_scores(model, collator, val_rows)
    dims = model.config.dimensions
    model.config.calibration = losses.fit_calibration({d: [r[j] for r in raw] for j, d in enumerate(dims)})
    if not pairs_path:
        return
    # Real paths on both sides, as build_examples: the pairs file may reach the videos via a symlink.
    by_video = {
        (os.path.realpath(row["video"]), row["prompt"]): r for row, r in zip(val_rows, raw, strict=True)
    }
    pairs = _val_pairs(pairs_path, by_video)
    if "overall" in dims:
        k = dims.index("overall")
        labelled = [(a[k] - b[k], PREF.get((p.dims or {}).get("overall", p.preference))) for a, b, p in pairs]
        if overall := [(d, label) for d, label in labelled if label is not None]:
            model.config.tie_margin = float(losses.fit_tie_margin(*zip(*overall, strict=True)))
    # theta is shared by the dimensions, as in the loss: fitted on every label the loss would read
    diffs, labels = [], []
    for a, b, p in pairs:
        for j, d in enumerate(dims):
            if (label := PREF.get((p.dims or {"overall": p.preference}).get(d))) is not None:
                diffs.append(a[j] - b[j])
                labels.append(label)
    if diffs:
        model.config.tie_theta = losses.fit_tie_theta(diffs, labels)


def _val_pairs(pairs_path: str, by_video: dict) -> list[tuple[list[float], list[float], object]]:
    """(raw head row of A, of B, the pair) for each validation pair whose two sides have a val trace."""
    out = []
    for p in read_jsonl(pairs_path, kind="pairwise"):
        a = by_video.get((os.path.realpath(p.video_a), p.prompt))
        b = by_video.get((os.path.realpath(p.video_b), p.prompt_b or p.prompt))
        if p.split == "val" and a is not None and b is not None:
            out.append((a, b, p))
    return out


def lm_trend(history: list[dict]) -> dict:
    values = [h["lm_loss"] for h in history if "lm_loss" in h]
    if not values:
        return {"lm_loss_first": None, "lm_loss_last": None, "lm_loss_fell": None}
    k = max(1, len(values) // 5)  # mean of the first and last fifth: robust to one noisy step
    first, last = sum(values[:k]) / k, sum(values[-k:]) / k
    return {"lm_loss_first": round(first, 4), "lm_loss_last": round(last, 4), "lm_loss_fell": last < first}


def judged_report(model, cfg) -> dict:
    """Greedy judgments with the tool loop on held-out pairs: parse rate and head/answer accuracy."""
    # A pair without a split is a training pair (as SFT reads the same file), never a held-out one,
    # unless the eval file is not the training one.
    own = cfg.data.pairs and Path(cfg.data.eval_pairs).resolve() == Path(cfg.data.pairs).resolve()
    allowed = (cfg.data.eval_split,) if own else (None, cfg.data.eval_split)
    pairs = [p for p in read_jsonl(cfg.data.eval_pairs, kind="pairwise") if p.split in allowed]
    if not pairs:
        note(__name__, f"note: {cfg.data.eval_pairs}: no pairs with split {cfg.data.eval_split!r} to report on "
              "(pairs without a split are trained on)")  # fmt: skip
        return {"pairs": 0}
    if cfg.data.eval_limit and len(pairs) > cfg.data.eval_limit:  # spread over the file: pairs come by prompt
        step = len(pairs) / cfg.data.eval_limit
        pairs = [pairs[int(i * step)] for i in range(cfg.data.eval_limit)]
    videos = {}  # (path, prompt) -> id: a video shown under two prompts is judged under each
    for p in pairs:
        for path, prompt in ((p.video_a, p.prompt), (p.video_b, p.prompt_b or p.prompt)):
            videos.setdefault((path, prompt), f"{path}#{len(videos)}")
    judge = Judge.from_model(model, name=str(Path(cfg.train["output_dir"])))
    results = judge.judge([(vid, path, prompt) for (path, prompt), vid in videos.items()])
    judged = {key: j for key, j in zip(videos, results, strict=True)}
    parsed = sum(j["parse_error"] is None for j in judged.values())
    dims = model.config.dimensions
    readable = [
        (vid, path, prompt) for (path, prompt), vid in videos.items() if judged[(path, prompt)]["scores"]
    ]
    raw = judge.score_video_only(readable)
    video_only = {(path, prompt): {"scores": dict(zip(dims, r, strict=True))}
                  for (_, path, prompt), r in zip(readable, raw, strict=True)}  # fmt: skip
    return {
        "judged_videos": len(judged),
        "parse_rate": round(parsed / max(1, len(judged)), 4),
        "pairs": len(pairs),
        "head_pairwise_accuracy": accuracy(pairs, judged, "scores", dims),
        "answer_pairwise_accuracy": accuracy(pairs, judged, "answer_scores", dims),
        # The head on the video and prompt alone: near chance while the head above scores well means
        # it reads the critique, not the pixels (then a better critique, not the head, is what helps).
        "head_pairwise_accuracy_video_only": accuracy(pairs, video_only, "scores", dims),
    }


def accuracy(pairs, judged: dict, key: str, dims: list[str]) -> dict:
    """Accuracy without ties per dimension: human-tied pairs dropped, a model tie (or no score) is wrong."""
    result = {}
    for d in dims:
        hits = total = 0
        for p in pairs:
            label = PREF.get({"overall": p.preference, **(p.dims or {})}.get(d))
            if not label:
                continue
            ja, jb = (
                judged.get((p.video_a, p.prompt), {}),
                judged.get((p.video_b, p.prompt_b or p.prompt), {}),
            )
            a, b = (ja.get(key) or {}).get(d), (jb.get(key) or {}).get(d)
            total += 1
            hits += a is not None and b is not None and (a - b) * label > 0
        result[d] = round(hits / total, 4) if total else None
    return result
