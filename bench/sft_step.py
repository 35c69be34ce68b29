"""Benchmark: SFT optimizer steps of a think-then-score Qwen2.5-VL-7B (random init) through `cot_rm.sft`.

Measures tokens/s and peak GPU memory of the project's real SFT path (`cot_rm.sft.build`: the config
loader, `ThinkThenScore.from_base`, `SFTCollator`, `CotRmSFTTrainer`, the frozen tower's
`VisionFeatureCache`) with the settings of `configs/qwen2_5_vl_7b/sft.yaml` (bf16, full fine-tuning of
the language model with the vision tower + merger frozen, vision features reused, gradient
checkpointing of the LM, non-reentrant, per-device batch 1, gradient accumulation 4, SDPA) minus
DeepSpeed (one GPU), side by side in one process with baselines:

    reuse     the config as it is: frozen tower, each video's features computed once and reused
    no_reuse  model.reuse_vision_features=false: the frozen tower runs forward on every step
    naive     model.freeze_vision=false, no reuse, gradient checkpointing applied to the WHOLE model
              (tower included): what plain transformers does; ENVIRONMENT.md's naive baseline
              (1,434 tok/s on an H200 for one 2,762-token sample) was measured that way

No weights are downloaded or written: a folder holds the project's tiny tokenizer and the real
Qwen2.5-VL processor classes (patch 14, merge 2, `cot_rm.tiny`) and a config.json of the real 7B
architecture (or, with `--size tiny`, of the tiny test model), and `cot_rm.modeling._load_vlm` is
patched to build the model from that config directly on the device (random init). Every other part is
the project's own code. The data are synthetic SFT traces in the project's format around real mp4 files
(default: one 16-frame 448x448 video = 2,048 video tokens and a ~512-token critique, measured with the
tokenizer in use; the prompt part is the protocol's own system prompt, select_frames tool schema and
user turn, padded to `--prompt-tokens` if shorter: ~535 tokens with the tiny tokenizer, more than the
~200 of ENVIRONMENT.md's sample, so a sample is ~3,100 tokens rather than 2,762), pointwise labels (the
head's regression loss) and, with `--pair`, pairwise labels (both videos of a pair in one step,
Bradley-Terry with ties). Rationale dropout is 0 by default (`--rationale-dropout 0.5` is the
config's): every step then holds the same sample, like the ENVIRONMENT.md measurement.

Timing: each optimizer step from the Trainer's `on_step_begin` to `on_step_end` (forward + backward of
every micro-batch, gradient clipping, optimizer step; data loading is prefetched before), with
`torch.cuda.synchronize()` at both ends; tokens are the real (non-pad) tokens of the micro-batches the
Trainer fed (attention_mask sum, vision tokens included). The first `--warmup` steps are excluded.
Peak memory: `torch.cuda.max_memory_allocated`, reset before each configuration (the model is freed
between configurations).

    # GPU (one H200): the 7B architecture, random init
    PYTHONPATH=. python3 bench/sft_step.py --out sft_step.json
    # CPU, seconds: the same code path on the tiny model
    PYTHONPATH=. python bench/sft_step.py --size tiny --frames 4 --resolution 224 --out /tmp/sft_step.json
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import inspect
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
import traceback
import weakref
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python bench/sft_step.py` without installing the package
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

FAMILY = "qwen2_5_vl"
CONFIGS = ("reuse", "no_reuse", "naive")
# ENVIRONMENT.md, "The GPU machine": plain transformers, random init, SDPA, checkpointing, batch 1, H200.
ENV_NAIVE_TOK_S = 1434.0
DIMS = ("visual_quality", "text_alignment", "physical_consistency", "overall")

# Qwen/Qwen2.5-VL-7B-Instruct's config.json (architecture only; token ids come from the tokenizer in use).
QWEN25_VL_7B_TEXT = {
    "vocab_size": 152064,
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "hidden_act": "silu",
    "max_position_embeddings": 128000,
    "rms_norm_eps": 1e-6,
    "use_sliding_window": False,
    "sliding_window": 32768,
    "max_window_layers": 28,
    "attention_dropout": 0.0,
    "initializer_range": 0.02,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
}
QWEN25_VL_7B_VISION = {
    "depth": 32,
    "hidden_size": 1280,
    "intermediate_size": 3420,
    "num_heads": 16,
    "out_hidden_size": 3584,
    "in_channels": 3,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "window_size": 112,
    "fullatt_block_indexes": [7, 15, 23, 31],
    "tokens_per_second": 2,
    "hidden_act": "silu",
    "initializer_range": 0.02,
}

_FILLER = (
    "the {c} {s} moves {d} across the frame and in frame {k} its edge looks {q} while the background "
    "stays {b} so the motion reads as {m}"
)
_WORDS = {
    "c": ("red", "blue", "green", "yellow", "purple", "cyan"),
    "s": ("circle", "square", "triangle", "diamond"),
    "d": ("left", "right", "up", "down"),
    "q": ("sharp", "blurred", "noisy", "clean", "blocky"),
    "b": ("white", "grey", "black", "still"),
    "m": ("smooth", "steady", "jerky", "plausible"),
}


# -------------------------------------------------------------------------------------------- model


def _token_ids(tokenizer) -> dict[str, int]:
    """The vision placeholders of `tokenizer` (as `cot_rm.tiny` sets them), so the processor's match."""
    names = {
        "image_token_id": "<|image_pad|>",
        "video_token_id": "<|video_pad|>",
        "vision_start_token_id": "<|vision_start|>",
        "vision_end_token_id": "<|vision_end|>",
    }
    return {key: tokenizer.convert_tokens_to_ids(tok) for key, tok in names.items()}


