"""eval.metrics against hand-computed numbers, and `cot-rm eval` on predictions files and on a tiny
checkpoint end to end (judgments cached and resumed)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from eval import metrics as m

ROOT = Path(__file__).resolve().parents[1]

# The hand case (all values exact in binary): d = score_a - score_b, labels 1 = A, -1 = B, 0 = tie.
#   eps = 0    -> A, A, B, A, B, tie : right on pairs 2, 4, 5            = 3/6
#   eps = 0.25 -> tie, A, B, A, B, tie : right on 1, 2, 4, 5             = 4/6
#   eps = 0.5  -> tie, A, tie, A, B, tie : right on 1, 2, 3, 4, 5        = 5/6  (the best)
#   eps = 0.75 -> tie, tie, tie, A, B, tie : right on 1, 3, 4, 5          = 4/6
#   eps = 1.25 -> 3/6, eps = 1.5 -> 2/6
DIFFS = [0.25, 0.75, -0.5, 1.25, -1.5, 0.0]
LABELS = [0, 1, 0, 1, -1, 1]


# ------------------------------------------------------------------------------------ pairwise


def test_accuracy_without_ties_drops_human_ties_and_a_model_tie_is_wrong():
    # decided pairs: 0.75 (A, right), 1.25 (A, right), -1.5 (B, right), 0.0 (A, model tie: wrong)
    assert m.acc_without_ties(DIFFS, LABELS) == 3 / 4
    assert m.acc_without_ties([0.0, 0.0], [1, -1]) == 0.0
    assert m.acc_without_ties([0.3], [0]) is None  # nothing decided


def test_accuracy_with_ties_at_a_fixed_eps():
    assert m.acc_with_ties(DIFFS, LABELS, 0.0) == 3 / 6
    assert m.acc_with_ties(DIFFS, LABELS, 0.25) == 4 / 6  # |d| <= eps is a tie: 0.25 counts
    assert m.acc_with_ties(DIFFS, LABELS, 1.5) == 2 / 6


def test_tie_eps_search_finds_the_hand_computed_best():
    assert m.search_tie_eps(DIFFS, LABELS) == (0.5, 5 / 6)
    assert m.search_tie_eps([0.5, -0.25], [1, -1]) == (0.0, 1.0)  # no human ties: never tie
    assert m.search_tie_eps([0.25, -0.5], [0, 0]) == (0.5, 1.0)  # all ties: the largest |d|
    # equal accuracies keep the smallest eps: eps 0 and 0.5 both give 1/2 here (0.25 gives 0)
    assert m.search_tie_eps([0.25, 0.5], [1, 0]) == (0.0, 0.5)
    assert m.search_tie_eps([1.0, 2.0], [0, 1]) == (1.0, 1.0)
    assert m.search_tie_eps([1.0, 2.0], [1, 1]) == (0.0, 1.0)


def test_missing_scores_count_as_wrong_and_are_not_dropped():
    d = [0.5, math.nan, math.nan]
    y = [1, 1, 0]
    assert m.acc_without_ties(d, y) == 1 / 2
    assert m.acc_with_ties(d, y, 10.0) == 0.0  # eps huge: pair 1 says tie (wrong), NaNs say nothing
    assert m.search_tie_eps(d, y) == (0.0, 1 / 3)
    out = m.pairwise_metrics(d, y)
    assert (out["n"], out["n_ties"], out["n_missing"]) == (3, 1, 2)


def test_pairwise_metrics_section_with_searched_and_fixed_eps():
    out = m.pairwise_metrics(DIFFS, LABELS, fixed_eps=0.25)
    assert out["acc_without_ties"] == 3 / 4
    assert out["acc_with_ties"] == 5 / 6 and out["tie_eps"] == 0.5
    assert out["acc_with_ties_fixed_eps"] == 4 / 6 and out["fixed_eps"] == 0.25
    assert (out["n"], out["n_ties"]) == (6, 2)
    assert "fixed_eps" not in m.pairwise_metrics(DIFFS, LABELS)


def test_the_checkpoint_tie_margin_follows_the_calibration_rule():
    """eps on `scores` = half range x tie_margin / the dimension's calibration std: the ties the margin
    gives on the raw head scale (1-5 scale: half range 2)."""
    from types import SimpleNamespace

    from cot_rm.model.config import CotRmConfig
    from eval.run import _model_eps

    args = SimpleNamespace(tie_eps=None, val_predictions=None)
    cfg = CotRmConfig(tie_margin=0.05)
    assert _model_eps(SimpleNamespace(config=cfg), args) == (
        pytest.approx(0.1),
        "checkpoint tie_margin 0.05 (head unit scale) x 2.0",
    )
    cfg.calibration = {"overall": {"mean": 0.3, "std": 0.5}}
    eps, source = _model_eps(SimpleNamespace(config=cfg), args)
    assert eps == pytest.approx(
        {"visual_quality": 0.1, "text_alignment": 0.1, "physical_consistency": 0.1, "overall": 0.2}
    )
    assert source.endswith("/ each dimension's calibration std")


# ----------------------------------------------------------------------------------- pointwise


def test_ranks_average_over_ties():
    assert m.rankdata([10, 20, 20, 30]).tolist() == [1, 2.5, 2.5, 4]
    assert m.rankdata([3, 1, 3, 3]).tolist() == [3, 1, 3, 3]  # three tied at ranks 2, 3, 4


def test_correlations_hand_computed():
    # Pearson: x - 2 = (-1, 0, 1), y - 7/3 = (-4/3, -1/3, 5/3); sum = 3, sxx = 2, syy = 14/3
    assert m.pearson([1, 2, 3], [1, 2, 4]) == pytest.approx(3 / math.sqrt(2 * 14 / 3))
    # one swap in each half: 4 concordant, 2 discordant of 6 pairs; rho = 1 - 6 * 4 / (4 * 15)
    assert m.kendall_tau_b([1, 2, 3, 4], [2, 1, 4, 3]) == pytest.approx(1 / 3)
    assert m.spearman([1, 2, 3, 4], [2, 1, 4, 3]) == pytest.approx(0.6)
    assert m.spearman([1, 2, 3, 4], [40, 30, 20, 10]) == pytest.approx(-1.0)


def test_correlations_with_ties():
    # x ranks (1, 2.5, 2.5, 4), y ranks (1, 3, 2, 4): centred products 2.25 + 0 + 0 + 2.25 = 4.5,
    # sums of squares 4.5 and 5 -> 4.5 / sqrt(22.5)
    assert m.spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(4.5 / math.sqrt(22.5))
    # 5 concordant, 0 discordant, one pair tied in x only: tau-b = 5 / sqrt(5 * 6)
    assert m.kendall_tau_b([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(5 / math.sqrt(30))
    # tied in x once and in y once (different pairs): 4 concordant -> 4 / sqrt(5 * 5)
    assert m.kendall_tau_b([1, 1, 2, 3], [1, 2, 2, 3]) == pytest.approx(0.8)


def test_correlations_undefined_are_none():
    assert m.pearson([1], [2]) is None
    assert m.spearman([2, 2, 2], [1, 2, 3]) is None
    assert m.kendall_tau_b([2, 2, 2], [1, 2, 3]) is None
    out = m.pointwise_metrics([1, math.nan, 3, 2], [1, 5, 3, 2])
    assert out == {"srcc": 1.0, "plcc": 1.0, "krcc": 1.0, "n": 3, "n_missing": 1}


# ------------------------------------------------------------------------------ rates, evaluate


def test_parse_failure_rate_and_score_spread():
    assert m.parse_failure_rate([None, "no_answer", None, "bad_json"]) == 0.5
    assert m.parse_failure_rate([]) is None
    spread = m.score_spread([[{"overall": 1}, {"overall": 3}], [{"overall": 2}] * 3, [{"overall": 5}]])
    assert spread == {"overall": {"mean_std": 0.5, "max_std": 1.0, "n": 2}}  # stds 1 and 0


def test_overall_falls_back_to_the_mean_of_the_dimensions():
    assert m.score_of({"a": 2.0, "b": 4.0}, "overall") == 3.0
    assert m.score_of({"a": 2.0, "overall": 5.0}, "overall") == 5.0
    assert math.isnan(m.score_of({"a": 2.0, "b": None}, "overall"))
    assert math.isnan(m.score_of(None, "a")) and math.isnan(m.score_of({"a": 1.0}, "b"))
    rows = [{"kind": "pairwise", "scores_a": {"a": 1, "b": 5}, "scores_b": {"a": 2, "b": 2},
             "label": {"overall": "A", "a": "B"}}]  # fmt: skip
    out = m.evaluate(rows)["pairwise"]
    assert out["overall"]["acc_without_ties"] == 1.0 and out["overall"]["score"].startswith("mean")
    assert out["a"]["acc_without_ties"] == 1.0 and "score" not in out["a"]


# ------------------------------------------------------------------------- predictions-file CLI


def _pair(i, a, b, label, **extra):
    return {"id": f"p{i}", "scores_a": {"overall": a}, "scores_b": {"overall": b},
            "label": {"overall": label}, **extra}  # fmt: skip


def _good_rows():
    pairs = [
        _pair(0, 3.25, 3.0, "tie", parse_error_a="no_answer"),
        _pair(1, 4.0, 3.25, "A"),
        _pair(2, 2.5, 3.0, "tie"),
        _pair(3, 4.25, 3.0, "A"),
        _pair(4, 1.5, 3.0, "B"),
        _pair(5, 3.0, 3.0, "A"),
    ]  # the hand case
    points = [{"id": f"v{i}", "scores": {"visual_quality": x}, "label": {"visual_quality": y}}
              for i, (x, y) in enumerate([(1, 2), (2, 1), (3, 4), (4, 3)])]  # fmt: skip
    return pairs + points


def _write(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _cli(*args):
    cmd = [sys.executable, "-m", "cot_rm.cli", "eval", *map(str, args)]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_predictions_file_metrics(tmp_path):
    preds = _write(tmp_path / "preds.jsonl", _good_rows())
    out = _cli("--predictions", preds, "--out", tmp_path / "out", "--tie-eps", "0.25")
    assert out.returncode == 0, out.stderr
    res = json.loads((tmp_path / "out" / "metrics.json").read_text())
    pw = res["pairwise"]["overall"]
    assert (pw["acc_without_ties"], pw["acc_with_ties"], pw["tie_eps"]) == (0.75, 5 / 6, 0.5)
    assert (pw["n"], pw["n_ties"], pw["acc_with_ties_fixed_eps"]) == (6, 2, 4 / 6)
    assert res["tie_handling"]["fixed_eps_source"] == "--tie-eps"
    pt = res["pointwise"]["visual_quality"]
    assert pt["srcc"] == pytest.approx(0.6) and pt["plcc"] == pytest.approx(0.6)
    assert pt["krcc"] == pytest.approx(1 / 3) and pt["n"] == 4
    assert res["parse_failure_rate"] == 1 / 16  # one of 16 judged slots (2 per pair, 1 per video)
    assert "| overall |" in (tmp_path / "out" / "report.md").read_text()
    assert "| overall |" in out.stdout  # the metrics are printed too


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ('{"id": "x", "scores_a": {"overall": 1}', "invalid JSON"),
        (json.dumps(_pair(9, 1, 2, "C")), "label['overall'] must be one of"),
        (
            json.dumps({"id": "x", "scores_a": {"overall": 1}, "scores_b": {"overall": 2}}),
            "missing key 'label'",
        ),
        (json.dumps({"id": "x", "label": {"overall": 3}}), "cannot tell the kind"),
        (json.dumps({"id": "x", "scores": {"overall": "4"}, "label": {"overall": 3}}), "finite number"),
        (
            json.dumps({"id": "x", "scores": {"o": 4}, "label": {"o": 3}, "labels": {}}),
            "unknown key 'labels'",
        ),
        (json.dumps(_pair(1, 1, 2, "A")), "duplicate id 'p1'"),
    ],
)
def test_predictions_file_bad_line_names_file_and_line(tmp_path, line, reason):
    preds = _write(tmp_path / "preds.jsonl", [*_good_rows()[:3], line])
    out = _cli("--predictions", preds, "--out", tmp_path / "out")
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and f"{preds}:4: " in out.stderr and reason in out.stderr
    assert not (tmp_path / "out" / "metrics.json").exists()


# A file as a new user types it from the README's format: ints and floats, dimensions present in
# some rows only. Hand-computed below.
HAND_PAIRS = """\
{"id": "p1", "scores_a": {"visual_quality": 4, "overall": 3.5}, "scores_b": {"visual_quality": 2, "overall": 3.5}, "label": {"visual_quality": "A", "overall": "A"}}
{"id": "p2", "scores_a": {"visual_quality": 1, "overall": 2}, "scores_b": {"visual_quality": 3, "overall": 4}, "label": {"visual_quality": "B", "overall": "B"}}

