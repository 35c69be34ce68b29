"""The judge's fast path (`cot_rm.judge.reuse`: media processed and through the tower once, keys and values
continued from) judges exactly as the old path (`Judge(reuse=False)`), on both model families, with tool
rounds happening: the same text, tool calls and parse errors, scores and answer probabilities within
1e-5, greedy and seeded sampling; and the pieces it is made of, by hand."""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pytest
import torch
from test_api import _Force  # every generated token scripted
from transformers import LogitsProcessorList

from cot_rm import protocol as P
from cot_rm.judge import prefix as kv
from cot_rm.judge.local import Judge
from cot_rm.judge.media import IMAGE, VIDEO, Media, MediaStore, tokens
from cot_rm.media.clip import as_clip
from cot_rm.media.video import Sampling
from cot_rm.model.modeling import ThinkThenScore

ANSWER = (
    '<answer>{"visual_quality": 4, "text_alignment": 3, "physical_consistency": 5, "overall": 3}</answer>'
)
NEAR = ("scores", "answer_probs")  # compared within 1e-5; every other key exactly


@pytest.fixture(scope="module")
def model(ckpt, family):
    sampling = Sampling(num_frames=4, max_pixels=56 * 56, family=family)
    return ThinkThenScore.from_base(ckpt, sampling=sampling).eval()


@pytest.fixture(scope="module")
def items(sample_mp4, make_mp4):
    other = make_mp4("reuse_other.mp4", num_frames=12, height=64, width=96)
    return [("a", str(sample_mp4), "a red square moving right"), ("b", str(other), "a red square"),
            ("c", str(sample_mp4), "two blue circles")]  # fmt: skip


def _judges(model, **kwargs) -> tuple[Judge, Judge]:
    kwargs = {"max_new_tokens": 24, "batch_size": 3, **kwargs}
    return Judge.from_model(model, reuse=False, **kwargs), Judge.from_model(model, **kwargs)


def _call(frames) -> str:
    return f"<think>Let me look at frames {frames[0]} and {frames[-1]}.</think>\n{P.format_tool_call(frames)}"


@contextmanager
def _scripted(model, turn_of):
    """Each `generate` call writes `turn_of(input_ids)` in every row, or the model's own turn for None."""
    tok, vlm = model.processor.tokenizer, model.vlm
    end = tok.convert_tokens_to_ids("<|im_end|>")
    generate = vlm.generate

    def scripted(**kw):
        turn = turn_of(kw["input_ids"])
        if turn is None:
            return generate(**kw)
        ids = tok.encode(turn, add_special_tokens=False) + [end]
        return generate(**{**kw, "max_new_tokens": len(ids) + 1}, logits_processor=LogitsProcessorList([_Force(ids)]))  # fmt: skip

    vlm.generate = scripted
    try:
        yield
    finally:
        vlm.generate = generate


def _in_order(turns):
    it = iter(turns)
    return lambda _ids: next(it)


def _tool_first(model, frames):
    """A tool call while the conversation holds no tool image yet, then the model's own turns."""
    image = model.processor.image_token_id
    return lambda ids: None if (ids == image).any() else _call(frames)


def _same(old: list[dict], new: list[dict]) -> None:
    assert len(old) == len(new)
    for a, b in zip(old, new, strict=True):
        assert {k: v for k, v in a.items() if k not in NEAR} == {k: v for k, v in b.items() if k not in NEAR}
        assert b["scores"] == pytest.approx(a["scores"], abs=1e-5, rel=0)
        if a["answer_probs"] is None:
            assert b["answer_probs"] is None
        else:
            for d, entry in a["answer_probs"].items():
                assert b["answer_probs"][d]["probs"] == pytest.approx(entry["probs"], abs=1e-5, rel=0)


def _draws(judgments: list[dict]) -> list[dict]:
    return [d for j in judgments for d in j["samples"]["judgments"]]


