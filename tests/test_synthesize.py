"""`cot-rm synthesize` end to end on the toy world: keep rate, tool use, bad input, resume after SIGKILL."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cot_rm import protocol as P
from cot_rm.schema import PointwiseRecord, read_jsonl, write_jsonl
from data_synthesis.pipeline import ResumeError, SynthConfig, synthesize
from data_synthesis.teachers.base import TeacherReply
from data_synthesis.teachers.oracle import OracleTeacher

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    from data_synthesis.toyworld.world import ToyConfig, build

    out = tmp_path_factory.mktemp("toy")
    build(out, ToyConfig(n=60, seed=3), progress=False)
    return out


def _cli(*args, cwd):
    cmd = [sys.executable, "-m", "cot_rm.cli", "synthesize", "--no-progress", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_oracle_keeps_nearly_all_and_traces_use_the_tool(toy, tmp_path):
    out = tmp_path / "sft.jsonl"
    run = _cli(
        "--input", str(toy / "pointwise.jsonl"), "--teacher", "oracle", "--out", str(out), cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr
    summary = json.loads((tmp_path / "sft.summary.json").read_text())
    assert summary == json.loads(run.stdout)
    assert summary["accepted"] / 60 >= 0.95 and sum(summary["rejected"].values()) + summary["accepted"] == 60
    assert summary["with_tool_calls"] > summary["accepted"] / 2  # most traces call select_frames
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == summary["records_written"] and any(r["rationale_free"] for r in rows)
    src = {r.id: r for r in read_jsonl(toy / "pointwise.jsonl")}
    for row in rows:
        rec = src[row["source_id"]]
        assert (out.parent / row["video"]).resolve() == Path(rec.video).resolve()  # relative to the output
        assert row["scores"] == rec.scores and row["split"] == rec.split
        assert row["provenance"]["teacher"] == "oracle" and row["provenance"]["prompt_version"]
        spec = P.JudgeSpec(dimensions=tuple(rec.scores))
        if row["rationale_free"]:  # answer only: a sample for the head (rationale dropout)
            assert row["messages"][-1]["content"] == P.format_answer(rec.scores, spec)
        else:
            assert (
                P.parse_turn(row["messages"][-1]["content"], spec).scores == rec.scores
            )  # the label's answer
        n = rec.meta["num_frames"]
        assert all(0 <= f < n for call in row["tool_frames"] for f in call)
        assert len(row["tool_frames"]) <= 3 and all(len(c) <= 8 for c in row["tool_frames"])
        defect_frames = {f for d in rec.meta["defects"] for f in d["frames"]}
        if rec.meta["defects"] and not row["rationale_free"]:
            assert set(row["frames_cited"]) & defect_frames  # the critique cites where the defects are


def test_bad_videos_are_counted_not_fatal(toy, tmp_path):
    recs = read_jsonl(toy / "pointwise.jsonl")[:3]
    (tmp_path / "junk.mp4").write_text("not a video")
    recs[1].video = str(tmp_path / "junk.mp4")
    recs[2].video = str(tmp_path / "gone.mp4")
    summary = synthesize(recs, OracleTeacher(), tmp_path / "o.jsonl", SynthConfig(), progress=False)
    assert summary["accepted"] == 1 and summary["rejected"] == {"bad_video": 2}
    log = (tmp_path / "o.jsonl.progress.jsonl").read_text()
    assert "junk.mp4: is a text file" in log and "gone.mp4: no such file" in log
    assert "junk.mp4: is a text file" in summary["rejected_example"]["bad_video"]  # the first such record
    # The missing video turns up: a rerun judges that record (and only it); nothing is duplicated.
    before = (tmp_path / "o.jsonl").read_text().splitlines()
    os.link(read_jsonl(toy / "pointwise.jsonl")[2].video, tmp_path / "gone.mp4")
    summary = synthesize(recs, OracleTeacher(), tmp_path / "o.jsonl", SynthConfig(), progress=False)
    assert summary["accepted"] == 2 and summary["rejected"] == {"bad_video": 1}
    after = (tmp_path / "o.jsonl").read_text().splitlines()
    assert after[: len(before)] == before and len(after) > len(before)
    assert {json.loads(line)["source_id"] for line in after[len(before) :]} == {recs[2].id}


class _Flaky(OracleTeacher):
    """The oracle behind a connection that is down until `up` is set."""

    up = False

    def generate(self, requests):
        if not self.up:
            return [
                TeacherReply(r.id, None, "connection error ([Errno 111] Connection refused)")
                for r in requests
            ]
        return super().generate(requests)


def test_teacher_errors_are_retried_by_a_rerun(toy, tmp_path):
    recs = read_jsonl(toy / "pointwise.jsonl")[:3]
    teacher, out = _Flaky(), tmp_path / "o.jsonl"
    first = synthesize(recs, teacher, out, SynthConfig(), progress=False)
    assert first["accepted"] == 0 and first["rejected"] == {"teacher_error": 3}
    assert "Connection refused" in first["rejected_example"]["teacher_error"]
    teacher.up = True
    again = synthesize(recs, teacher, out, SynthConfig(), progress=False)
    assert again["accepted"] == 3 and again["rejected"] == {}
    synthesize(recs, OracleTeacher(), tmp_path / "fresh.jsonl", SynthConfig(), progress=False)
    assert out.read_bytes() == (tmp_path / "fresh.jsonl").read_bytes()  # as if it had never failed


def test_unannotated_records_are_rejected_with_the_teacher_error(toy, tmp_path):
    rec = read_jsonl(toy / "pointwise.jsonl")[0]
    bare = PointwiseRecord(rec.id, rec.video, rec.prompt, rec.scores, meta={})
    summary = synthesize([bare], OracleTeacher(), tmp_path / "o.jsonl", SynthConfig(), progress=False)
    assert summary["accepted"] == 0 and summary["rejected"] == {"teacher_error": 1}
    # The CLI refuses such input before any work, saying what to use instead.
    write_jsonl(tmp_path / "mine.jsonl", [bare])
    run = _cli(
        "--input", str(tmp_path / "mine.jsonl"), "--teacher", "oracle", "--out", "o.jsonl", cwd=tmp_path
    )
    assert (
        run.returncode == 2
        and "no toy-world annotations" in run.stderr
        and "--teacher openai:URL" in run.stderr
    )


def test_sigkill_then_resume_gives_the_uninterrupted_output(toy, tmp_path):
    # Many records (the toy videos listed 10 times under new ids) so the run is long enough to kill.
    recs = read_jsonl(toy / "pointwise.jsonl")
    big = [
        PointwiseRecord(f"{r.id}-{k}", r.video, r.prompt, r.scores, r.meta, r.split)
        for k in range(10)
        for r in recs
    ]
    write_jsonl(tmp_path / "in.jsonl", big)
    args = ["--input", str(tmp_path / "in.jsonl"), "--teacher", "oracle", "--batch-size", "2"]
    ref = _cli(*args, "--out", "ref/sft.jsonl", cwd=tmp_path)
    assert ref.returncode == 0, ref.stderr

    cmd = [sys.executable, "-m", "cot_rm.cli", "synthesize", "--no-progress", *args, "--out", "run/sft.jsonl"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = tmp_path / "run" / "sft.jsonl.progress.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not log.exists() or log.read_text().count("\n") < 80):
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = log.read_text().count("\n") - 1
    assert 0 < done < len(big), "the kill must land mid-run"

    resumed = _cli(*args, "--out", "run/sft.jsonl", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert (tmp_path / "run/sft.jsonl").read_bytes() == (tmp_path / "ref/sft.jsonl").read_bytes()
    assert json.loads(resumed.stdout)["accepted"] == json.loads(ref.stdout)["accepted"]


def test_torn_writes_are_cut_back_on_resume(toy, tmp_path):
    recs = read_jsonl(toy / "pointwise.jsonl")[:6]
    cfg = SynthConfig(batch_size=2)
    synthesize(recs, OracleTeacher(), tmp_path / "a.jsonl", cfg, progress=False)
    # Simulate a kill after 3 records: lines of a 4th record half-written, a torn progress line.
    synthesize(recs[:3], OracleTeacher(), tmp_path / "b.jsonl", cfg, progress=False)
    log = tmp_path / "b.jsonl.progress.jsonl"
    lines = log.read_text().splitlines()
    fp = json.loads(lines[0])
    full_fp = json.loads((tmp_path / "a.jsonl.progress.jsonl").read_text().splitlines()[0])
    log.write_text("\n".join([json.dumps(full_fp), *lines[1:]]) + '\n{"id": "torn')
    with open(tmp_path / "b.jsonl", "ab") as fh:
        fh.write(b'{"id": "half a record')
    assert fp != full_fp  # different input: the log header is how a resume knows its run
    synthesize(recs, OracleTeacher(), tmp_path / "b.jsonl", cfg, progress=False)
    assert (tmp_path / "b.jsonl").read_bytes() == (tmp_path / "a.jsonl").read_bytes()


def test_resume_with_other_settings_is_refused(toy, tmp_path):
    recs = read_jsonl(toy / "pointwise.jsonl")[:2]
    synthesize(recs, OracleTeacher(), tmp_path / "o.jsonl", SynthConfig(), progress=False)
    with pytest.raises(ResumeError, match="--restart"):
        synthesize(recs, OracleTeacher(), tmp_path / "o.jsonl", SynthConfig(seed=1), progress=False)
    synthesize(recs, OracleTeacher(), tmp_path / "o.jsonl", SynthConfig(seed=1), restart=True, progress=False)


def test_cli_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x"}\n')
    run = _cli("--input", str(bad), "--teacher", "oracle", "--out", str(tmp_path / "o.jsonl"), cwd=tmp_path)
    assert run.returncode == 2 and f"{bad}:1: missing key" in run.stderr and "Traceback" not in run.stderr
    run = _cli("--input", str(bad), "--teacher", "gpt", "--out", str(tmp_path / "o.jsonl"), cwd=tmp_path)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    point = {"id": "x", "video": "x.mp4", "prompt": "p", "scores": {"sharpness": 9}}
    bad.write_text(json.dumps(point) + "\n")
    for args, says in [
        (("--teacher", "oracle"), "scores['sharpness'] = 9 is off the judge's 1-5 scale"),
        (("--teacher", "oracle", "--splits", "train"), "no record to synthesise with --splits train (1 of 1"),
    ]:
        run = _cli("--input", str(bad), *args, "--out", str(tmp_path / "o.jsonl"), cwd=tmp_path)
        assert run.returncode == 2 and says in run.stderr and len(run.stderr.splitlines()) == 1, run.stderr
    bad.write_text(json.dumps({**point, "scores": {"sharpness": 3}}) + "\n")
    run = _cli("--input", str(bad), "--teacher", "hf:/nowhere/model", "--out", "o.jsonl", cwd=tmp_path)
    assert run.returncode == 2 and "hf:/nowhere/model: no model folder there" in run.stderr, run.stderr


def test_negatives_join_the_synthesis(toy, tmp_path):
    out = tmp_path / "sft.jsonl"
    args = [
        "--input",
        str(toy / "pointwise.jsonl"),
        "--teacher",
        "oracle",
        "--out",
        str(out),
        "--limit",
        "12",
    ]
    run = _cli(
        *args, "--negatives", "prompt_swap,shuffle,reverse,drop", "--negatives-rate", "0.5", cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr
    negs = read_jsonl(tmp_path / "sft.negatives" / "pointwise.jsonl")
    assert negs and {r.meta["negative"] for r in negs} <= {"prompt_swap", "shuffle", "reverse", "drop"}
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    kept = {r["source_id"] for r in rows} & {r.id for r in negs}
    assert len(kept) >= 0.9 * len(negs)  # the oracle can describe negatives: their meta says what was done


def test_openai_teacher_on_a_real_vllm_server_is_counted_unparseable(toy, tmp_path, vllm_server):
    """The tiny random model behind vLLM writes gibberish: every record is rejected as unparseable."""
    out = tmp_path / "sft.jsonl"
    args = ["--input", str(toy / "pointwise.jsonl"), "--limit", "4", "--out", str(out), "--max-tokens", "24"]
    run = _cli(*args, "--teacher", f"openai:{vllm_server.base_url}", "--max-rewrites", "0", cwd=tmp_path)
    assert run.returncode == 1 and "no record was accepted" in run.stderr, run.stderr
    assert "4 rejected as unparseable, e.g. " in run.stderr
    summary = json.loads(run.stdout)
    assert summary["accepted"] == 0 and summary["rejected"] == {"unparseable": 4}
    assert sum(summary["parse_errors"].values()) == 4
    assert out.read_text() == ""


def test_ctrl_c_says_how_to_resume(toy, tmp_path, monkeypatch, capsys):
    from argparse import ArgumentParser

    from data_synthesis import pipeline

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "synthesize", interrupted)
    parser = ArgumentParser()
    pipeline.add_arguments(parser)
    args = parser.parse_args(
        ["--input", str(toy / "pointwise.jsonl"), "--teacher", "oracle", "--out", str(tmp_path / "o.jsonl")]
    )
    assert pipeline.main(args) == 130
    assert "interrupted; rerun the same command to resume" in capsys.readouterr().err


def test_overlap_traces_record_the_sampling_and_show_each_frame_once(toy, tmp_path):
    out = tmp_path / "sft.jsonl"
    run = _cli("--input", str(toy / "pointwise.jsonl"), "--teacher", "oracle:plain", "--out", str(out),
               "--limit", "12", "--frames", "8", "--max-pixels", "12544", "--overlap", cwd=tmp_path)  # fmt: skip
    assert run.returncode == 0, run.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows and all(r["sampling"]["overlap"] is True and r["sampling"]["num_frames"] == 8 for r in rows)
    for row in rows:
        user = next(m for m in row["messages"] if m["role"] == "user")
        text = " ".join(c["text"] for c in user["content"] if c.get("type") == "text")
        listed = [int(f) for f in re.findall(r"frame (\d+) \(", text)]
        assert (
            "You see 8 of them" in text and len(listed) == len(set(listed)) == 8
        )  # not the 14 the tower gets
