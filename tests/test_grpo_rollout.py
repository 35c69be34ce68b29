"""GRPO rollouts: ids concatenated turn by turn equal the rendering of the equivalent conversation, the
tool mask covers exactly the policy's tokens, bad calls become error turns, the memory window."""

from dataclasses import replace

import pytest
import torch
from transformers import AutoProcessor, GenerationConfig

from cot_rm import protocol as P
from cot_rm.media.video import Sampling, VideoError
from cot_rm.model.config import REWARD_TOKEN
from cot_rm.model.processing import encode
from cot_rm.protocol import JudgeSpec
from cot_rm.train.grpo import rollout as R

FAMILY = "qwen2_5_vl"
SAMPLING = Sampling(fps=None, num_frames=4, max_pixels=56 * 56, family=FAMILY)
PX = 56 * 56
ANSWER = (
    '<answer>{"visual_quality": 4, "text_alignment": 3, "physical_consistency": 5, "overall": 3}</answer>'
)
FINAL = f"<think>Frame 2 is sharp.</think>\n{ANSWER}"


def call(*frame_lists, think="look") -> str:
    """The exact text the template renders for an assistant_tool_turn (so both conversations agree)."""
    return f"<think>{think}</think>\n" + "\n".join(P.format_tool_call(f) for f in frame_lists)


@pytest.fixture(scope="module")
def processor(tiny_qwen25vl_dir):
    return AutoProcessor.from_pretrained(str(tiny_qwen25vl_dir))


def scripted(processor, scripts):
    """A TurnGenerator replaying hand-written turns: scripts[rollout][turn] -> text + <|im_end|>."""
    tok = processor.tokenizer
    im_end = tok.convert_tokens_to_ids(R.IM_END)
    turns = {}

    def generate(batch: R.TurnBatch):
        assert batch.inputs["input_ids"].shape[0] == len(batch.rollout_ids)
        out = []
        for rid, cap in zip(batch.rollout_ids, batch.max_new_tokens, strict=True):
            n = turns.get(rid, 0)
            turns[rid] = n + 1
            ids = tok(scripts[rid][n], add_special_tokens=False)["input_ids"] + [im_end]
            out.append((ids[:cap], [-0.5] * min(len(ids), cap)))
        return out

    return generate


def rollouts(processor, scripts, spec=JudgeSpec(memory_window=10), **kw):
    gen = scripted(processor, scripts)
    return R.Rollouts(processor, FAMILY, spec, REWARD_TOKEN, gen, max_turn_tokens=200, **kw)


def row(path, prompt="a red square"):
    return {"video": str(path), "prompt": prompt, "sampling": SAMPLING.to_dict(), "tool_max_pixels": PX}


def spans(mask):
    """[(start, end, value)] runs of equal values."""
    out, start = [], 0
    for i in range(1, len(mask) + 1):
        if i == len(mask) or mask[i] != mask[start]:
            out.append((start, i, mask[start]))
            start = i
    return out


def reference_ids(processor, batch, i, spec):
    """Tokenisation of render(equivalent conversation) + reward token, windowed, with its images."""
    video = batch.media[i].videos[0]
    msgs = P.judgment_conversation("a red square", video, spec=spec, video_ref=video.path)
    msgs = P.apply_memory_window(msgs + batch.completions[i], spec.memory_window)
    text = P.render(processor, msgs, FAMILY, spec) + REWARD_TOKEN
    images = batch.media[i].images
    return encode(processor, [text], videos=[video], images=images or None)["input_ids"][0].tolist()


