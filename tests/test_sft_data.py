"""SFT collator: the label mask keeps exactly the assistant spans; head targets and pairs are right."""

import json
import shutil

import pytest
import torch
from transformers import AutoProcessor

from cot_rm import protocol as P
from cot_rm.protocol import JudgeSpec
from cot_rm.train.data import IGNORE, SFTCollator, assistant_mask, build_examples, load_traces, trace_settings


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    from cot_rm.schema import read_jsonl
    from data_synthesis.pipeline import SynthConfig, synthesize
    from data_synthesis.teachers.oracle import OracleTeacher
    from data_synthesis.toyworld.world import ToyConfig, build

    root = tmp_path_factory.mktemp("sftdata")
    build(root / "toy", ToyConfig(n=24, seed=5), progress=False)
    recs = read_jsonl(root / "toy" / "pointwise.jsonl")
    synthesize(recs, OracleTeacher(), root / "sft.jsonl", SynthConfig(rationale_free_p=0.5), progress=False)
    return root


def _spans(labels: torch.Tensor) -> list[tuple[int, int]]:
    keep = (labels != IGNORE).tolist() + [False]
    spans, start = [], None
    for i, k in enumerate(keep):
        if k and start is None:
            start = i
        if not k and start is not None:
            spans.append((start, i))
            start = None
    return spans


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_label_mask_is_exactly_the_assistant_turns(traces, family, request):
    ckpt = request.getfixturevalue(
        {"qwen2_5_vl": "tiny_qwen25vl_dir", "qwen3_vl": "tiny_qwen3vl_dir"}[family]
    )
    processor = AutoProcessor.from_pretrained(ckpt)
    rows = load_traces(traces / "sft.jsonl")
    row = next(r for r in rows if len(r["tool_frames"]) >= 2)  # a real multi-turn sample with two tool rounds
    collator = SFTCollator(processor, family, JudgeSpec(), cache_dir="off")
    batch = collator.encode([collator.sequence(row)], [])
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    got = [processor.tokenizer.decode(ids[a:b]) for a, b in _spans(labels)]
    # What the model must learn: each assistant turn as the chat template renders it, with its <|im_end|>.
    want = []
    for m in row["messages"]:
        if m["role"] != "assistant":
            continue
        calls = [P.format_tool_call(c["function"]["arguments"]["frames"]) for c in m.get("tool_calls") or []]
        want.append("\n".join([m["content"], *calls]) + "<|im_end|>")
    assert got == want
    assert len(got) == len(row["tool_frames"]) + 1
    kept = labels != IGNORE
    vision = (ids == processor.video_token_id) | (ids == processor.image_token_id)
    assert vision.any() and not (kept & vision).any()  # no vision token is ever a label
    reward_id = processor.tokenizer.convert_tokens_to_ids("<|reward|>")
    assert ids[batch["attention_mask"][0].bool()][-1] == reward_id and not kept[ids == reward_id].any()
    assert batch["pixel_values"].shape[0] > 0  # the tool's frames travel with the sample


def test_rationale_free_rows_train_the_head_only(traces, tiny_qwen25vl_dir):
    processor = AutoProcessor.from_pretrained(tiny_qwen25vl_dir)
    rows = load_traces(traces / "sft.jsonl")
    row = next(r for r in rows if r["rationale_free"])
    collator = SFTCollator(processor, "qwen2_5_vl", JudgeSpec(), cache_dir="off")
    seq = collator.sequence(row)
    # Video + prompt, then the reward token where the judgment would start: no critique, no answer.
    after_user = seq.text.split("<|im_start|>user", 1)[1]  # the system prompt shows an example answer
    assert seq.text.endswith("<|im_start|>assistant\n<|reward|>") and "<answer>" not in after_user
    batch = collator.encode([seq], [])
    assert (batch["labels"] == IGNORE).all()
    assert batch["head_mask"].all() and "pixel_values" not in batch
    expected = torch.tensor([[JudgeSpec().to_unit(row["scores"][d]) for d in JudgeSpec().dimensions]])
    assert torch.allclose(batch["head_target"], expected)


