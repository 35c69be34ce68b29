"""`cot-rm eval` on the head's pair probabilities (log-loss, Brier score, expected calibration error of the
three-way outcome A / tie / B) against numbers worked out by hand, from a predictions file and from a
checkpoint; and `cot-rm eval --samples K`, scores as the mean of K seeded draws."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from cot_rm.cli import main
from cot_rm.model.config import CotRmConfig
from cot_rm.model.pairwise import probabilities
from eval import metrics as m

# Four labelled pairs and a failed one (columns P(A), P(tie), P(B); labels 1 = A, 0 = tie, -1 = B):
#   p(true): 0.5, 0.6, 0.25, 0.7 -> log-loss = (ln 2 + ln(1/0.6) + ln 4 + ln(1/0.7)) / 4 = 0.7367355
#   Brier:   0.25 + 0.09 + 0.04 = 0.38;  0.01 + 0.16 + 0.09 = 0.26;  0.5625 + 0.0625 + 0.25 = 0.875;
#            0.04 + 0.01 + 0.09 = 0.14;  mean 1.655 / 4 = 0.41375
#   ECE (10 bins by max p): bin 5 holds rows 1 and 3 (conf 0.5 each; row 3's argmax is B: a miss), acc
#            0.5, gap 0; bin 6 row 2 (conf 0.6, hit) gap 0.4; bin 7 row 4 (0.7, hit) gap 0.3 -> 0.7 / 4
#   acc: the most probable outcome is right on rows 1, 2, 4 -> 3/4
PROBS = [[0.5, 0.3, 0.2], [0.1, 0.6, 0.3], [0.25, 0.25, 0.5], [0.2, 0.1, 0.7], [math.nan] * 3]
LABELS = [1, 0, 1, -1, 1]


def test_log_loss_brier_and_ece_by_hand():
    got = m.prob_metrics(PROBS, LABELS)
    assert got["log_loss"] == pytest.approx(
        (math.log(2) + math.log(1 / 0.6) + math.log(4) + math.log(1 / 0.7)) / 4
    )
    assert got["log_loss"] == pytest.approx(0.7367355, abs=1e-7)
    assert got["brier"] == pytest.approx(0.41375, abs=1e-12)
    assert got["ece"] == pytest.approx(0.175, abs=1e-12)
    assert (got["acc"], got["n"], got["n_missing"]) == (0.75, 4, 1)


def test_the_reference_points_of_each_score():
    uniform = m.prob_metrics([[1 / 3] * 3] * 3, [1, 0, -1])
    assert uniform["log_loss"] == pytest.approx(math.log(3)) and uniform["brier"] == pytest.approx(2 / 3)
    perfect = m.prob_metrics([[1, 0, 0], [0, 1, 0], [0, 0, 1]], [1, 0, -1])
    assert (perfect["log_loss"], perfect["brier"], perfect["ece"], perfect["acc"]) == (0.0, 0.0, 0.0, 1.0)
    wrong = m.prob_metrics([[0, 0, 1]], [1])  # sure of B, A happened: clipped, large but finite
    assert (
        wrong["log_loss"] == pytest.approx(-math.log(m.P_FLOOR))
        and wrong["brier"] == 2.0
        and wrong["ece"] == 1.0
    )
    assert m.prob_metrics([[math.nan] * 3], [0]) == {"log_loss": None, "brier": None, "ece": None, "acc": None,
                                                     "n": 0, "n_missing": 1}  # fmt: skip


def test_ece_agrees_with_a_plain_loop_on_random_data():
    rng = np.random.default_rng(0)
    p = rng.dirichlet([1, 1, 1], size=200)
    y = rng.choice([1, 0, -1], size=200)
    conf, hit = p.max(1), p.argmax(1) == 1 - y
    expected = 0.0
    for k in range(10):
        inside = [
            (c, h)
            for c, h in zip(conf, hit, strict=True)
            if k / 10 <= c < (k + 1) / 10 or (k == 9 and c == 1)
        ]
        if inside:
            expected += (
                len(inside) / 200 * abs(np.mean([h for _, h in inside]) - np.mean([c for c, _ in inside]))
            )
    assert m.prob_metrics(p, y)["ece"] == pytest.approx(expected, abs=1e-12)


def _run(capsys, *args) -> tuple[int, str, str]:
    rc = main(["eval", *map(str, args)])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _row(i: int, probs, label: str) -> dict:
    p = None if probs is None else {"overall": dict(zip(("A", "tie", "B"), probs, strict=True))}
    return {"id": f"p{i}", "scores_a": {"overall": 3.0}, "scores_b": {"overall": 3.0}, "probs": p,
            "label": {"overall": label}}  # fmt: skip


def test_a_predictions_file_with_probs_gets_the_section_and_the_table(tmp_path, capsys):
    rows = [_row(i, p, {1: "A", 0: "tie", -1: "B"}[y]) for i, (p, y) in enumerate(zip(PROBS[:4], LABELS[:4]))]
    rows.append(_row(4, None, "A"))  # a failed judgment: no probabilities
    preds = tmp_path / "preds.jsonl"
    preds.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rc, out, err = _run(capsys, "--predictions", preds, "--out", tmp_path / "out")
    assert rc == 0, err
    got = json.loads((tmp_path / "out" / "metrics.json").read_text())["pair_probs"]["overall"]
    assert got == m.prob_metrics(PROBS, LABELS)
    assert (
        "## Pair probabilities" in out
        and "| overall | 0.7367 | 0.413" in out
        and "| 0.1750 | 0.7500 |" in out
    )
    bad = dict(rows[0], probs={"overall": {"A": 0.5, "tie": 0.5, "B": 0.5}})
    preds.write_text(json.dumps(bad) + "\n")
    rc, _, err = _run(capsys, "--predictions", preds, "--out", tmp_path / "bad")
    assert rc == 2 and f"{preds}:1: probs['overall'] must be" in err and "summing to 1" in err


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    from conftest import write_mp4

    root = tmp_path_factory.mktemp("probs_bench")
    for i in range(3):
        write_mp4(root / "videos" / f"v{i}.mp4", num_frames=8, height=64, width=64, fps=4)
    rows = [("a", 0, 1, "A", {"visual_quality": "tie"}), ("b", 1, 2, "B", {}), ("c", 0, 2, "tie", {})]
    (root / "pairs.jsonl").write_text("".join(
        json.dumps({"id": i, "prompt": "a red square slides right", "video_a": f"videos/v{a}.mp4",
                    "video_b": f"videos/v{b}.mp4", "preference": p, "dims": dims, "split": "test"}) + "\n"
        for i, a, b, p, dims in rows))  # fmt: skip
    return root / "pairs.jsonl"


def _eval(capsys, model, data, out, *extra):
    return _run(capsys, "--model", model, "--bench", "jsonl", "--data", data, "--out", out, "--max-new-tokens", "4",
                "--device", "cpu", *extra)  # fmt: skip


def test_eval_samples_scores_by_the_mean_of_k_draws_and_scores_the_pair_probabilities(
    tiny_rm, pairs, tmp_path, capsys
):
    out = tmp_path / "run"
    rc, printed, err = _eval(
        capsys, tiny_rm, pairs, out, "--samples", "2", "--temperature", "1.5", "--seed", "3"
    )
    assert rc == 0, err
    judged = {j["id"]: j for j in map(json.loads, (out / "judgments.jsonl").read_text().splitlines())}
    for j in judged.values():  # each video's scores: the mean of its two seeded draws
        draws = j["samples"]["judgments"]
        assert len(draws) == 2 and j["samples"]["seed"] == 3 and j["samples"]["temperature"] == 1.5
        assert j["scores"]["overall"] == pytest.approx(np.mean([d["scores"]["overall"] for d in draws]))
    res = json.loads((out / "metrics.json").read_text())
    assert res["protocol"]["greedy"] is False and res["protocol"]["decoding"].startswith("sampled: 2 draws")
    assert json.loads((out / "judgments.key.json").read_text())["draws"] == {"k": 2, "temperature": 1.5,
                                                                              "top_p": 1.0, "seed": 3}  # fmt: skip
    assert res["score_spread"]["overall"]["n"] == 6  # two draws per judged slot
    cfg = CotRmConfig.load(tiny_rm)
    preds = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    for row in preds:  # the same function as the CLI, the server and the API
        assert row["probs"] == probabilities(row["scores_a"], row["scores_b"], cfg)
    labels = {"overall": [1, -1, 0], "visual_quality": [0]}
    for dim, ys in labels.items():
        used = [r for r in preds if dim in r["label"]]
        expected = m.prob_metrics([[r["probs"][dim][o] for o in ("A", "tie", "B")] for r in used], ys)
        assert res["pair_probs"][dim] == expected and expected["n"] == len(ys)
    assert "## Pair probabilities" in printed and f"tie_theta {cfg.tie_theta}" in printed
    rc, _, err = _run(capsys, "--predictions", out / "predictions.jsonl", "--out", tmp_path / "re")
    assert (
        rc == 0
        and json.loads((tmp_path / "re" / "metrics.json").read_text())["pair_probs"] == res["pair_probs"]
    )
    # the cache is keyed by the draws: other draws on the same folder are refused, naming the change
    rc, _, err = _eval(capsys, tiny_rm, pairs, out, "--samples", "2", "--temperature", "1.5", "--seed", "4")
    assert rc == 2 and "draws: " in err and "use another --out" in err


def test_eval_refuses_bad_sampling_before_loading_the_model(pairs, tmp_path, capsys):
    for extra, says in [(("--samples", "2", "--temperature", "0"), "--temperature must be a number > 0"),
                        (("--samples", "-1"), "--samples must be an integer >= 1")]:  # fmt: skip
        rc, _, err = _eval(capsys, tmp_path / "no_ckpt", pairs, tmp_path / "o", *extra)
        assert rc == 2 and says in err and err.count("\n") == 1, err