def test_ids_equal_the_rendered_conversation_and_mask_is_exact(processor, sample_mp4):
    spec = JudgeSpec(memory_window=10)
    script = [call([1, 5]), '<think>x</think><tool_call>{"name": bad</tool_call>', call([2]), FINAL]
    batch = rollouts(processor, [script], spec).run([row(sample_mp4)])
    ids = batch.prompt_ids[0] + batch.completion_ids[0]
    assert ids == reference_ids(processor, batch, 0, spec)  # the key check: nothing re-tokenised
    # ... and equal to the protocol's own judgment_conversation (structured tool calls) for valid rounds
    video = batch.media[0].videos[0]
    tok, mask, comp = processor.tokenizer, batch.tool_mask[0], batch.completion_ids[0]
    assert len(mask) == len(comp) == len(batch.logprobs[0])
    runs = spans(mask)
    policy = [tok.decode(comp[a:b]) for a, b, v in runs if v == 1]
    assert policy == [t + R.IM_END for t in script]
    others = [comp[a:b] for a, b, v in runs if v == 0]
    assert tok.decode(others[-1]) == "\n" + REWARD_TOKEN  # the query suffix, after the final <|im_end|>
    tool_texts = [tok.decode(o) for o in others[:-1]]
    assert all(t.startswith("\n<|im_start|>user\n<tool_response>\n") for t in tool_texts)
    assert all(t.endswith("</tool_response><|im_end|>\n<|im_start|>assistant\n") for t in tool_texts)
    assert "frame 5 (0.62 s):" in tool_texts[0] and "Error: malformed_tool_call" in tool_texts[1]
    assert [lp for lp, m in zip(batch.logprobs[0], mask, strict=True) if m] == [-0.5] * sum(mask)
    assert batch.tool_calls == [3] and batch.invalid_calls == [1] and batch.truncated == [False]
    assert isinstance(batch.results[0], P.Judgment) and batch.results[0].frames_cited == (2,)
    # every assistant turn of the completions parses back as scripted
    turns = [m["content"] for m in batch.completions[0] if m["role"] == "assistant"]
    assert turns == script
    assert isinstance(P.parse_turn(turns[0]), P.ToolRequest) and P.parse_turn(turns[-1]) == batch.results[0]
    refs = [c["image"] for m in batch.completions[0] if m["role"] == "tool" for c in m["content"]
            if c["type"] == "image"]  # fmt: skip
    assert refs == batch.media[0].image_refs == [{"video": str(sample_mp4), "frame": f} for f in (1, 5, 2)]
    assert batch.key_hints[0]["images"] == [f"{sample_mp4}|{f}|{PX}" for f in (1, 5, 2)]
    assert batch.key_hints[0]["videos"][0].startswith(f"{sample_mp4}|")
    # a conversation built from structured turns (as synthesis does) tokenises the same way
    tool = [m for m in batch.completions[0] if m["role"] == "tool"]
    err_turn = {"role": "assistant", "content": script[1]}
    ref = P.judgment_conversation("a red square", video, spec=spec, video_ref=video.path)
    ref += [P.assistant_tool_turn("look", [[1, 5]]), tool[0], err_turn, tool[1]]
    ref += [P.assistant_tool_turn("look", [[2]]), tool[2], P.assistant_final_turn("Frame 2 is sharp.",
            batch.results[0].scores, spec)]  # fmt: skip
    text = P.render(processor, ref, FAMILY, spec) + REWARD_TOKEN
    enc = encode(processor, [text], videos=[video], images=batch.media[0].images)
    assert enc["input_ids"][0].tolist() == ids


def test_valid_call_carries_exactly_the_requested_frames(processor, sample_mp4):
    batch = rollouts(processor, [[call([0, 7, 31]), FINAL]]).run([row(sample_mp4)])
    media = batch.media[0]
    assert len(media.images) == 3
    enc = encode(processor, ["x"], images=media.images)  # the grids the processor gives these images
    merge = processor.image_processor.merge_size
    expected = sum(int(g.prod()) for g in enc["image_grid_thw"]) // merge**2
    pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert batch.completion_ids[0].count(pad) == expected > 0
    tool = batch.completions[0][1]
    assert [c["text"] for c in tool["content"] if c["type"] == "text"] == [
        "frame 0 (0.00 s):",
        "frame 7 (0.88 s):",
        "frame 31 (3.88 s):",
    ]


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (call(list(range(9))), "too many frames (9)"),
        (call([999]), "frame 999 is out of range"),
        ('<think>a</think><tool_call>{"frames": [1</tool_call>', "malformed_tool_call"),
        (
            '<think>a</think><tool_call>{"name": "zoom", "arguments": {"frames": [1]}}</tool_call>',
            "unknown_tool",
        ),
    ],
)
def test_bad_calls_become_error_turns_and_spend_a_call(processor, sample_mp4, bad, message):
    batch = rollouts(processor, [[bad, FINAL]]).run([row(sample_mp4)])
    tool = batch.completions[0][1]
    assert tool["role"] == "tool" and len(tool["content"]) == 1
    assert tool["content"][0]["text"].startswith("Error: ") and message in tool["content"][0]["text"]
    assert batch.tool_calls == [1] and batch.invalid_calls == [1] and batch.media[0].images == []
    assert isinstance(batch.results[0], P.Judgment)
    spec = JudgeSpec(memory_window=10)
    assert batch.prompt_ids[0] + batch.completion_ids[0] == reference_ids(processor, batch, 0, spec)


