"""Scores with their uncertainty in the Judgment JSON: the calibration rule on `scores` (worked by hand),
the uncertainty head's `scores_std` (there only when the head predicts one), and `answer_probs` read at
the answer's score digits (sums to 1; its argmax is the digit the greedy turn wrote)."""

from __future__ import annotations

import json
import math
import shutil
from contextlib import contextmanager

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import LogitsProcessor, LogitsProcessorList

from cot_rm import cli
from cot_rm import protocol as P
from cot_rm.judge import answer_probs
from cot_rm.judge.local import Judge, _Conv, summarize_samples
from cot_rm.media.video import Sampling, read_video
from cot_rm.model.config import CONFIG_NAME
from cot_rm.model.modeling import HEAD_NAME, ThinkThenScore
from cot_rm.protocol import JudgeSpec
from cot_rm.schema import parse_record

SAMPLING = Sampling(num_frames=4, max_pixels=56 * 56)
DIMS = list(JudgeSpec().dimensions)
CALIBRATION = {"visual_quality": {"mean": 0.1, "std": 0.5}, "overall": {"mean": -0.2, "std": 0.25}}
SIGMA = 0.3  # the std (raw head scale) the uncertainty head below predicts for every video


def _edit_config(folder, **changes) -> None:
    path = folder / CONFIG_NAME
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.fixture(scope="module")
def checkpoints(tiny_qwen25vl_dir, tmp_path_factory) -> dict:
    """One set of weights saved three ways: `uncertain` (a Gaussian-NLL head whose log-variance is log
    SIGMA^2 everywhere), `plain` (the same head without its variance output) and `calibrated` (the
    uncertain one with CALIBRATION in cot_rm.json)."""
    root = tmp_path_factory.mktemp("outputs")
    model = ThinkThenScore.from_base(tiny_qwen25vl_dir, sampling=SAMPLING, uncertainty=True)
    with torch.no_grad():
        model.head.log_var.weight.zero_()
        model.head.log_var.bias.fill_(math.log(SIGMA**2))
    model.save_pretrained(root / "uncertain")
    shutil.copytree(root / "uncertain", root / "plain")
    _edit_config(root / "plain", uncertainty=False)
    head = load_file(root / "plain" / HEAD_NAME)
    save_file({k: v for k, v in head.items() if not k.startswith("log_var.")}, root / "plain" / HEAD_NAME)
    shutil.copytree(root / "uncertain", root / "calibrated")
    _edit_config(root / "calibrated", calibration=CALIBRATION)
    return {name: root / name for name in ("plain", "uncertain", "calibrated")}


def _judged(capsys, model, video) -> dict:
    code = cli.main(["judge", "--model", str(model), str(video), "--prompt", "a red square",
                     "--max-new-tokens", "16", "--no-cache"])  # fmt: skip
    out = capsys.readouterr().out.splitlines()
    assert code == 0 and len(out) == 1
    return json.loads(out[0])


def test_calibration_and_the_head_std_reach_scores_as_documented(checkpoints, sample_mp4, capsys):
    plain, uncertain, calibrated = (_judged(capsys, checkpoints[k], sample_mp4) for k in checkpoints)
    assert "scores_std" not in plain  # a head trained without the Gaussian NLL has no std to give
    assert uncertain["scores"] == plain["scores"]  # no statistics: from_unit(raw) = 3 + 2 raw
    # scores_std = half * SIGMA / std = 2 * 0.3 / std (std 1 without statistics)
    assert uncertain["scores_std"] == pytest.approx(dict.fromkeys(DIMS, 0.6))
    assert calibrated["scores_std"] == pytest.approx(
        {"visual_quality": 1.2, "text_alignment": 0.6, "physical_consistency": 0.6, "overall": 2.4}
    )
    for d in DIMS:  # scores = 3 + 2 (raw - mean) / std, raw read back from the uncalibrated score
        raw = (plain["scores"][d] - 3) / 2
        stats = CALIBRATION.get(d, {"mean": 0.0, "std": 1.0})
        assert calibrated["scores"][d] == pytest.approx(
            3 + 2 * (raw - stats["mean"]) / stats["std"], abs=1e-9
        )
    for j in (plain, uncertain, calibrated):
        parse_record(j, kind="judgment")  # the record schema takes the new keys


