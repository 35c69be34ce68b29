"""The local judge: its tool loop (bad calls come back to the model as tool errors, never as exceptions),
sampled draws summarised, and `cot-rm judge` on real mp4 files with a tiny checkpoint."""

import json
import statistics

import pytest

from cot_rm import cli
from cot_rm import protocol as P
from cot_rm.judge.local import Judge, _Conv, summarize_samples
from cot_rm.media.video import Sampling, read_video
from cot_rm.model.modeling import ThinkThenScore
from cot_rm.protocol import JudgeSpec

ANSWER = (
    '<answer>{"visual_quality": 4, "text_alignment": 3, "physical_consistency": 5, "overall": 3}</answer>'
)


@pytest.fixture(scope="module")
def judge(tiny_qwen25vl_dir):
    model = ThinkThenScore.from_base(tiny_qwen25vl_dir).eval()
    sampling = Sampling(fps=None, num_frames=4, max_pixels=56 * 56)
    return Judge(model, sampling, JudgeSpec(max_tool_calls=3), max_new_tokens=32)  # short: a random model


def _call(frames) -> str:
    return f"<think>look</think>{P.format_tool_call(frames)}"


def test_tool_loop_answers_bad_calls_with_errors(judge, sample_mp4):
    video = read_video(sample_mp4, judge.sampling)
    conv = _Conv("v", str(sample_mp4), video, P.judgment_conversation("a red square", video))
    judge._advance(
        conv, '<think>a</think><tool_call>{"name": "zoom", "arguments": {"frames": [1]}}</tool_call>'
    )
    assert conv.result is None and "unknown_tool" in conv.messages[-1]["content"][0]["text"]
    assert conv.calls[0]["request"] == '{"name": "zoom", "arguments": {"frames": [1]}}'  # what it asked for
    judge._advance(conv, _call([999]))
    assert conv.result is None and "out of range" in conv.messages[-1]["content"][0]["text"]
    judge._advance(conv, _call([1, 2]))
    assert [c["type"] for c in conv.messages[-1]["content"]] == ["text", "image", "text", "image"]
    assert [c["error"] is None for c in conv.calls] == [False, False, True]
    judge._advance(conv, _call([3]))  # a 4th call: the budget of 3 is spent
    assert "budget" in conv.messages[-1]["content"][0]["text"]
    judge._advance(conv, f"<think>Frame 2 is sharp, frame {video.total_frames} is not there.</think>{ANSWER}")
    assert isinstance(conv.result, P.Judgment) and conv.result.frames_cited == (2, video.total_frames)
    record = judge._record(conv, [0.5] * 4)  # the Judgment JSON keeps the frames this video has
    assert record["frames_cited"] == [2] and f"frame {video.total_frames}" in record["rationale"]


def test_a_turn_cut_by_max_new_tokens_is_truncated_not_malformed(judge, sample_mp4, monkeypatch):
    monkeypatch.setattr(judge, "max_new_tokens", 2)  # the random model does not end a turn in 2 tokens
    (out,) = judge.judge([("a", str(sample_mp4), "a red square")])
    assert (
        out["parse_error"]
        == "truncated: the turn reached max_new_tokens (2) before it ended; raise --max-new-tokens"
    )
    assert out["answer_scores"] is None and set(out["scores"]) == set(JudgeSpec().dimensions)