def test_over_budget_call_is_an_error_turn(processor, sample_mp4):
    spec = JudgeSpec(max_tool_calls=1, memory_window=10)
    batch = rollouts(processor, [[call([1], [2]), FINAL]], spec).run([row(sample_mp4)])
    tools = [m for m in batch.completions[0] if m["role"] == "tool"]
    assert len(tools) == 2 and "budget spent" in tools[1]["content"][0]["text"]
    assert batch.tool_calls == [2] and batch.invalid_calls == [1] and len(batch.media[0].images) == 1
    assert batch.prompt_ids[0] + batch.completion_ids[0] == reference_ids(processor, batch, 0, spec)
    # a tool request on the last allowed turn ends the rollout without an answer
    batch = rollouts(processor, [[call([1]), call([2])]], spec).run([row(sample_mp4)])
    assert batch.results[0].reason == "missing_answer" and batch.tool_calls == [1]
    assert processor.tokenizer.decode(batch.completion_ids[0][-2:]) == "\n" + REWARD_TOKEN


def test_undecodable_frame_is_an_error_turn(processor, sample_mp4, monkeypatch):
    def broken(path, *args, **kwargs):
        raise VideoError(path, "frame 3 cannot be decoded")

    monkeypatch.setattr(R, "read_frames_at", broken)
    batch = rollouts(processor, [[call([3]), FINAL]]).run([row(sample_mp4)])
    assert batch.completions[0][1]["content"][0]["text"] == "Error: frame 3 cannot be decoded"
    assert batch.tool_calls == [1] and batch.invalid_calls == [1]


def test_identical_rows_share_one_encoded_video(processor, sample_mp4, make_mp4, monkeypatch):
    encoded = []
    real = R.encode

    def counting(proc, texts, videos=None, images=None, **kw):
        encoded.append(len(videos or []))
        return real(proc, texts, videos=videos, images=images, **kw)

    monkeypatch.setattr(R, "encode", counting)
    other = make_mp4("other.mp4", num_frames=12)
    rows = [row(sample_mp4)] * 2 + [row(other)] * 2  # TRL's sampler: each prompt G=2 times in a row
    batch = rollouts(processor, [[FINAL]] * 8).run(rows, num_generations=2)
    assert sum(encoded) == 2 and len(batch.completion_ids) == 8
    vids = [m.videos[0] for m in batch.media]
    assert all(v is vids[0] for v in vids[:4]) and all(v is vids[4] for v in vids[4:])
    assert vids[0] is not vids[4] and batch.prompt_ids[0] == batch.prompt_ids[3] != batch.prompt_ids[4]
    assert batch.tool_mask[0] == [1] * (len(batch.completion_ids[0]) - 2) + [0, 0]


def test_memory_window_drops_old_images_and_masks_stale_turns(processor, sample_mp4):
    spec = JudgeSpec(memory_window=1)
    script = [call([1]), call([2, 3]), FINAL]
    batch = rollouts(processor, [script], spec).run([row(sample_mp4)])
    assert batch.prompt_ids[0] + batch.completion_ids[0] == reference_ids(processor, batch, 0, spec)
    assert batch.media[0].image_refs == [{"video": str(sample_mp4), "frame": f} for f in (2, 3)]
    assert batch.stale_turns == [[1]]  # turn 1 saw frame 1's image, now a placeholder
    tok, comp, mask = processor.tokenizer, batch.completion_ids[0], batch.tool_mask[0]
    policy = [tok.decode(comp[a:b]) for a, b, v in spans(mask) if v == 1]
    assert policy == [script[0] + R.IM_END, script[2] + R.IM_END]  # turns 0 and 2 exact, 1 masked
    assert batch.stale_tokens[0] == len(tok(script[1] + R.IM_END, add_special_tokens=False)["input_ids"])
    assert "[image dropped from context" in tok.decode(comp)
    keep = rollouts(processor, [script], spec, stale_turns="keep").run([row(sample_mp4)])
    assert keep.completion_ids == batch.completion_ids and keep.stale_turns == [[1]]
    assert sum(keep.tool_mask[0]) == sum(mask) + batch.stale_tokens[0]


