"""A tiny random Qwen2.5-VL / Qwen3-VL checkpoint, built locally from nothing (no hub access).

Tests, the CPU demo and the benchmarks use it to run the same code paths as a 7B model in seconds:
a byte-level BPE tokenizer trained on a small built-in corpus (with the real Qwen special tokens and
the project's `<|reward|>` query token), the real processor classes with the chat templates that TRL
ships, and a randomly initialised model saved as safetensors.

    from cot_rm.model.tiny import build_tiny_checkpoint
    path = build_tiny_checkpoint("runs/tiny_qwen25vl", family="qwen2_5_vl")

The folder is a standard `save_pretrained` checkpoint that transformers and vLLM (CPU) load:
config.json, generation_config.json, model.safetensors, tokenizer files, chat_template.jinja,
preprocessor_config.json, video_preprocessor_config.json, processor_config.json.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import SimpleNamespace

import torch
from tokenizers import AddedToken, Regex, Tokenizer, pre_tokenizers, trainers
from tokenizers.models import BPE
from transformers import (
    GenerationConfig,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2Tokenizer,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessor,
    Qwen3VLVideoProcessor,
)

from cot_rm import protocol
from cot_rm.model.config import REWARD_TOKEN

FAMILIES = ("qwen2_5_vl", "qwen3_vl")
# Each family's processor and video processor classes.
PROCESSORS = {
    "qwen2_5_vl": (Qwen2_5_VLProcessor, Qwen2VLVideoProcessor),
    "qwen3_vl": (Qwen3VLProcessor, Qwen3VLVideoProcessor),
}
# Bump when the built checkpoint changes, so stale cached folders are not silently reused.
BUILDER_VERSION = 2
MARKER = "cot_rm_tiny.json"
_REQUIRED_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "preprocessor_config.json",
    "video_preprocessor_config.json",
)

# Same pre-tokenisation as the real Qwen2 tokenizer (transformers' Qwen2Tokenizer): the merges we
# train must be learned on the very pieces that class will split text into when it is loaded back.
_QWEN_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# Real Qwen2.5-VL added tokens, in their real order (ids follow the BPE vocabulary). `special`
# mirrors the real tokenizer: <tool_call> & co. are plain added tokens, so they survive
# `skip_special_tokens=True` decoding (the protocol parser needs them in the text).
_QWEN25_ADDED = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
)
# Qwen3(-VL) appends these four (non-special) after <|file_sep|>.
_QWEN3_EXTRA = (
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
)

# Small deterministic corpus: English critique prose, JSON answers, digits, protocol words.
_CORPUS_LINES = (
    "The video shows a red ball rolling from the left edge of the frame to the right edge.",
    "A blue square moves up while the background stays still; the motion is smooth and steady.",
    "In frame 12 the object flickers, and in frame 13 it teleports to the other side.",
    "The colours look washed out and there is visible noise in the dark regions of the scene.",
    "Physical consistency is poor: the ball passes through the wall instead of bouncing back.",
    "The prompt asks for a green circle, but the video shows a yellow triangle moving down.",
    "Overall the clip is coherent, sharp and follows the prompt closely, with minor artifacts.",
    "<think>Let me inspect frames 4 and 5 more closely before scoring.</think>",
    "<think>The motion between frame 7 and frame 8 is discontinuous, so physics is wrong.</think>",
    '<tool_call>{"name": "select_frames", "arguments": {"frames": [12, 13]}}</tool_call>',
    '<answer>{"visual_quality": 4, "text_alignment": 2, "physical_consistency": 3, "overall": 3}</answer>',
    '{"id": "toy-0001", "video": "videos/0001.mp4", "prompt": "a red ball rolls to the right"}',
    '{"scores": {"visual_quality": 3.5, "text_alignment": 4.0, "overall": 3.75}, "meta": {}}',
    '{"preference": "A", "dims": {"visual_quality": "tie", "text_alignment": "B"}}',
    "visual_quality text_alignment physical_consistency overall frame frames video prompt score",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 24 30 32 48 64 100 128 224 448 0.5 1.0 2.5 seconds",
    "You are a helpful assistant. You are a careful judge of generated videos.",
    "The user wants a critique. The assistant reasons step by step, then answers in JSON.",
    "Error: frame 99 is out of range; the video has 32 frames (0 to 31).",
)


@dataclass(frozen=True)
class _FamilySpec:
    """What differs between the two families, taken from the released checkpoints' configs."""

    patch_size: int
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    # (min, max) pixels. Max: Qwen's recommended 1280 tokens per image, 768 per Qwen2.5-VL frame (a
    # per-frame cap) and the released Qwen3-VL total-video budget; keeps vLLM's worst-case profiling
    # of the vision tower cheap on CPU. Min: 4 merged tokens, so a serving stack that does resize
    # never upscales the small frames `cot_rm.media.video` already resized (token counts would drift).
    image_pixels: tuple[int, int]
    video_pixels: tuple[int, int]
    template: str  # file name in trl/chat_templates
    added_tokens: tuple[tuple[str, bool], ...]