def test_the_rule_by_hand(tiny_qwen25vl_dir, sample_mp4):
    model = ThinkThenScore.from_base(tiny_qwen25vl_dir, sampling=SAMPLING).eval()
    model.config.calibration = CALIBRATION
    judge = Judge.from_model(model)
    video = read_video(sample_mp4, judge.sampling)
    conv = _Conv("v", str(sample_mp4), video, P.judgment_conversation("p", video))
    judge._advance(conv, '<think>ok</think><answer>{"visual_quality": 4, "text_alignment": 3, '
                   '"physical_consistency": 5, "overall": 3}</answer>')  # fmt: skip
    record = judge._record(conv, [0.5, 0.2, -0.4, 0.3], log_var=[0.0, math.log(4), 0.0, math.log(0.25)])
    # visual_quality 3 + 2 (0.5 - 0.1) / 0.5 = 4.6; overall 3 + 2 (0.3 + 0.2) / 0.25 = 7 (never clipped);
    # the others 3 + 2 raw. std: 2 * 1 / 0.5 = 4, 2 * 2 = 4, 2 * 1 = 2, 2 * 0.5 / 0.25 = 4
    assert record["scores"] == pytest.approx(
        {"visual_quality": 4.6, "text_alignment": 3.4, "physical_consistency": 2.2, "overall": 7.0}
    )
    assert record["scores_std"] == pytest.approx(
        {"visual_quality": 4.0, "text_alignment": 4.0, "physical_consistency": 2.0, "overall": 4.0}
    )
    assert list(record)[:4] == ["id", "scores", "scores_std", "answer_scores"]


# ------------------------------------------------------------------------------------ answer_probs


class _Template(LogitsProcessor):
    """Makes a random tiny model write a well-formed final turn: every token is forced except the score
    digits, which the model picks itself (greedy among the scale's digits) unless `fixed` names them."""

    def __init__(self, judge: Judge, fixed: list[int] | None = None):
        tok, digits = judge.processor.tokenizer, judge.score_tokens
        body = ", ".join(f'"{d}": @' for d in judge.spec.dimensions)
        self.script: list[list[int]] = []
        for i, piece in enumerate(
            f"<think>Frame 2 is sharp.</think>\n<answer>{{{body}}}</answer>".split("@")
        ):
            if i:
                self.script.append([digits[fixed[i - 1]]] if fixed else list(digits.values()))
            self.script += [[t] for t in tok.encode(piece, add_special_tokens=False)]
        self.script.append([tok.convert_tokens_to_ids("<|im_end|>")])
        self.start = None

    def __call__(self, input_ids, scores):
        self.start = input_ids.shape[1] if self.start is None else self.start
        mask = torch.full_like(scores, float("-inf"))
        mask[:, self.script[input_ids.shape[1] - self.start]] = 0
        return scores + mask


@contextmanager
def _writes_template(judge: Judge, fixed: list[int] | None = None):
    generate = judge.model.vlm.generate
    judge.model.vlm.generate = lambda **kw: generate(**kw, logits_processor=LogitsProcessorList([_Template(judge, fixed)]))  # fmt: skip
    try:
        yield
    finally:
        judge.model.vlm.generate = generate


def _states_at_digits(judge: Judge, video, fixed: list[int]) -> torch.Tensor:
    """The LM head's inputs [D, H] where answer_probs reads the digits, for an answer of `fixed` scores."""
    seen = []
    hook = judge.model.base_vlm.lm_head.register_forward_hook(
        lambda _m, args, _out: seen.append(args[0].clone()) if args[0].dim() == 1 else None
    )
    try:
        with _writes_template(judge, fixed):
            (j,) = judge.judge([("a", str(video), "a red square")])
    finally:
        hook.remove()
    assert j["answer_scores"] == dict(zip(DIMS, map(float, fixed), strict=True))
    return torch.stack(seen)