def model_config(size: str, tokenizer):
    """A Qwen2_5_VLConfig: the real 7B architecture, or the tiny test model's (`cot_rm.tiny`)."""
    from transformers import Qwen2_5_VLConfig

    from cot_rm import tiny

    if size == "tiny":
        return tiny.build_config(FAMILY, tokenizer)
    text = {
        **QWEN25_VL_7B_TEXT,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        "eos_token_id": tokenizer.eos_token_id,
    }
    if len(tokenizer) > text["vocab_size"]:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens, more than the 7B vocabulary")
    return Qwen2_5_VLConfig(
        text_config=text,
        vision_config=dict(QWEN25_VL_7B_VISION),
        tie_word_embeddings=False,
        **_token_ids(tokenizer),
    )


def write_model_dir(path: Path, size: str) -> Path:
    """Tokenizer + processor files of the tiny tokenizer and the chosen architecture's config.json (no
    weights: the patched loader builds the model from the config)."""
    from cot_rm import tiny

    tokenizer = tiny.build_tokenizer(FAMILY)  # holds <|reward|>: from_base adds no token, resizes nothing
    processor = tiny.build_processor(FAMILY, tokenizer)
    path.mkdir(parents=True, exist_ok=True)
    model_config(size, tokenizer).save_pretrained(path)
    processor.save_pretrained(path)
    processor.image_processor.save_pretrained(path)
    processor.video_processor.save_pretrained(path)
    return path


