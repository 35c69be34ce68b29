"""Evaluation metrics (numpy only) and the predictions file they read: pairwise accuracy with and
without ties, the calibration of pair probabilities, rank correlations, parse-failure rate and score spread.

Predictions JSONL (one object a line, kind told by the keys):
    pairwise   {"id", "scores_a": {dim: x}, "scores_b": {dim: x}, "label": {dim: "A"|"B"|"tie"}}
    pointwise  {"id", "scores": {dim: x}, "label": {dim: x}}
optional: "parse_error" / "parse_error_a" / "parse_error_b" (null or a reason), "samples" /
"samples_a" / "samples_b" (lists of score dicts, for the score spread) or "scores_std" /
"scores_std_a" / "scores_std_b" ({dim: std}, when the spread was computed elsewhere), "probs" (pairwise:
{dim: {"A": p, "tie": p, "B": p} or null}, the model's probabilities of the three outcomes), "meta". A null
score (or scores object) is a failed judgment: counted, and wrong. Each dimension is evaluated over
the rows whose label has it (its `n`); a labelled dimension missing from a row's scores is a missing
score there (`n_missing`: wrong for pairs, left out of correlations). `overall`, when the scores have
none, is the mean of the row's other scores.

Pairwise labels are 1 (A preferred), -1 (B preferred), 0 (tie); `diffs` are score_a - score_b, NaN
where a score is missing (a failed judgment): such a pair is counted and always wrong, never dropped.

- accuracy without ties: pairs the humans tied are dropped; a model tie (equal scores) is wrong.
- accuracy with ties: three-way (A / tie / B) over all pairs; the model says "tie" when
  |score_a - score_b| <= eps. `search_tie_eps` picks the eps that maximises it on the evaluated set
  itself (VideoAlign's protocol, the tie calibration of Deutsch et al. 2023: optimistic, since it is
  fitted on the test data); `acc_with_ties` applies a given eps, e.g. one `fit_tie_eps` found on
  validation predictions (reported beside the searched one, with where it came from).
- pair probabilities (rows with `probs`): log-loss, Brier score and expected calibration error of the
  three-way outcome, beside the accuracy of its most probable outcome (`prob_metrics`).
- pointwise: Spearman (SRCC, Pearson of average ranks), Pearson (PLCC), Kendall tau-b (KRCC), all
  tie-aware; None where undefined (fewer than 2 items, or a constant side).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

LABELS = {"A": 1, "B": -1, "tie": 0}
TIE_RULE = "model says tie when |score_a - score_b| <= eps"
OVERALL = "overall"

# --------------------------------------------------------------------------------------- pairwise


def _arrays(diffs, labels) -> tuple[np.ndarray, np.ndarray]:
    d = np.asarray(diffs, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=np.int64).ravel()
    if d.shape != y.shape:
        raise ValueError(f"need one label per diff, got {d.size} diffs and {y.size} labels")
    if not np.isin(y, (-1, 0, 1)).all():
        raise ValueError("labels must be 1 (A), -1 (B) or 0 (tie)")
    return d, y


def acc_without_ties(diffs, labels) -> float | None:
    """Accuracy over the pairs the humans did not tie; a model tie or a missing score is wrong."""
    d, y = _arrays(diffs, labels)
    decided = y != 0
    if not decided.any():
        return None
    return float((np.sign(d[decided]) == y[decided]).mean())  # sign(NaN) is NaN: never equal


def predict_with_ties(diffs, eps: float) -> np.ndarray:
    """Three-way prediction: 0 (tie) when |d| <= eps, else sign(d); NaN (no prediction) when d is NaN."""
    d = np.asarray(diffs, dtype=np.float64)
    return np.where(np.abs(d) <= eps, 0.0, np.sign(d))


def acc_with_ties(diffs, labels, eps: float) -> float | None:
    """Three-way accuracy over all pairs (ties included) at a given eps."""
    d, y = _arrays(diffs, labels)
    if d.size == 0:
        return None
    return float((predict_with_ties(d, eps) == y).mean())


def search_tie_eps(diffs, labels) -> tuple[float | None, float | None]:
    """(eps, accuracy) maximising `acc_with_ties` over eps in {0} and every observed |d|.

    Those candidates give every distinct partition of the pairs into tie / not tie. Equal accuracies
    keep the smallest eps. O(n log n): one sort, then cumulative hit counts on both sides of each eps.
    """
    d, y = _arrays(diffs, labels)
    if d.size == 0:
        return None, None
    ok = np.isfinite(d)
    order = np.argsort(np.abs(d[ok]), kind="stable")
    mags, dk, yk = np.abs(d[ok])[order], d[ok][order], y[ok][order]
    tie_cum = np.concatenate([[0], np.cumsum(yk == 0)])  # hits if predicted tie
    sign_cum = np.concatenate([[0], np.cumsum(np.sign(dk) == yk)])  # hits if predicted by sign
    candidates = np.unique(np.concatenate([[0.0], mags]))
    k = np.searchsorted(mags, candidates, side="right")  # pairs with |d| <= eps
    hits = tie_cum[k] + sign_cum[-1] - sign_cum[k]
    best = int(np.argmax(hits))  # the first maximum: the smallest eps
    return float(candidates[best]), float(hits[best]) / d.size


def pairwise_metrics(diffs, labels, fixed_eps: float | None = None) -> dict:
    """One dimension's pairwise section: accuracies, the searched eps, counts (+ fixed-eps accuracy,
    when an eps chosen elsewhere, e.g. on validation data, is given)."""
    d, y = _arrays(diffs, labels)
    eps, acc = search_tie_eps(d, y)
    out = {
        "acc_without_ties": acc_without_ties(d, y),
        "acc_with_ties": acc,
        "tie_eps": eps,
        "tie_eps_source": "searched on this set",
        "n": int(d.size),
        "n_ties": int((y == 0).sum()),
        "n_missing": int((~np.isfinite(d)).sum()),
    }
    if fixed_eps is not None:
        out["acc_with_ties_fixed_eps"] = acc_with_ties(d, y, fixed_eps)
        out["fixed_eps"] = float(fixed_eps)
    return out


# ------------------------------------------------------------------------------ pair probabilities

OUTCOMES = ("A", "tie", "B")  # the columns of a pair's probabilities; label 1 / 0 / -1
ECE_BINS = 10
P_FLOOR = 1e-15  # log-loss clips a probability here, so one confident miss is large but finite


def prob_metrics(probs, labels, bins: int = ECE_BINS) -> dict:
    """How well three-way probabilities [n, 3] (P(A), P(tie), P(B)) match the labels (1 = A, 0 = tie,
    -1 = B). Rows with a NaN (no probability: a failed judgment) are counted in `n_missing` only.

    - log_loss: mean of -ln p[true outcome] (natural log; p clipped at P_FLOOR); 0 is perfect, ln 3 =
      1.0986 is the uniform guess.
    - brier: mean of sum over the 3 outcomes of (p - 1[outcome is true])^2; 0 is perfect, 2/3 uniform.
    - ece: top-label expected calibration error: rows binned by confidence c = max p into `bins` equal
      bins of [0, 1] (bin k holds k/bins <= c < (k+1)/bins, the last also c = 1), then the sum over bins
      of (rows in bin / n) * |accuracy in bin - mean confidence in bin|.
    - acc: three-way accuracy of the most probable outcome (argmax; the first of equals, A before tie).
    """
    p = np.asarray(probs, dtype=np.float64).reshape(-1, 3)
    y = np.asarray(labels, dtype=np.int64).ravel()
    if y.size != p.shape[0] or not np.isin(y, (-1, 0, 1)).all():
        raise ValueError("need one label (1, 0 or -1) per row of probabilities")
    ok = np.isfinite(p).all(axis=1)
    p, truth = p[ok], (1 - y[ok])  # column of the true outcome: A 0, tie 1, B 2
    out = {"log_loss": None, "brier": None, "ece": None, "acc": None, "n": int(ok.sum()),
           "n_missing": int((~ok).sum())}  # fmt: skip
    if not p.size:
        return out
    rows = np.arange(truth.size)
    onehot = np.zeros_like(p)
    onehot[rows, truth] = 1.0
    conf, hit = p.max(axis=1), p.argmax(axis=1) == truth
    return {**out, "log_loss": float(-np.log(np.maximum(p[rows, truth], P_FLOOR)).mean()),
            "brier": float(((p - onehot) ** 2).sum(axis=1).mean()), "ece": _ece(conf, hit, bins),
            "acc": float(hit.mean())}  # fmt: skip


def _ece(conf: np.ndarray, hit: np.ndarray, bins: int) -> float:
    """Top-label ECE: per confidence bin, |accuracy - mean confidence| weighted by the bin's share."""
    which = np.minimum((conf * bins).astype(np.int64), bins - 1)
    gaps = [
        abs(hit[which == k].mean() - conf[which == k].mean()) * (which == k).sum() for k in np.unique(which)
    ]
    return float(sum(gaps) / conf.size)


