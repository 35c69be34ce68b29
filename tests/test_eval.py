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


def test_predictions_and_model_are_exclusive(tmp_path):
    out = _cli("--out", tmp_path / "out")
    assert out.returncode == 2 and "exactly one of" in out.stderr


# ------------------------------------------------------------------------------- model, end to end


@pytest.fixture(scope="module")
def tiny_rm(tiny_qwen25vl_dir, tmp_path_factory) -> Path:
    from cot_rm.modeling import ThinkThenScore

    path = tmp_path_factory.mktemp("rm") / "ckpt"
    ThinkThenScore.from_base(tiny_qwen25vl_dir).save_pretrained(path)
    return path


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