def test_answer_probs_sum_to_one_and_peak_at_the_greedy_answer(ckpt, family, sample_mp4):
    model = ThinkThenScore.from_base(ckpt).eval()
    sampling = Sampling(num_frames=4, max_pixels=64 * 64, family=family)
    judge = Judge(model, sampling, JudgeSpec(), max_new_tokens=160)
    targets = [4, 2, 5, 3]
    # Point the LM head's digit rows so that the state before each score prefers a different digit
    # (a random model would write "1" everywhere): then the greedy answer is `targets`.
    states = _states_at_digits(judge, sample_mp4, targets)
    onehot = torch.eye(5)[:, [t - 1 for t in targets]]  # [5 scores, 4 dimensions]
    with torch.no_grad():
        rows = 8 * (2 * onehot - 1) @ torch.linalg.pinv(states.T)
        model.base_vlm.lm_head.weight[list(judge.score_tokens.values())] = rows
    with _writes_template(judge):  # the digits free: greedy over the scale's digits
        (j,) = judge.judge([("a", str(sample_mp4), "a red square")])
    assert j["parse_error"] is None and j["answer_scores"] == dict(
        zip(DIMS, map(float, targets), strict=True)
    )
    for d in DIMS:
        entry = j["answer_probs"][d]
        assert list(entry["probs"]) == ["1", "2", "3", "4", "5"]
        assert sum(entry["probs"].values()) == pytest.approx(1.0, abs=1e-12)
        assert int(max(entry["probs"], key=entry["probs"].get)) == j["answer_scores"][d]
        assert entry["expected"] == pytest.approx(sum(int(k) * p for k, p in entry["probs"].items()))
    parse_record(j, kind="judgment")


def test_unparsed_answers_have_no_probs_and_odd_scores_none(tiny_qwen25vl_dir, sample_mp4):
    model = ThinkThenScore.from_base(tiny_qwen25vl_dir).eval()
    judge = Judge(model, SAMPLING, JudgeSpec(), max_new_tokens=4)
    (j,) = judge.judge([("a", str(sample_mp4), "p")])  # a random model, 4 tokens: never an answer
    assert j["parse_error"] is not None and j["answer_probs"] is None
    tok = model.processor.tokenizer
    assert answer_probs.score_tokens(tok, JudgeSpec(score_min=0, score_max=10)) is None  # "10": two tokens
    text = '<answer>{"visual_quality": 3.5, "text_alignment": 4.0, "physical_consistency": 2, "overall": 10}</answer>'
    at = answer_probs.digit_offsets("x" + text, JudgeSpec())
    assert at == {"text_alignment": text.index("4.0") + 1, "physical_consistency": text.index(" 2,") + 2}


def test_sampled_draws_average_the_std_and_mix_the_probs():
    def draw(head, std, probs, error=None):
        return {"id": "v", "scores": head, "scores_std": std, "answer_scores": None if error else {"q": 2.0},
                "answer_probs": None if error else probs, "rationale": "r", "frames_cited": [], "tool_calls": [],
                "parse_error": error, "model": "m", "protocol_version": P.PROTOCOL_VERSION}  # fmt: skip

    draws = [
        draw({"q": 1.0}, {"q": 0.2}, {"q": {"probs": {"1": 0.5, "2": 0.5}, "expected": 1.5}}),
        draw({"q": 3.0}, {"q": 0.4}, None, error="empty"),
        draw({"q": 2.0}, {"q": 0.6}, {"q": {"probs": {"1": 0.1, "2": 0.9}, "expected": 1.9}}),
    ]
    out = summarize_samples(draws, temperature=1.0, top_p=1.0, seed=0)
    assert out["scores_std"] == pytest.approx({"q": 0.4})  # the head's own std: the mean over draws
    # the parsed draws' mixture: (0.5 + 0.1) / 2, (0.5 + 0.9) / 2; expected (1.5 + 1.9) / 2
    assert out["answer_probs"] == {
        "q": {"probs": pytest.approx({"1": 0.3, "2": 0.7}), "expected": pytest.approx(1.7)}
    }