def evaluate_probs(rows: Sequence[Mapping]) -> dict:
    """rows: pairwise rows with `probs` ({dim: {"A", "tie", "B"} or null}) -> {dim: prob_metrics}, each
    dimension over the rows whose label has it (no probability: missing)."""
    out = {}
    for dim in _dims(rows):
        used = [r for r in rows if dim in r["label"]]
        probs = [[((r.get("probs") or {}).get(dim) or {}).get(o, math.nan) for o in OUTCOMES] for r in used]
        out[dim] = prob_metrics(probs, [LABELS[r["label"][dim]] for r in used])
    return out


# -------------------------------------------------------------------------------------- pointwise


def rankdata(x) -> np.ndarray:
    """1-based ranks; tied values share the average of the ranks they span (scipy's 'average')."""
    x = np.asarray(x, dtype=np.float64).ravel()
    order = np.argsort(x, kind="stable")
    xs = x[order]
    starts = np.concatenate([[True], xs[1:] != xs[:-1]])
    group = np.cumsum(starts) - 1  # group index of each sorted position
    first = np.flatnonzero(starts)
    last = np.concatenate([first[1:], [x.size]]) - 1
    ranks = np.empty(x.size)
    ranks[order] = ((first + last) / 2 + 1)[group]
    return ranks