def test_scripted_tool_rounds_judge_as_the_old_path(model, items):
    old, new = _judges(model)
    # Two calls: the memory window (1 round) turns the first call's frames into text in round 3.
    turns = [_call([1, 2]), _call([0, 3]), f"<think>Frame 3 is sharp.</think>\n{ANSWER}"]
    with _scripted(model, _in_order(turns)):
        reference = old.judge(items)
    with _scripted(model, _in_order(turns)):
        judged = new.judge(items)
    _same(reference, judged)
    assert [j["tool_calls"] for j in judged] == [[{"frames": [1, 2], "error": None}, {"frames": [0, 3], "error": None}]] * 3  # fmt: skip
    assert all(j["parse_error"] is None and j["answer_probs"] for j in judged)
    counts = new.reuse.counts
    assert counts["tokens_reused"] > counts["tokens_run"]  # most of each round came from the cache
    # One processor and tower pass per distinct item: one video file (a, c) and b's, four frames each.
    media = new.reuse.media.counts
    assert media["misses"] == media["tower_calls"] == 2 + 2 * 4


def test_the_models_own_turns_after_a_tool_round_greedy(model, items):
    old, new = _judges(model)
    with _scripted(model, _tool_first(model, [2, 5])):
        reference = old.judge(items)
    with _scripted(model, _tool_first(model, [2, 5])):
        judged = new.judge(items)
    _same(reference, judged)
    assert all(j["tool_calls"][0] == {"frames": [2, 5], "error": None} for j in judged)
    again = new.judge(items[:1])  # no tool round: the stored prompt and video are used, the same judgment
    assert again[0]["rationale"] == old.judge(items[:1])[0]["rationale"]


def test_seeded_sampling_with_tool_rounds(model, items):
    old, new = _judges(model, batch_size=2)  # two batches: the second starts from stored prompts
    old, new = old.with_sampling(1.0), new.with_sampling(1.0)
    with _scripted(model, _tool_first(model, [1, 3])):
        reference = old.judge_samples(items, k=2, seed=11)
    with _scripted(model, _tool_first(model, [1, 3])):
        judged = new.judge_samples(items, k=2, seed=11)
    _same(_draws(reference), _draws(judged))
    for a, b in zip(reference, judged, strict=True):
        assert b["samples"]["scores_std"] == pytest.approx(a["samples"]["scores_std"], abs=1e-5)
    texts = [d["rationale"] for d in _draws(judged)]
    assert len(set(texts)) > 1  # the draws differ: sampling happened


def test_a_judgment_does_not_depend_on_what_came_before(model, items):
    """Stored prompts and media are the very bits a fresh judge computes: the same request gives the same
    judgment, and draw s of a seed is draw 0 of seed + s, exactly (not just within float noise)."""
    fresh = lambda: Judge.from_model(model, max_new_tokens=16, batch_size=2).with_sampling(1.0)  # noqa: E731
    judge = fresh()
    with _scripted(model, _tool_first(model, [1, 3])):
        first = judge.judge_samples(items, k=2, seed=3)
        assert judge.judge_samples(items, k=2, seed=3) == first  # warm stores
        assert len(judge.reuse.prefixes) > 0 and judge.reuse.counts["tokens_reused"] > 0
        shifted = fresh().judge_samples(items, k=1, seed=4)  # a fresh judge
    assert [j["samples"]["judgments"][0] for j in shifted] == [j["samples"]["judgments"][1] for j in first]


def test_turns_generated_elsewhere_score_alike_in_any_company(model, items):
    """`close` on turns written by another engine (the vLLM server's): within 1e-5 of the old path, and the
    very same bits whichever other judgments are scored with them (the server groups them by timing)."""
    old, new = _judges(model)

    def finished(judge) -> list:
        convs = [judge.open(rid, path, prompt) for rid, path, prompt in items]
        for k, conv in enumerate(convs):
            judge.advance(conv, f"<think>Draw {k}, frame {k + 1}.</think>\n{ANSWER}")
        return convs

    together = new.close(finished(new))
    _same(old.close(finished(old)), together)
    assert [new.close([conv])[0] for conv in finished(new)] == together


