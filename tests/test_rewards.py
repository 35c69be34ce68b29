"""GRPO rewards on hand-written completions; every expected number is worked out by hand in a comment."""

import json
import math
import pickle

import pytest
from trl.trainer.utils import get_callable_name

from cot_rm import protocol as P
from cot_rm.protocol import JudgeSpec, parse_turn, tool_turn
from cot_rm.train.grpo import rewards as R


def answer(think="Frame 3 flickers.", vq=4, ta=2, pc=3, ov=3) -> str:
    scores = {"visual_quality": vq, "text_alignment": ta, "physical_consistency": pc, "overall": ov}
    return f"<think>{think}</think><answer>{json.dumps(scores)}</answer>"


GOOD = answer()
NO_THINK = (
    '<answer>{"visual_quality": 4, "text_alignment": 2, "physical_consistency": 3, "overall": 3}</answer>'
)
OUT_OF_RANGE = answer(vq=6)
MISSING_DIM = '<think>x</think><answer>{"visual_quality": 4, "text_alignment": 2, "overall": 3}</answer>'


def asst(text: str) -> dict:
    return {"role": "assistant", "content": text}


def call(*frame_lists, think="Look closer.") -> dict:
    """An assistant tool turn as text, the way the model writes it (one <tool_call> per list)."""
    calls = "\n".join(
        f'<tool_call>\n{{"name": "select_frames", "arguments": {{"frames": {list(f)}}}}}\n</tool_call>'
        for f in frame_lists
    )
    return asst(f"<think>{think}</think>\n{calls}")


def served(*frames) -> dict:
    return tool_turn(frames, [f / 8 for f in frames])


def refused(why="frame 40 is out of range") -> dict:
    return tool_turn(error=why)


def run(reward, completions, **columns):
    """Call a reward the way TRL 1.16's GRPOTrainer does (prompts, completion_ids, state, loggers)."""
    logged, extra = {}, {}
    out = reward(
        prompts=[[{"role": "user", "content": "judge"}]] * len(completions),
        completions=completions,
        completion_ids=[[1, 2]] * len(completions),
        trainer_state=None,
        log_extra=lambda col, values: extra.setdefault(col, []).extend(values),
        log_metric=lambda name, value: logged.__setitem__(name, value),
        **columns,
    )
    assert len(out) == len(completions)
    return out, logged, extra


# ------------------------------------------------------------------------------ reading completions


def test_final_turn_of_every_completion_form():
    assert R.final_turn(GOOD) == GOOD
    assert R.final_turn([asst(GOOD)]) == GOOD
    assert R.final_turn([call([3]), served(3), asst(GOOD)]) == GOOD
    assert R.final_turn([]) == ""
    parts = {"role": "assistant", "content": [{"type": "text", "text": GOOD}]}
    assert R.final_turn([parts]) == GOOD
    # TRL's parse_response with a response schema: think in reasoning_content, calls structured
    split = {
        "role": "assistant",
        "reasoning_content": "Frame 3 flickers.",
        "content": GOOD.split("</think>")[1],
    }
    assert R.final_judgment([split]).scores["visual_quality"] == 4.0
    structured = {
        "role": "assistant",
        "reasoning_content": "look",
        "content": "",
        "tool_calls": [
            {"type": "function", "function": {"name": "select_frames", "arguments": {"frames": [5]}}}
        ],
    }
    assert parse_turn(P.message_text(structured)).calls[0].frames == (5,)
    as_json_string = {"function": {"name": "select_frames", "arguments": '{"frames": [6, 7]}'}}
    assert parse_turn(P.message_text({**structured, "tool_calls": [as_json_string]})).calls[0].frames == (
        6,
        7,
    )