_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_SPECS = {
    "qwen2_5_vl": _FamilySpec(
        patch_size=14,
        image_mean=_CLIP_MEAN,
        image_std=_CLIP_STD,
        image_pixels=(4 * 28 * 28, 1280 * 28 * 28),
        video_pixels=(4 * 28 * 28, 768 * 28 * 28),
        template="qwen2_5_vl.jinja",
        added_tokens=_QWEN25_ADDED,
    ),
    "qwen3_vl": _FamilySpec(
        patch_size=16,
        image_mean=(0.5, 0.5, 0.5),
        image_std=(0.5, 0.5, 0.5),
        image_pixels=(4 * 32 * 32, 1280 * 32 * 32),
        video_pixels=(4 * 32 * 32, 25165824),
        template="qwen3_vl.jinja",
        added_tokens=_QWEN25_ADDED + _QWEN3_EXTRA,
    ),
}


def _spec(family: str) -> _FamilySpec:
    if family not in _SPECS:
        raise ValueError(f"unknown model family {family!r}; expected one of {FAMILIES}")
    return _SPECS[family]


def chat_template(family: str) -> str:
    """The stock chat template of `family`, read from the TRL package (the real released one)."""
    name = _spec(family).template
    return resources.files("trl").joinpath("chat_templates", name).read_text(encoding="utf-8")


# ----------------------------------------------------------------------------------------- tokenizer


def _corpus() -> list[str]:
    """The fixed lines plus the protocol's own texts: a judgment conversation then tokenises into far
    fewer tokens (the system prompt and tool schema repeat in every sample), which makes the tiny
    model's CPU training several times cheaper per sample. Still deterministic."""
    words = ("red yellow green cyan blue purple circle circles square squares triangle triangles diamond "
             "diamonds one two three moving left right up down slowly fast quickly on a white black grey "
             "background flicker noise blur blockiness banding teleport freeze reversal morphing wall speed "
             "inspected closely agree confirms excellent good mediocre poor very bad flawless")  # fmt: skip
    frames = SimpleNamespace(indices=[0, 5, 10, 15], timestamps=[0, 0.625, 1.25, 1.875], total_frames=16, fps=8.0,
                             duration_s=2.0, path="v.mp4")  # fmt: skip
    user = protocol.user_turn("two red circles moving left slowly on a white background", frames)["content"][
        1
    ]["text"]
    template = protocol.chat_template("qwen3_vl")  # its tool header is in every sample's system turn
    return [
        *_CORPUS_LINES,
        protocol.system_prompt(),
        json.dumps(protocol.tool_schema()),
        words,
        user,
        template,
    ]