def test_length_budget_truncates(processor, sample_mp4):
    gen = scripted(processor, [[call([1]) + " " + "long " * 100]])
    r = R.Rollouts(processor, FAMILY, JudgeSpec(), REWARD_TOKEN, gen, max_completion_length=40)
    batch = r.run([row(sample_mp4)])
    assert batch.truncated == [True] and len(batch.completion_ids[0]) <= 40
    assert batch.results[0].reason == "truncated"  # not blamed on the format
    assert processor.tokenizer.decode(batch.completion_ids[0][-3:]) == R.IM_END + "\n" + REWARD_TOKEN
    assert batch.tool_mask[0][-3:] == [0, 0, 0] and batch.tool_calls == [0]
    # a tool result that would not fit ends the rollout before it is appended
    gen = scripted(processor, [[call([1, 2, 3, 4, 5, 6, 7, 8]), FINAL]])
    r = R.Rollouts(processor, FAMILY, JudgeSpec(), REWARD_TOKEN, gen, max_completion_length=60)
    batch = r.run([row(sample_mp4)])
    assert batch.truncated == [True] and batch.tool_calls == [0] and len(batch.completion_ids[0]) <= 60


def test_padded_layout(processor, sample_mp4):
    batch = rollouts(processor, [[FINAL], [call([1]), FINAL]]).run([row(sample_mp4)], num_generations=2)
    t = batch.padded(processor.tokenizer.pad_token_id)
    assert t["completion_ids"].shape == t["tool_mask"].shape == t["completion_mask"].shape
    assert t["completion_mask"].sum(1).tolist() == [len(c) for c in batch.completion_ids]
    assert (t["tool_mask"] <= t["completion_mask"]).all() and t["prompt_mask"].all()
    assert set(batch.metrics()) >= {"tools/calls_mean", "rollout/truncated_frac"}


def test_hf_generator_on_the_tiny_model(tiny_qwen25vl_dir, processor, sample_mp4):
    from cot_rm.model.modeling import ThinkThenScore

    model = ThinkThenScore.from_base(tiny_qwen25vl_dir).eval()
    tok = model.processor.tokenizer
    im_end = tok.convert_tokens_to_ids(R.IM_END)
    suppress = [tok.convert_tokens_to_ids(t) for t in ("<|video_pad|>", "<|image_pad|>", REWARD_TOKEN)]
    cfg = GenerationConfig(do_sample=True, temperature=1.0, top_k=0, eos_token_id=[im_end],
                           pad_token_id=tok.pad_token_id, suppress_tokens=suppress)  # fmt: skip
    gen = R.hf_turn_generator(model.vlm, cfg)
    r = R.Rollouts(model.processor, FAMILY, JudgeSpec(), REWARD_TOKEN, gen, max_completion_length=64,
                   max_turn_tokens=24)  # fmt: skip
    torch.manual_seed(0)
    batch = r.run([row(sample_mp4)], num_generations=2)
    assert len(batch.completion_ids) == 2 and batch.logprobs is None
    for comp, mask, res, trunc in zip(batch.completion_ids, batch.tool_mask, batch.results, batch.truncated,
                                      strict=True):  # fmt: skip
        assert len(comp) == len(mask) <= 64 and res is not None
        query = r.cut_query_ids if trunc else r.query_ids
        assert comp[-len(query) :] == query and mask[-len(query) :] == [0] * len(query)
        assert sum(mask) > 0 and all(t not in suppress for t, m in zip(comp, mask, strict=True) if m)


def test_rejects_unknown_stale_policy(processor):
    with pytest.raises(ValueError, match="stale_turns"):
        R.Rollouts(processor, FAMILY, JudgeSpec(), REWARD_TOKEN, lambda b: [], stale_turns="drop")


def test_sampling_object_rows(processor, sample_mp4):
    r = {**row(sample_mp4), "sampling": replace(SAMPLING, family="qwen3_vl")}  # family follows the model
    batch = rollouts(processor, [[FINAL]]).run([r])
    assert batch.media[0].videos[0].sampling.family == FAMILY


def test_window_with_an_error_round_in_between(processor, sample_mp4):
    spec = JudgeSpec(memory_window=1)
    script = [call([1, 5]), '<think>x</think><tool_call>{"name": bad</tool_call>', call([2]), FINAL]
    batch = rollouts(processor, [script], spec).run([row(sample_mp4)])
    assert batch.prompt_ids[0] + batch.completion_ids[0] == reference_ids(processor, batch, 0, spec)
    # turns 1 and 2 saw frames 1 and 5 (an error round does not take the window); in the final context
    # only frame 2's round keeps its images, so both are stale
    assert batch.stale_turns == [[1, 2]] and batch.media[0].image_refs == [
        {"video": str(sample_mp4), "frame": 2}
    ]