def test_parse_failure_accounting():
    batch = [GOOD, NO_THINK, OUT_OF_RANGE, MISSING_DIM, [call([3]), served(3)], [asst(GOOD)]]
    # 4 of 6 fail: missing_think, score_out_of_range, missing_dimension, and a tool call where an answer is due
    assert R.parse_failures(batch) == {
        "missing_think": 1,
        "score_out_of_range": 1,
        "missing_dimension": 1,
        "missing_answer": 1,
    }
    assert R.parse_failure_rate(batch) == pytest.approx(4 / 6)
    assert R.parse_failure_rate([]) == 0.0


# ----------------------------------------------------------------------------------------- format


def test_format_reward():
    batch = [
        GOOD,  # 1
        [asst(GOOD)],  # 1
        [call([3, 4]), served(3, 4), asst(GOOD)],  # 1: tool round then a good answer
        NO_THINK,  # 0
        OUT_OF_RANGE,  # 0
        MISSING_DIM,  # 0
        [call([3]), served(3)],  # 0: ends on a tool call
        GOOD + " trailing",  # 0: text after </answer>
        [],  # 0: no assistant turn
    ]
    out, logged, extra = run(R.FormatReward(), batch)
    assert out == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert logged == {"format/parse_failure_rate": pytest.approx(6 / 9)}  # never None: no coverage logged
    assert extra["parse_error"] == [
        None,
        None,
        None,
        "missing_think",
        "score_out_of_range",
        "missing_dimension",
        "missing_answer",
        "text_after_answer",
        "empty",
    ]


def test_format_uses_the_judge_spec():
    spec = JudgeSpec(dimensions=("overall",), score_min=0, score_max=10)
    out, _, _ = run(R.FormatReward(spec), ['<think>x</think><answer>{"overall": 9}</answer>', GOOD])
    assert out == [1.0, 0.0]  # GOOD has dimensions this spec does not know


# -------------------------------------------------------------------------------------- pairwise

A1 = answer(vq=4, ov=4)
A2 = answer(vq=4, ov=3)
B1 = answer(vq=4, ov=3)
B2 = "not a judgment"
PAIR_BATCH = [A1, A2, B1, B2, GOOD, GOOD]
PAIR_COLS = {
    "pair_id": ["p1", "p1", "p1", "p1", "p2", None],
    "side": ["A", "A", "B", "B", "A", None],
    "pair_label": [{"overall": "A", "visual_quality": "tie", "text_alignment": None}] * 4
    + [{"overall": "A"}, None],
}


def test_pairwise_each_partner_rollout():
    out, logged, _ = run(R.PairwiseReward(), PAIR_BATCH, **PAIR_COLS)
    # text_alignment: None = unlabelled. Partners that parse: A's see [B1] (B2 fails); B's see [A1, A2].
    # A1: overall 4 vs 3 -> A (right); vq 4 vs 4 -> tie (right)                 -> (1 + 1) / 2 = 1
    # A2: overall 3 vs 3 -> tie (wrong); vq tie (right)                          -> (0 + 1) / 2 = 0.5
    # B1: overall 3 vs A1 4 -> A (right), vs A2 3 -> tie (wrong) = 0.5; vq 1     -> (0.5 + 1) / 2 = 0.75
    # B2: partners exist but its own turn does not parse                        -> 0
    # p2 has no side B in the batch; the last row is no pair                     -> None, None
    assert out == [1.0, 0.5, 0.75, 0.0, None, None]
    assert logged == {
        "pairwise/agree/overall": pytest.approx((1 + 0 + 0.5) / 3),
        "pairwise/agree/visual_quality": 1.0,
        "pairwise/coverage": pytest.approx(4 / 6),
    }


def test_pairwise_against_the_partners_mean_and_tie_margin():
    out, _, _ = run(R.PairwiseReward(compare="mean"), PAIR_BATCH, **PAIR_COLS)
    # B1: A's mean overall (4 + 3) / 2 = 3.5; 3 - 3.5 = -0.5 -> A (right); vq tie (right) -> 1
    assert out[:4] == [1.0, 0.5, 1.0, 0.0]
    out, _, _ = run(R.PairwiseReward(compare="mean", tie_margin=0.5), PAIR_BATCH, **PAIR_COLS)
    # B1: |-0.5| <= 0.5 -> tie (wrong) -> (0 + 1) / 2; A1: |4 - 3| = 1 > 0.5 -> A (right) -> 1
    assert out[:4] == [1.0, 0.5, 0.5, 0.0]