def _train_bpe(vocab_size: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    tok = Tokenizer(BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        # All 256 byte symbols, so any text (any language, any byte) stays encodable.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # The BPE trainer is deterministic for a fixed corpus order (ties break on pair order).
    tok.train_from_iterator(list(_corpus()) * 4, trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    # tokenizer.json stores merges as lists; Qwen2Tokenizer's BPE wants tuples.
    return model["vocab"], [tuple(m) for m in model["merges"]]


def build_tokenizer(family: str = "qwen2_5_vl", vocab_size: int = 2048):
    """A `Qwen2Tokenizer` (fast, tokenizers-backed) with the family's special tokens + `<|reward|>`.

    eos is `<|im_end|>` and pad is `<|endoftext|>`, as in the released Instruct checkpoints.
    """
    spec = _spec(family)
    vocab, merges = _train_bpe(vocab_size)
    # Start with <|endoftext|> only, so the added tokens get ids in the real order after the BPE vocab.
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        model_max_length=32768,
    )
    added = [*spec.added_tokens, (REWARD_TOKEN, True)]
    tokenizer.add_tokens([AddedToken(t, special=s, normalized=False) for t, s in added])
    extra = [t for t, s in added if s and t != "<|endoftext|>"]
    tokenizer.add_special_tokens({"eos_token": "<|im_end|>", "extra_special_tokens": extra})
    tokenizer.chat_template = chat_template(family)
    return tokenizer


# ----------------------------------------------------------------------------------------- processor


def build_processor(family: str, tokenizer):
    """The family's real processor classes around `tokenizer`: released patch/merge/normalisation
    settings, pixel bounds from `_FamilySpec`, the stock chat template."""
    spec = _spec(family)
    common = {
        "patch_size": spec.patch_size,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "image_mean": list(spec.image_mean),
        "image_std": list(spec.image_std),
    }
    image_processor = Qwen2VLImageProcessor(
        size={"shortest_edge": spec.image_pixels[0], "longest_edge": spec.image_pixels[1]}, **common
    )
    video_size = {"shortest_edge": spec.video_pixels[0], "longest_edge": spec.video_pixels[1]}
    # cap_pixels_per_frame=False: today's behaviour, stated explicitly to silence the per-call warning
    # (transformers 5.17-5.21 warn when it is unset; the capped mode would shrink our frames).
    Processor, VideoProcessor = PROCESSORS[family]
    video_processor = VideoProcessor(size=video_size, cap_pixels_per_frame=False, **common)
    return Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=chat_template(family),
    )


# -------------------------------------------------------------------------------------------- model


def _token_ids(tokenizer) -> dict[str, int]:
    ids = {
        "image_token_id": "<|image_pad|>",
        "video_token_id": "<|video_pad|>",
        "vision_start_token_id": "<|vision_start|>",
        "vision_end_token_id": "<|vision_end|>",
    }
    return {key: tokenizer.convert_tokens_to_ids(tok) for key, tok in ids.items()}


@dataclass(frozen=True)
class TinySize:
    """Widths and depths of a tiny model. Every head is 64 wide (vLLM's CPU attention kernel refuses
    head_dim 16), so a width sets the number of heads; the text width is a multiple of 128 (grouped-query
    attention: half as many key/value heads). The default is the smallest model that runs every code path
    (tests, the demo); `cot-rm pretrain` takes other sizes from its config."""

    text_hidden: int = 128
    text_layers: int = 2
    vision_hidden: int = 64
    vision_depth: int = 2

    def __post_init__(self):
        if self.text_hidden % 128 or self.vision_hidden % 64 or min(self.text_layers, self.vision_depth) < 1:
            raise ValueError(
                f"{self}: text_hidden must be a multiple of 128, vision_hidden of 64, depths >= 1"
            )


def _text_config(family: str, tokenizer, size: TinySize) -> dict:
    # head_dim 64: vLLM's CPU attention kernel refuses head_dim 16. mrope_section sums to head_dim / 2
    # (the released ones are halved along with head_dim 128 -> 64).
    heads = size.text_hidden // 64
    cfg = {
        "vocab_size": len(tokenizer),
        "hidden_size": size.text_hidden,
        "intermediate_size": 2 * size.text_hidden,
        "num_hidden_layers": size.text_layers,
        "num_attention_heads": heads,
        "num_key_value_heads": heads // 2,  # grouped-query attention, as in the released models
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "pad_token_id": tokenizer.pad_token_id,
        "dtype": "float32",
    }
    if family == "qwen2_5_vl":
        rope = {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [8, 12, 12]}
        cfg.update(bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"))
        cfg.update(eos_token_id=tokenizer.eos_token_id)
    else:
        rope = {
            "rope_type": "default",
            "rope_theta": 5000000.0,
            "mrope_section": [12, 10, 10],
            "mrope_interleaved": True,
        }
        cfg.update(head_dim=64)
    cfg["rope_parameters"] = rope
    return cfg


def _vision_config(family: str, size: TinySize) -> dict:
    # vision head_dim 64 too (the patch merger is (4*hidden)^2); out_hidden_size = text hidden size.
    cfg = {
        "depth": size.vision_depth,
        "hidden_size": size.vision_hidden,
        "intermediate_size": 4 * size.vision_hidden,
        "num_heads": size.vision_hidden // 64,
        "out_hidden_size": size.text_hidden,
        "in_channels": 3,
        "patch_size": _spec(family).patch_size,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    }
    if family == "qwen2_5_vl":
        # window attention in block 0, full attention in the last block, as in the released layout.
        last = size.vision_depth - 1
        cfg.update(hidden_act="silu", tokens_per_second=2, window_size=112, fullatt_block_indexes=[last])
    else:
        # learned 2-D position table (interpolated to any grid; must be a square number)
        deepstack = [0, 1] if size.vision_depth == 2 else [size.vision_depth // 2, size.vision_depth - 1]
        cfg.update(
            hidden_act="gelu_pytorch_tanh", num_position_embeddings=576, deepstack_visual_indexes=deepstack
        )
    return cfg


def build_config(family: str, tokenizer, size: TinySize = TinySize()):
    """A small `Qwen2_5_VLConfig` / `Qwen3VLConfig` whose token ids come from `tokenizer`."""
    cls = Qwen2_5_VLConfig if family == "qwen2_5_vl" else Qwen3VLConfig
    return cls(
        text_config=_text_config(family, tokenizer, size),
        vision_config=_vision_config(family, size),
        tie_word_embeddings=False,
        **_token_ids(tokenizer),
    )


def build_model(config, seed: int = 0):
    """Random-init float32 model from `config`, deterministic in `seed`; global RNG left untouched."""
    cls = (
        Qwen2_5_VLForConditionalGeneration
        if config.model_type == "qwen2_5_vl"
        else Qwen3VLForConditionalGeneration
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(config).to(torch.float32)
    return model.eval()


def generation_config(tokenizer):
    endoftext = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    # Greedy by default so tests and demos are reproducible; stop on <|im_end|> or <|endoftext|>.
    return GenerationConfig(
        bos_token_id=endoftext,
        eos_token_id=[tokenizer.eos_token_id, endoftext],
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )


# --------------------------------------------------------------------------------------- checkpoint


def is_complete(path: str | Path, family: str | None = None, seed: int | None = None) -> bool:
    """True when `path` holds a finished tiny checkpoint (of `family` / `seed` when given)."""
    path = Path(path)
    marker = path / MARKER
    if not marker.is_file() or not all((path / name).is_file() for name in _REQUIRED_FILES):
        return False
    info = json.loads(marker.read_text())
    return (
        info.get("builder_version") == BUILDER_VERSION
        and (family is None or info.get("family") == family)
        and (seed is None or info.get("seed") == seed)
    )


def _older_build(path: Path, family: str, seed: int) -> bool:
    marker = path / MARKER
    if not marker.is_file():
        return False
    info = json.loads(marker.read_text())
    return (
        info.get("family") == family
        and info.get("seed") == seed
        and info.get("builder_version") != BUILDER_VERSION
    )


def _write_checkpoint(path: Path, family: str, seed: int) -> None:
    tokenizer = build_tokenizer(family)
    processor = build_processor(family, tokenizer)
    model = build_model(build_config(family, tokenizer), seed)
    model.generation_config = generation_config(tokenizer)
    model.save_pretrained(path)  # transformers 5 writes safetensors only
    save_processor(processor, path)
    info = {"family": family, "seed": seed, "builder_version": BUILDER_VERSION, "tiny": True}
    (path / MARKER).write_text(json.dumps(info, indent=2) + "\n")  # written last: marks completion


def save_processor(processor, path: Path) -> None:
    """Tokenizer, chat_template.jinja, processor_config.json, and the standalone image/video configs:
    transformers 5 nests those inside processor_config.json, while the released checkpoints (and tools
    reading them directly, e.g. AutoImageProcessor, vLLM) use preprocessor_config.json and
    video_preprocessor_config.json."""
    processor.save_pretrained(path)
    processor.image_processor.save_pretrained(path)
    processor.video_processor.save_pretrained(path)


def build_tiny_checkpoint(out_dir: str | Path, family: str = "qwen2_5_vl", seed: int = 0) -> Path:
    """Build (once) a tiny random checkpoint of `family` into `out_dir` and return its path.

    Idempotent: a complete folder from the same family/seed/builder version is reused as is.
    The folder is written next to `out_dir` and renamed into place, so an interrupted build never
    leaves a half-written checkpoint that a later call would take for a finished one.
    """
    _spec(family)
    out = Path(out_dir)
    if is_complete(out, family, seed):
        return out
    stale = _older_build(out, family, seed)  # the same tiny model from an older builder: ours to replace
    if out.exists() and not stale and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not a tiny {family} checkpoint with seed {seed}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        _write_checkpoint(tmp, family, seed)
        if out.exists():
            shutil.rmtree(out)  # empty, or an older tiny build (checked above)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_complete(out, family, seed):  # a concurrent builder won the race: fine
            return out
        raise
    return out