def test_qwen3_vl_ids_equal_the_rendered_conversation(tiny_qwen3vl_dir, sample_mp4):
    proc = AutoProcessor.from_pretrained(str(tiny_qwen3vl_dir))
    spec = JudgeSpec(memory_window=1)
    script = [call([1, 5]), call([2]), FINAL]
    gen = scripted(proc, [script])
    r = R.Rollouts(proc, "qwen3_vl", spec, REWARD_TOKEN, gen, max_turn_tokens=200)
    batch = r.run([{**row(sample_mp4), "sampling": replace(SAMPLING, family="qwen3_vl").to_dict()}])
    video = batch.media[0].videos[0]
    msgs = P.judgment_conversation("a red square", video, spec=spec, video_ref=video.path)
    msgs = P.apply_memory_window(msgs + batch.completions[0], spec.memory_window)
    text = P.render(proc, msgs, "qwen3_vl", spec) + REWARD_TOKEN
    enc = encode(proc, [text], videos=[video], images=batch.media[0].images)
    assert batch.prompt_ids[0] + batch.completion_ids[0] == enc["input_ids"][0].tolist()
    assert batch.stale_turns == [[1]] and len(batch.media[0].images) == 1


def test_hf_generator_after_a_tool_round_and_media_rebuild_the_inputs(tiny_qwen25vl_dir, sample_mp4):
    """Turn 0 scripted (a valid call), later turns by the real model with tool images in context; the
    media of each rollout rebuild exactly the vision inputs of its final sequence."""
    from cot_rm.model.modeling import ThinkThenScore
    from cot_rm.model.processing import mm_token_type_ids

    model = ThinkThenScore.from_base(tiny_qwen25vl_dir).eval()
    proc, spec = model.processor, JudgeSpec(memory_window=1)
    im_end = proc.tokenizer.convert_tokens_to_ids(R.IM_END)
    cfg = GenerationConfig(do_sample=False, eos_token_id=[im_end], pad_token_id=proc.tokenizer.pad_token_id)
    hf, first = R.hf_turn_generator(model.vlm, cfg), scripted(proc, [[call([1, 5])], [call([2])]])
    seen = []

    def hybrid(batch):
        seen.append(batch)
        return first(batch) if len(seen) == 1 else hf(batch)

    r = R.Rollouts(proc, FAMILY, spec, REWARD_TOKEN, hybrid, max_completion_length=300, max_turn_tokens=60)
    batch = r.run([row(sample_mp4)], num_generations=2)
    assert len(seen) >= 2 and seen[1].inputs["image_grid_thw"].shape[0] == 3  # frames 1, 5 and 2
    assert seen[1].key_hints["images"] == [f"{sample_mp4}|{f}|{PX}" for f in (1, 5, 2)]
    assert batch.tool_calls == [1, 1] and all(len(c) <= 300 for c in batch.completion_ids)
    for i in range(2):
        video = batch.media[i].videos[0]
        msgs = P.judgment_conversation("a red square", video, spec=spec, video_ref=video.path)
        text = P.render(proc, P.apply_memory_window(msgs + batch.completions[i], 1), FAMILY, spec)
        ref = encode(proc, [text + (R.IM_END if batch.truncated[i] else "") + REWARD_TOKEN], videos=[video],
                     images=batch.media[i].images)  # fmt: skip
        media = R.collate_media(batch.media[i : i + 1])
        assert set(media) == {k for k in ref if k not in ("input_ids", "attention_mask", "mm_token_type_ids")}
        assert all(torch.equal(media[k], ref[k]) for k in media)
        if not batch.truncated[i]:  # a cut turn's text is decoded, so only its ids are compared
            assert batch.prompt_ids[i] + batch.completion_ids[i] == ref["input_ids"][0].tolist()
    t = batch.padded(proc.tokenizer.pad_token_id)
    ids = torch.cat([t["prompt_ids"], t["completion_ids"]], 1)
    mask = torch.cat([t["prompt_mask"], t["completion_mask"]], 1)
    with torch.no_grad():
        out = model.vlm(input_ids=ids, attention_mask=mask, mm_token_type_ids=mm_token_type_ids(proc, ids),
                        **R.collate_media(batch.media))  # fmt: skip
    assert out.logits.shape[:2] == ids.shape and torch.isfinite(out.logits).all()


def test_generated_media_token_is_a_config_error(processor, sample_mp4):
    r = rollouts(processor, [["<think>a</think><|image_pad|>"]])
    with pytest.raises(ValueError, match="suppress_tokens"):
        r.run([row(sample_mp4)])