def test_pairwise_overall_weight_bare_label_and_missing_columns():
    out, _, _ = run(R.PairwiseReward(overall_weight=0.8), PAIR_BATCH, **PAIR_COLS)
    assert out[1] == pytest.approx(0.8 * 0 + 0.2 * 1)  # A2: overall wrong, vq right
    cols = {**PAIR_COLS, "pair_label": ["A"] * 4 + [None, None]}  # a bare preference labels "overall"
    out, _, _ = run(R.PairwiseReward(), PAIR_BATCH, **cols)
    assert out == [1.0, 0.0, 0.5, 0.0, None, None]  # overall only, from the first test's reasoning
    out, logged, _ = run(R.PairwiseReward(), PAIR_BATCH)  # no pair columns at all
    assert out == [None] * 6 and logged == {"pairwise/coverage": 0.0}
    cols = {**PAIR_COLS, "pair_label": [{"speed": "A"}] * 6}  # no dimension of the spec labelled
    assert run(R.PairwiseReward(), PAIR_BATCH, **cols)[0] == [None] * 6


def test_pairwise_without_tie_labels():
    out, logged, _ = run(R.PairwiseReward(ties=False), PAIR_BATCH, **PAIR_COLS)
    # visual_quality (a tie) is not scored: overall alone, from the first test's reasoning
    assert out == [1.0, 0.0, 0.5, 0.0, None, None]
    assert "pairwise/agree/visual_quality" not in logged
    # Two videos answered alike on a tie-labelled dimension: no credit to earn, so no reward either way.
    same = [answer(vq=4, ov=3), answer(vq=4, ov=3)]
    cols = {"pair_id": ["q", "q"], "side": ["A", "B"], "pair_label": [{"visual_quality": "tie"}] * 2}
    assert run(R.PairwiseReward(ties=False), same, **cols)[0] == [None, None]
    assert run(R.PairwiseReward(), same, **cols)[0] == [1.0, 1.0]
    with pytest.raises(ValueError, match="ties must be true or false"):
        R.PairwiseReward(ties="no")


def test_pairwise_side_b_preferred():
    # B1 says overall 5 vs A's 2: B wins on overall (label B, right); vq 4 vs 4 tie vs label B (wrong)
    batch = [answer(ov=2), answer(vq=4, ov=5)]
    cols = {
        "pair_id": ["q", "q"],
        "side": ["A", "B"],
        "pair_label": [{"overall": "B", "visual_quality": "B"}] * 2,
    }
    assert run(R.PairwiseReward(), batch, **cols)[0] == [0.5, 0.5]


# ----------------------------------------------------------------------------------- calibration


def test_calibration_reward():
    label = {"visual_quality": 4, "text_alignment": 3, "physical_consistency": None, "overall": 5}
    batch = [GOOD, GOOD, NO_THINK, GOOD, GOOD]
    cols = {"scores": [label, label, label, {}, {"speed": 2}]}
    out, logged, _ = run(R.CalibrationReward(sigma=1.0), batch, **cols)
    # GOOD answers vq 4, ta 2, overall 3 (pc unlabelled): errors 0, -1, -2 ->
    # (exp(0) + exp(-1/2) + exp(-4/2)) / 3 = (1 + 0.606531 + 0.135335) / 3 = 0.580622
    assert out[0] == pytest.approx(0.580622, abs=1e-6) and out[1] == out[0]
    assert out[2:] == [0.0, None, None]  # unparseable but labelled -> 0; no label -> None
    assert logged == {"calibration/mae": pytest.approx(1.0), "calibration/coverage": pytest.approx(3 / 5)}
    # VQAThinker's sigma 0.5 (the default): an error of 1 earns exp(-1 / 0.5) = exp(-2)
    out, _, _ = run(R.CalibrationReward(), [GOOD], scores=[{"text_alignment": 3}])
    assert out == [pytest.approx(math.exp(-2))]
    assert run(R.CalibrationReward(), [GOOD, GOOD])[0] == [None, None]  # no scores column


