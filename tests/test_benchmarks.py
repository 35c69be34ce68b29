"""eval.benchmarks: each public layout, written here as a small fixture file, maps onto our records
(dimension names, ties, video paths under a root); missing files, columns and videos are clear
errors; and `cot-rm eval --model --bench NAME` runs end to end on one of them."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from eval import benchmarks as B
from eval.benchmarks import BenchError


def _touch(root: Path, *names: str) -> None:
    """Empty stand-ins: the loaders only check that the videos exist."""
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")


def _csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


# ------------------------------------------------------------------------- VideoGen-RewardBench

# VideoAlign's CSV: path_A, path_B, A_model, B_model, prompt, fps/num_frames, VQ, MQ, TA, Overall.
VGRB_HEADER = ["path_A", "path_B", "A_model", "B_model", "prompt", "fps_A", "num_frames_A", "VQ", "MQ", "TA", "Overall"]  # fmt: skip
VGRB_ROWS = [
    ["videos/a1.mp4", "videos/b1.mp4", "kling", "luma", "a cat jumps", 24, 120, "A", "B", "same", "A"],
    ["videos/a2.mp4", "videos/b2.mp4", "vidu", "kling", "a dog runs", 24, 120, "same", "A", "B", "same"],
    ["videos/a3.mp4", "videos/b3.mp4", "luma", "vidu", "rain", 24, 120, "B", "", "A", "B"],
    ["videos/a4.mp4", "videos/b4.mp4", "luma", "vidu", "snow", 24, 120, "A", "A", "A", ""],  # no Overall
]


def test_videogen_rewardbench_maps_dimensions_and_ties(tmp_path):
    data = _csv(tmp_path / "videogen-rewardbench.csv", VGRB_HEADER, VGRB_ROWS)
    _touch(tmp_path, *(f"videos/{s}{i}.mp4" for s in "ab" for i in range(1, 5)))
    bench = B.load("videogen-rewardbench", data)
    assert bench.kind == "pairwise" and [r.id for r in bench.records] == [
        "vgrb-00000",
        "vgrb-00001",
        "vgrb-00002",
    ]
    r0, r1, r2 = bench.records
    assert r0.preference == "A"
    assert r0.dims == {
        "visual_quality": "A",
        "physical_consistency": "B",
        "text_alignment": "tie",
    }  # MQ -> physical
    assert r1.preference == "tie" and r1.dims["visual_quality"] == "tie"  # "same" is a tie
    assert r2.dims == {"visual_quality": "B", "text_alignment": "A"}  # a blank MQ cell: not labelled
    assert r0.video_a == str(tmp_path / "videos" / "a1.mp4") and r0.meta == {
        "A_model": "kling",
        "B_model": "luma",
    }
    assert bench.info["skipped"] == {"no Overall label": 1} and bench.info["n_records"] == 3


def test_videogen_rewardbench_variants_root_and_limit(tmp_path):
    # VideoAlign's own eval script reads an "ALL" column; values in any case; videos under another root
    data = _csv(
        tmp_path / "vgrb.csv", ["path_A", "path_B", "prompt", "ALL"], [["x.mp4", "y.mp4", "p", "Tie"]] * 2
    )
    root = tmp_path / "media"
    _touch(root, "x.mp4", "y.mp4")
    with pytest.raises(BenchError, match="2 of 2 videos not found"):
        B.load("videogen-rewardbench", data)  # videos are not next to the CSV
    bench = B.load("videogen-rewardbench", data, root=root, limit=1)
    assert len(bench.records) == 1 and bench.records[0].preference == "tie"
    assert bench.records[0].video_b == str(root / "y.mp4")


# ---------------------------------------------------------------------------------- GenAI-Bench


def _genai_rows():
    url = "https://example.org/genai/videos/{}.mp4"
    votes = ["leftvote", "rightvote", "tievote", "bothbad_vote"]
    return [{"prompt": f"p{i}", "left_model": "m1", "right_model": "m2", "left_video": url.format(f"l{i}"),
             "right_video": url.format(f"r{i}"), "vote_type": v} for i, v in enumerate(votes)]  # fmt: skip


def test_genai_bench_votes_and_url_videos(tmp_path):
    data = tmp_path / "genai_video.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _genai_rows()))
    _touch(tmp_path, *(f"videos/{s}{i}.mp4" for s in "lr" for i in range(4)))  # URLs by file name
    bench = B.load("genai-bench", data)
    assert [r.preference for r in bench.records] == ["A", "B", "tie", "tie"]  # both bad is a tie too
    assert bench.records[3].meta["vote_type"] == "bothbad_vote" and bench.records[0].dims == {}
    assert bench.records[0].video_a == str(tmp_path / "videos" / "l0.mp4")


def test_genai_bench_from_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(_genai_rows()), tmp_path / "test_v1.parquet")
    _touch(tmp_path, *(f"{s}{i}.mp4" for s in "lr" for i in range(4)))
    bench = B.load("genai-bench", tmp_path / "test_v1.parquet")
    assert len(bench.records) == 4 and bench.records[1].video_b == str(tmp_path / "r1.mp4")


def test_genai_bench_unknown_vote_names_the_line(tmp_path):
    rows = _genai_rows()
    rows[2]["vote_type"] = "upvote"
    data = tmp_path / "g.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(BenchError, match=r"g\.jsonl:3: vote_type = 'upvote' is not a known preference"):
        B.load("genai-bench", data)


# ------------------------------------------------------------------------------- MJ-Bench-Video


def _mj(i, overall, aspects, **extra):
    return {"caption": f"c{i}", "video_0_path": f"test/{i}_0.mp4", "video_1_path": f"test/{i}_1.mp4",
            "overall_preference": overall, "category_preference": aspects, "discard": False, **extra}  # fmt: skip


def test_mj_bench_video_aspects(tmp_path):
    aspects = {"Alignment": "Video 0 better", "Safety": "Same", "Fineness": "Video 1 better",
               "Coherence & Consistency": "Hard to judge", "Bias": "Same"}  # fmt: skip
    rows = [
        _mj(0, "Video 0 better", aspects),
        _mj(1, "Same", {"Fineness": "Same"}),
        _mj(2, "Hard to judge", {}),  # no overall label: skipped, counted
        _mj(3, "Video 1 better", {}, discard=True),  # discarded by the annotators
    ]
    (tmp_path / "test.json").write_text(json.dumps(rows))
    _touch(tmp_path, *(f"videos/test/{i}_{s}.mp4" for i in range(4) for s in "01"))  # the HF layout
    bench = B.load("mj-bench-video", tmp_path / "test.json")
    r0, r1 = bench.records
    assert r0.preference == "A" and r0.dims == {"text_alignment": "A", "visual_quality": "B"}
    assert r0.meta == {"Safety": "Same", "Bias": "Same"}  # no counterpart: kept, not scored
    assert r1.preference == "tie" and r1.dims == {"visual_quality": "tie"}
    assert r0.video_b == str(tmp_path / "videos" / "test" / "0_1.mp4")
    assert bench.info["skipped"] == {"overall_preference blank or 'Hard to judge'": 1, "discard: true": 1}


def test_mj_bench_chosen_rejected_labels_its_aspect_only(tmp_path):
    from eval.run import _pair_label

    rows = [{"prompt": "p", "chosen": "c.mp4", "rejected": "r.mp4", "aspect": "Fineness"},
            {"prompt": "p", "chosen": "c.mp4", "rejected": "r.mp4"}]  # fmt: skip
    (tmp_path / "cr.json").write_text(json.dumps(rows))
    _touch(tmp_path, "c.mp4", "r.mp4")
    r0, r1 = B.load("mj-bench-video", tmp_path / "cr.json").records
    assert _pair_label(r0) == {"visual_quality": "A"}  # not an overall label
    assert _pair_label(r1) == {"overall": "A"}


# -------------------------------------------------------------------------- VideoScore-Bench-v2


def test_videoscore_bench_v2_pointwise(tmp_path):
    rows = [{"video_name": "v0", "video_url": "https://x/v0.mp4", "prompt": "p0", "visual_score": 4,
             "t2v_score": 2, "phy_score": 3},
            {"video_name": "v1.mp4", "prompt": "p1", "visual_score": "5", "t2v_score": None, "phy_score": 1}]  # fmt: skip
    (tmp_path / "vs2.json").write_text(json.dumps(rows))
    _touch(tmp_path, "v0.mp4", "v1.mp4")
    bench = B.load("videoscore-bench-v2", tmp_path / "vs2.json")
    assert bench.kind == "pointwise"
    r0, r1 = bench.records
    assert r0.scores == {"visual_quality": 4, "text_alignment": 2, "physical_consistency": 3}
    assert r1.scores == {"visual_quality": 5.0, "physical_consistency": 1.0}  # a null score: not labelled
    assert r0.video == str(tmp_path / "v0.mp4") and r1.video == str(tmp_path / "v1.mp4")


def test_exports_as_users_have_them(tmp_path):
    """`datasets`' to_json (JSON Lines named .json), a BOM, MJ-Bench's aspects as text in a CSV export (its
    Python repr), and a VideoScore2 name with a dot in it."""
    _touch(tmp_path, *(f"videos/{s}{i}.mp4" for s in "lr" for i in range(4)))
    lines = "".join(json.dumps(r) + "\n" for r in _genai_rows())
    (tmp_path / "hf.json").write_text(lines)
    (tmp_path / "bom.jsonl").write_text("\ufeff" + lines, encoding="utf-8")
    (tmp_path / "bom.json").write_text("\ufeff" + json.dumps(_genai_rows()), encoding="utf-8")
    for name in ("hf.json", "bom.jsonl", "bom.json"):
        assert [r.preference for r in B.load("genai-bench", tmp_path / name).records] == [
            "A",
            "B",
            "tie",
            "tie",
        ]
    aspects = repr({"Alignment": "Video 1 better", "Fineness": "Same", "Safety": "Same"})
    header = [
        "caption",
        "video_0_path",
        "video_1_path",
        "overall_preference",
        "category_preference",
        "discard",
    ]
    _touch(tmp_path, "test/0_0.mp4", "test/0_1.mp4")
    mj = _csv(
        tmp_path / "mj.csv",
        header,
        [["a cat", "test/0_0.mp4", "test/0_1.mp4", "Video 0 better", aspects, "False"]],
    )
    (r,) = B.load("mj-bench-video", mj).records
    assert r.dims == {"text_alignment": "B", "visual_quality": "tie"} and r.meta == {"Safety": "Same"}
    _csv(
        tmp_path / "mj_bad.csv",
        header,
        [["a cat", "test/0_0.mp4", "test/0_1.mp4", "Video 0 better", "great", "False"]],
    )
    with pytest.raises(BenchError, match=r"mj_bad\.csv:2: category_preference 'great' is not an aspect"):
        B.load("mj-bench-video", tmp_path / "mj_bad.csv")
    _touch(tmp_path, "model_v1.5_x.mp4")
    (tmp_path / "vs2.json").write_text(
        json.dumps([{"video_name": "model_v1.5_x", "prompt": "p", "visual_score": 3}])
    )
    assert B.load("videoscore-bench-v2", tmp_path / "vs2.json").records[0].video == str(
        tmp_path / "model_v1.5_x.mp4"
    )


# ---------------------------------------------------------------------------------------- errors


def test_missing_file_folder_and_type(tmp_path):
    with pytest.raises(BenchError, match=r"nope\.csv: no such file; download the benchmark"):
        B.load("videogen-rewardbench", tmp_path / "nope.csv")
    with pytest.raises(BenchError, match="is a folder; pass the annotation file"):
        B.load("genai-bench", tmp_path, root=tmp_path)
    (tmp_path / "x.txt").write_text("a")
    with pytest.raises(BenchError, match="unsupported file type '.txt'"):
        B.load("genai-bench", tmp_path / "x.txt")
    (tmp_path / "junk.parquet").write_bytes(b"PAR1garbage")
    with pytest.raises(BenchError, match=r"junk\.parquet: cannot read it as parquet"):
        B.load("genai-bench", tmp_path / "junk.parquet")
    with pytest.raises(
        BenchError, match=r"x\.csv: no such file"
    ):  # the file is named, not its missing folder
        B.load("genai-bench", tmp_path / "nowhere" / "x.csv")
    short = _csv(tmp_path / "short.csv", ["path_A", "path_B", "prompt", "Overall"], [["a.mp4", "b.mp4", "p"]])
    with pytest.raises(BenchError, match=r"short\.csv:2: fewer values than the header has columns"):
        B.load("videogen-rewardbench", short)


def test_missing_column_names_file_column_and_what_was_found(tmp_path):
    data = _csv(tmp_path / "v.csv", ["video_A", "video_B", "prompt", "VQ"], [["a", "b", "p", "A"]])
    with pytest.raises(BenchError) as err:
        B.load("videogen-rewardbench", data)
    msg = str(err.value)
    assert "v.csv: no Overall preference column" in msg and "'Overall'" in msg and "found: VQ, prompt" in msg


def test_missing_videos_and_bad_values_and_split(tmp_path):
    data = _csv(tmp_path / "v.csv", ["path_A", "path_B", "prompt", "Overall"], [["a.mp4", "b.mp4", "p", "A"]])
    with pytest.raises(BenchError, match=r"2 of 2 videos not found under .* \(e\.g\. .*a\.mp4"):
        B.load("videogen-rewardbench", data)
    bad = _csv(
        tmp_path / "w.csv",
        ["path_A", "path_B", "prompt", "Overall"],
        [["a", "b", "p", "A"], ["a", "b", "p", "C"]],
    )
    with pytest.raises(BenchError, match=r"w\.csv:3: Overall = 'C' is not a known preference"):
        B.load("videogen-rewardbench", bad)
    with pytest.raises(BenchError, match="--split applies to --bench jsonl only"):
        B.load("videogen-rewardbench", data, split="test")
    (tmp_path / "s.json").write_text(json.dumps([{"video_name": "v", "prompt": "p", "visual_score": "high"}]))
    with pytest.raises(BenchError, match=r"s\.json: item 0: visual_score = 'high' is not a number"):
        B.load("videoscore-bench-v2", tmp_path / "s.json")
    (tmp_path / "s.json").write_text(json.dumps([{"video_name": "v", "prompt": "p", "visual_score": True}]))
    with pytest.raises(BenchError, match=r"s\.json: item 0: visual_score = True is not a number"):
        B.load("videoscore-bench-v2", tmp_path / "s.json")


def test_public_duplicate_ids_and_bad_records_name_the_row(tmp_path):
    header = ["id", "path_A", "path_B", "prompt", "Overall"]
    data = _csv(
        tmp_path / "v.csv", header, [[7, "a.mp4", "b.mp4", "p", "A"], [7, "c.mp4", "d.mp4", "q", "B"]]
    )
    with pytest.raises(BenchError, match=r"v\.csv:3: duplicate id 'vgrb-7' \(first at .*v\.csv:2\)"):
        B.load("videogen-rewardbench", data, check_videos=False)
    bad = {"id": "x", "prompt": "p", "video_a": "a", "video_b": "b", "preference": "C"}
    with pytest.raises(BenchError, match=r"^f\.csv:5: preference must be one of"):
        B._validate([("f.csv:5", bad)], "pairwise")


def test_percent_encoded_urls_and_windows_paths_find_their_videos(tmp_path):
    rows = [{"prompt": "p", "left_video": "https://x.org/v/a%20cat.mp4", "right_video": "https://x.org/v/b%2B1.mp4",
             "vote_type": "leftvote"}]  # fmt: skip
    (tmp_path / "g.json").write_text(json.dumps(rows))
    _touch(tmp_path, "videos/a cat.mp4", "b%2B1.mp4")  # saved decoded, and saved as named in the URL
    rec = B.load("genai-bench", tmp_path / "g.json").records[0]
    assert rec.video_a == str(tmp_path / "videos" / "a cat.mp4") and rec.video_b == str(
        tmp_path / "b%2B1.mp4"
    )
    data = _csv(
        tmp_path / "v.csv", ["path_A", "path_B", "prompt", "Overall"], [["sub\\a.mp4", "b.mp4", "p", "A"]]
    )
    _touch(tmp_path, "sub/a.mp4", "b.mp4")
    assert B.load("videogen-rewardbench", data).records[0].video_a == str(tmp_path / "sub" / "a.mp4")


def test_jsonl_paths_relative_to_root(tmp_path):
    row = {
        "id": "a",
        "prompt": "p",
        "video_a": "x.mp4",
        "video_b": "/abs/y.mp4",
        "preference": "B",
        "split": "val",
    }
    (tmp_path / "d.jsonl").write_text(json.dumps(row) + "\n")
    bench = B.load("jsonl", tmp_path / "d.jsonl", root=tmp_path / "..")
    assert bench.records[0].video_a == str(tmp_path.parent / "x.mp4")
    assert bench.records[0].video_b == "/abs/y.mp4"
    with pytest.raises(BenchError, match="no records to evaluate in split 'test'"):
        B.load("jsonl", tmp_path / "d.jsonl", split="test")


def test_jsonl_duplicate_ids_and_mixed_kinds_name_the_line(tmp_path):
    pair = {"id": "a", "prompt": "p", "video_a": "x.mp4", "video_b": "y.mp4", "preference": "A"}
    point = {"id": "c", "prompt": "p", "video": "x.mp4", "scores": {"overall": 3}}
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [pair, {**pair, "id": "b"}, {**pair, "id": "a"}]) + "\n")
    with pytest.raises(BenchError, match=r"d\.jsonl:3: duplicate id 'a' \(first on line 1\)"):
        B.load("jsonl", path)
    path.write_text(json.dumps(pair) + "\n\n" + json.dumps(point) + "\n")  # a blank line 2
    with pytest.raises(BenchError, match=r"d\.jsonl:3: a pointwise record in a file of pairwise records"):
        B.load("jsonl", path)


# -------------------------------------------------------------------------------- end to end


def test_cot_rm_eval_on_videogen_rewardbench(tiny_rm, tmp_path, capsys):
    from conftest import write_mp4

    from cot_rm.cli import main

    for name in ("a", "b", "c"):
        write_mp4(tmp_path / "videos" / f"{name}.mp4", num_frames=8, height=64, width=64, fps=4)
    rows = [["videos/a.mp4", "videos/b.mp4", "p", "A", "B", "same", "A"],
            ["videos/b.mp4", "videos/c.mp4", "p", "B", "A", "A", "same"]]  # fmt: skip
    data = _csv(
        tmp_path / "videogen-rewardbench.csv",
        ["path_A", "path_B", "prompt", "VQ", "MQ", "TA", "Overall"],
        rows,
    )
    out = tmp_path / "out"
    argv = ["eval", "--model", tiny_rm, "--bench", "videogen-rewardbench", "--data", data, "--out", out,
            "--max-new-tokens", "4", "--device", "cpu"]  # fmt: skip
    assert main(list(map(str, argv))) == 0, capsys.readouterr().err
    assert "3 videos, 0 cached, judging 3" in capsys.readouterr().err
    res = json.loads((out / "metrics.json").read_text())
    assert set(res["pairwise"]) == {"overall", "visual_quality", "physical_consistency", "text_alignment"}
    assert res["pairwise"]["overall"]["n"] == 2 and res["pairwise"]["overall"]["n_ties"] == 1
    assert (
        res["bench"]["name"] == "videogen-rewardbench"
        and res["bench"]["dimension_map"]["VQ"] == "visual_quality"
    )
    proto = res["protocol"]
    assert proto["greedy"] and proto["bench"] == "videogen-rewardbench" and proto["frames"]["fps"] == 2.0
    assert {"min_pixels", "max_pixels"} <= set(proto["pixels"]) and "pairwise" in proto["averaging"]
    report = (out / "report.md").read_text()
    assert "## Protocol" in report and "videogen-rewardbench" in report and "greedy" in report
