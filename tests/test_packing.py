"""cot_rm.model.packing on the tiny checkpoints of both families: a packed (padding-free) batch gives the padded
batch's LM loss, head outputs and gradients, with transformers' sdpa (block-diagonal mask from the text
positions) and with the per-sequence `varlen_sdpa`."""

from __future__ import annotations

import pytest
import torch

from cot_rm.media.video import Sampling, read_frames_at, read_video
from cot_rm.model.modeling import ThinkThenScore
from cot_rm.model.packing import IGNORE, VARLEN_SDPA, pack_batch, packed_forward, sft_forward, use_varlen_sdpa
from cot_rm.model.processing import encode
from cot_rm.model.tiny import REWARD_TOKEN
from cot_rm.train.common import lm_loss

# Very different lengths, as rationale dropout gives: a head-only sample, a short and a long critique.
ANSWERS = [None, "<think>Sharp.</think><answer>{\"overall\": 4}</answer>",
           "<think>" + "The square jumps at frame 12 and its colour is wrong. " * 12 + "</think>"
           "<answer>{\"overall\": 2}</answer>"]  # fmt: skip
MODEL_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw",
              "pixel_values_videos", "video_grid_thw", "second_per_grid_ts")  # fmt: skip


@pytest.fixture(scope="module")
def model(ckpt):
    torch.manual_seed(0)
    return ThinkThenScore.from_base(ckpt, attn_implementation="sdpa").eval()


@pytest.fixture(scope="module")
def batch(model, family, make_mp4):
    """Three sequences, right-padded: two videos of different sizes, one tool image in the middle row."""
    clips = [
        make_mp4("pack_a.mp4", num_frames=16),
        make_mp4("pack_b.mp4", num_frames=24, height=64, width=96),
    ]
    sampling = Sampling(family=family, num_frames=4, max_pixels=64 * 96)
    videos = [read_video(clips[i % 2], sampling) for i in range(3)]
    images = read_frames_at(clips[0], [3], 64 * 64, family)
    texts = []
    for i, answer in enumerate(ANSWERS):
        user = [{"type": "video"}, {"type": "text", "text": f"Rate video {i}."}]
        if i == 1:
            user.append({"type": "image"})
        messages = [{"role": "user", "content": user}]
        if answer is not None:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
        texts.append(model.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=answer is None)
                     + REWARD_TOKEN)  # fmt: skip
    out = dict(encode(model.processor, texts, videos, images))
    labels = torch.full_like(out["input_ids"], IGNORE)
    for i, answer in enumerate(ANSWERS):  # the LM loss on the last 40 real tokens of each critique
        n = int(out["attention_mask"][i].sum())
        if answer is not None:
            labels[i, n - 41 : n - 1] = out["input_ids"][i, n - 41 : n - 1]
    out["labels"] = labels
    out["head_target"] = torch.rand(3, 4)  # any non-token key passes through the packer
    return out


def padded_outputs(model, batch):
    out = model(**{k: batch[k] for k in MODEL_KEYS if k in batch})
    return out, lm_loss(out.logits, batch["labels"])


def test_pack_layout(model, batch):
    packed = pack_batch(batch, model)
    lengths = batch["attention_mask"].sum(-1)
    n = int(lengths.sum())
    assert lengths.unique().numel() == 3  # really different lengths: the padded batch has pads
    assert packed["input_ids"].shape == packed["labels"].shape == (1, n) and "attention_mask" not in packed
    assert packed["position_ids"].shape == (4, 1, n)
    starts = (packed["position_ids"][0, 0] == 0).nonzero().flatten()
    assert starts.tolist() == (torch.cumsum(lengths, 0) - lengths).tolist()
    assert (packed["labels"][0, starts] == IGNORE).all()
    assert (packed["input_ids"][0, packed["reward_index"]] == model.reward_token_id).all()
    assert torch.equal(packed["head_target"], batch["head_target"])
    assert torch.equal(packed["pixel_values_videos"], batch["pixel_values_videos"])
    # the real tokens and labels of each row, in order
    mask = batch["attention_mask"].bool()
    assert torch.equal(packed["input_ids"][0], batch["input_ids"][mask])
    assert int((packed["labels"] != IGNORE).sum()) == int((batch["labels"] != IGNORE).sum())


@pytest.mark.parametrize("attention", ["sdpa", VARLEN_SDPA])
def test_packed_forward_equals_padded(model, batch, attention):
    with torch.no_grad():
        ref, ref_loss = padded_outputs(model, batch)
        use_varlen_sdpa(model, attention == VARLEN_SDPA)
        try:
            packed = pack_batch(batch, model)
            out = packed_forward(model, packed)
        finally:
            use_varlen_sdpa(model, False)
    assert out.rewards.shape == ref.rewards.shape == (3, 4)
    torch.testing.assert_close(out.rewards, ref.rewards, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(lm_loss(out.logits, packed["labels"]), ref_loss, atol=1e-5, rtol=1e-5)
    # the logits of every real token agree with the padded row's
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(out.logits[0], ref.logits[mask], atol=1e-4, rtol=1e-4)


def test_packed_gradients_equal_padded(ckpt, batch):
    grads = []
    for packed in (False, True):
        torch.manual_seed(0)
        model = ThinkThenScore.from_base(ckpt, attn_implementation="sdpa").train()
        use_varlen_sdpa(model, packed)
        if packed:
            p = pack_batch(batch, model)
            out = packed_forward(model, p)
            lm = lm_loss(out.logits, p["labels"])
        else:
            out, lm = padded_outputs(model, batch)
        (lm + out.rewards.square().mean()).backward()
        grads.append({n: q.grad.clone() for n, q in model.named_parameters() if q.grad is not None})
    assert grads[0].keys() == grads[1].keys() and any("head" in n for n in grads[0])
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-5, rtol=1e-3, msg=name)


def test_sft_forward_padded_and_packed_agree(model, batch):
    inputs = {k: batch[k] for k in MODEL_KEYS if k in batch}
    with torch.no_grad():
        (padded, labels), (packed, packed_labels) = (
            sft_forward(model, inputs, batch["labels"], packing=p) for p in (False, True)
        )
    assert packed_labels.shape == (1, int(batch["attention_mask"].sum())) and labels is batch["labels"]
    torch.testing.assert_close(packed.rewards, padded.rewards, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(lm_loss(packed.logits, packed_labels), lm_loss(padded.logits, labels))


def test_lora_models_reach_the_inner_model(ckpt):
    """PEFT sets `peft_config` on the HF model it wraps too: only a PeftModel may be unwrapped (this used to
    crash LoRA training with packing, `model.lora.r=8 data.packing=true`)."""
    from cot_rm.model.modeling import LoraSettings
    from cot_rm.model.packing import _inner, use_varlen_sdpa

    model = ThinkThenScore.from_base(ckpt, lora=LoraSettings(r=2, dropout=0.0), attn_implementation="sdpa")
    assert type(_inner(model)).__name__ in ("Qwen2_5_VLModel", "Qwen3VLModel")
    assert hasattr(model.vlm.get_base_model(), "peft_config")  # what fooled the old check
    use_varlen_sdpa(model)
    assert _inner(model).language_model.config._attn_implementation != "sdpa"
    use_varlen_sdpa(model, False)
    with pytest.raises(ValueError, match="is a cot-rm checkpoint, not a base model"):
        ThinkThenScore.from_base(model.save_pretrained(ckpt.parent / f"lora_rm_{ckpt.name}"))
