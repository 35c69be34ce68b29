"""bench/judge_speed.py: its arithmetic by hand (videos per second, the ratios, the comparison of the two
paths' judgments), and a small run on the tiny model and a small toy world, as a user runs it: both paths
time every batch, judge alike, and the markdown section is written. Never appends to bench/RESULTS.md."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
from bench_run import run_bench

from cot_rm.media.video import Sampling
from cot_rm.model.modeling import ThinkThenScore

_SPEC = importlib.util.spec_from_file_location(
    "judge_speed", Path(__file__).resolve().parents[1] / "bench" / "judge_speed.py"
)
js = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(js)


def test_videos_per_second_and_ratios_by_hand():
    seconds = {"before": [[2.0, 1.0], [3.0, 1.0]], "after": [[1.0, 0.5], [1.0, 1.0]]}  # [pass][batch]
    s = js.summarize({"seconds": seconds}, videos=4)
    assert s["seconds"] == {"before": 7.0, "after": 3.5} and s["passes"] == 2
    assert s["videos_per_s"] == pytest.approx({"before": 8 / 7, "after": 8 / 3.5})
    assert s["ratio"] == pytest.approx(2.0) and s["pass_ratios"] == pytest.approx([2.0, 2.0])
    assert s["paired_median"] == pytest.approx(2.0) and s["paired_range"] == pytest.approx([1.0, 3.0])


def _judgment(text="r", score=3.0, probs=(0.5, 0.5), calls=()) -> dict:
    return {"id": "v", "scores": {"overall": score}, "answer_scores": {"overall": 3.0},
            "answer_probs": {"overall": {"probs": dict(zip("12", probs)), "expected": 1.5}},
            "rationale": text, "tool_calls": list(calls), "parse_error": None}  # fmt: skip


def test_the_two_paths_compared_within_the_tolerance():
    same = js.compare([_judgment()], [_judgment(score=3.0 + 5e-6, probs=(0.5 + 4e-6, 0.5 - 4e-6))])
    assert same["judgments"] == 1 and same["max_score_diff"] == pytest.approx(5e-6) and js.identical(same)
    far = js.compare([_judgment()], [_judgment(score=3.0 + 2e-5)])
    assert not js.identical(far) and far["max_score_diff"] == pytest.approx(2e-5)
    other = js.compare([_judgment(), _judgment()], [_judgment(), _judgment(calls=[{"frames": [1]}])])
    assert other["text_differs"] == ["v"] and not js.identical(other)
    # sampled judgments: draw by draw
    draws = lambda *js_: {**_judgment(), "samples": {"judgments": list(js_)}}  # noqa: E731
    sampled = js.compare([draws(_judgment(), _judgment("a"))], [draws(_judgment(), _judgment("b"))])
    assert sampled["judgments"] == 2 and sampled["text_differs"] == ["v"]


@pytest.fixture(scope="module")
def bench(tmp_path_factory, tiny_qwen25vl_dir) -> tuple[dict, str, Path]:
    from data_synthesis.toyworld.world import ToyConfig, build

    root = tmp_path_factory.mktemp("judge_speed")
    build(root / "toy", ToyConfig(n=40, seed=0), progress=False)
    ckpt = root / "ckpt"
    ThinkThenScore.from_base(tiny_qwen25vl_dir, sampling=Sampling(num_frames=4, max_pixels=56 * 56)).save_pretrained(ckpt)  # fmt: skip
    return run_bench("judge_speed.py", root, "--world", root / "toy", "--model", ckpt, "--batch-size", 2,
                     "--repeats", 2, "--max-new-tokens", 8, "--threads", 1)  # fmt: skip


def test_a_small_run_times_both_paths_and_finds_them_alike(bench):
    res, stdout, md = bench
    s, videos = res["summary"], res["summary"]["videos"]
    assert videos == len(js.held_out(Path(res["inputs"]["world"]), "test", None)) >= 2
    batches = math.ceil(videos / 2)
    assert all(len(res["seconds"][side]) == 2 and all(len(p) == batches for p in res["seconds"][side])
               for side in js.SIDES)  # fmt: skip
    for side in js.SIDES:
        assert math.isclose(s["videos_per_s"][side], videos * 2 / s["seconds"][side])
    assert math.isclose(s["ratio"], s["videos_per_s"]["after"] / s["videos_per_s"]["before"])
    assert js.identical(res["compare"]) and res["compare"]["judgments"] == videos
    c = res["counts"]  # the fast path runs fewer tokens and tower items than the whole inputs hold
    assert 0 < c["tokens_run"] < c["tokens"] and 0 < c["tower_calls"] < c["media"]
    assert set(res["profile"]["after"]) == {label for label, _ in js.PROFILE}
    text = md.read_text()
    assert text.startswith("# results\n") and "## judge_speed — " in text and "--repeats 2" in text
    assert "| videos / s |" in text and "as many videos per second" in stdout