def test_items_of_one_size_are_told_apart_by_content(model, family):
    """Two clips whose tokens are the same (same size, frame count, fps and prompt) but whose pixels differ:
    the second must not continue from the first one's video."""
    rng = np.random.default_rng(0)
    clips = [as_clip(rng.integers(0, 256, (16, 64, 64, 3), dtype=np.uint8), fps=8, name=f"clip{i}") for i in range(2)]  # fmt: skip
    old, new = _judges(model, max_new_tokens=8)
    new.judge([("x", clips[0], "a red square")])
    _same(old.judge([("y", clips[1], "a red square")]), new.judge([("y", clips[1], "a red square")]))
    assert new.reuse.media.counts["misses"] == 2


def test_media_reuse_alone_where_keys_and_values_cannot_be(model, items):
    old, new = _judges(model)
    new.reuse.kv = False  # what a model with sliding-window layers gets
    with _scripted(model, _tool_first(model, [1, 2])):
        reference = old.judge(items)
    with _scripted(model, _tool_first(model, [1, 2])):
        judged = new.judge(items)
    _same(reference, judged)
    assert new.reuse.counts["tokens_reused"] == 0 and new.reuse.media.counts["hits"] > 0
    assert kv.supported(model.base_vlm.config)


def test_media_are_the_same_bits_computed_together_or_alone(model, items):
    """Items of several sizes processed in one call: each is what it is alone (the tower sees each alone)."""
    judge = Judge.from_model(model)
    convs = [judge.open(rid, path, prompt) for rid, path, prompt in items[:2]]  # two sizes of video
    for conv in convs:
        judge.advance(conv, _call([1, 4]))
    listed = [judge._media(conv, judge.context(conv)) for conv in convs]
    for kind in (VIDEO, IMAGE):
        wanted = [entry[1:] for row in listed for entry in row if entry[0] == kind]
        together = MediaStore(model).get(kind, wanted)
        alone = [MediaStore(model).get(kind, [one])[0] for one in wanted]
        for a, b in zip(together, alone, strict=True):
            assert (a.ids, a.grid, a.seconds) == (b.ids, b.grid, b.seconds) and torch.equal(
                a.embeds, b.embeds
            )
            assert len(a.deepstack) == len(b.deepstack) and all(map(torch.equal, a.deepstack, b.deepstack))


def test_the_tokens_are_the_processors(model, items):
    """A conversation with a video and tool images: the spliced tokens equal the processor's own."""
    old, new = _judges(model)
    convs = [old.open(rid, path, prompt) for rid, path, prompt in items[:2]]
    for conv in convs:
        old.advance(conv, _call([1, 4]))
    texts, inputs = old._encoded(convs, final=False)
    rendered, media = new._rendered(convs, final=False)
    assert rendered == texts
    resolved = new.reuse._media(media)
    for b, (ids, spans) in enumerate(tokens(model.processor, texts, resolved)):
        assert ids == inputs["input_ids"][b][inputs["attention_mask"][b].bool()].tolist()
        kinds = [m.kind for m in resolved[b]]
        assert kinds == [VIDEO, IMAGE, IMAGE]
        pads = {VIDEO: model.processor.video_token_id, IMAGE: model.processor.image_token_id}
        for (start, end), kind in zip(spans, kinds, strict=True):  # each span holds its item's pads
            assert pads[kind] in ids[start:end] and start < end


# ------------------------------------------------------------------------------------------- by hand


def _prefix(ids: list[int], media=(), bounds=()) -> kv.Prefix:
    n = len(ids)
    keys = (torch.arange(n, dtype=torch.float).view(1, n, 1).expand(2, n, 3).clone(),)
    return kv.Prefix(torch.tensor(ids), tuple(media), keys, tuple(k + 100 for k in keys), tuple(bounds))


def test_shared_tokens_stop_at_the_first_difference_and_at_another_item():
    p = _prefix([1, 2, 9, 9, 9, 3, 4], media=[(2, "v1")])
    assert kv.shared(p, torch.tensor([1, 2, 9, 9, 9, 3, 5, 6]), ((2, "v1"),)) == 6
    assert kv.shared(p, torch.tensor([1, 2, 9, 9, 9, 3, 4]), ((2, "v2"),)) == 2  # same tokens, other video
    assert kv.shared(p, torch.tensor([1, 2]), ()) == 2
    # A cut inside an item moves to its start; a limit keeps the last tokens to run.
    assert kv.cut_at(4, [(2, 5)], limit=10) == 2 and kv.cut_at(6, [(2, 5)], limit=4) == 2
    assert kv.cut_at(6, [(2, 5)], limit=10) == 6 and kv.cut_at(5, [(2, 5)], limit=10) == 5