# -------------------------------------------------------------------------------------- tool use


def test_tool_reward_valid_calls_and_defect_bonus():
    good = [call([3, 4]), served(3, 4), asst(GOOD)]  # 1 valid call of 1; looks at {3, 4}, cites {3}
    reward = R.ToolUseReward()
    assert run(reward, [good], total_frames=[32])[0] == [1.0]  # no annotations: no bonus
    # defects at 3 and 10: frames looked at {3, 4}, 1 of 2 on a defect -> 1 + 0.5 * 1/2 = 1.25
    assert run(reward, [good], defect_frames=[[3, 10]])[0] == [1.25]
    assert run(reward, [good], meta=[{"defects": [{"frames": [10]}, {"frames": [3]}]}])[0] == [1.25]
    # tolerance 1: near = {2, 3, 4, 9, 10, 11} holds both -> 1 + 0.5 * 1 = 1.5
    assert run(R.ToolUseReward(tolerance=1), [good], defect_frames=[[3, 10]])[0] == [1.5]
    assert run(reward, [good], defect_frames=[[]])[0] == [1.0]  # annotated clean video: nothing to find
    assert run(reward, [GOOD])[0] == [0.0]  # no call: no_call
    assert run(R.ToolUseReward(no_call=0.2), [GOOD])[0] == [0.2]


def test_tool_reward_invalid_calls_lower_it():
    structured = {
        "role": "assistant",
        "reasoning_content": "and frame 5",
        "content": "",
        "tool_calls": [
            {"type": "function", "function": {"name": "select_frames", "arguments": {"frames": [5]}}}
        ],
    }
    rollout = [
        call([40]),  # out of range for 32 frames (and the tool said so): invalid
        refused(),
        call(list(range(9))),  # 9 frames > 8 per call: invalid
        refused("too many frames"),
        structured,  # third call, within budget: valid, selects 5
        served(5),
        asst(
            '<think>again</think><tool_call>{"name": "select_frames", "arguments": </tool_call>'
        ),  # malformed
        refused("malformed"),
        asst(GOOD),  # cites frame 3
    ]
    # 1 valid of 4 -> 0.25; with defects at 3: looked at {5} + cited {3}, 1 of 2 -> 0.25 + 0.5 * 0.5 = 0.5
    out, logged, _ = run(
        R.ToolUseReward(), [rollout, rollout], total_frames=[32, 32], defect_frames=[None, [3]]
    )
    assert out == [0.25, 0.5]
    assert logged == {"tool/calls": 4.0, "tool/invalid_rate": 0.75, "tool/defect_precision": 0.5}


def test_tool_reward_budget_errors_and_gate():
    # 4 calls (two in the first turn); the 4th exceeds max_tool_calls=3 -> 3 valid of 4 = 0.75
    over = [call([1], [2]), served(1), served(2), call([3]), served(3), call([4]), refused(), asst(GOOD)]
    assert run(R.ToolUseReward(), [over])[0] == [0.75]
    # TRL's own tool loop reports a failing tool as "{'error': ...}": invalid -> 0 of 1
    trl_error = {"role": "tool", "name": "select_frames", "content": "{'error': 'boom'}"}
    assert run(R.ToolUseReward(), [[call([1]), trl_error, asst(GOOD)]])[0] == [0.0]
    # without total_frames the range is not checked: frame 40 passes
    assert run(R.ToolUseReward(), [[call([40]), served(40), asst(GOOD)]])[0] == [1.0]
    # the gate: valid calls that end in no judgment earn 0; ungated they earn their share
    no_answer = [call([1]), served(1), asst("I give up")]
    budget_out = [call([1]), served(1), call([2])]  # the final turn is still a tool request: 2 valid calls
    assert run(R.ToolUseReward(), [no_answer, budget_out])[0] == [0.0, 0.0]
    assert run(R.ToolUseReward(gate=False), [no_answer, budget_out])[0] == [1.0, 1.0]


