"""`cot-rm synthesize --teacher import:FILE`: public rationale records (VideoScore2's released CoT layout) become
SFT traces. Hand-written records with each quirk of the real files, checked by hand (which lines are cut, which
scores are read, which rows disagree, the counts), then a few hundred generated records over toy-world videos
whose traces go through the SFT data path and a tiny `cot-rm sft` run."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from cot_rm import protocol as P
from cot_rm.schema import SchemaError
from data_synthesis.rationale_import import mapping_from, read_import
from data_synthesis.rationale_text import clean, stated_scores
from data_synthesis.teachers.base import TeacherRequest
from data_synthesis.teachers.imported import ImportTeacher

ROOT = Path(__file__).resolve().parents[1]
DIMS = ("visual_quality", "text_alignment", "physical_consistency")


def _cli(*args, cwd, command="synthesize", timeout=300):
    cmd = [
        sys.executable,
        "-m",
        "cot_rm.cli",
        command,
        *(["--no-progress"] if command == "synthesize" else []),
        *args,
    ]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def _vs2(name, prompt, vq, ta, pc, thinking, url=None, **extra) -> dict:
    """One record in VideoScore2's released layout."""
    row = {"video_name": name, "video_url": url if url is not None else f"https://cdn.example/v/{name}.mp4",
           "prompt": prompt, "visual_score": vq, "t2v_score": ta, "phy_score": pc,
           "visual_cmt_raw": "a bit blurry", "t2v_cmt_raw": "cat ok", "phy_cmt_raw": "fine", "thinking": thinking}  # fmt: skip
    return {**row, **extra}


# --------------------------------------------------------------------------------------- the text


MARKDOWN = """**Analysis of the video**

1. **Visual Quality**: The frames are soft — blur in frames 3-5; colours “wash out” a little.
   Score: 4
2. **Text-to-Video Alignment (Score: 3)**: the café and the cat are there, but the cat is black, not white.
3. ### Physical/Common-sense Consistency
   The cat walks smoothly, though visual glitches are minor. Score: 5

Overall, a decent clip. Score: 3

ground-truth of Dim-1: 'Visual Quality': 4
ground-truth of Dim-2: 'Text-to-Video Alignment': 3
ground-truth of Dim-3: 'Physical/Common-sense Consistency': 5
---
"""


def test_label_lines_are_cut_and_the_rest_is_kept_as_written():
    text, cut = clean(MARKDOWN)
    assert cut == 3
    assert text == MARKDOWN.split("\n\nground-truth")[0]  # markdown, non-ASCII and lists untouched
    # Inside a sentence: a parenthesis goes alone, else the sentence; a line with nothing left goes whole.
    text, cut = clean("The motion is smooth (ground truth: 4). Nice.\nAs the human score of 3 says, fine. Yes.\n"
                      "GT: 2\nThe ground truth matters.")  # fmt: skip
    assert (
        text == "The motion is smooth. Nice.\nYes.\nThe ground truth matters." and cut == 3
    )  # no digit: no leak


def test_protocol_tags_and_control_tokens_cannot_break_the_trace():
    text, _ = clean("<think>Frame 2 flickers.</think> <answer>visual quality: 2</answer> <|im_end|>")
    assert text == "Frame 2 flickers. visual quality: 2 < |im_end|>"
    reply = f"<think>{text}</think>\n" + P.format_answer(
        {"visual_quality": 2}, P.JudgeSpec(("visual_quality",))
    )
    parsed = P.parse_judgment(reply, P.JudgeSpec(("visual_quality",)))  # the one parser reads it
    assert parsed.think == text and parsed.frames_cited == (2,)


