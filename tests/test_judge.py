"""The local judge's tool loop: bad calls come back to the model as tool errors, never as exceptions."""

import pytest

from cot_rm import protocol as P
from cot_rm.judge import Judge, _Conv
from cot_rm.modeling import ThinkThenScore
from cot_rm.protocol import JudgeSpec
from cot_rm.video import Sampling, read_video

ANSWER = (
    '<answer>{"visual_quality": 4, "text_alignment": 3, "physical_consistency": 5, "overall": 3}</answer>'
)


@pytest.fixture(scope="module")
def judge(tiny_qwen25vl_dir):
    model = ThinkThenScore.from_base(tiny_qwen25vl_dir).eval()
    return Judge(model, Sampling(fps=None, num_frames=4, max_pixels=56 * 56), JudgeSpec(max_tool_calls=3))


def _call(frames) -> str:
    return f"<think>look</think>{P.format_tool_call(frames)}"


def test_tool_loop_answers_bad_calls_with_errors(judge, sample_mp4):
    video = read_video(sample_mp4, judge.sampling)
    conv = _Conv("v", str(sample_mp4), video, P.judgment_conversation("a red square", video))
    judge._advance(
        conv, '<think>a</think><tool_call>{"name": "zoom", "arguments": {"frames": [1]}}</tool_call>'
    )
    assert conv.result is None and "unknown_tool" in conv.messages[-1]["content"][0]["text"]
    judge._advance(conv, _call([999]))
    assert conv.result is None and "out of range" in conv.messages[-1]["content"][0]["text"]
    judge._advance(conv, _call([1, 2]))
    assert [c["type"] for c in conv.messages[-1]["content"]] == ["text", "image", "text", "image"]
    assert [c["error"] is None for c in conv.calls] == [False, False, True]
    judge._advance(conv, _call([3]))  # a 4th call: the budget of 3 is spent
    assert "budget" in conv.messages[-1]["content"][0]["text"]
    judge._advance(conv, f"<think>Frame 2 is sharp.</think>{ANSWER}")
    assert isinstance(conv.result, P.Judgment) and conv.result.frames_cited == (2,)


def test_judgments_follow_the_contract(judge, sample_mp4, tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video")
    out = judge.judge([("a", str(sample_mp4), "a red square"), ("b", str(bad), "x")])
    keys = {"id", "scores", "answer_scores", "rationale", "frames_cited", "tool_calls", "parse_error", "model",
            "protocol_version"}  # fmt: skip
    assert [set(j) for j in out] == [keys, keys]
    assert set(out[0]["scores"]) == set(JudgeSpec().dimensions)  # the head scores even an unparsed turn
    assert out[0]["parse_error"] is None or out[0]["answer_scores"] is None
    assert out[1]["scores"] is None and out[1]["parse_error"].startswith("video_error:")
