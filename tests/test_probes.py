"""eval.probes: each perturbation does exactly what it says (checked by hand on a tiny synthetic
video), copies are real video files that keep the duration, and `cot-rm eval --probes` with a tiny
checkpoint reports every probe and dimension (and resumes from its cache)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from eval import probes as P


def _frames(t: int = 4) -> np.ndarray:
    """(T, 2, 2, 3): frame i is filled with the value 10 * (i + 1), so frames are told apart by value."""
    return np.stack([np.full((2, 2, 3), 10 * (i + 1), np.uint8) for i in range(t)])


def _ids(frames: np.ndarray) -> list[int]:
    return [int(f[0, 0, 0]) // 10 - 1 for f in frames]


def test_static_repeats_the_first_frame():
    out = P.static_video(_frames())
    assert _ids(out) == [0, 0, 0, 0] and out.shape == (4, 2, 2, 3) and out.dtype == np.uint8


def test_duplicate_holds_every_kth_frame():
    assert _ids(P.duplicate_frames(_frames(5), hold=2)) == [0, 0, 2, 2, 4]
    assert _ids(P.duplicate_frames(_frames(7), hold=3)) == [0, 0, 0, 3, 3, 3, 6]


def test_shuffle_is_a_seeded_permutation_that_moves_frames():
    a, b = P.shuffle_frames(_frames(6), seed=1), P.shuffle_frames(_frames(6), seed=1)
    assert _ids(a) == _ids(b) and sorted(_ids(a)) == list(range(6)) and _ids(a) != list(range(6))
    assert sorted(P.shuffle_order(2, seed=s).tolist() for s in range(20))[0] == [1, 0]  # never the identity
    assert P.shuffle_order(1, seed=0).tolist() == [0]


def test_color_drift_hand_computed():
    frames = np.zeros((3, 1, 1, 3), np.uint8)
    frames[:, 0, 0] = (70, 60, 50)  # channel mean 60
    out = P.color_drift(frames, max_gain=2.0, max_shift=10.0)
    assert out[0, 0, 0].tolist() == [70, 60, 50]  # t = 0: unchanged
    # t = 1 (w 0.5): 60 + 1.5 * (10, 0, -10) = (75, 60, 45); red +5, blue -5
    assert out[1, 0, 0].tolist() == [80, 60, 40]
    # t = 2 (w 1): 60 + 2 * (10, 0, -10) = (80, 60, 40); red +10, blue -10
    assert out[2, 0, 0].tolist() == [90, 60, 30]
    # default: x3 and +60 at the end, clipped to 0..255
    assert P.color_drift(frames)[2, 0, 0].tolist() == [150, 60, 0]


def test_swapped_prompts_pick_the_next_different_prompt():
    assert P.swapped_prompts(["a", "a", "b"]) == ["b", "b", "a"]
    assert P.swapped_prompts(["a", "b", "c"]) == ["b", "c", "a"]
    assert P.swapped_prompts(["a", "a"]) == [None, None]
    assert P.swapped_prompts(["a", "a"], pool=["a", "a", "c", "b"]) == ["c", "c"]  # from the whole benchmark


def test_copies_are_real_videos_of_the_same_duration(make_mp4, tmp_path):
    from cot_rm.media.video import Sampling, probe, read_video_numpy

    src = make_mp4("probe_src.mp4", num_frames=16, height=64, width=64, fps=8)
    sampling = Sampling(max_pixels=56 * 56, family="qwen2_5_vl")
    copies = P.make_copies("v#1", str(src), sampling, tmp_path)
    assert set(copies) == set(P.PROBES) - {"swap_prompt"}
    for path in copies.values():
        info = probe(path)
        assert info["total_frames"] == 16 and info["duration_s"] == pytest.approx(2.0)
        assert (info["height"], info["width"]) == (56, 56)  # the checkpoint's pixel budget
    frames = read_video_numpy(copies["static"], Sampling(num_frames=16, max_pixels=56 * 56)).frames
    assert np.abs(frames.astype(int) - frames[:1].astype(int)).max() <= 3  # one frame (codec noise only)
    moving = read_video_numpy(copies["reencode"], Sampling(num_frames=16, max_pixels=56 * 56)).frames
    assert np.abs(moving[-1].astype(int) - moving[0].astype(int)).max() > 100  # the square moved
    mtimes = {p: Path(p).stat().st_mtime_ns for p in copies.values()}
    assert P.make_copies("v#1", str(src), sampling, tmp_path) == copies  # reused, not rewritten
    assert {p: Path(p).stat().st_mtime_ns for p in copies.values()} == mtimes


def test_delta_stats_hand_computed():
    pairs = [({"q": 3.0}, {"q": 2.0}), ({"q": 3.0}, {"q": 3.5}), ({"q": 1.0}, {"q": 0.5}), (None, {"q": 1.0})]
    s = P.delta_stats(pairs, "q")
    assert s == {
        "mean_delta": pytest.approx(-1 / 3),
        "frac_down": 2 / 3,
        "frac_up": 1 / 3,
        "n": 3,
        "n_missing": 1,
    }
    assert P.delta_stats([], "q")["mean_delta"] is None


# -------------------------------------------------------------------------------- end to end


def test_probes_end_to_end(tiny_rm, tmp_path, capsys):
    from conftest import write_mp4

    from cot_rm.cli import main

    for i in range(2):
        write_mp4(tmp_path / f"v{i}.mp4", num_frames=8, height=64, width=64, fps=4)
    rows = [{"id": f"r{i}", "video": f"v{i}.mp4", "prompt": f"a red square slides right {i}",
             "scores": {"overall": 3}} for i in range(2)]  # fmt: skip
    (tmp_path / "points.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    argv = ["eval", "--probes", "--model", tiny_rm, "--data", tmp_path / "points.jsonl", "--out", out,
            "--max-new-tokens", "4", "--device", "cpu", "--batch-size", "6"]  # fmt: skip
    assert main(list(map(str, argv))) == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    assert "14 videos, 0 cached, judging 14" in err, err  # 2 originals + 2 x 6 probes
    res = json.loads((out / "probes.json").read_text())
    dims = ["visual_quality", "text_alignment", "physical_consistency", "overall"]
    assert list(res["probes"]) == list(P.PROBES) and res["n_videos"] == 2
    for name, p in res["probes"].items():
        assert list(p["head"]) == dims and list(p["answer"]) == dims, name
        for stats in p["head"].values():
            assert stats["n"] == 2 and stats["mean_delta"] is not None and 0 <= stats["frac_down"] <= 1
    assert res["probes"]["static"]["expected_down"] == ["physical_consistency", "overall"]
    assert res["protocol"]["greedy"] and res["protocol"]["max_new_tokens"] == 4
    assert "# Reward-hacking probes" in (out / "report.md").read_text()
    assert main(list(map(str, argv))) == 0  # a second run judges nothing again
    assert "14 videos, 14 cached, judging 0" in capsys.readouterr().err