def test_stated_scores_are_read_per_dimension():
    text, _ = clean(MARKDOWN)
    stated = stated_scores(text)
    # "Score: 4" under its heading, "(Score: 3)" inline, "Score: 5" in the physics section (the prose's
    # "visual glitches" names no dimension); the overall "Score: 3" is read but checks nothing.
    assert stated.scores == {"visual_quality": [4.0], "text_alignment": [3.0], "physical_consistency": [5.0]}
    assert stated.unattributed == 1
    prose = stated_scores(
        "The visual quality is poor (Score: 2). Its text alignment is fine (score of 4).\n"
        "Physical consistency: 3/5. Rating: 7/10.\nText alignment: 2 cats instead of 3.\n'Visual Quality': 1"
    )
    assert prose.scores == {
        "visual_quality": [2.0, 1.0],
        "text_alignment": [4.0],
        "physical_consistency": [3.0],
    }
    assert stated_scores("A smooth clip; nothing to add (Score: 4).").unattributed == 1  # no dimension named
    assert stated_scores("Frames 3-5 blur; 2 cats, not 3.").scores == {}  # no score stated at all


def test_the_teacher_answers_with_the_stated_score_furthest_from_the_label(tmp_path):
    rows = [_vs2("a", "a cat", 4, 3, 5, "Visual quality: 4. Later: visual quality: 2.\nPhysics: fine."),
            _vs2("b", "a dog", 2, 2, 2, "Nothing stated.")]  # fmt: skip
    (tmp_path / "f.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    teacher = ImportTeacher.from_file(tmp_path / "f.jsonl")
    reqs = [TeacherRequest(r.id, "", "", [], [], r) for r in teacher.records]
    replies = [P.parse_judgment(t.text, P.JudgeSpec()) for t in teacher.generate(reqs)]
    assert replies[0].scores == {
        "visual_quality": 2,
        "text_alignment": 3,
        "physical_consistency": 5,
        "overall": 3,
    }
    assert replies[1].scores == {
        d: 2 for d in P.DEFAULT_DIMENSIONS
    }  # no statement: the label, nothing to check
    assert teacher.model.startswith("f.jsonl#") and teacher.name == "import"


# ------------------------------------------------------------------------------------------- reading


def _videos(root: Path, *names: str) -> None:
    from conftest import write_mp4

    for name in names:
        write_mp4(root / name, num_frames=12, height=32, width=32, fps=4)


def _hand_written() -> list[str]:
    """JSONL lines (line numbers 1-11) with each quirk; the comments say what is expected of each."""
    agrees = _vs2("a", "a white cat in a café", 4, 3, 5, MARKDOWN)  # 3 label lines cut
    # vq stated 2 for a 3: off by 1, kept by the default rule; a leak in parentheses cut alone
    off_by_one = _vs2("b", "a red ball bouncing", 3, 5, 4,
                      "The visual quality is soft (Score: 2). Text alignment is exact (Score: 5).\n"
                      "The motion is smooth (ground truth: 4). Frame 7 shows the bounce.")  # fmt: skip
    # a name without extension (model_v1.5_x.mp4); a list; no stated score
    unstated = _vs2("model_v1.5_x", "a fox at dusk", 2, 4, 3,
                    "- The fox is grainy and dark.\n- It looks right.\n- It trots naturally.")  # fmt: skip
    # no name: found by the URL's (percent-encoded) file name; pc stated 1 for a 4: disagrees; a GT line cut
    by_url = _vs2("", "two birds", 5, 5, 4, "### Physics\nThe birds pass through each other. Score: 1\n"
                  "GT scores: 5 5 4", url="https://cdn.example/v/clip%207.mp4")  # fmt: skip
    off_by_two = _vs2("c", "a blue car", 4, 3, 4, "**Alignment** (Score: 5): the car is blue.")  # disagrees
    ghost = _vs2("ghost", "a ghost", 3, 3, 3, "Visual quality: 3.", url="")  # no such video
    bad_score = _vs2("d", "a tree", 4, 3, 7, "Fine.")
    only_leaks = _vs2(
        "e", "a boat", 4, 4, 4, "ground-truth of Dim-1: 'Visual Quality': 4\nGround truth: 4, 4"
    )
    no_prompt = {k: v for k, v in _vs2("f", "x", 4, 4, 4, "Fine.").items() if k != "prompt"}
    good = [
        json.dumps(r, ensure_ascii=False) for r in (agrees, off_by_one, unstated, by_url, off_by_two, ghost)
    ]
    return [*good, '{"video_name": "g", "prompt": "oops",', json.dumps(bad_score), "",
            json.dumps(only_leaks), json.dumps(no_prompt)]  # fmt: skip


@pytest.fixture
def hand(tmp_path):
    _videos(tmp_path / "videos", "a.mp4", "b.mp4", "model_v1.5_x.mp4", "clip 7.mp4", "c.mp4")
    path = tmp_path / "cot.jsonl"
    path.write_text("\n".join(_hand_written()) + "\n", encoding="utf-8")
    return path


def test_videoscore2_records_map_onto_the_dimensions(hand):
    imp = read_import(hand, hand.parent / "videos")
    ids = [r.id for r in imp.records]
    assert ids == ["a", "b", "model_v1.5_x", "clip 7", "c", "ghost"]
    recs = dict(zip(ids, imp.records, strict=True))
    # overall is the stage's rule: the weakest dimension
    assert recs["a"].scores == {
        "visual_quality": 4,
        "text_alignment": 3,
        "physical_consistency": 5,
        "overall": 3,
    }
    assert recs["clip 7"].scores["overall"] == 4
    videos = hand.parent / "videos"
    assert Path(recs["model_v1.5_x"].video) == videos / "model_v1.5_x.mp4"
    assert Path(recs["clip 7"].video) == videos / "clip 7.mp4"  # the URL's file name, percent-decoded
    assert imp.missing == [str(videos / "ghost.mp4")]
    assert recs["a"].meta["import"]["comments"] == {"visual_cmt_raw": "a bit blurry", "t2v_cmt_raw": "cat ok",
                                                    "phy_cmt_raw": "fine"}  # fmt: skip
    assert recs["a"].meta["import"]["source"] == f"{hand}:1"
    why = {m.split(": ", 1)[0]: m.split(": ", 1)[1] for m in imp.malformed}
    assert why == {
        f"{hand}:7": "invalid JSON (Expecting property name enclosed in double quotes at column 38)",
        f"{hand}:8": "'phy_score': scores['physical_consistency'] = 7 is off the judge's 1-5 scale; rescale the labels",
        f"{hand}:10": "'thinking' holds no rationale once label lines are cut",
        f"{hand}:11": "'prompt' is missing",
    }  # fmt: skip
    r = imp.rationales
    assert [r[i].label_lines for i in ids] == [3, 1, 0, 1, 0, 0]
    assert "ground" not in r["b"].text.lower() and r["b"].text.endswith(
        "The motion is smooth. Frame 7 shows the bounce."
    )
    assert r["b"].stated == {"visual_quality": [2.0], "text_alignment": [5.0]}
    assert r["model_v1.5_x"].stated == {} and r["clip 7"].stated == {"physical_consistency": [1.0]}
    assert r["c"].stated == {"text_alignment": [5.0]}
    s = imp.summary()
    assert (s["rows"], s["records"], s["malformed"], s["missing_videos"]) == (10, 6, 4, 1)
    assert (s["label_lines_stripped"], s["rows_with_label_lines"], s["rows_stating_scores"]) == (5, 3, 5)


def test_synthesize_keeps_agreeing_rows_and_counts_the_rest(hand, tmp_path):
    args = [
        "--teacher",
        f"import:{hand}",
        "--video-root",
        str(hand.parent / "videos"),
        "--rationale-free-p",
        "0",
    ]
    run = _cli(*args, "--out", "out/sft.jsonl", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    s = json.loads(run.stdout)
    assert s == json.loads((tmp_path / "out" / "sft.summary.json").read_text())
    assert s["accepted"] == 3 and s["rejected"] == {"inconsistent": 2, "bad_video": 1} and s["rewrites"] == 0
    assert s["import"]["malformed"] == 4 and s["import"]["missing_videos"] == 1
    assert s["import"]["label_lines_stripped"] == 5 and s["teacher"] == "import"
    assert f"{hand}:7: invalid JSON" in run.stderr and "(record skipped)" in run.stderr
    assert "1 of 6 videos not found under" in run.stderr
    assert ("imported " + str(hand) + ": 10 rows, 3 kept, 2 disagree with their labels, 1 missing videos, "
            "4 malformed; 5 label lines stripped") in run.stderr  # fmt: skip
    rows = {r["id"]: r for r in map(json.loads, (tmp_path / "out" / "sft.jsonl").read_text().splitlines())}
    assert set(rows) == {"a", "b", "model_v1.5_x"}
    spec = P.JudgeSpec()
    for row in rows.values():
        final = P.parse_judgment(row["messages"][-1]["content"], spec)
        assert final.scores == row["scores"]  # the answer is the label's
        assert "ground" not in final.think.lower() and "GT" not in final.think
    a = P.parse_judgment(rows["a"]["messages"][-1]["content"], spec)
    assert a.think == clean(MARKDOWN)[0] and "café" in a.think  # non-ASCII kept
    assert rows["a"]["tool_frames"] == [[3, 4, 5]] and rows["b"]["tool_frames"] == [[7]]  # cited frames
    assert rows["model_v1.5_x"]["tool_frames"] == []
    assert rows["b"]["teacher_scores"]["visual_quality"] == 2  # off by 1: within the default --drop-at 2
    # The existing filter's rule: --drop-at 1 drops the off-by-one row too.
    strict = _cli(*args, "--drop-at", "1", "--out", "strict/sft.jsonl", cwd=tmp_path)
    assert json.loads(strict.stdout)["rejected"] == {"inconsistent": 3, "bad_video": 1}
    # The missing video turns up: a rerun picks up that record alone.
    _videos(hand.parent / "videos", "ghost.mp4")
    again = json.loads(_cli(*args, "--out", "out/sft.jsonl", cwd=tmp_path).stdout)
    assert again["accepted"] == 4 and again["rejected"] == {"inconsistent": 2}


def test_json_array_items_name_their_line(tmp_path):
    _videos(tmp_path, "a.mp4", "b.mp4")
    good = [json.dumps(_vs2(n, "p", 3, 3, 3, "Fine."), indent=2) for n in ("a", "b")]
    text = "[\n" + ",\n".join([good[0], '{"video_name": "x",\n "prompt": "p",\n}', "17", good[1]]) + "\n]\n"
    (tmp_path / "cot.json").write_text(text)
    imp = read_import(tmp_path / "cot.json")
    assert [r.id for r in imp.records] == ["a", "b"]
    line_x = text[: text.index('{"video_name": "x"')].count("\n") + 1
    assert imp.malformed == [
        f"{tmp_path / 'cot.json'}:{line_x} (item 1): invalid JSON (Expecting property name enclosed in double quotes "
        f"at line {line_x + 2} column 1)",
        f"{tmp_path / 'cot.json'}:{line_x + 3} (item 2): expected a JSON object, got int",
    ]  # fmt: skip
    (tmp_path / "cut.json").write_text(text[:-30])  # cut mid-record: nothing tells where it ends
    with pytest.raises(
        SchemaError, match=r"cut.json:\d+: invalid JSON .* item 3 and those after it cannot be read"
    ):
        read_import(tmp_path / "cut.json")


def test_other_layouts_through_a_field_mapping(tmp_path):
    _videos(tmp_path / "clips", "v1.mp4")
    row = {"uid": 17, "file": "v1.mp4", "caption": "a cat", "labels": {"vq": "4", "ta": 2}, "cot": "Fine.",
           "subset": "val", "note_vq": "sharp"}  # fmt: skip
    (tmp_path / "mine.jsonl").write_text(json.dumps(row) + "\n")
    (tmp_path / "map.yaml").write_text("video_name: file\nprompt: caption\nrationale: cot\nid: uid\n")
    mapping = mapping_from(["visual_quality=labels.vq", "text_alignment=labels.ta", "physical_consistency=",
                            "video_url=", "split=subset", "comments=note_*"], str(tmp_path / "map.yaml"))  # fmt: skip
    imp = read_import(tmp_path / "mine.jsonl", tmp_path / "clips", mapping)
    (rec,) = imp.records
    assert (rec.id, rec.prompt, rec.split, Path(rec.video)) == (
        "17",
        "a cat",
        "val",
        tmp_path / "clips" / "v1.mp4",
    )
    assert rec.scores == {"visual_quality": 4, "text_alignment": 2, "overall": 2}  # a dimension left unmapped
    assert rec.meta["import"]["comments"] == {"note_vq": "sharp"}
    for pairs, says in [(["size=x"], "unknown mapping key 'size'"), (["prompt"], "expected KEY=FIELD"),
                        (["video_name=", "video_url="], "names no video field")]:  # fmt: skip
        with pytest.raises(ValueError, match=says):
            mapping_from(pairs)


def test_cli_refuses_what_an_import_cannot_do(hand, tmp_path):
    teacher = f"import:{hand}"
    for args, says in [
        (["--input", str(hand)], "--teacher import:FILE reads its records from FILE; leave out --input"),
        (["--negatives", "shuffle"], "has no rationale for deliberate negatives"),
        (["--blind"], "cannot re-judge a stored rationale"),
        (["--map", "colour=x"], "unknown mapping key 'colour'"),
        (["--video-root", str(tmp_path / "nowhere")], "nowhere: no such folder (--video-root"),
    ]:
        run = _cli("--teacher", teacher, *args, "--out", "o.jsonl", cwd=tmp_path)
        assert run.returncode == 2 and says in run.stderr and "Traceback" not in run.stderr, run.stderr
    run = _cli("--teacher", "oracle", "--out", "o.jsonl", cwd=tmp_path)
    assert run.returncode == 2 and "--input is required" in run.stderr
    run = _cli("--teacher", f"import:{tmp_path / 'none.json'}", "--out", "o.jsonl", cwd=tmp_path)
    assert run.returncode == 2 and "none.json: no such file" in run.stderr


# ----------------------------------------------------------------------- hundreds, then cot-rm sft


def _generated(toy: Path) -> tuple[str, dict]:
    """A JSON array of VideoScore2-layout records, one per toy video, with every quirk in turn; and the
    counts the import must report."""
    from cot_rm.schema import read_jsonl

    items, want = [], {"rows": 0, "malformed": 0, "missing": 0, "disagree": 0, "stripped": 0}
    for i, rec in enumerate(read_jsonl(toy / "pointwise.jsonl")):
        want["rows"] += 1
        name, s = Path(rec.video).stem, rec.scores
        vq, ta, pc = (s[d] for d in DIMS)
        seen = "; ".join(f"{d['type'].replace('_', ' ')} in frames {d['frames'][0]}-{d['frames'][-1]}"
                         for d in rec.meta["defects"]) or "nothing wrong"  # fmt: skip
        thinking = (f"### Análisis\n1. **Visual Quality** — {seen}.\n   Score: {vq}\n"
                    f"2. **Text-to-Video Alignment (Score: {ta})**: “{rec.prompt}”.\n"
                    f"3. **Physical/Common-sense Consistency**\n   Score: {pc}\n")  # fmt: skip
        row = _vs2(name, rec.prompt, vq, ta, pc, thinking)
        kind = i % 10
        if kind == 0:  # trailing label lines
            names = ("Visual Quality", "Text-to-Video Alignment", "Physical/Common-sense Consistency")
            row["thinking"] += "".join(f"ground-truth of Dim-{k}: '{n}': {s[d]}\n"
                                       for k, (d, n) in enumerate(zip(DIMS, names, strict=True), 1))  # fmt: skip
            want["stripped"] += 3
        elif kind == 1:  # no stated score at all
            row["thinking"] = f"The video shows {seen}, which explains the ratings."
        elif kind == 2:  # a stated score that contradicts the label
            row["thinking"] = row["thinking"].replace(
                f"   Score: {vq}", f"   Score: {1 if vq >= 3 else 5}", 1
            )
            want["disagree"] += 1
        elif kind == 3:  # found by its URL only
            row["video_name"] = ""
        elif kind == 4:  # a name with its extension
            row["video_name"] = f"{name}.mp4"
        elif kind == 5 and i % 20 == 5:  # no such video
            row["video_name"], row["video_url"] = f"gone-{i}", ""
            want["missing"] += 1
        elif kind == 6 and i % 30 == 6:  # a label off the scale
            row["phy_score"] = 0
            want["malformed"] += 1
        elif kind == 7 and i % 40 == 7:  # invalid JSON
            items.append(f'{{"video_name": "{name}", "prompt": }}')
            want["malformed"] += 1
            continue
        items.append(json.dumps(row, ensure_ascii=False, indent=1))
    return "[\n" + ",\n".join(items) + "\n]\n", want


def test_hundreds_of_records_become_traces_that_cot_rm_sft_trains_on(tmp_path, tiny_qwen25vl_dir):
    from cot_rm.train.data import build_examples, load_traces, trace_settings
    from cot_rm.train.sft.trainer import check_dimensions
    from data_synthesis.toyworld.world import ToyConfig, build

    build(tmp_path / "toy", ToyConfig(n=240, seed=5), progress=False)
    text, want = _generated(tmp_path / "toy")
    (tmp_path / "cot.json").write_text(text, encoding="utf-8")
    out = tmp_path / "sft.jsonl"
    run = _cli("--teacher", f"import:{tmp_path / 'cot.json'}", "--video-root", str(tmp_path / "toy" / "videos"),
               "--out", str(out), cwd=tmp_path)  # fmt: skip
    assert run.returncode == 0, run.stderr
    s = json.loads(run.stdout)
    imp = s["import"]
    assert imp["rows"] == want["rows"] == 240 and imp["malformed"] == want["malformed"] > 0
    assert (
        imp["missing_videos"] == want["missing"] > 0 and imp["label_lines_stripped"] == want["stripped"] > 0
    )
    assert s["rejected"] == {"inconsistent": want["disagree"], "bad_video": want["missing"]}
    assert s["accepted"] == 240 - want["malformed"] - want["missing"] - want["disagree"]

    # The SFT data path's own checks, as `cot-rm sft` applies them.
    traces = load_traces(out)
    assert len(traces) == s["records_written"] and any(t.get("rationale_free") for t in traces)
    check_dimensions(traces, P.DEFAULT_DIMENSIONS, out)
    sampling, tool_px, spec = trace_settings(traces, out)
    assert sampling["num_frames"] == 8 and tool_px == P.TOOL_MAX_PIXELS and spec["max_tool_calls"] == 3
    assert len(build_examples(traces)) == len(traces)
    assert not any(
        "ground-truth" in m["content"] for t in traces for m in t["messages"] if m["role"] == "assistant"
    )
    assert sum(1 for t in traces if t["tool_frames"]) > len(traces) / 2  # the cited frames became tool calls

    # A tiny `cot-rm sft` run on them.
    sft = tmp_path / "run"
    run = _cli("--config", "configs/tiny/sft.yaml", "--no-report", f"model.base={tiny_qwen25vl_dir}",
               f"data.train={out}", "data.pairs=null", "data.eval_pairs=null", f"data.frame_cache={tmp_path / 'frames'}",
               "train.max_steps=3", "train.logging_steps=1", "train.dataloader_num_workers=0",
               f"train.output_dir={sft}", cwd=ROOT, command="sft", timeout=400)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    history = json.loads((sft / "trainer_state.json").read_text())["log_history"]
    lm = [h["lm_loss"] for h in history if "lm_loss" in h]
    assert len(lm) == 3 and all(math.isfinite(v) and v > 0 for v in lm)
    assert (sft / "cot_rm.json").is_file() and (sft / "head.safetensors").is_file()