def test_pairs_become_two_sequences_with_bt_labels(traces, tiny_qwen25vl_dir):
    processor = AutoProcessor.from_pretrained(tiny_qwen25vl_dir)
    rows = load_traces(traces / "sft.jsonl")
    examples = build_examples(rows, str(traces / "toy" / "pairs.jsonl"))
    pair = next(e for e in examples if len(e["rows"]) == 2)
    single = next(e for e in examples if len(e["rows"]) == 1)
    collator = SFTCollator(processor, "qwen2_5_vl", JudgeSpec(), rationale_dropout=0.0, cache_dir="off")
    batch = collator([{"example": json.dumps(pair)}, {"example": json.dumps(single)}])
    assert batch["input_ids"].shape[0] == 3 and batch["pair_index"].tolist() == [[0, 1]]
    want = [{"A": 1, "B": -1, "tie": 0}[pair["dims"][d]] for d in JudgeSpec().dimensions]
    assert batch["pair_label"][0].tolist() == want
    # rationale dropout 1.0: every example ALSO appears without its judgment (head only), pairs included
    always = SFTCollator(processor, "qwen2_5_vl", JudgeSpec(), rationale_dropout=1.0, cache_dir="off")
    batch = always([{"example": json.dumps(pair)}])
    assert batch["input_ids"].shape[0] == 4 and batch["pair_index"].tolist() == [[0, 1], [2, 3]]
    assert (batch["labels"][2:] == IGNORE).all() and (batch["labels"][:2] != IGNORE).any()
    judged = [t.split("<|im_start|>user", 1)[1] for t in processor.batch_decode(batch["input_ids"])]
    assert all("<answer>" in t for t in judged[:2]) and not any("<answer>" in t for t in judged[2:])


def test_critique_swap_scores_each_video_with_the_other_judgment(traces, tiny_qwen25vl_dir):
    processor = AutoProcessor.from_pretrained(tiny_qwen25vl_dir)
    rows = load_traces(traces / "sft.jsonl")
    examples = build_examples(rows, str(traces / "toy" / "pairs.jsonl"))
    pair = next(
        e for e in examples if len(e["rows"]) == 2 and e["rows"][0]["scores"] != e["rows"][1]["scores"]
    )
    a, b = pair["rows"]
    swap = SFTCollator(processor, "qwen2_5_vl", JudgeSpec(), rationale_dropout=0.0, cache_dir="off",
                       critique_swap=1.0)  # fmt: skip
    batch = swap([{"example": json.dumps(pair)}])
    assert batch["input_ids"].shape[0] == 4 and batch["pair_index"].tolist() == [[0, 1], [2, 3]]
    assert batch["pair_label"][1].tolist() == batch["pair_label"][0].tolist()  # the videos' own preference
    assert (batch["labels"][2:] == IGNORE).all() and (batch["labels"][:2] != IGNORE).any()  # head only
    texts = processor.batch_decode(batch["input_ids"])

    def answer(row):
        return row["messages"][-1]["content"].split("<answer>")[1]

    assert answer(b) in texts[2] and answer(a) not in texts[2]  # video a, b's judgment
    assert answer(a) in texts[3] and a["prompt"] in texts[3].split("<|im_start|>user", 1)[1]
    spec = JudgeSpec()
    want = [[spec.to_unit(r["scores"][d]) for d in spec.dimensions] for r in (a, b, a, b)]
    assert torch.allclose(batch["head_target"], torch.tensor(want))  # each video keeps its own labels
    # Off by default: the same example gives only its two sequences.
    plain = SFTCollator(processor, "qwen2_5_vl", JudgeSpec(), rationale_dropout=0.0, cache_dir="off")
    assert plain([{"example": json.dumps(pair)}])["input_ids"].shape[0] == 2


def test_pairs_match_traces_through_a_symlinked_folder(traces, tmp_path):
    # The traces reach the videos through a symlinked folder, the pairs file through the real one.
    (tmp_path / "toy").symlink_to(traces / "toy", target_is_directory=True)
    shutil.copy(traces / "sft.jsonl", tmp_path / "sft.jsonl")
    direct = build_examples(load_traces(traces / "sft.jsonl"), str(traces / "toy" / "pairs.jsonl"))
    linked = build_examples(load_traces(tmp_path / "sft.jsonl"), str(traces / "toy" / "pairs.jsonl"))
    n_pairs = sum(len(e["rows"]) == 2 for e in direct)
    assert n_pairs > 0 and sum(len(e["rows"]) == 2 for e in linked) == n_pairs