def test_layout_pads_the_reused_and_the_new_part_apart():
    p = _prefix([5, 6, 7, 8])
    lay = kv.layout([([5, 6, 7, 8, 1, 2], p, 3), ([5, 6, 3], p, 1), ([4, 4, 4, 4], None, 0)], pad_id=0,
                    config=None, device="cpu")  # fmt: skip
    assert (lay.reused, lay.new) == (3, 4)
    assert lay.ids.tolist() == [[5, 6, 7, 0, 8, 1, 2], [0, 0, 5, 0, 0, 6, 3], [0, 0, 0, 4, 4, 4, 4]]
    assert lay.mask.tolist() == [[1, 1, 1, 0, 1, 1, 1], [0, 0, 1, 0, 0, 1, 1], [0, 0, 0, 1, 1, 1, 1]]
    (keys, values) = next(iter((layer.keys, layer.values) for layer in lay.cache.layers))
    assert keys.shape == (3, 2, 3, 3) and keys[0, 0, :, 0].tolist() == [0, 1, 2]
    assert keys[1, 0, :, 0].tolist() == [0, 0, 0] and values[1, 0, 2, 0] == 100  # row 1 reuses token 0
    assert kv.layout([([1, 2], None, 0)], 0, None, "cpu").cache is None


def test_rows_of_a_cache_keep_their_real_tokens():
    lay = kv.layout([([5, 6, 7], _prefix([5, 6]), 2), ([5, 9], _prefix([5]), 1)], 0, None, "cpu")
    rows = kv.rows_of(lay.cache, lay.ids, lay.mask, [((0, "v"),), ()])
    assert [r.ids.tolist() for r in rows] == [[5, 6], [5]]
    assert rows[0].keys[0][0, :, 0].tolist() == [0, 1] and rows[0].media == ((0, "v"),)
    assert rows[0].head(1).ids.tolist() == [5] and rows[0].head(1).media == ((0, "v"),)
    chunked = _prefix([1, 2, 3], bounds=(1, 3)).head(2)
    assert chunked.bounds == (1,) and chunked.keys[0].shape == (2, 2, 3)


def test_the_store_reuses_only_up_to_a_chunk_end_both_have():
    store = kv.PrefixStore(max_bytes=_prefix([1] * 5).nbytes * 2)  # room for 10 tokens
    store.add(_prefix([1, 2, 3], bounds=(2, 3)))
    store.add(_prefix([1, 2, 4, 5], bounds=(2, 4)))
    store.add(_prefix([1, 2], bounds=(2,)))  # held already (a stored prefix starts with it, chunk included)
    assert len(store) == 2
    found, n = store.best(torch.tensor([1, 2, 4, 5, 6]), (), bounds=(2, 4))
    assert n == 4 and found.ids.tolist() == [1, 2, 4, 5]
    # 3 tokens shared with [1, 2, 4, 5], but 3 ends no chunk of it: up to 2, from the shortest holder.
    found, n = store.best(torch.tensor([1, 2, 4, 6]), (), bounds=(2, 3))
    assert n == 2 and found.ids.tolist() == [1, 2, 3]
    assert store.best(torch.tensor([1, 2, 4, 6]), (), bounds=(3,)) == (None, 0)
    store.add(_prefix([7] * 5, bounds=(5,)))  # 12 tokens: the least recently used ([1, 2, 4, 5]) goes
    assert len(store) == 2 and store.best(torch.tensor([1, 2, 4, 5]), (), bounds=(2, 4))[1] == 2


def test_media_tokens_refuse_a_mismatch(model):
    item = Media(IMAGE, [model.processor.image_token_id] * 2, (1, 2, 2), None, torch.zeros(2, 4))
    with pytest.raises(ValueError, match="do not match"):
        tokens(model.processor, ["a <|video_pad|> b"], [[item]])