def test_judgments_follow_the_contract(judge, sample_mp4, tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video")
    out = judge.judge([("a", str(sample_mp4), "a red square"), ("b", str(bad), "x")])
    keys = {"id", "scores", "answer_scores", "answer_probs", "rationale", "frames_cited", "tool_calls",
            "parse_error", "model", "protocol_version"}  # fmt: skip
    assert [set(j) for j in out] == [keys, keys]
    assert set(out[0]["scores"]) == set(JudgeSpec().dimensions)  # the head scores even an unparsed turn
    assert out[0]["parse_error"] is None or out[0]["answer_scores"] is None
    assert out[1]["scores"] is None and out[1]["parse_error"].startswith("video_error:")


def test_video_only_scores_read_what_rationale_dropout_trains(judge, sample_mp4):
    """The head without a critique reads exactly the sequence SFT's rationale dropout trains it on."""
    from cot_rm.train.data import SFTCollator
    from cot_rm.train.report import head_scores

    model, prompt = judge.model, "two red squares moving left"
    video = read_video(sample_mp4, judge.sampling)
    messages = P.judgment_conversation(prompt, video, spec=judge.spec, video_ref=str(sample_mp4))
    row = {"video": str(sample_mp4), "prompt": prompt, "sampling": judge.sampling.to_dict(), "messages": messages,
           "scores": dict.fromkeys(judge.spec.dimensions, 3), "rationale_free": True}  # fmt: skip
    collator = SFTCollator(model.processor, model.config.family, judge.spec, model.config.reward_token,
                           cache_dir="off")  # fmt: skip
    (expected,) = head_scores(model, collator, [row])
    got = judge.score_video_only([("v", str(sample_mp4), prompt), ("w", str(sample_mp4), "a blue circle")])
    assert got[0] == pytest.approx(expected, abs=1e-5)
    assert got[1] != pytest.approx(got[0], abs=1e-6)  # the prompt is read too


# ------------------------------------------------------------------------------------ sampled draws


def _draw(head, answer=None, error=None, text="r") -> dict:
    return {"id": "v", "scores": head, "answer_scores": answer, "rationale": text, "frames_cited": [],
            "tool_calls": [], "parse_error": error, "model": "m", "protocol_version": P.PROTOCOL_VERSION}  # fmt: skip


def test_summarize_samples_hand_computed():
    draws = [
        _draw({"a": 1.0, "b": 2.0}, error="empty", text="draw 0"),
        _draw({"a": 3.0, "b": 2.0}, {"a": 2.0, "b": 4.0}, text="draw 1"),
        _draw({"a": 5.0, "b": 2.0}, {"a": 4.0, "b": 4.0}, text="draw 2"),
    ]
    out = summarize_samples(draws, temperature=0.7, top_p=1.0, seed=3)
    assert out["scores"] == {"a": 3.0, "b": 2.0}  # head: all three draws
    assert out["answer_scores"] == {"a": 3.0, "b": 4.0}  # answers: the two that parsed, never a 0
    s = out["samples"]
    assert s["scores_std"] == pytest.approx({"a": (8 / 3) ** 0.5, "b": 0.0})
    assert s["answer_scores_std"] == {"a": 1.0, "b": 0.0}
    assert (s["k"], s["n_parsed"], s["shown"], s["seed"]) == (3, 2, 1, 3) and s["judgments"] == draws
    assert out["rationale"] == "draw 1" and out["parse_error"] is None  # text of the first parsed draw
    none = summarize_samples(draws[:1] * 2, temperature=0.7, top_p=1.0, seed=0)
    assert none["answer_scores"] is None and none["parse_error"] == "empty" and none["samples"]["shown"] == 0


# ------------------------------------------------------------------------------------------ the CLI

CONTRACT = {"id", "scores", "answer_scores", "answer_probs", "rationale", "frames_cited", "tool_calls",
            "parse_error", "model", "protocol_version"}  # fmt: skip


@pytest.fixture(scope="module")
def rm_dir(tiny_qwen25vl_dir, tmp_path_factory):
    """A saved cot-rm checkpoint (random head) that samples 4 small frames per video."""
    path = tmp_path_factory.mktemp("rm") / "ckpt"
    sampling = Sampling(num_frames=4, max_pixels=56 * 56)
    ThinkThenScore.from_base(tiny_qwen25vl_dir, sampling=sampling).save_pretrained(path)
    return path


def _cli(capsys, *args) -> tuple[int, list[dict], str]:
    code = cli.main(["judge", *map(str, args), "--max-new-tokens", "16", "--no-cache"])
    out = capsys.readouterr()
    return code, [json.loads(line) for line in out.out.splitlines()], out.err


def test_cli_greedy_judgments_follow_the_contract_and_repeat(rm_dir, sample_mp4, make_mp4, capsys):
    other = make_mp4("other.mp4", num_frames=12)
    args = ("--model", rm_dir, sample_mp4, other, "--prompt", "a red square", "--batch-size", "2")
    code, first, err = _cli(capsys, *args)
    assert code == 0 and [set(j) for j in first] == [CONTRACT, CONTRACT]
    assert [j["id"] for j in first] == [str(sample_mp4), str(other)]
    for j in first:
        assert set(j["scores"]) == set(JudgeSpec().dimensions)
        if j["parse_error"] is not None:  # a random model rarely parses: reported with its reason, no 0s
            assert j["answer_scores"] is None and j["parse_error"].split(":")[0] in P.REASONS
            assert f"{j['id']}: model output did not parse" in err
    assert _cli(capsys, *args)[1] == first  # greedy: the same judgments twice


def test_cli_samples_give_mean_and_spread_reproducibly(rm_dir, sample_mp4, capsys):
    args = (
        "--model",
        rm_dir,
        sample_mp4,
        "--prompt",
        "p",
        "--samples",
        "3",
        "--temperature",
        "1.5",
        "--seed",
        "7",
    )
    code, (j,), _ = _cli(capsys, *args)
    assert code == 0 and set(j) == CONTRACT | {"samples"}
    s = j["samples"]
    assert (s["k"], s["seed"], s["temperature"], len(s["judgments"])) == (3, 7, 1.5, 3)
    heads = [d["scores"] for d in s["judgments"]]
    for d in JudgeSpec().dimensions:
        assert j["scores"][d] == pytest.approx(statistics.fmean(h[d] for h in heads))
        assert s["scores_std"][d] == pytest.approx(statistics.pstdev(h[d] for h in heads))
    assert len({d["rationale"] for d in s["judgments"]}) > 1 and max(s["scores_std"].values()) > 0
    assert _cli(capsys, *args)[1] == [j]  # seeded: the same draws again


def test_cli_unreadable_videos_get_one_line_each(rm_dir, sample_mp4, tmp_path, capsys):
    text, cut, missing = tmp_path / "notes.mp4", tmp_path / "cut.mp4", tmp_path / "missing.mp4"
    text.write_text("not a video")
    cut.write_bytes(sample_mp4.read_bytes()[:2000])
    code, out, err = _cli(capsys, "--model", rm_dir, sample_mp4, text, cut, missing, "--prompt", "p")
    assert code == 0 and out[0]["scores"] is not None  # the good one is judged regardless
    for j, path in zip(out[1:], (text, cut, missing), strict=True):
        assert set(j) == CONTRACT and j["scores"] is None and j["answer_scores"] is None
        assert j["parse_error"].startswith(f"video_error: {path}: ")
        assert len([line for line in err.splitlines() if str(path) in line]) == 1
    assert "Traceback" not in err and "4 videos: 1 judged" in err
    # nothing readable: exit 2, and the checkpoint is not even loaded (this one does not exist)
    code, out, err = _cli(capsys, "--model", tmp_path / "nowhere", text, missing, "--prompt", "p")
    assert code == 2 and [j["scores"] for j in out] == [None, None] and "Traceback" not in err


def test_cli_usage_errors_are_one_line(rm_dir, sample_mp4, tmp_path, capsys):
    two = tmp_path / "two.txt"
    two.write_text("a\nb\n")
    gap = tmp_path / "gap.txt"
    gap.write_text("a\n \nc\n")
    for args, says in [
        (("--model", rm_dir, sample_mp4, "--prompts-file", two), "2 prompts for 1 videos"),
        (("--model", rm_dir, *[sample_mp4] * 3, "--prompts-file", gap), f"{gap}:2: empty prompt"),
        (("--model", rm_dir, sample_mp4, "--prompt", "  "), "--prompt is empty"),
        (
            ("--model", tmp_path / "nowhere", sample_mp4, "--prompt", "p"),
            "nowhere: no such checkpoint folder",
        ),
        (
            ("--model", rm_dir, sample_mp4, "--prompt", "p", "--samples", "2", "--temperature", "0"),
            "--samples",
        ),
    ]:
        code, out, err = _cli(capsys, *args)
        assert code == 2 and out == [] and says in err and len(err.strip().splitlines()) == 1, err


def test_cli_prompts_file_and_html_page(rm_dir, sample_mp4, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text('a red <b>square</b>\na "blue" circle\n')
    page = tmp_path / "out" / "report.html"
    code, out, err = _cli(
        capsys, "--model", rm_dir, sample_mp4, sample_mp4, "--prompts-file", prompts, "--html", page
    )
    assert code == 0 and [j["id"] for j in out] == [str(sample_mp4), f"{sample_mp4}#2"]  # one id per line
    html = page.read_text()
    assert html.count('<section class="video">') == 2 and "a red &lt;b&gt;square&lt;/b&gt;" in html
    assert html.count('src="data:image/jpeg;base64,') >= 8 and f"wrote {page}" in err


def test_cli_help_explains(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["judge", "--help"])
    text = capsys.readouterr().out
    assert done.value.code == 0
    for flag in ("--model", "--prompt", "--prompts-file", "--html", "--samples", "--temperature", "--seed"):
        assert flag in text