def test_assistant_mask_on_hand_written_ids():
    class Tok:  # ids -> text, one character per id
        def decode(self, ids):
            return "".join(VOCAB[i] for i in ids)

    VOCAB = {0: "S", 1: "E", 2: "u", 3: "a", 4: "\n", 5: "x", 6: "y"}
    # S u \n x E \n S a \n y y E  -> only "y y E" (the assistant content and its end) is kept
    ids = [0, 2, 4, 5, 1, 4, 0, 3, 4, 6, 6, 1]
    VOCAB[2], VOCAB[3] = "user", "assistant"
    assert assistant_mask(ids, 0, 1, Tok()).tolist() == [False] * 9 + [True, True, True]


def test_load_traces_names_file_and_line(tmp_path):
    bad = tmp_path / "t.jsonl"
    bad.write_text('{"id": "a"}\n')
    with pytest.raises(ValueError, match=r"t.jsonl:1: not an SFT trace"):
        load_traces(bad)
    with pytest.raises(FileNotFoundError, match="cot-rm synthesize"):
        load_traces(tmp_path / "none.jsonl")


def test_bad_traces_are_refused_up_front_with_their_line(traces, tmp_path):
    """What used to fail steps into training (or after it, in the report): each a `file:line: reason`."""
    good = json.loads((traces / "sft.jsonl").read_text().splitlines()[0])
    good["video"] = str((traces / good["video"]).resolve())
    cases = [
        ("5", "expected a JSON object"),
        (
            json.dumps({**good, "scores": {"visual_quality": "high"}}),
            r"scores\['visual_quality'\] must be a number",
        ),
        (
            json.dumps({**good, "scores": {"visual_quality": 9}}),
            r"scores\['visual_quality'\] = 9 is off the judge's 1-5 scale",
        ),
        (json.dumps({**good, "sampling": "bogus"}), "sampling must be the object"),
        (json.dumps({**good, "video": "nope.mp4"}), ".*nope.mp4: no such video"),
        (json.dumps({**good, "video": "http://x.org/a.mp4"}), "http://x.org/a.mp4: no such video file"),
        (json.dumps({**good, "messages": "hi"}), "messages must be the conversation"),
        (json.dumps({**good, "tool_max_pixels": "big"}), "tool_max_pixels must be a positive integer"),
        (json.dumps({**good, "sampling": {}}), "sampling must be the object cot-rm synthesize writes"),
        (
            json.dumps({**good, "sampling": {**good["sampling"], "frames": 8}}),
            "sampling: unknown key 'frames'",
        ),
        (
            json.dumps({**good, "sampling": {**good["sampling"], "num_frames": -3}}),
            "sampling: num_frames must be",
        ),
    ]
    for text, reason in cases:
        bad = tmp_path / "bad.jsonl"
        bad.write_text(json.dumps(good) + "\n\n" + text + "\n")
        with pytest.raises(ValueError, match=rf"bad.jsonl:3: {reason}"):
            load_traces(bad)
    # the traces' settings, one of each, for the checkpoint to record
    rows = load_traces(traces / "sft.jsonl")
    sampling, tool_px, spec = trace_settings(rows, "sft.jsonl")
    budgets = {k: v for k, v in JudgeSpec().to_dict().items() if k != "dimensions"}
    assert sampling == rows[0]["sampling"] and tool_px == P.TOOL_MAX_PIXELS and spec == budgets
    mixed = [rows[0], {**rows[1], "tool_max_pixels": 401408}]
    with pytest.raises(ValueError, match="the traces mix 2 tool_max_pixels settings"):
        trace_settings(mixed, "sft.jsonl")


def test_too_long_samples_are_skipped_and_counted(traces, tiny_qwen25vl_dir):
    processor = AutoProcessor.from_pretrained(tiny_qwen25vl_dir)
    rows = load_traces(traces / "sft.jsonl")
    short = min(rows, key=lambda r: len(json.dumps(r["messages"])))
    long = max(rows, key=lambda r: len(json.dumps(r["messages"])))
    probe = SFTCollator(processor, "qwen2_5_vl", JudgeSpec(), cache_dir="off")
    limit = probe.length(probe.sequence(short))  # the short one fits exactly, the long one does not
    assert probe.length(probe.sequence(long)) > limit
    collator = SFTCollator(processor, "qwen2_5_vl", JudgeSpec(), cache_dir="off", max_length=limit)
    batch = collator([{"example": json.dumps({"rows": [short]})}, {"example": json.dumps({"rows": [long]})}])
    assert batch["input_ids"].shape[0] == 1 and int(batch["skipped_too_long"]) == 1
    with pytest.raises(ValueError, match="max_length"):
        collator([{"example": json.dumps({"rows": [long]})}])
