"""The tiny random checkpoints load back with the Auto classes and run the real video path.

For each family: real mp4 -> `cot_rm.media.video.read_video` -> `cot_rm.model.processing.encode` -> forward
(3-D mrope positions) and `generate`.
"""

from __future__ import annotations

import re

import pytest
import torch
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

from cot_rm.media.video import Sampling, read_frames_at, read_video
from cot_rm.model.processing import encode, expected_video_grid
from cot_rm.model.tiny import (
    REWARD_TOKEN,
    build_processor,
    build_tiny_checkpoint,
    build_tokenizer,
    chat_template,
)

ARCHITECTURE = {
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "qwen3_vl": "Qwen3VLForConditionalGeneration",
}
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>"]
SPECIAL += ["<|image_pad|>", "<|video_pad|>", REWARD_TOKEN]
PLAIN_ADDED = ["<tool_call>", "</tool_call>"]  # single tokens, but kept by skip_special_tokens


@pytest.fixture(scope="module")
def model(ckpt):
    return AutoModelForImageTextToText.from_pretrained(ckpt).eval()


@pytest.fixture(scope="module")
def processor(ckpt):
    return AutoProcessor.from_pretrained(ckpt)


@pytest.fixture(scope="module")
def video(family, sample_mp4):
    return read_video(sample_mp4, Sampling(family=family))


def render(processor, prompt: str) -> str:
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": prompt}]}]
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


@pytest.fixture(scope="module")
def batch(processor, video):
    return encode(processor, [render(processor, "Rate this video.")], [video])


def rope_positions(model, batch) -> torch.Tensor:
    keys = ("video_grid_thw", "second_per_grid_ts", "attention_mask")
    extra = {k: batch[k] for k in keys if k in batch}
    positions, _ = model.model.get_rope_index(
        batch["input_ids"], mm_token_type_ids=batch["mm_token_type_ids"], **extra
    )
    return positions


# ------------------------------------------------------------------------------------ the folder


def test_folder_holds_safetensors_only(ckpt):
    names = {p.name for p in ckpt.iterdir()}
    assert "model.safetensors" in names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".ckpt"))]
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert name in names
    assert {"preprocessor_config.json", "video_preprocessor_config.json", "chat_template.jinja"} <= names
    assert sum(p.stat().st_size for p in ckpt.iterdir()) < 10 * 2**20


def test_config_matches_tokenizer(ckpt, family):
    config = AutoConfig.from_pretrained(ckpt)
    tok = AutoTokenizer.from_pretrained(ckpt)
    assert config.architectures == [ARCHITECTURE[family]]
    assert config.text_config.vocab_size == len(tok)
    assert config.text_config.hidden_size // config.text_config.num_attention_heads == 64  # vLLM CPU
    vision = config.vision_config
    assert vision.hidden_size // vision.num_heads == 64
    assert vision.out_hidden_size == config.text_config.hidden_size
    assert config.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert config.video_token_id == tok.convert_tokens_to_ids("<|video_pad|>")
    assert config.vision_start_token_id == tok.convert_tokens_to_ids("<|vision_start|>")
    assert config.vision_end_token_id == tok.convert_tokens_to_ids("<|vision_end|>")


def test_tokenizer_special_tokens(ckpt, family):
    tok = AutoTokenizer.from_pretrained(ckpt)
    for token in SPECIAL + PLAIN_ADDED + (["<think>", "</think>"] if family == "qwen3_vl" else []):
        assert tok.tokenize(token) == [token], token
    assert set(SPECIAL) - {"<|endoftext|>"} <= set(tok.all_special_tokens)
    assert (tok.eos_token, tok.pad_token) == ("<|im_end|>", "<|endoftext|>")
    text = '<tool_call>{"name": "select_frames", "arguments": {"frames": [12, 13]}}</tool_call>'
    ids = tok(f"<|im_start|>{text}{REWARD_TOKEN}<|im_end|>")["input_ids"]
    assert tok.decode(ids, skip_special_tokens=True) == text  # byte-level round trip, plain tokens kept
    assert tok.decode(tok("héllo wörld ✓ 3.75")["input_ids"]) == "héllo wörld ✓ 3.75"


def test_processor_round_trip(ckpt, family, processor):
    assert processor.chat_template == chat_template(family)
    assert processor.tokenizer.chat_template == chat_template(family)
    fresh = build_processor(family, build_tokenizer(family))
    assert type(processor) is type(fresh)
    for loaded, built in [
        (processor.image_processor, fresh.image_processor),
        (processor.video_processor, fresh.video_processor),
    ]:
        assert type(loaded) is type(built)
        for attr in ("patch_size", "merge_size", "temporal_patch_size", "size", "image_mean", "image_std"):
            assert getattr(loaded, attr) == getattr(built, attr), attr
    assert processor.video_processor.patch_size == (14 if family == "qwen2_5_vl" else 16)


# ----------------------------------------------------------------------------- encode + forward