def _paired(x, y) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"need paired values, got {x.size} and {y.size}")
    return x, y


def pearson(x, y) -> float | None:
    x, y = _paired(x, y)
    if x.size < 2:
        return None
    dx, dy = x - x.mean(), y - y.mean()
    denom = math.sqrt(float((dx * dx).sum()) * float((dy * dy).sum()))
    return float((dx * dy).sum()) / denom if denom > 0 else None


def spearman(x, y) -> float | None:
    x, y = _paired(x, y)
    return pearson(rankdata(x), rankdata(y))


def kendall_tau_b(x, y) -> float | None:
    """(concordant - discordant) / sqrt((n0 - ties_x) (n0 - ties_y)), n0 = n (n - 1) / 2."""
    x, y = _paired(x, y)
    s = num_x = num_y = 0
    for i in range(x.size - 1):  # O(n^2) but vectorised per row: fine for benchmark sizes
        sx, sy = np.sign(x[i + 1 :] - x[i]), np.sign(y[i + 1 :] - y[i])
        s += int((sx * sy).sum())
        num_x += int(np.count_nonzero(sx))
        num_y += int(np.count_nonzero(sy))
    denom = math.sqrt(num_x * num_y)
    return s / denom if denom > 0 else None


def pointwise_metrics(pred, true) -> dict:
    """One dimension's pointwise section; items without a prediction (NaN) are left out and counted."""
    pred, true = _paired(pred, true)
    ok = np.isfinite(pred)
    p, t = pred[ok], true[ok]
    return {
        "srcc": spearman(p, t),
        "plcc": pearson(p, t),
        "krcc": kendall_tau_b(p, t),
        "n": int(ok.sum()),
        "n_missing": int((~ok).sum()),
    }