{"id": "p3", "scores_a": {"visual_quality": 3, "overall": 3}, "scores_b": {"visual_quality": 3.5, "overall": 1}, "label": {"visual_quality": "tie", "overall": "A"}}
{"id": "p4", "scores_a": {"overall": 5}, "scores_b": {"overall": 4}, "label": {"overall": "B"}}
{"id": "p5", "scores_a": {"overall": 2}, "scores_b": {"visual_quality": 4, "overall": 2.5}, "label": {"visual_quality": "A", "overall": "tie"}}
"""
HAND_POINTS = """\
{"id": "v1", "scores": {"text_alignment": 1.5}, "label": {"text_alignment": 1}}
{"id": "v2", "scores": {"text_alignment": 3}, "label": {"text_alignment": 2}}
{"id": "v3", "scores": {"text_alignment": 2}, "label": {"text_alignment": 3}}
{"id": "v4", "scores": {}, "label": {"text_alignment": 4}}
{"id": "v5", "scores": {"text_alignment": 4}, "label": {"text_alignment": 5}}
"""


def test_hand_written_pairwise_file(tmp_path):
    (tmp_path / "p.jsonl").write_text(HAND_PAIRS)
    out = _cli("--predictions", tmp_path / "p.jsonl", "--out", tmp_path / "o", "--tie-eps", "1")
    assert out.returncode == 0, out.stderr
    res = json.loads((tmp_path / "o" / "metrics.json").read_text())["pairwise"]
    # visual_quality is labelled in p1, p2, p3, p5 (n 4); d = +2 (A), -2 (B), -0.5 (tie), and p5 has no
    # score for side A: missing, so wrong. Without ties: p1, p2 right of p1, p2, p5 -> 2/3.
    # With ties: eps 0 -> 2/4, eps 0.5 -> p3 too: 3/4 (best), eps 2 -> only p3: 1/4. Fixed eps 1 -> 3/4.
    vq = res["visual_quality"]
    assert (vq["n"], vq["n_ties"], vq["n_missing"]) == (4, 1, 1)
    assert (vq["acc_without_ties"], vq["acc_with_ties"], vq["tie_eps"]) == (2 / 3, 3 / 4, 0.5)
    assert vq["acc_with_ties_fixed_eps"] == 3 / 4 and vq["fixed_eps"] == 1.0
    # overall, all 5 rows: d = 0 (A: a model tie, wrong), -2 (B), +2 (A), +1 (B: wrong), -0.5 (tie).
    # Without ties 2/4. With ties: eps 0 -> 2/5, eps 0.5 -> p5 too: 3/5 (first best), eps 1 -> 3/5,
    # eps 2 -> 1/5. Fixed eps 1: p1 tie (wrong), p2, p3 right, p4 tie (wrong), p5 tie (right) -> 3/5.
    ov = res["overall"]
    assert (ov["n"], ov["n_ties"], ov["n_missing"]) == (5, 1, 0)
    assert (ov["acc_without_ties"], ov["acc_with_ties"], ov["tie_eps"]) == (0.5, 0.6, 0.5)
    assert ov["acc_with_ties_fixed_eps"] == 0.6


def test_hand_written_pointwise_file(tmp_path):
    (tmp_path / "p.jsonl").write_text(HAND_POINTS)
    out = _cli("--predictions", tmp_path / "p.jsonl", "--out", tmp_path / "o")
    assert out.returncode == 0, out.stderr
    ta = json.loads((tmp_path / "o" / "metrics.json").read_text())["pointwise"]["text_alignment"]
    # v4 has no score: left out (n 4, 1 missing). Ranks (1, 3, 2, 4) vs (1, 2, 3, 4): sum d^2 = 2,
    # rho = 1 - 6 * 2 / (4 * 15) = 0.8; 5 concordant, 1 discordant pair: tau = 4 / 6.
    # Pearson: deviations (-1.125, .375, -.625, 1.375) and (-1.75, -.75, .25, 2.25): 4.625 / sqrt(3.6875 * 8.75)
    assert (ta["n"], ta["n_missing"]) == (4, 1)
    assert ta["srcc"] == pytest.approx(0.8) and ta["krcc"] == pytest.approx(2 / 3)
    assert ta["plcc"] == pytest.approx(4.625 / math.sqrt(3.6875 * 8.75))


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ('{"id": "x", "scores": {"o": NaN}, "label": {"o": 3}}', "scores['o'] must be a finite number"),
        ('{"id": "x", "scores_a": {"o": 1}, "scores_b": {"o": 2}, "label": {"o": "a"}}', "must be one of"),
        ('{"id": "x", "scores": {"o": 1}, "label": {"o": 3},}', "invalid JSON"),
        ('{"id": "x", "scores": {"o": 1}, "label": {"o": 3}, "scores_std": {"o": -1}}', "deviations >= 0"),
        ('["x", 1]', "expected a JSON object, got list"),
    ],
)
def test_hand_written_mistakes_name_the_line(tmp_path, line, reason):
    preds = tmp_path / "p.jsonl"
    preds.write_text(HAND_POINTS + line + "\n")
    out = _cli("--predictions", preds, "--out", tmp_path / "o")
    assert out.returncode == 2 and f"{preds}:6: " in out.stderr and reason in out.stderr, out.stderr


def test_tie_eps_from_validation_predictions(tmp_path):
    # validation: visual_quality's best eps is 0.5 (see HAND_PAIRS); overall's is 0.5 too
    (tmp_path / "val.jsonl").write_text(HAND_PAIRS)
    test = [_pair(0, 3.0, 2.75, "tie"), _pair(1, 4.0, 3.0, "A")]  # |d| 0.25 and 1
    preds = _write(tmp_path / "test.jsonl", test)
    out = _cli("--predictions", preds, "--val-predictions", tmp_path / "val.jsonl", "--out", tmp_path / "o")
    assert out.returncode == 0, out.stderr
    res = json.loads((tmp_path / "o" / "metrics.json").read_text())
    ov = res["pairwise"]["overall"]
    assert ov["fixed_eps"] == 0.5 and ov["acc_with_ties_fixed_eps"] == 1.0  # 0.25 -> tie, 1 -> A
    assert ov["tie_eps"] == 0.25 and ov["acc_with_ties"] == 1.0  # searched here: the optimistic one
    assert res["tie_handling"]["fixed_eps"] == {"visual_quality": 0.5, "overall": 0.5}
    assert "validation predictions" in res["tie_handling"]["fixed_eps_source"]
    assert "fixed eps" in (tmp_path / "o" / "report.md").read_text()
    both = _cli("--predictions", preds, "--val-predictions", preds, "--tie-eps", "1", "--out", tmp_path / "x")
    assert both.returncode == 2 and "not allowed with" in both.stderr


def test_score_spread_from_samples_or_given_std(tmp_path):
    rows = [
        {"id": "a", "scores": {"o": 2}, "label": {"o": 1}, "samples": [{"o": 1}, {"o": 3}]},  # std 1
        {"id": "b", "scores": {"o": 3}, "label": {"o": 2}, "scores_std": {"o": 0.5}},
        _pair(2, 3, 1, "A", samples_a=[{"o": 2}, {"o": 2}], scores_std_b={"o": 0.25}),
    ]
    out = _cli("--predictions", _write(tmp_path / "p.jsonl", rows), "--out", tmp_path / "o")
    assert out.returncode == 0, out.stderr
    spread = json.loads((tmp_path / "o" / "metrics.json").read_text())["score_spread"]
    assert spread == {"o": {"mean_std": pytest.approx(1.75 / 4), "max_std": 1.0, "n": 4}}  # 1, .5, 0, .25
    assert "score spread, o" in (tmp_path / "o" / "report.md").read_text()


def test_predictions_and_model_are_exclusive(tmp_path):
    out = _cli("--out", tmp_path / "out")
    assert out.returncode == 2 and "exactly one of" in out.stderr


# ------------------------------------------------------------------------------- model, end to end


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    from conftest import write_mp4

    root = tmp_path_factory.mktemp("bench")
    for i in range(3):
        write_mp4(root / "videos" / f"v{i}.mp4", num_frames=8, height=64, width=64, fps=4)
    pairs = [("a", 0, 1, "A", {"visual_quality": "tie"}), ("b", 1, 2, "B", {}), ("c", 0, 2, "tie", {})]
    rows = [{"id": i, "prompt": "a red square slides right", "video_a": f"videos/v{a}.mp4",
             "video_b": f"videos/v{b}.mp4", "preference": p, "dims": dims, "split": "test"}
            for i, a, b, p, dims in pairs]  # fmt: skip
    return _write(root / "pairs.jsonl", rows)


def _cli_in_process(capsys, *args) -> tuple[int, str]:
    from cot_rm.cli import main

    rc = main(["eval", *map(str, args)])
    return rc, capsys.readouterr().err


def _eval_model(model, data, out, capsys, *extra) -> tuple[int, str]:
    argv = ["--model", model, "--bench", "jsonl", "--data", data, "--out", out, "--split", "test"]
    return _cli_in_process(capsys, *argv, "--max-new-tokens", "4", "--device", "cpu", *extra)


def test_each_distinct_video_and_prompt_is_judged_once(tmp_path):
    from cot_rm.schema import PairRecord
    from eval.run import plan

    v = [str(tmp_path / f"v{i}.mp4") for i in range(3)]
    recs = [PairRecord("a", "p", v[0], v[1], "A"), PairRecord("b", "p", v[1], v[2], "B"),
            PairRecord("c", "p", v[0], v[2], "tie", prompt_b="q")]  # fmt: skip
    videos, ids = plan(recs, "pairwise", tmp_path)
    assert [path for path, _ in videos.values()] == [v[0], v[1], v[2], v[2]]  # v2 under "p" and "q"
    assert ids["a"][1] == ids["b"][0] and ids["c"][0] == ids["a"][0] and ids["c"][1] != ids["b"][1]
    assert ids["a"][0].startswith("v0.mp4#")


def test_model_eval_end_to_end_and_resume(tiny_rm, bench, tmp_path, capsys):
    out = tmp_path / "run"
    rc, err = _eval_model(tiny_rm, bench, out, capsys)
    assert rc == 0, err
    assert "3 videos, 0 cached, judging 3" in err
    judgments = (out / "judgments.jsonl").read_text().splitlines()
    assert len(judgments) == 3
    first = json.loads(judgments[0])
    assert {"id", "scores", "answer_scores", "parse_error", "model", "protocol_version"} <= set(first)
    assert first["id"].startswith("videos/v0.mp4#")
    preds = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert [p["id"] for p in preds] == ["a", "b", "c"]
    assert preds[0]["label"] == {"overall": "A", "visual_quality": "tie"}
    assert set(preds[0]["scores_a"]) == {
        "visual_quality",
        "text_alignment",
        "physical_consistency",
        "overall",
    }
    assert (out / "predictions_answer.jsonl").exists()
    res = json.loads((out / "metrics.json").read_text())
    assert {"pairwise", "pointwise", "answer", "parse_failure_rate", "n_videos", "protocol"} <= set(res)
    assert res["n_videos"] == 3 and res["pairwise"]["overall"]["n"] == 3
    assert set(res["pairwise"]["overall"]) >= {"acc_without_ties", "acc_with_ties", "tie_eps", "n", "n_ties"}
    assert res["protocol"]["greedy"] is True and res["protocol"]["max_new_tokens"] == 4
    assert res["protocol"]["sampling"]["family"] == "qwen2_5_vl"
    assert "| overall |" in (out / "report.md").read_text()
    # the written predictions file alone gives the same head metrics
    rc, err = _cli_in_process(capsys, "--predictions", out / "predictions.jsonl", "--out", tmp_path / "re")
    assert rc == 0, err
    assert json.loads((tmp_path / "re" / "metrics.json").read_text())["pairwise"] == res["pairwise"]

    # Delete one judgment: only that video is judged again; the others are kept byte for byte.
    (out / "judgments.jsonl").write_text("\n".join([judgments[0], judgments[2]]) + "\n")
    rc, err = _eval_model(tiny_rm, bench, out, capsys)
    assert rc == 0 and "3 videos, 2 cached, judging 1" in err
    again = (out / "judgments.jsonl").read_text().splitlines()
    assert again[:2] == [judgments[0], judgments[2]]
    assert json.loads(again[2])["id"] == json.loads(judgments[1])["id"]

    # A torn last line (killed mid-write) is dropped and that video judged again.
    (out / "judgments.jsonl").write_text("\n".join(again[:2]) + "\n" + again[2][: len(again[2]) // 2])
    rc, err = _eval_model(tiny_rm, bench, out, capsys)
    assert rc == 0 and "dropped a torn last line" in err and "judging 1" in err
    assert len((out / "judgments.jsonl").read_text().splitlines()) == 3


def test_cache_is_keyed_by_checkpoint_identity_and_protocol(tiny_rm, bench, tmp_path, capsys):
    import os
    import shutil

    ckpt = shutil.copytree(tiny_rm, tmp_path / "ckpt")
    out = tmp_path / "run"
    rc, err = _eval_model(ckpt, bench, out, capsys, "--limit", "1")
    assert rc == 0, err
    key = json.loads((out / "judgments.key.json").read_text())
    assert key["bench"] == "jsonl" and key["max_new_tokens"] == 4 and key["sampling"]["fps"] == 2.0
    stamp = json.loads((out / "judgments.jsonl").read_text().splitlines()[0])["eval_key"]
    assert json.loads((out / "metrics.json").read_text())["protocol"]["eval_key"] == stamp
    # another protocol setting: refused, naming what changed
    rc, err = _eval_model(ckpt, bench, out, capsys, "--limit", "1", "--max-new-tokens", "5")
    assert rc == 2 and "max_new_tokens: 4 -> 5" in err and "use another --out" in err
    # the same folder, retrained (new weights at the same path): refused too
    head = ckpt / "head.safetensors"
    os.utime(head, ns=(head.stat().st_atime_ns, head.stat().st_mtime_ns + 10**9))
    rc, err = _eval_model(ckpt, bench, out, capsys, "--limit", "1")
    assert rc == 2 and "checkpoint: " in err


def test_model_eval_missing_inputs_exit_2(tiny_rm, bench, tmp_path, capsys):
    rc, err = _eval_model(tiny_rm, tmp_path / "nope.jsonl", tmp_path / "o", capsys)
    assert rc == 2 and err.count("\n") == 1 and "nope.jsonl: no such file" in err
    rc, err = _eval_model(tmp_path / "no_ckpt", bench, tmp_path / "o", capsys)
    assert rc == 2 and err.count("\n") == 1 and "no_ckpt: no such checkpoint folder" in err
    rc, err = _eval_model(tiny_rm, bench, tmp_path / "o", capsys, "--limit", "0")
    assert rc == 2 and "no records to evaluate" in err


def test_metrics_agree_with_numpy_on_random_data():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=50), rng.normal(size=50)
    assert m.pearson(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1])
    assert m.spearman(x, y) == pytest.approx(
        np.corrcoef(np.argsort(np.argsort(x)), np.argsort(np.argsort(y)))[0, 1]
    )


# ---- faithfulness of critiques on toy data (eval/faithfulness.py) -----------------------------------------


def test_named_defects_reads_findings_not_denials_or_the_prompt():
    from eval.faithfulness import named_defects

    prompt = "two red circles moving left slowly on a white background"
    text = (f"The prompt asks for {prompt}. No flicker, noise or blur is visible. Nothing jumps, freezes or "
            "reverses. The motion freezes in frames 14 and 15: the object stops dead. Colour is wrong: yellow "
            "where red was requested, visible in frames 0 and 3.")  # fmt: skip
    assert named_defects(text, prompt) == {"freeze", "wrong_colour"}
    assert named_defects("Frames 4-5 show noticeable banding: colours step instead of blending.") == {
        "banding"
    }
    assert named_defects("The content follows the prompt. Overall: flawless.") == set()
    # the description a critique opens with, in its pretraining's words
    seen = ("I see two red circles on a white background, moving left slowly. Frames 4 and 9: the circles stand "
            "still. Frames 10 and 13: the circles move back right. Frame 15: only one circle visible. Frame 17: "
            "the colours step in bands (faint). Frame 20: the shape changes into a square. Frames 21 and 22: the "
            "circles suddenly speed up. Frame 23: the circle is gone.")  # fmt: skip
    assert named_defects(seen, prompt) == {"freeze", "reversal", "missing_object", "banding", "morphing",
                                           "speed_change"}  # fmt: skip
    # "visible" alone names nothing: a finding of another kind says where it is visible
    assert named_defects("Colour is wrong: yellow where red was requested, visible in frame 3.") == {
        "wrong_colour"
    }


def test_faithfulness_by_hand():
    from eval.faithfulness import faithfulness

    rows = [
        ({"rationale": "There is severe flicker in frame 3."}, "", {"flicker", "freeze"}),  # 1 of its 2 named
        ({"rationale": "The object teleports between frames 2 and 3."}, "", set()),  # invents one
        ({"rationale": None}, "", {"noise"}),  # no critique: names nothing
    ]
    got = faithfulness(rows)
    assert got["recall"] == round(1 / 3, 4) and got["false_mentions"] == round(1 / 3, 4)  # 1 of 3 present
    assert got["recall_by_type"] == {"flicker": "1/1", "freeze": "0/1", "noise": "0/1"}
    assert got["false_mentions_by_type"] == {"teleport": 1}
    assert faithfulness([]) is None


def test_described_reads_what_the_critique_says_is_drawn():
    from eval.faithfulness import described

    text = ("The prompt asks for a red circle. I see two purple squares on a white background, moving up "
            "slowly. Frames 9 and 13: the picture flickers dark.")  # fmt: skip
    assert described(text) == {"count": 2, "colour": "purple", "shape": "square", "background": "white",
                               "direction": "up", "speed": "slow"}  # fmt: skip
    # no "I see": the first sentence; only what it states
    assert described("A cyan triangle moves left quickly. The prompt asks for three red squares.") == {
        "count": 1, "colour": "cyan", "shape": "triangle", "direction": "left", "speed": "fast"}  # fmt: skip
    assert described("") == {} and described("Visual quality is poor.") == {}


def test_description_accuracy_by_hand():
    from eval.faithfulness import description_accuracy

    drawn = {"count": 2, "colour": "red", "shape": "triangle", "direction": "down", "speed": "slow",
             "background": "white"}  # fmt: skip
    rows = [
        ({"rationale": "I see three yellow triangles on a white background, moving down slowly."}, drawn),
        ({"rationale": "I see two red squares."}, drawn),
        ({"rationale": None}, drawn),  # states nothing: counted nowhere
    ]
    assert description_accuracy(rows) == {
        "count": {"said": 2, "right": 1}, "colour": {"said": 2, "right": 1}, "shape": {"said": 2, "right": 1},
        "background": {"said": 1, "right": 1}, "direction": {"said": 1, "right": 1},
        "speed": {"said": 1, "right": 1},
    }  # fmt: skip
    assert description_accuracy([]) is None


def test_model_eval_on_toy_pairs_reports_faithfulness(tiny_rm, bench, tmp_path, capsys):
    # A toy world writes pointwise.jsonl (with meta.defects) beside pairs.jsonl: eval reads the truth there.
    defects = {0: ["flicker"], 1: [], 2: ["freeze", "wrong_colour"]}
    rows = [{"id": f"v{i}", "video": f"videos/v{i}.mp4", "prompt": "a red square slides right",
             "scores": {"overall": 5}, "meta": {"defects": [{"type": t, "dimension": "?"} for t in types],
                                                "spec": {"count": 1, "colour": "red", "shape": "square"}}}
            for i, types in defects.items()]  # fmt: skip
    _write(Path(bench).parent / "pointwise.jsonl", rows)
    rc, err = _eval_model(tiny_rm, bench, tmp_path / "run", capsys)
    assert rc == 0, err
    got = json.loads((tmp_path / "run" / "metrics.json").read_text())["faithfulness"]
    assert got["videos"] == 3 and got["defects_present"] == 3
    assert set(got["recall_by_type"]) == {"flicker", "freeze", "wrong_colour"}
    described = json.loads((tmp_path / "run" / "metrics.json").read_text())["described"]
    assert described is None or set(described) <= {
        "count",
        "colour",
        "shape",
        "background",
        "direction",
        "speed",
    }
    assert "faithful critiques (toy world, 3 videos)" in (tmp_path / "run" / "report.md").read_text()


def test_correlations_match_scipy():
    """SRCC, PLCC and Kendall's tau-b against scipy's, on scores with many ties (the toy world's labels
    are integers 1-5) and on continuous ones."""
    stats = pytest.importorskip("scipy.stats")  # in the dev extra, which `make setup` installs
    rng = np.random.default_rng(0)
    for trial in range(20):
        n = int(rng.integers(5, 200))
        true = rng.integers(1, 6, n).astype(float)
        pred = true + rng.normal(0, 1.5, n) if trial % 2 else rng.integers(1, 6, n).astype(float)
        assert m.spearman(pred, true) == pytest.approx(stats.spearmanr(pred, true).statistic, abs=1e-12)
        assert m.pearson(pred, true) == pytest.approx(stats.pearsonr(pred, true).statistic, abs=1e-12)
        assert m.kendall_tau_b(pred, true) == pytest.approx(stats.kendalltau(pred, true).statistic, abs=1e-12)