def test_encode_keeps_our_frames_and_metadata(processor, video, batch, family):
    grid = tuple(batch["video_grid_thw"][0].tolist())
    assert grid == expected_video_grid(processor, video)
    video_id = processor.video_token_id
    assert int((batch["input_ids"] == video_id).sum()) == video.video_tokens
    assert torch.equal(batch["mm_token_type_ids"] == 2, batch["input_ids"] == video_id)
    sampled_fps = len(video.indices) / video.total_frames * video.fps
    if family == "qwen2_5_vl":  # temporal rope spacing comes from the metadata, not the 24 fps default
        assert batch["second_per_grid_ts"].tolist() == pytest.approx([2 / sampled_fps])
    else:  # Qwen3-VL writes per-frame-pair timestamps into the prompt, from frames_indices + fps
        text = processor.tokenizer.decode(batch["input_ids"][0])
        first = (video.indices[0] + video.indices[1]) / 2 / video.fps
        assert re.findall(r"<([\d.]+) seconds>", text)[0] == f"{first:.1f}"


def test_encode_rejects_frames_sized_for_the_other_family(processor, family, sample_mp4):
    other = "qwen3_vl" if family == "qwen2_5_vl" else "qwen2_5_vl"
    wrong = read_video(sample_mp4, Sampling(family=other))
    with pytest.raises(ValueError, match="not multiples of"):
        encode(processor, [render(processor, "Rate.")], [wrong])


def test_forward_uses_3d_mrope(model, batch):
    positions = rope_positions(model, batch)
    seq_len = batch["input_ids"].shape[1]
    assert positions.shape == (3, 1, seq_len)
    is_video = batch["mm_token_type_ids"][0] == 2
    t, h, w = positions[:, 0, is_video]
    assert len(t.unique()) > 1 and not torch.equal(h, w) and not torch.equal(t, h)
    assert positions.max() < seq_len - 1  # video tokens share positions: compressed rope
    with torch.no_grad():
        logits = model(**batch).logits
    assert model.model.rope_deltas is not None and int(model.model.rope_deltas) < 0
    assert logits.shape == (1, seq_len, model.config.text_config.vocab_size)
    assert torch.isfinite(logits).all()


def test_missing_mm_token_type_ids_is_not_the_same_model(model, batch):
    """The pitfall `encode` guards against: Qwen2.5-VL silently falls back to 1-D positions
    without `mm_token_type_ids` (Qwen3-VL raises)."""
    no_types = {k: v for k, v in batch.items() if k != "mm_token_type_ids"}
    with torch.no_grad():
        logits = model(**batch).logits
        try:
            logits_1d = model(**no_types).logits
        except ValueError as err:
            assert "mm_token_type_ids" in str(err)
            return
    assert not torch.allclose(logits, logits_1d)


def test_generate(model, processor, batch):
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    prompt_len = batch["input_ids"].shape[1]
    assert out.shape == (1, prompt_len + 3)
    assert torch.equal(out[:, :prompt_len], batch["input_ids"])
    assert isinstance(processor.batch_decode(out[:, prompt_len:])[0], str)


def test_left_padded_batch_matches_single(model, processor, family, sample_mp4, video, batch):
    short = read_video(sample_mp4, Sampling(family=family, fps=1.0))
    texts = [render(processor, "Rate this video, please, in detail."), render(processor, "Rate.")]
    padded = encode(processor, texts, [video, short], padding_side="left")
    single = encode(processor, texts[1:], [short])
    assert padded["attention_mask"][1].sum() == single["input_ids"].shape[1]
    with torch.no_grad():
        last_padded = model(**padded).logits[1, -1]
        last_single = model(**single).logits[0, -1]
    assert torch.allclose(last_padded, last_single, atol=1e-4)


def test_video_plus_tool_frames(model, processor, family, sample_mp4, video):
    """The select_frames round trip: tool images (already factor-aligned) are not resized again."""
    images = read_frames_at(sample_mp4, [12, 13], max_pixels=160 * 160, family=family)
    call = '<tool_call>{"name": "select_frames", "arguments": {"frames": [12, 13]}}</tool_call>'
    messages = [
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Rate this video."}]},
        {"role": "assistant", "content": f"<think>Frame 12 looks odd.</think>{call}"},
        {
            "role": "tool",
            "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "12, 13"}],
        },
    ]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    batch = encode(processor, [text], [video], images=images)
    patch = processor.image_processor.patch_size
    expected = [[1, im.height // patch, im.width // patch] for im in images]
    assert batch["image_grid_thw"].tolist() == expected
    assert int((batch["mm_token_type_ids"] == 1).sum()) == sum(t * h * w // 4 for t, h, w in expected)
    with torch.no_grad():
        assert torch.isfinite(model(**batch).logits).all()


# -------------------------------------------------------------------------------------- building


def test_build_is_idempotent_and_seeded(tmp_path, tiny_qwen25vl_dir):
    path = build_tiny_checkpoint(tmp_path / "a", "qwen2_5_vl", seed=0)
    weights = (path / "model.safetensors").read_bytes()
    assert weights == (tiny_qwen25vl_dir / "model.safetensors").read_bytes()  # deterministic in seed
    mtime = (path / "model.safetensors").stat().st_mtime_ns
    assert build_tiny_checkpoint(path, "qwen2_5_vl", seed=0) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == mtime  # reused, not rebuilt
    other = build_tiny_checkpoint(tmp_path / "b", "qwen2_5_vl", seed=1)
    assert (other / "model.safetensors").read_bytes() != weights
    with pytest.raises(FileExistsError):
        build_tiny_checkpoint(path, "qwen3_vl")
    with pytest.raises(ValueError):
        build_tiny_checkpoint(tmp_path / "c", "llava")