@contextlib.contextmanager
def random_init_loader(device: torch.device):
    """`cot_rm.modeling._load_vlm` builds the VLM from the folder's config.json on `device` (random
    init, no weights read); restored on exit."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    import cot_rm.modeling as modeling

    def load_from_config(path, torch_dtype=None, attn_implementation=None):
        config = AutoConfig.from_pretrained(str(path))
        kwargs = {"dtype": torch_dtype, "attn_implementation": attn_implementation}
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        with torch.device(device):
            return AutoModelForImageTextToText.from_config(config, **kwargs)

    saved = modeling._load_vlm
    modeling._load_vlm = load_from_config
    try:
        yield
    finally:
        modeling._load_vlm = saved


@contextlib.contextmanager
def checkpoint_everything():
    """Gradient checkpointing on the whole VLM, vision tower included (plain transformers' behaviour;
    `ThinkThenScore.gradient_checkpointing_enable` leaves the tower out on purpose)."""
    from cot_rm.modeling import ThinkThenScore

    def enable(self, gradient_checkpointing_kwargs=None, every_n_layers=1, offload=False):
        kwargs = {"use_reentrant": False, **(gradient_checkpointing_kwargs or {})}
        extra = {"every_n_layers": every_n_layers, "offload": offload}
        if not _accepts_trainer_kwargs(self.base_vlm.gradient_checkpointing_enable):  # older transformers
            if every_n_layers != 1 or offload:
                raise NotImplementedError("every_n_layers / offload need a newer transformers")
            extra = {}
        self.base_vlm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs, **extra)

    saved = ThinkThenScore.__dict__["gradient_checkpointing_enable"]
    ThinkThenScore.gradient_checkpointing_enable = enable
    try:
        yield
    finally:
        ThinkThenScore.gradient_checkpointing_enable = saved


def _accepts_trainer_kwargs(method) -> bool:
    params = inspect.signature(method).parameters
    return "every_n_layers" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


@contextlib.contextmanager
def trainer_checkpointing_compat():
    """Let the Trainer enable gradient checkpointing on `ThinkThenScore` (yields True when patched).

    transformers 5.17 and 5.19 call `model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=...,
    every_n_layers=..., offload=...)`; `ThinkThenScore.gradient_checkpointing_enable` took only the kwargs
    dict, so `train.gradient_checkpointing: true` (the 7B config) raised a TypeError at `trainer.train()`.
    Until it accepts them, the default values (every layer, no offload: what it does) are dropped and
    anything else refused. A no-op once the method accepts them."""
    from cot_rm.modeling import ThinkThenScore

    current = ThinkThenScore.gradient_checkpointing_enable
    if _accepts_trainer_kwargs(current):
        yield False
        return

    def enable(self, gradient_checkpointing_kwargs=None, every_n_layers=1, offload=False):
        if every_n_layers != 1 or offload:
            raise NotImplementedError("ThinkThenScore: every_n_layers / offload checkpointing not supported")
        return current(self, gradient_checkpointing_kwargs)

    saved = ThinkThenScore.__dict__["gradient_checkpointing_enable"]
    ThinkThenScore.gradient_checkpointing_enable = enable
    try:
        yield True
    finally:
        ThinkThenScore.gradient_checkpointing_enable = saved


# --------------------------------------------------------------------------------------------- data


def write_videos(root: Path, n: int, frames: int, side: int) -> list[Path]:
    """`n` distinct real mp4 clips of 2x`frames` frames (side x side, 4 fps: `frames` sampled of them is
    ~2 fps), a moving gradient plus noise so the encoder has real work."""
    from cot_rm.video_writer import write_video

    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:side, 0:side]
    paths = []
    for i in range(n):
        clip = []
        for t in range(2 * frames):
            base = np.stack(
                [(xs + 7 * t + 40 * i) % 256, (ys + 3 * t) % 256, np.full_like(xs, (20 * t + 60 * i) % 256)],
                -1,
            )
            clip.append(np.clip(base + rng.integers(-10, 11, base.shape), 0, 255).astype(np.uint8))
        opts = {"preset": "ultrafast"}
        paths.append(write_video(root / f"video{i:02d}.mp4", clip, 4, "libx264", options=opts))
    return paths


def _filler(n_words: int, seed: int) -> str:
    words: list[str] = []
    k = seed
    while len(words) < n_words:
        pick = {key: vals[(k + j) % len(vals)] for j, (key, vals) in enumerate(_WORDS.items())}
        words += _FILLER.format(k=k % 32, **pick).split()
        k += 1
    return " ".join(words[:n_words])


def _smallest(f, target: int, hi: int) -> int:
    """Smallest n in [0, hi] with f(n) >= target (f non-decreasing); hi if none."""
    lo = 0
    while lo < hi:
        mid = (lo + hi) // 2
        if f(mid) >= target:
            hi = mid
        else:
            lo = mid + 1
    return lo


def build_data(work: Path, processor, args) -> dict:
    """Write the SFT traces (and pairs) JSONL; return the sample's measured token counts.

    Generation-prompt and critique filler is sized with the tokenizer in use so that the non-vision
    prompt part (system, user, template, reward token) has about `--prompt-tokens` tokens and the
    assistant turn (the LM-loss tokens) about `--rationale-tokens`.
    """
    from cot_rm import protocol
    from cot_rm.protocol import JudgeSpec
    from cot_rm.sft_data import assistant_mask
    from cot_rm.video import Sampling, read_video

    spec = JudgeSpec(dimensions=DIMS)
    n_videos = args.videos * (2 if args.pair else 1)
    paths = write_videos(work / "videos", n_videos, args.frames, args.resolution)
    sampling = Sampling(
        fps=None, num_frames=args.frames, min_pixels=args.resolution**2, max_pixels=args.resolution**2,
        family=FAMILY,
    )  # fmt: skip
    tok = processor.tokenizer
    im_start, im_end = tok.convert_tokens_to_ids("<|im_start|>"), tok.convert_tokens_to_ids("<|im_end|>")

    def prompt_of(words: int, i: int) -> str:
        return f"two red circles moving left slowly on a white background {_filler(words, 100 + i)}".strip()

    def messages(video, ref, prompt_words: int, think_words: int, i: int, scores: dict) -> list[dict]:
        think = f"I compare the frames with the prompt. {_filler(think_words, i)}"
        return protocol.judgment_conversation(
            prompt_of(prompt_words, i), video, (), (think, scores), spec, ref
        )

    def counts(msgs) -> tuple[int, int]:
        """(prompt tokens, assistant tokens) of one rendered trace, the video placeholder not counted."""
        text = protocol.render(processor, msgs, FAMILY, spec) + "<|reward|>"
        ids = tok(text)["input_ids"]
        assistant = int(assistant_mask(ids, im_start, im_end, tok).sum())
        return len(ids) - 1 - assistant, assistant  # the one <|video_pad|> expands to the video tokens

    def size_filler(video, ref: str, scores: dict) -> tuple[int, int]:
        """Filler words (prompt, critique) that reach the token targets on this video's trace."""
        think = _smallest(
            lambda n: counts(messages(video, ref, 0, n, 0, scores))[1],
            args.rationale_tokens, 8 * args.rationale_tokens,
        )  # fmt: skip
        prompt = _smallest(
            lambda n: counts(messages(video, ref, n, think, 0, scores))[0],
            args.prompt_tokens, 8 * args.prompt_tokens,
        )  # fmt: skip
        return prompt, think

    def scores_of(i: int) -> dict:
        return {d: 1 + (i + j) % 5 for j, d in enumerate(DIMS)}

    videos = [read_video(path, sampling) for path in paths]
    refs = [path.relative_to(work).as_posix() for path in paths]
    # Sized once, on the first video; the others reuse the word counts.
    prompt_words, think_words = size_filler(videos[0], refs[0], scores_of(0))
    prompt_tokens, rationale_tokens = counts(
        messages(videos[0], refs[0], prompt_words, think_words, 0, scores_of(0))
    )
    traces = []
    for i, (video, ref) in enumerate(zip(videos, refs)):
        scores = scores_of(i)
        msgs = messages(video, ref, prompt_words, think_words, i, scores)
        traces.append({
            "id": f"bench-{i:02d}", "prompt": prompt_of(prompt_words, i), "video": ref,
            "sampling": sampling.to_dict(), "frame_indices": list(video.indices), "scores": scores,
            "split": "train", "messages": msgs, "rationale_free": False,
        })  # fmt: skip
    examples = args.grad_accum * (args.warmup + args.steps)  # one epoch: no epoch-boundary effects
    pairs_path = None
    with (work / "sft_data.jsonl").open("w") as f:
        if args.pair:  # each trace once; the pairs file repeats (pair records, distinct ids)
            rows = traces
        else:  # repeat the traces (distinct ids) so every optimizer step gets `grad_accum` micro-batches
            rows = [{**traces[k % len(traces)], "id": f"bench-{k:04d}"} for k in range(examples)]
        for row in rows:
            f.write(json.dumps(row) + "\n")
    if args.pair:
        pairs_path = work / "pairs.jsonl"
        with pairs_path.open("w") as f:
            for k in range(examples):
                a, b = traces[2 * (k % args.videos)], traces[2 * (k % args.videos) + 1]
                dims = {d: "A" if a["scores"][d] > b["scores"][d] else "B" if a["scores"][d] < b["scores"][d]
                        else "tie" for d in DIMS}  # fmt: skip
                rec = {"id": f"pair-{k:04d}", "prompt": a["prompt"], "prompt_b": b["prompt"], "video_a": a["video"],
                       "video_b": b["video"], "preference": dims["overall"], "dims": dims, "split": "train"}  # fmt: skip
                f.write(json.dumps(rec) + "\n")
    return {
        "train": str(work / "sft_data.jsonl"),
        "pairs": str(pairs_path) if pairs_path else None,
        "videos": n_videos,
        "frames": args.frames,
        "resolution": f"{args.resolution}x{args.resolution}",
        "video_tokens": videos[0].video_tokens,
        "prompt_tokens": prompt_tokens,
        "rationale_tokens": rationale_tokens,
        "tokens_per_sample": videos[0].video_tokens + prompt_tokens + rationale_tokens,
        "examples": examples,
    }


