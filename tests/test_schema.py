"""Data records: validation with file:line reasons, path resolution, atomic writes."""

import json
import os

import pytest

from cot_rm import schema as S

POINT = {
    "id": "p1",
    "video": "videos/a.mp4",
    "prompt": "a red ball",
    "scores": {"visual_quality": 4, "overall": 3.5},
}
PAIR = {
    "id": "q1",
    "prompt": "a red ball",
    "video_a": "a.mp4",
    "video_b": "/abs/b.mp4",
    "preference": "A",
    "dims": {"visual_quality": "tie", "overall": "A"},
    "meta": {"source": "toy"},
}
JUDG = {
    "id": "j1",
    "scores": {"overall": 3.2},
    "answer_scores": {"overall": 3},
    "rationale": "frame 3 flickers",
    "frames_cited": [3],
    "tool_calls": [{"frames": [3]}],
    "parse_error": None,
    "model": "tiny",
    "protocol_version": "cot-rm/1",
}


def _write(tmp_path, lines, name="data.jsonl"):
    p = tmp_path / name
    p.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return p


def test_reads_all_kinds_and_resolves_paths(tmp_path):
    p = _write(tmp_path, [POINT, "", PAIR, JUDG])
    point, pair, judg = S.read_jsonl(p)
    assert isinstance(point, S.PointwiseRecord) and point.video == str(tmp_path / "videos" / "a.mp4")
    assert isinstance(pair, S.PairRecord) and pair.video_a == str(tmp_path / "a.mp4")
    assert pair.video_b == "/abs/b.mp4" and pair.dims["overall"] == "A"
    assert isinstance(judg, S.JudgmentRecord) and judg.frames_cited == [3]
    url = S.parse_record({**POINT, "video": "https://x.org/v.mp4"}, base_dir=tmp_path)
    assert url.video == "https://x.org/v.mp4"


BAD = [
    ("{not json", "invalid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ({**POINT, "scores": {"overall": "4"}}, "scores['overall'] must be a finite number"),
    ({**POINT, "scores": {}}, "scores must be a non-empty object"),
    ({**POINT, "scores": {"overall": True}}, "finite number"),
    ({k: v for k, v in POINT.items() if k != "prompt"}, "missing key 'prompt'"),
    ({**POINT, "socres": {}}, "unknown key 'socres'"),
    ({**POINT, "video": ""}, "video must be a non-empty string"),
    ({**POINT, "split": "dev"}, "split must be one of"),
    ({**POINT, "meta": []}, "meta must be an object"),
    ({**PAIR, "preference": "a"}, "preference must be one of"),
    ({**PAIR, "dims": {"overall": "left"}}, "dims['overall'] must be one of"),
    ({**PAIR, "dims": {"overall": "B"}}, "dims['overall'] is 'B' but preference is 'A'"),
    ('{"id": "p9", "video": "a.mp4", "prompt": "x", "scores": {"overall": 3}', "column 71"),  # no last }
    ({k: v for k, v in PAIR.items() if k != "video_b"}, "missing key 'video_b'"),
    ({**JUDG, "frames_cited": ["3"]}, "frames_cited must be a list of integers"),
    ({**JUDG, "answer_scores": None}, "say why it did not parse"),
]


@pytest.mark.parametrize("line,reason", BAD)
def test_bad_line_reported_with_file_and_line(tmp_path, line, reason):
    p = _write(tmp_path, [POINT | {"id": "ok"}, line])
    with pytest.raises(S.SchemaError) as err:
        S.read_jsonl(p)
    assert f"{p}:2: " in str(err.value) and reason in str(err.value)
    with pytest.raises(S.SchemaError, match=f"{p}:2: "):
        list(S.iter_jsonl(p))


def test_every_bad_line_is_listed(tmp_path):
    p = _write(tmp_path, [POINT, "{", {**POINT, "id": "p2"}, {**POINT, "id": "p1"}, "oops"])
    with pytest.raises(S.SchemaError) as err:
        S.read_jsonl(p)
    msg = str(err.value)
    assert msg.startswith("3 bad line(s)")
    assert f"{p}:2:" in msg and f"{p}:4: duplicate id 'p1' (first on line 1)" in msg and f"{p}:5:" in msg


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(S.SchemaError, match="no such file"):
        S.read_jsonl(tmp_path / "nope.jsonl")
    with pytest.raises(S.SchemaError, match="is a directory"):
        S.read_jsonl(tmp_path)


def test_explicit_kind_is_enforced(tmp_path):
    p = _write(tmp_path, [POINT])
    with pytest.raises(S.SchemaError, match="missing key 'video_a'"):
        S.read_jsonl(p, kind="pairwise")


def test_write_round_trip_is_atomic(tmp_path):
    recs = S.read_jsonl(_write(tmp_path, [POINT, PAIR], "in.jsonl"), resolve=False)
    out = tmp_path / "sub" / "out.jsonl"
    assert S.write_jsonl(out, recs) == 2
    assert S.read_jsonl(out, resolve=False) == recs
    assert "split" not in out.read_text() and "prompt_b" not in out.read_text()

    def boom():
        yield POINT
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        S.write_jsonl(out, boom())
    assert S.read_jsonl(out, resolve=False) == recs  # the old file is intact
    assert [f for f in os.listdir(out.parent) if f.endswith(".tmp")] == []  # no temp file left


def test_written_files_get_the_mode_open_would_give(tmp_path):
    old = os.umask(0o022)
    try:
        S.write_jsonl(tmp_path / "out.jsonl", [POINT])
    finally:
        os.umask(old)
    assert (tmp_path / "out.jsonl").stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600
