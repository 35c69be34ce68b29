"""`cot-rm eval --model`: which cached judgments are reused, and how bad videos and labels are reported."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from conftest import write_mp4


def _bench(root: Path, dims: dict | None = None, sizes=(64, 64, 64)) -> Path:
    for i, h in enumerate(sizes):
        write_mp4(root / "videos" / f"v{i}.mp4", num_frames=8, height=h, width=64, fps=4)
    rows = [{"id": "a", "prompt": "a red square slides right", "video_a": "videos/v0.mp4",
             "video_b": "videos/v1.mp4", "preference": "A", "dims": dims or {}},
            {"id": "b", "prompt": "a red square slides right", "video_a": "videos/v1.mp4",
             "video_b": "videos/v2.mp4", "preference": "B"}]  # fmt: skip
    path = root / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _eval(capsys, model, data, out, *extra) -> tuple[int, str]:
    from cot_rm.cli import main

    argv = ["eval", "--model", model, "--data", data, "--out", out, "--max-new-tokens", 4, "--device", "cpu"]
    rc = main([str(a) for a in (*argv, *extra)])
    return rc, capsys.readouterr().err


def _judged_videos(out: Path) -> dict[str, str]:
    rows = [json.loads(x) for x in (out / "judgments.jsonl").read_text().splitlines()]
    return {r["id"]: r["video"] for r in rows}  # the last judgment of an id wins, as on load


def test_a_judgment_is_reused_only_for_the_same_video_file(tiny_rm, tmp_path, capsys):
    first = _bench(tmp_path / "d1")
    out = tmp_path / "run"
    rc, err = _eval(capsys, tiny_rm, first, out)
    assert rc == 0 and "3 videos, 0 cached, judging 3" in err, err
    rc, err = _eval(capsys, tiny_rm, first, out)
    assert rc == 0 and "3 videos, 3 cached, judging 0" in err, err

    # The same file names in another folder: other videos, judged anew (the ids are the same).
    other = _bench(tmp_path / "d2", sizes=(64, 48, 32))
    rc, err = _eval(capsys, tiny_rm, other, out)
    assert rc == 0 and "judging 3 (3 changed or unreadable since cached)" in err, err
    assert all(v.startswith(str(tmp_path / "d2")) for v in _judged_videos(out).values())

    # One video regenerated in place under its name: only that one is judged again.
    write_mp4(tmp_path / "d2" / "videos" / "v1.mp4", num_frames=10, height=64, width=64, fps=4)
    rc, err = _eval(capsys, tiny_rm, other, out)
    assert rc == 0 and "2 cached, judging 1 (1 changed" in err, err


def test_an_unreadable_video_is_named_reported_and_retried(tiny_rm, tmp_path, capsys):
    data = _bench(tmp_path / "d")
    (tmp_path / "d" / "videos" / "v2.mp4").unlink()
    out = tmp_path / "run"
    rc, err = _eval(capsys, tiny_rm, data, out)
    assert rc == 0 and "v2.mp4" in err, err
    res = json.loads((out / "metrics.json").read_text())
    missing = str(tmp_path / "d" / "videos" / "v2.mp4")
    assert res["n_video_errors"] == 1 and list(res["video_errors"]) == [missing]
    assert "unreadable video" in (out / "report.md").read_text()
    # The pair with the missing video is counted (a missing score is wrong), not dropped.
    assert res["pairwise"]["overall"]["n"] == 2

    # The file appears: the next run judges it (the failure was not cached as an answer).
    write_mp4(tmp_path / "d" / "videos" / "v2.mp4", num_frames=8, height=64, width=64, fps=4)
    rc, err = _eval(capsys, tiny_rm, data, out)
    assert rc == 0 and "2 cached, judging 1" in err, err
    assert json.loads((out / "metrics.json").read_text())["n_video_errors"] == 0


def test_labels_of_dimensions_the_checkpoint_does_not_score_are_left_out(tiny_rm, tmp_path, capsys):
    data = _bench(tmp_path / "d", dims={"motoin": "B", "visual_quality": "A"})
    out = tmp_path / "run"
    rc, err = _eval(capsys, tiny_rm, data, out, "--limit", "1")
    assert rc == 0 and "labels for ['motoin'] left out" in err, err
    res = json.loads((out / "metrics.json").read_text())
    assert res["unscored_dimensions"] == ["motoin"]
    assert "motoin" not in res["pairwise"] and res["pairwise"]["visual_quality"]["n"] == 1
    row = json.loads((out / "predictions.jsonl").read_text().splitlines()[0])
    assert row["label"] == {"overall": "A", "visual_quality": "A"}


def test_out_that_is_a_file_is_refused_in_one_line(tiny_rm, tmp_path, capsys):
    data = _bench(tmp_path / "d")
    target = shutil.copy(data, tmp_path / "a_file.jsonl")
    rc, err = _eval(capsys, tiny_rm, data, target)
    assert rc == 2 and err.count("\n") == 1 and "is not a folder" in err, err