# ------------------------------------------------------------------------------- failures, spread


def parse_failure_rate(errors: Iterable[str | None]) -> float | None:
    """Share of judgments whose parse_error is set (None when there are none)."""
    errors = list(errors)
    return sum(e is not None for e in errors) / len(errors) if errors else None


def sample_std(samples: Sequence[Mapping[str, float | None]]) -> dict[str, float]:
    """Per dimension, the population std of one item's sampled scores (dimensions with >= 2 values)."""
    values: dict[str, list[float]] = {}
    for sample in samples:
        for dim, v in (sample or {}).items():
            if v is not None:
                values.setdefault(dim, []).append(float(v))
    return {dim: float(np.std(vs)) for dim, vs in values.items() if len(vs) >= 2}


def summarize_spread(stds: Iterable[Mapping[str, float | None]]) -> dict:
    """Per dimension {"mean_std", "max_std", "n"} over items' score stds (one {dim: std} per item)."""
    per_dim: dict[str, list[float]] = {}
    for item in stds:
        for dim, v in (item or {}).items():
            if v is not None:
                per_dim.setdefault(dim, []).append(float(v))
    return {
        dim: {"mean_std": float(np.mean(v)), "max_std": float(np.max(v)), "n": len(v)}
        for dim, v in per_dim.items()
    }


def score_spread(samples: Iterable[Sequence[Mapping[str, float | None]]]) -> dict:
    """Per dimension, the population std of each item's scores across its samples, summarised over
    the items with at least two sampled scores: {"mean_std", "max_std", "n"}."""
    return summarize_spread(sample_std(item) for item in samples)


# ------------------------------------------------------------------------------------- evaluate


def score_of(scores: Mapping[str, float | None] | None, dim: str) -> float:
    """A dimension's score, NaN when missing. `overall` falls back to the mean of the other dimensions
    when the scores have no `overall` of their own (models that score dimensions only)."""
    if not scores:
        return math.nan
    if dim in scores:
        return math.nan if scores[dim] is None else float(scores[dim])
    if dim == OVERALL:
        values = [v for v in scores.values() if v is not None]
        return float(np.mean(values)) if values and len(values) == len(scores) else math.nan
    return math.nan


def _dims(rows: Iterable[Mapping]) -> list[str]:
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row["label"]))
    return list(seen)


def _mean_fallback(rows, keys, dim) -> bool:
    return dim == OVERALL and any(r[k] and OVERALL not in r[k] for r in rows for k in keys)


Eps = float | Mapping[str, float] | None  # one eps for every dimension, or one per dimension


def _pair_diffs(rows: Sequence[Mapping], dim: str) -> tuple[list[float], list[int]]:
    used = [r for r in rows if dim in r["label"]]
    diffs = [score_of(r["scores_a"], dim) - score_of(r["scores_b"], dim) for r in used]
    return diffs, [LABELS[r["label"][dim]] for r in used]


def evaluate_pairwise(rows: Sequence[Mapping], fixed_eps: Eps = None) -> dict:
    """rows: {"scores_a", "scores_b", "label": {dim: "A"|"B"|"tie"}} -> {dim: pairwise_metrics}.

    A dimension is evaluated over the rows whose label has it (so `n` may differ between dimensions);
    a row whose scores lack it is a missing score there: counted in `n_missing` and wrong."""
    out = {}
    for dim in _dims(rows):
        eps = fixed_eps.get(dim) if isinstance(fixed_eps, Mapping) else fixed_eps
        out[dim] = pairwise_metrics(*_pair_diffs(rows, dim), eps)
        used = [r for r in rows if dim in r["label"]]
        if _mean_fallback(used, ("scores_a", "scores_b"), dim):
            out[dim]["score"] = "mean of the other dimensions"
    return out


