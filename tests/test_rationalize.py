"""Consistency filter, oracle critiques, anchored rationalisation with rewrites and blind checks, traces."""

import json
import random
from types import SimpleNamespace

import pytest

from cot_rm import protocol as P
from cot_rm.protocol import JudgeSpec
from cot_rm.schema import PointwiseRecord
from data_synthesis import filters
from data_synthesis.filters import ConsistencyRule
from data_synthesis.rationalize import Item, RationaleConfig, rationalize
from data_synthesis.teachers.base import TeacherReply, TeacherRequest
from data_synthesis.teachers.oracle import OracleTeacher, cite
from data_synthesis.traces import build_trace, plan_calls, tool_frames

LABEL = {"visual_quality": 4, "text_alignment": 2, "physical_consistency": 3, "overall": 3}
DEFECTS = [
    {"type": "noise", "dimension": "visual_quality", "severity": 1, "frames": [4, 5, 6], "params": {}},
    {"type": "wrong_colour", "dimension": "text_alignment", "severity": 3, "frames": list(range(24)),
     "params": {"expected": "red", "actual": "blue"}},
    {"type": "teleport", "dimension": "physical_consistency", "severity": 2, "frames": [11, 12], "params": {}},
]  # fmt: skip


def _record(rid="r1", scores=LABEL, defects=DEFECTS):
    meta = {"defects": defects, "num_frames": 24} if defects is not None else {}
    return PointwiseRecord(
        id=rid, video="/v.mp4", prompt="a red ball moving left", scores=dict(scores), meta=meta
    )


@pytest.mark.parametrize(
    "answer,status,max_diff",
    [
        (LABEL, filters.ACCEPT, 0),
        ({**LABEL, "overall": 4}, filters.ACCEPT, 1),  # off by 1 is within the default rule
        ({**LABEL, "overall": 5}, filters.NEAR_MISS, 2),  # off by 2: fails, but close enough to rewrite
        ({**LABEL, "overall": 1, "text_alignment": 5}, filters.REJECT, 3),
        ({k: v for k, v in LABEL.items() if k != "overall"}, filters.REJECT, float("inf")),
    ],
)
def test_consistency_filter(answer, status, max_diff):
    v = filters.check(answer, LABEL)
    assert v.status == status and v.max_diff == max_diff


def test_consistency_rule_is_configurable():
    strict = ConsistencyRule(drop_at=1, rewrite_below=2)
    assert filters.check({**LABEL, "overall": 4}, LABEL, strict).status == filters.NEAR_MISS
    only_overall = ConsistencyRule(dims=("overall",))
    assert filters.check({**LABEL, "text_alignment": 5}, LABEL, only_overall).status == filters.ACCEPT
    with pytest.raises(ValueError):
        ConsistencyRule(drop_at=3, rewrite_below=2)


def _req(rec, seed=0):
    return TeacherRequest(id=rec.id, system="s", text="t", images=[], captions=[], record=rec, seed=seed)


def test_oracle_cites_annotated_frames_and_answers_the_label():
    reply = OracleTeacher().generate([_req(_record())])[0]
    j = P.parse_judgment(reply.text)
    assert isinstance(j, P.Judgment) and j.scores == {k: float(v) for k, v in LABEL.items()}
    assert {11, 12} <= set(j.frames_cited) and set(j.frames_cited) & {4, 5, 6}
    assert "blue" in j.think and "red" in j.think


def test_oracle_varies_its_wording():
    texts = {OracleTeacher().generate([_req(_record(), seed=s)])[0].text for s in range(40)}
    assert len(texts) >= 35  # nearly every seed gives a different critique
    sentences = {s for t in texts for s in t.split(". ")}
    assert len(sentences) > 60
    assert OracleTeacher().generate([_req(_record(), 7)]) == OracleTeacher().generate([_req(_record(), 7)])


def test_oracle_refuses_unannotated_records():
    reply = OracleTeacher().generate([_req(_record(defects=None))])[0]
    assert reply.text is None and "meta.defects" in reply.error


@pytest.mark.parametrize("frames", [[7], [3, 4, 5, 6], [2, 9, 14], list(range(30)), [1, 2]])
def test_oracle_citations_parse_back(frames):
    for seed in range(10):
        text = cite(frames, random.Random(seed))
        got = set(P.cited_frames(text))
        assert got and got <= set(frames), text


class Scripted:
    """A teacher that replies from a script: {request id: [reply text per call]}, None = failure."""

    name, model, needs_images = "scripted", "script/1", False

    def __init__(self, script):
        self.script, self.calls = {k: list(v) for k, v in script.items()}, []

    def generate(self, requests):
        self.calls.append([r.text for r in requests])
        out = []
        for r in requests:
            text = self.script[r.id].pop(0)
            out.append(TeacherReply(r.id, text, None if text is not None else "HTTP 500 after 3 tries"))
        return out


def _answer(scores, think="frame 3 is fine"):
    return f"<think>{think}</think><answer>{json.dumps(scores)}</answer>"


def _items(*ids):
    return [Item(_record(i), [], [], 24, 8.0, seed=1) for i in ids]