# ---------------------------------------------------------------------------------------- length


def test_length_band():
    reward = R.LengthReward(lo=3, hi=5)
    batch = [answer(think=" ".join("w" * n)) for n in (4, 1, 8, 10, 12)] + [NO_THINK]
    out, logged, _ = run(reward, batch)
    # 4 in band -> 1; 1 word: 1 - (3 - 1) / 3 = 1/3; 8: 1 - (8 - 5) / 5 = 0.4; 10: 1 - 5/5 = 0; 12 -> 0
    assert out == [1.0, pytest.approx(1 / 3), pytest.approx(0.4), 0.0, 0.0, 0.0]  # unparseable -> 0
    assert logged == {"length/mean": pytest.approx((4 + 1 + 8 + 10 + 12) / 5)}
    chars = R.LengthReward(lo=2, hi=4, unit="chars", above=4)
    assert run(chars, [answer(think="abcdef")])[0] == [0.5]  # 6 chars: 1 - (6 - 4) / 4
    assert run(R.LengthReward(lo=3, hi=5, below=1), [answer(think="w")])[0] == [0.0]  # 1 - 2/1 < 0
    assert run(R.LengthReward(lo=0, hi=5), [answer(think="")])[0] == [1.0]


# ----------------------------------------------------------------------------- registry + pickling


def test_build_rewards_from_yaml_mapping():
    funcs, weights = R.build_rewards(
        {"format": 0.1, "pairwise": 0.7, "calibration": {"weight": 0.2, "sigma": 1.0}}
    )
    assert [get_callable_name(f) for f in funcs] == ["format", "pairwise", "calibration"]  # TRL's log names
    assert weights == [0.1, 0.7, 0.2]
    assert funcs[2].sigma == 1.0
    funcs, weights = R.build_rewards({"tool": {"bonus": 1}, "length": 0})  # weight defaults to 1; 0 logs only
    assert weights == [1.0, 0.0] and funcs[0].bonus == 1.0
    spec = JudgeSpec(dimensions=("overall",))
    assert R.build_rewards({"format": 1}, spec)[0][0].spec is spec


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            {"fromat": 1},
            "unknown reward 'fromat'; known rewards: format, pairwise, calibration, tool, length",
        ),
        ({"calibration": {"weight": 1, "sigmaa": 1}}, "unknown option 'sigmaa'; options: weight, sigma"),
        ({"format": "high"}, "weight must be a finite number"),
        ({"format": True}, "weight must be a finite number"),
        ({"format": float("nan")}, "weight must be a finite number"),
        ({}, "non-empty mapping"),
        ({"calibration": {"sigma": 0}}, "sigma must be > 0"),
        ({"length": {"lo": 9, "hi": 3}}, "lo <= hi"),
        ({"pairwise": {"compare": "max"}}, "compare must be"),
    ],
)
def test_build_rewards_errors(config, message):
    with pytest.raises(ValueError, match=message):
        R.build_rewards(config)


def test_every_reward_pickles_and_scores_the_same_after():
    funcs, _ = R.build_rewards({name: 1.0 for name in R.REWARDS})
    batch = [A1, A2, B1, B2, [call([3]), served(3), asst(GOOD)]]
    cols = {
        "pair_id": ["p", "p", "p", "p", None],
        "side": ["A", "A", "B", "B", None],
        "pair_label": [{"overall": "A"}] * 5,
        "scores": [{"overall": 3}] * 5,
        "defect_frames": [[3]] * 5,
    }
    for f in funcs:
        g = pickle.loads(pickle.dumps(f))
        assert type(g) is type(f) and get_callable_name(g) == f.name
        assert run(g, batch, **cols)[0] == run(f, batch, **cols)[0]
        assert g.last_metrics == f.last_metrics