def fit_tie_eps(rows: Sequence[Mapping]) -> dict[str, float]:
    """Per dimension, the eps `search_tie_eps` picks on these (validation) pairwise rows: applied to the
    test set it gives an accuracy with ties that is not fitted on the test data itself."""
    fitted = {dim: search_tie_eps(*_pair_diffs(rows, dim))[0] for dim in _dims(rows)}
    return {dim: eps for dim, eps in fitted.items() if eps is not None}


def evaluate_pointwise(rows: Sequence[Mapping]) -> dict:
    """rows: {"scores", "label": {dim: number}} -> {dim: pointwise_metrics}. Items without a score for
    a labelled dimension are left out of its correlations and counted in `n_missing`."""
    out = {}
    for dim in _dims(rows):
        used = [r for r in rows if dim in r["label"]]
        pred = [score_of(r["scores"], dim) for r in used]
        out[dim] = pointwise_metrics(pred, [float(r["label"][dim]) for r in used])
        if _mean_fallback(used, ("scores",), dim):
            out[dim]["score"] = "mean of the other dimensions"
    return out


def _errors(rows: Sequence[Mapping]) -> list[str | None]:
    """One parse error (or None) per judged slot: one per pointwise row, two per pair."""
    keys = {"pairwise": ("parse_error_a", "parse_error_b"), "pointwise": ("parse_error",)}
    return [r.get(k) for r in rows for k in keys[r["kind"]]]


SIDES = ("", "_a", "_b")  # key suffixes: pointwise, pairwise side A, side B


def _spreads(rows: Sequence[Mapping]) -> list[dict[str, float]]:
    """One {dim: std} per judged slot that carries several samples (`samples*`) or a given std
    (`scores_std*`); samples win when a slot has both."""
    out = []
    for r in rows:
        for side in SIDES:
            if r.get(f"samples{side}"):
                out.append(sample_std(r[f"samples{side}"]))
            elif r.get(f"scores_std{side}"):
                out.append(dict(r[f"scores_std{side}"]))
    return out


AVERAGING = {
    "pairwise": "per dimension, accuracy over that dimension's labelled pairs (no averaging across "
    "dimensions); overall is the model's own overall score, or the mean of its dimensions when it has none",
    "pointwise": "per dimension, SRCC / PLCC / KRCC over the videos with a score",
    "videos": "each distinct (video, prompt) judged once; its scores serve every record that uses it",
    "parse_failure_rate": "over distinct judgments (model runs) or judged slots (predictions files)",
}


def tie_handling(fixed_eps: Eps, fixed_source: str | None = None) -> dict:
    return {
        "rule": TIE_RULE,
        "acc_with_ties": "eps searched per dimension on the evaluated set (VideoAlign's protocol)",
        "fixed_eps": dict(fixed_eps) if isinstance(fixed_eps, Mapping) else fixed_eps,
        "fixed_eps_source": fixed_source if fixed_eps is not None else None,
        "acc_without_ties": "human-tied pairs dropped; a model tie or a missing score counts as wrong",
    }


def evaluate(rows: Sequence[Mapping], fixed_eps: Eps = None, fixed_source: str | None = None) -> dict:
    """Normalised predictions (kind in row["kind"]) -> the metric sections of metrics.json."""
    pairs = [r for r in rows if r["kind"] == "pairwise"]
    points = [r for r in rows if r["kind"] == "pointwise"]
    out = {
        "pairwise": evaluate_pairwise(pairs, fixed_eps),
        "pointwise": evaluate_pointwise(points),
        "n_pairs": len(pairs),
        "n_pointwise": len(points),
        "tie_handling": tie_handling(fixed_eps, fixed_source),
    }
    if any(k in r for r in rows for k in ("parse_error", "parse_error_a", "parse_error_b")):
        out["parse_failure_rate"] = parse_failure_rate(_errors(rows))  # an absent key: parsed
    if spreads := _spreads(rows):
        out["score_spread"] = summarize_spread(spreads)
    if any("probs" in r for r in pairs):
        out["pair_probs"] = evaluate_probs(pairs)
    return out