def collated_tokens(processor, data: dict, frame_cache: str) -> int:
    """Real tokens of one example as the project's collator builds it (no rationale dropout): a
    cross-check of the token counts the timed steps report."""
    from cot_rm.protocol import JudgeSpec
    from cot_rm.sft_data import SFTCollator, build_examples, load_traces

    example = build_examples(load_traces(data["train"]), data["pairs"])[0]
    collator = SFTCollator(processor, FAMILY, JudgeSpec(dimensions=DIMS), "<|reward|>", 0.0, frame_cache)
    return int(collator([{"example": json.dumps(example)}])["attention_mask"].sum())


# -------------------------------------------------------------------------------------------- timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_timer(trainer, device: torch.device):
    """A TrainerCallback timing each optimizer step, plus a `training_step` wrapper counting tokens."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.steps: list[dict] = []
            self.current: dict | None = None
            self._t0 = 0.0
            self._stats0: dict = {}

        def _cache_stats(self) -> dict:
            return trainer.vision_cache.stats() if trainer.vision_cache is not None else {}

        def on_step_begin(self, args, state, control, **kwargs):
            self._stats0 = self._cache_stats()
            self.current = {"micro_batches": 0, "tokens": 0, "padded_tokens": 0, "rows": 0}
            _sync(device)
            self._t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            _sync(device)
            step = {"step": state.global_step, "seconds": time.perf_counter() - self._t0, **self.current}
            stats = self._cache_stats()
            for key in ("hits", "misses", "tower_calls"):
                if key in stats:
                    step[f"cache_{key}"] = stats[key] - self._stats0.get(key, 0)
            self.steps.append(step)
            self.current = None

    timer = StepTimer()
    original = trainer.training_step

    def training_step(model, inputs, num_items_in_batch=None):
        if timer.current is not None:
            mask = inputs["attention_mask"]
            timer.current["micro_batches"] += 1
            timer.current["tokens"] += int(mask.sum())  # CPU tensor here: no device sync
            timer.current["padded_tokens"] += int(mask.numel())
            timer.current["rows"] += int(mask.shape[0])
        return original(model, inputs, num_items_in_batch)

    trainer.training_step = training_step
    trainer.add_callback(timer)
    return timer


# --------------------------------------------------------------------------------------------- runs


def overrides_for(name: str, work: Path, data: dict, args, device: torch.device) -> list[str]:
    out = [
        f"data.train={data['train']}",
        f"data.pairs={data['pairs'] or 'null'}",
        "data.eval_pairs=null",
        f"data.frame_cache={work / 'frames'}",
        "data.max_length=null",
        f"loss.rationale_dropout={args.rationale_dropout}",
        f"train.output_dir={work / 'runs' / name}",
        f"train.max_steps={args.warmup + args.steps}",
        f"train.gradient_accumulation_steps={args.grad_accum}",
        "train.save_strategy='no'",
        "train.logging_steps=1",
        "train.report_to=none",
        "train.disable_tqdm=true",
    ]
    if device.type != "cuda":  # CPU: fp32 (bf16 on CPU is slow and gains nothing)
        out += ["train.use_cpu=true", "train.bf16=false", "model.dtype=float32"]
    if name == "no_reuse":
        out += ["model.reuse_vision_features=false"]
    elif name == "naive":
        out += ["model.freeze_vision=false", "model.reuse_vision_features=false"]
    return out + list(args.set)


def run_config(name: str, model_dir: Path, work: Path, data: dict, args, device: torch.device) -> dict:
    from trl import SFTConfig

    from cot_rm.config import check_trl_args, load_config
    from cot_rm.sft import build
    from cot_rm.sft_config import SFTRunConfig

    overrides = [f"model.base={model_dir}", *overrides_for(name, work, data, args, device)]
    cfg = load_config(SFTRunConfig, args.config, overrides)
    check_trl_args(SFTConfig, cfg.train)
    result: dict = {
        "freeze_vision": cfg.model.freeze_vision,
        "reuse_vision_features": cfg.model.freeze_vision and cfg.model.reuse_vision_features,
        "checkpointing": ("whole model" if name == "naive" else "language model")
        if cfg.train.get("gradient_checkpointing") else "off",
        "overrides": overrides,
    }  # fmt: skip
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        result["start_allocated_gb"] = torch.cuda.memory_allocated(device) / 2**30
    model = trainer = timer = None
    alive = lambda: None  # noqa: E731
    try:
        t0 = time.perf_counter()
        with (
            random_init_loader(device),
            checkpoint_everything() if name == "naive" else contextlib.nullcontext(),
            trainer_checkpointing_compat() as shimmed,  # after the naive patch: a no-op on it
        ):
            result["checkpointing_kwargs_shim"] = shimmed
            model, trainer, _, examples = build(cfg)
            alive = weakref.ref(model.base_vlm)
            _sync(device)
            result["build_s"] = time.perf_counter() - t0
            result["params_total"] = sum(p.numel() for p in model.parameters())
            result["params_trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
            result["examples"] = len(examples)
            timer = make_timer(trainer, device)
            t1 = time.perf_counter()
            trainer.train()
            _sync(device)
            result["train_s"] = time.perf_counter() - t1
        if name == "naive":  # the patch really checkpointed the tower
            blocks = model.base_vlm.model.visual.blocks
            result["vision_checkpointed"] = bool(getattr(blocks[0], "gradient_checkpointing", False))
        result.update(summarize(timer.steps, args.warmup))
        if trainer.vision_cache is not None:
            result["vision_cache"] = {k: v for k, v in trainer.vision_cache.stats().items() if k != "hash_s"}
        logs = [h for h in trainer.state.log_history if "lm_loss" in h]
        result["losses"] = {
            k: [h.get(k) for h in logs] for k in ("loss", "lm_loss", "head_point_loss", "head_pair_loss")
        }
    except Exception as err:  # e.g. out of memory: keep the other configurations' results
        result["error"] = f"{type(err).__name__}: {err}"[:2000]
        traceback.print_exc()
    finally:
        if cuda:
            result["peak_allocated_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
            result["peak_reserved_gb"] = torch.cuda.max_memory_reserved(device) / 2**30
        if trainer is not None:
            if trainer.vision_cache is not None:
                trainer.vision_cache.remove()
            trainer.accelerator.free_memory()
        model = trainer = timer = None  # the timer's callbacks reach the trainer too
        gc.collect()
        result["model_freed"] = alive() is None  # else the next configuration's memory would include it
        if cuda:
            torch.cuda.empty_cache()
            result["end_allocated_gb"] = torch.cuda.memory_allocated(device) / 2**30
    return result


def summarize(steps: list[dict], warmup: int) -> dict:
    for i, s in enumerate(steps):
        s["timed"] = i >= warmup
    timed = [s for s in steps if s["timed"]]
    out: dict = {"steps": steps, "timed_steps": len(timed)}
    if not timed:
        return out
    seconds, tokens = sum(s["seconds"] for s in timed), sum(s["tokens"] for s in timed)
    out.update(
        tokens_per_s=tokens / seconds,
        timed_seconds=seconds,
        timed_tokens=tokens,
        step_s_median=statistics.median(s["seconds"] for s in timed),
        tokens_per_step=tokens / len(timed),
        micro_batches_per_step=sum(s["micro_batches"] for s in timed) / len(timed),
    )
    # Steps whose videos were all served from the cache vs steps that ran the tower (a first epoch).
    for kind, pick in (
        ("hit", lambda s: s.get("cache_misses") == 0),
        ("miss", lambda s: s.get("cache_misses", 0) > 0),
    ):
        chosen = [s for s in timed if "cache_misses" in s and pick(s)]
        if chosen:
            out[f"{kind}_steps"] = len(chosen)
            out[f"{kind}_tokens_per_s"] = sum(s["tokens"] for s in chosen) / sum(s["seconds"] for s in chosen)
    return out


# -------------------------------------------------------------------------------------------- report


def _versions() -> dict:
    import peft
    import transformers
    import trl

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "trl": trl.__version__, "peft": peft.__version__}  # fmt: skip


def table(results: dict) -> str:
    configs = results["configs"]
    base = configs.get("naive", {}).get("tokens_per_s")
    lines = [
        "| config | tower | reused | checkpointing | tok/s | s/step (median) | tokens/step | peak GB | cache hits/misses | vs naive |",
        "|---|---|---|---|---:|---:|---:|---:|---|---:|",
    ]
    for name, r in configs.items():
        if "error" in r and "tokens_per_s" not in r:
            lines.append(f"| {name} | | | | failed: {r['error'][:80]} | | | | | |")
            continue
        cache = r.get("vision_cache")
        peak = r.get("peak_allocated_gb")
        peak_s = f"{peak:.1f}" if peak is not None else "n/a"
        cache_s = f"{cache['hits']}/{cache['misses']}" if cache else "-"
        ratio_s = f"{r['tokens_per_s'] / base:.2f}x" if base and r.get("tokens_per_s") else "-"
        tower, reused = (
            ("frozen" if r["freeze_vision"] else "trained"),
            ("yes" if r["reuse_vision_features"] else "no"),
        )
        lines.append(
            f"| {name} | {tower} | {reused} | {r['checkpointing']} | {r.get('tokens_per_s', 0):,.0f} "
            f"| {r.get('step_s_median', 0):.3f} | {r.get('tokens_per_step', 0):,.0f} | {peak_s} | {cache_s} | {ratio_s} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=("7b", "tiny"), default="7b", help="architecture (default 7b)")
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, of {CONFIGS}")
    ap.add_argument("--config", default=str(ROOT / "configs" / "qwen2_5_vl_7b" / "sft.yaml"), help="SFT YAML")
    ap.add_argument("--warmup", type=int, default=2, help="optimizer steps excluded from timing")
    ap.add_argument("--steps", type=int, default=4, help="timed optimizer steps")
    ap.add_argument("--grad-accum", type=int, default=None,
                    help="micro-batches per optimizer step (default: the config's)")  # fmt: skip
    ap.add_argument("--videos", type=int, default=1, help="distinct videos (pairs with --pair)")
    ap.add_argument(
        "--pair", action="store_true", help="pairwise examples: both videos of a pair in one step"
    )
    ap.add_argument("--frames", type=int, default=16, help="frames sampled per video")
    ap.add_argument("--resolution", type=int, default=448, help="frame side in pixels (multiple of 28)")
    ap.add_argument(
        "--prompt-tokens", type=int, default=200, help="at least this many non-vision, non-assistant tokens"
    )
    ap.add_argument("--rationale-tokens", type=int, default=512, help="assistant (LM-loss) tokens")
    ap.add_argument("--rationale-dropout", type=float, default=0.0,
                    help="loss.rationale_dropout (config: 0.5; 0 keeps every step the same sample)")  # fmt: skip
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra config override")
    ap.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    ap.add_argument("--work", default=None, help="scratch folder (default: a temp dir, removed)")
    ap.add_argument("--out", required=True, help="JSON results file")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    if unknown := [n for n in names if n not in CONFIGS]:
        ap.error(f"unknown configs {unknown}; choose from {CONFIGS}")
    if args.resolution % 28:
        ap.error("--resolution must be a multiple of 28 (patch 14 x merge 2)")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.size == "7b" and device.type != "cuda":
        ap.error("--size 7b needs a GPU (use --size tiny on CPU)")
    if args.grad_accum is None:
        from cot_rm.config import read_yaml

        args.grad_accum = int(read_yaml(args.config).get("train", {}).get("gradient_accumulation_steps", 1))

    t_start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        work = (
            Path(args.work)
            if args.work
            else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sft-step-")))
        )
        work.mkdir(parents=True, exist_ok=True)
        model_dir = write_model_dir(work / "model", args.size)
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(str(model_dir))
        data = build_data(work, processor, args)
        data["collated_tokens_per_example"] = collated_tokens(processor, data, str(work / "frames"))
        data["setup_s"] = time.perf_counter() - t_start
        results = {
            "bench": "sft_step",
            "size": args.size,
            "command": shlex.join(
                ["python3", "bench/sft_step.py", *(sys.argv[1:] if argv is None else argv)]
            ),
            "device": torch.cuda.get_device_name(device)
            if device.type == "cuda"
            else platform.processor() or "cpu",
            "versions": _versions(),
            "config_file": os.path.relpath(args.config, ROOT),
            "settings": {
                "grad_accum": args.grad_accum,
                "warmup_steps": args.warmup,
                "timed_steps": args.steps,
                "rationale_dropout": args.rationale_dropout,
                "pair": args.pair,
                "extra_overrides": args.set,
            },  # fmt: skip
            "sample": {k: v for k, v in data.items() if k not in ("train", "pairs")},
            "env_naive_baseline_tok_s": ENV_NAIVE_TOK_S,
            "configs": {},
        }
        print(f"sft_step: {args.size} on {results['device']}; sample {data['tokens_per_sample']} tokens "
              f"({data['video_tokens']} video + {data['prompt_tokens']} prompt + {data['rationale_tokens']} rationale)",
              flush=True)  # fmt: skip
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        for name in names:
            t0 = time.perf_counter()
            print(f"sft_step: --- {name} ---", flush=True)
            results["configs"][name] = run_config(name, model_dir, work, data, args, device)
            results["configs"][name]["wall_s"] = time.perf_counter() - t0
            r = results["configs"][name]
            print(f"sft_step: {name}: {r.get('tokens_per_s', float('nan')):,.0f} tok/s, "
                  f"peak {r.get('peak_allocated_gb', float('nan')):.1f} GB, {r['wall_s']:.0f} s"
                  + (f", ERROR {r['error']}" if "error" in r else ""), flush=True)  # fmt: skip
            ratios = {}
            for a in names:
                for b in names:
                    ta, tb = (
                        results["configs"].get(a, {}).get("tokens_per_s"),
                        results["configs"].get(b, {}).get("tokens_per_s"),
                    )
                    if a != b and ta and tb and CONFIGS.index(a) < CONFIGS.index(b):
                        ratios[f"{a}_vs_{b}"] = ta / tb
            results["ratios"] = ratios
            results["total_s"] = time.perf_counter() - t_start
            out.write_text(
                json.dumps(results, indent=2) + "\n"
            )  # after each configuration: partial results survive
    print()
    print(table(results))
    print(f"\nratios: {json.dumps({k: round(v, 3) for k, v in results['ratios'].items()})}; "
          f"ENVIRONMENT.md naive baseline (H200): {ENV_NAIVE_TOK_S:,.0f} tok/s; total {results['total_s']:.0f} s")  # fmt: skip
    failed = [n for n, r in results["configs"].items() if "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