def test_rationalize_keeps_rewrites_and_rejects():
    teacher = Scripted({
        "ok": [_answer(LABEL)],
        "near": [_answer({**LABEL, "overall": 5}), _answer({**LABEL, "overall": 3})],  # fixed by a rewrite
        "stubborn": [_answer({**LABEL, "overall": 5}), _answer({**LABEL, "overall": 5})],
        "far": [_answer({**LABEL, "overall": 1, "text_alignment": 5})],
        "junk": ["the video is nice, 4/5"],
        "down": [None],
    })  # fmt: skip
    out = {o.id: o for o in rationalize(teacher, _items("ok", "near", "stubborn", "far", "junk", "down"),
                                        RationaleConfig(max_rewrites=1))}  # fmt: skip
    assert out["ok"].judgment is not None and out["ok"].rewrites == 0
    assert out["near"].judgment is not None and out["near"].rewrites == 1
    assert out["stubborn"].reason == "inconsistent" and out["stubborn"].rewrites == 1
    assert "overall +2" in out["stubborn"].detail
    assert out["far"].reason == "inconsistent" and out["far"].rewrites == 0  # not a near miss: no rewrite
    assert out["junk"].reason == "unparseable" and out["junk"].parse_errors == ["missing_think"]
    assert out["down"].reason == "teacher_error" and "500" in out["down"].detail
    assert (
        len(teacher.calls) == 2 and len(teacher.calls[1]) == 2
    )  # one batched rewrite round, two near misses
    assert "Human ratings" in teacher.calls[0][0] and "you gave 5" in teacher.calls[1][0]


def test_blind_rejudgement_must_agree():
    teacher = Scripted(
        {"a": [_answer(LABEL), _answer(LABEL)], "b": [_answer(LABEL), _answer({**LABEL, "overall": 5})]}
    )
    out = {o.id: o for o in rationalize(teacher, _items("a", "b"), RationaleConfig(blind=True))}
    assert out["a"].judgment is not None
    assert out["b"].reason == "blind_disagrees" and "overall +2" in out["b"].detail
    assert "Human ratings" not in teacher.calls[1][0]  # the blind request does not show the label


@pytest.mark.parametrize(
    "cited,total,spec,calls",
    [
        ([], 24, JudgeSpec(), []),
        ([5, 3, 3, 30, -1], 24, JudgeSpec(), [[3, 5]]),  # invalid indices dropped, sorted, deduplicated
        (list(range(10)), 24, JudgeSpec(max_frames_per_call=4), [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]),
        (list(range(10)), 24, JudgeSpec(max_frames_per_call=8), [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]),
        (list(range(20)), 24, JudgeSpec(max_tool_calls=2, max_frames_per_call=2), [[0, 6], [13, 19]]),
        ([4, 9], 24, JudgeSpec(max_tool_calls=0), []),
    ],
)
def test_plan_calls_respects_budgets(cited, total, spec, calls):
    assert plan_calls(cited, total, spec) == calls


VIDEO = SimpleNamespace(indices=[0, 8, 16, 23], timestamps=[0, 1, 2, 2.875], total_frames=24, fps=8.0,
                        duration_s=3.0, path="/v.mp4")  # fmt: skip


def test_trace_turns_citations_into_tool_rounds():
    rec = _record()
    j = P.parse_judgment(
        _answer(LABEL, think="Noise in frames 4-6; the ball jumps between frame 11 and frame 12.")
    )
    msgs = build_trace(rec, VIDEO, j, "videos/v.mp4", JudgeSpec(max_frames_per_call=3), random.Random(0))
    assert [m["role"] for m in msgs] == [
        "system",
        "user",
        "assistant",
        "tool",
        "assistant",
        "tool",
        "assistant",
    ]
    assert tool_frames(msgs) == [[4, 5, 6], [11, 12]]
    # memory window 1: the first round's images are placeholders, the last round's refer to the video file
    assert all(c["type"] == "text" for c in msgs[3]["content"])
    assert msgs[5]["content"][1] == {"type": "image", "image": {"video": "videos/v.mp4", "frame": 11}}
    assert msgs[5]["content"][0]["text"] == "frame 11 (1.38 s):"
    final = P.parse_turn(msgs[-1]["content"])
    assert final.scores == {k: float(v) for k, v in LABEL.items()} and final.frames_cited == (4, 5, 6, 11, 12)
    for m in msgs[2:-1:2]:  # every assistant tool turn renders to a parseable ToolRequest
        text = m["content"] + "\n" + "\n".join(P.format_tool_call(c["function"]["arguments"]["frames"])
                                               for c in m["tool_calls"])  # fmt: skip
        assert isinstance(P.parse_turn(text), P.ToolRequest)


def test_rationale_free_trace_is_answer_only():
    msgs = build_trace(_record(), VIDEO, None, "videos/v.mp4", JudgeSpec(), random.Random(0))
    assert [m["role"] for m in msgs] == ["system", "user", "assistant"]
    assert msgs[-1]["content"] == P.format_answer(LABEL)