# -------------------------------------------------------------------------------- predictions file

PAIR_KEYS = {"id", "label", "meta", "probs", *(f"{k}_{s}" for k in ("scores", "parse_error", "samples", "scores_std") for s in "ab")}  # fmt: skip
POINT_KEYS = {"id", "scores", "label", "parse_error", "samples", "scores_std", "meta"}


class PredictionsError(ValueError):
    """A bad predictions file; the message is one line, `file:line: reason` when a line is at fault."""


def read_predictions(path: Path) -> list[dict]:
    """Validated prediction rows (with their "kind"); the first bad line stops with `file:line: reason`."""
    if not path.is_file():
        raise PredictionsError(f"{path}: no such file" + (" (a folder)" if path.is_dir() else ""))
    rows, seen = [], {}
    with open(path, encoding="utf-8-sig", errors="strict") as fh:
        for lineno, line in enumerate(_lines(fh, path), 1):
            if not line.strip():
                continue
            try:
                row = parse_prediction(json.loads(line))
                if row["id"] in seen:
                    raise ValueError(f"duplicate id {row['id']!r} (first on line {seen[row['id']]})")
            except json.JSONDecodeError as err:
                raise PredictionsError(
                    f"{path}:{lineno}: invalid JSON ({err.msg} at column {err.colno})"
                ) from None
            except ValueError as err:
                raise PredictionsError(f"{path}:{lineno}: {err}") from None
            seen[row["id"]] = lineno
            rows.append(row)
    if not rows:
        raise PredictionsError(f"{path}: no predictions")
    return rows


def _lines(fh, path: Path):
    try:
        yield from fh
    except UnicodeDecodeError as err:
        raise PredictionsError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None


def parse_prediction(obj) -> dict:
    """One predictions line, validated (ValueError with the reason), with its "kind" added."""
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
    for key in ("scores_std", "scores_std_a", "scores_std_b"):
        if key in obj:
            _check_scores(obj[key], key)
            if any(v is not None and v < 0 for v in (obj[key] or {}).values()):
                raise ValueError(f"{key} must hold standard deviations >= 0, got {obj[key]!r}")
    if "probs" in obj:
        _check_probs(obj["probs"])
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


def _check_probs(value) -> None:
    if value is None:
        return  # a failed judgment
    if not isinstance(value, dict):
        raise ValueError(
            f'probs must be an object of dimension -> {{"A", "tie", "B"}} (or null), got {value!r}'
        )
    for dim, p in value.items():
        if p is None:
            continue
        numbers = isinstance(p, dict) and all(
            not isinstance(p.get(o), bool) and isinstance(p.get(o), int | float) and 0 <= p[o] <= 1
            for o in OUTCOMES
        )
        if not numbers or set(p) != set(OUTCOMES) or abs(sum(p.values()) - 1) > 1e-6:
            raise ValueError(
                f"probs[{dim!r}] must be {{'A', 'tie', 'B'}} probabilities summing to 1, got {p!r}"
            )


def _check_label(label, kind: str) -> None:
    if not isinstance(label, dict) or not label:
        raise ValueError(f"label must be a non-empty object of dimension -> value, got {label!r}")
    for dim, v in label.items():
        if kind == "pairwise" and v not in LABELS:
            raise ValueError(f"label[{dim!r}] must be one of {list(LABELS)}, got {v!r}")
        if kind == "pointwise" and (
            isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v)
        ):
            raise ValueError(f"label[{dim!r}] must be a finite number, got {v!r}")
