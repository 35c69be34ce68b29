"""Benchmark: SFT optimizer steps of a think-then-score Qwen2.5-VL-7B (random init) through `cot_rm.train.sft.trainer`.

Tokens/s and peak GPU memory of the project's real SFT path (`cot_rm.train.sft.trainer.build`: config loader, model,
collator, trainer, vision-feature cache) with `configs/qwen2_5_vl_7b/sft.yaml` minus DeepSpeed (one GPU),
in three configurations (CONFIG_OVERRIDES), one after the other in one process:

    reuse     the config as it is: tower frozen, each video's features computed once, then reused
    no_reuse  the frozen tower runs forward on every step
    naive     tower trained, no reuse, checkpointing on the whole model, tower included (plain transformers)

The model has the 7B architecture (`--size tiny`: the tiny test model's), random weights and the tokenizer
and processor of `cot_rm.model.tiny`: nothing is downloaded. The data are synthetic traces around real mp4 files
(default: one 16-frame 448x448 video, the protocol's prompt, a ~512-token critique; `--pair`: pairs).
Each optimizer step is timed between the Trainer's step callbacks, synchronized; its tokens are the
attention_mask sums of the micro-batches it was fed; the first `--warmup` steps are left out of the rates.

    PYTHONPATH=. python3 bench/sft_step.py --out sft_step.json  # GPU: the 7B architecture
    python bench/sft_step.py --size tiny --frames 4 --resolution 224 --out /tmp/sft_step.json  # CPU

The JSON (`--out`) holds every per-step figure; a section with the table and ratios is appended to
bench/RESULTS.md (`--results-md`, `--no-append`), like every bench here.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
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
from bisect import bisect_left
from pathlib import Path
from unittest import mock

# ruff: noqa: E402  (the path and environment below must be set before the project and HF imports)
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the GPU machine runs it from the repo root, the package not installed
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import peft
import torch
import transformers
import trl
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor, TrainerCallback
from transformers.models.qwen2_5_vl import Qwen2_5_VLConfig

import cot_rm.model.modeling
from bench.generation import machine, publish
from cot_rm.config import check_trl_args, load_config, read_yaml
from cot_rm.media.video import Sampling, read_video
from cot_rm.media.writer import write_video
from cot_rm.model import tiny
from cot_rm.protocol import JudgeSpec, judgment_conversation, render
from cot_rm.train.data import assistant_mask
from cot_rm.train.sft.config import SFTRunConfig
from cot_rm.train.sft.trainer import build

FAMILY = "qwen2_5_vl"
# What each configuration changes in the SFT config (`naive` also checkpoints the tower: see below).
CONFIG_OVERRIDES = {
    "reuse": [], "no_reuse": ["model.reuse_vision_features=false"],
    "naive": ["model.freeze_vision=false", "model.reuse_vision_features=false"],
}  # fmt: skip
CONFIGS = tuple(CONFIG_OVERRIDES)
TABLE_HEAD = ("| config | tower | reused | checkpointing | tok/s | s/step (median) | tokens/step | peak GB "
              "| cache hits/misses | vs naive |\n|---|---|---|---|---:|---:|---:|---:|---|---:|")  # fmt: skip
ENV_NAIVE_TOK_S = 1434.0  # measured earlier on an H200: plain transformers, random 7B weights, SDPA, batch 1
DIMS = ("visual_quality", "text_alignment", "physical_consistency", "overall")

# Qwen/Qwen2.5-VL-7B-Instruct's config.json (architecture only; token ids come from the tokenizer in use).
QWEN25_VL_7B_TEXT = {
    "vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
    "num_attention_heads": 28, "num_key_value_heads": 4, "hidden_act": "silu",
    "max_position_embeddings": 128000, "rms_norm_eps": 1e-6, "use_sliding_window": False,
    "sliding_window": 32768, "max_window_layers": 28, "attention_dropout": 0.0, "initializer_range": 0.02,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
}  # fmt: skip
QWEN25_VL_7B_VISION = {
    "depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16, "out_hidden_size": 3584,
    "in_channels": 3, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2,
    "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2,
    "hidden_act": "silu", "initializer_range": 0.02,
}  # fmt: skip

# Prompt / critique filler: varied words, so the tokenizer sees ordinary text rather than one repeated token.
_FILLER = (
    "the {c} {s} moves {d} across the frame and in frame {k} its edge looks {q} while the background "
    "stays {b} so the motion reads as {m}"
)
_WORDS = {
    "c": ("red", "blue", "green", "yellow", "purple", "cyan"), "s": ("circle", "square", "triangle", "diamond"),
    "d": ("left", "right", "up", "down"), "q": ("sharp", "blurred", "noisy", "clean", "blocky"),
    "b": ("white", "grey", "black", "still"), "m": ("smooth", "steady", "jerky", "plausible"),
}  # fmt: skip


# ---- model: the real architecture, random init, nothing read from disk but a config.json
def write_model_dir(path: Path, size: str) -> Path:
    """Tokenizer, processor and config.json, no weights (the patched loader builds from the config)."""
    tokenizer = tiny.build_tokenizer(FAMILY)  # holds <|reward|>: from_base adds no token, resizes nothing
    processor = tiny.build_processor(FAMILY, tokenizer)
    config = tiny.build_config(FAMILY, tokenizer)
    if size == "7b":  # the 7B sizes with the tiny config's token ids (those of the tokenizer in use)
        text_ids = ("pad_token_id", "bos_token_id", "eos_token_id")
        vision_ids = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
        text = {**QWEN25_VL_7B_TEXT, **{k: getattr(config.text_config, k) for k in text_ids}}
        config = Qwen2_5_VLConfig(text_config=text, vision_config=dict(QWEN25_VL_7B_VISION),
                                  tie_word_embeddings=False, **{k: getattr(config, k) for k in vision_ids})  # fmt: skip
    for part in (config, processor, processor.image_processor, processor.video_processor):
        part.save_pretrained(path)
    return path


def random_init_loader(device: torch.device):
    """`cot_rm.model.modeling._load_vlm` builds the VLM from the folder's config.json right on `device`
    (random init): no 16 GB checkpoint to read, no network."""

    def load_from_config(path, torch_dtype=None, attn_implementation=None):
        kwargs = {"dtype": torch_dtype, "attn_implementation": attn_implementation}
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        with torch.device(device):
            return AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(str(path)), **kwargs)

    return mock.patch.object(cot_rm.model.modeling, "_load_vlm", load_from_config)


def checkpoint_everything():
    """Gradient checkpointing on the whole VLM, tower included, as plain transformers does (the naive
    baseline); `ThinkThenScore.gradient_checkpointing_enable` leaves the tower out on purpose."""

    def enable(self, gradient_checkpointing_kwargs=None, every_n_layers=1, offload=False):
        kwargs = {"use_reentrant": False, **(gradient_checkpointing_kwargs or {})}
        self.base_vlm.gradient_checkpointing_enable(kwargs, every_n_layers=every_n_layers, offload=offload)

    return mock.patch.object(cot_rm.model.modeling.ThinkThenScore, "gradient_checkpointing_enable", enable)


# ---- data: synthetic SFT traces in the project's format around real mp4 files
def write_videos(root: Path, n: int, frames: int, side: int) -> list[Path]:
    """`n` distinct mp4 clips of 2x`frames` frames at 4 fps (sampling `frames` of them is ~2 fps): a
    moving gradient plus noise, so the tower encodes real pixels and no two clips share a cache key."""
    rng, (ys, xs), paths = np.random.default_rng(0), np.mgrid[0:side, 0:side], []
    for i in range(n):
        clip = []
        for t in range(2 * frames):
            rgb = [(xs + 7 * t + 40 * i) % 256, (ys + 3 * t) % 256, np.full_like(xs, (20 * t + 60 * i) % 256)]
            noisy = np.stack(rgb, -1) + rng.integers(-10, 11, (side, side, 3))
            clip.append(np.clip(noisy, 0, 255).astype(np.uint8))
        path = root / f"video{i:02d}.mp4"
        paths.append(write_video(path, clip, 4, "libx264", options={"preset": "ultrafast"}))
    return paths


def _filler(n_words: int, seed: int) -> str:
    words: list[str] = []
    k = seed
    while len(words) < n_words:
        pick = {key: vals[(k + j) % len(vals)] for j, (key, vals) in enumerate(_WORDS.items())}
        words += _FILLER.format(k=k % 32, **pick).split()
        k += 1
    return " ".join(words[:n_words])


class Traces:
    """The `i`-th synthetic trace of a video, and its token counts with the tokenizer in use."""

    def __init__(self, processor):
        self.processor, self.spec = processor, JudgeSpec(dimensions=DIMS)

    @staticmethod
    def scores(i: int) -> dict:
        return {d: 1 + (i + j) % 5 for j, d in enumerate(DIMS)}

    @staticmethod
    def prompt(words: int, i: int) -> str:
        return f"two red circles moving left slowly on a white background {_filler(words, 100 + i)}".strip()

    def messages(self, video, ref: str, prompt_words: int, think_words: int, i: int) -> list[dict]:
        think = f"I compare the frames with the prompt. {_filler(think_words, i)}"
        prompt = self.prompt(prompt_words, i)
        return judgment_conversation(prompt, video, (), (think, self.scores(i)), self.spec, ref)

    def counts(self, msgs) -> tuple[int, int]:
        """(prompt tokens, assistant tokens) of a rendered trace, the video's placeholder not counted."""
        tok = self.processor.tokenizer
        ids = tok(render(self.processor, msgs, FAMILY, self.spec) + "<|reward|>")["input_ids"]
        im_start, im_end = tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
        assistant = int(assistant_mask(ids, im_start, im_end, tok).sum())
        return len(ids) - 1 - assistant, assistant  # the one <|video_pad|> expands to the video tokens

    def filler_words(self, video, ref: str, prompt_tokens: int, rationale_tokens: int) -> tuple[int, int]:
        """The fewest filler words (prompt, critique) that reach the token targets on this video's trace
        (token counts grow with word counts: a binary search)."""
        think = bisect_left(range(8 * rationale_tokens), rationale_tokens,
                            key=lambda n: self.counts(self.messages(video, ref, 0, n, 0))[1])  # fmt: skip
        prompt = bisect_left(range(8 * prompt_tokens), prompt_tokens,
                             key=lambda n: self.counts(self.messages(video, ref, n, think, 0))[0])  # fmt: skip
        return prompt, think


def _pair_record(k: int, a: dict, b: dict) -> dict:
    dims = {d: "A" if a["scores"][d] > b["scores"][d] else "B" if a["scores"][d] < b["scores"][d] else "tie"
            for d in DIMS}  # fmt: skip
    return {"id": f"pair-{k:04d}", "prompt": a["prompt"], "prompt_b": b["prompt"], "video_a": a["video"],
            "video_b": b["video"], "preference": dims["overall"], "dims": dims, "split": "train"}  # fmt: skip


def _write_jsonl(path: Path, rows) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def build_data(work: Path, processor, args) -> dict:
    """Write the SFT traces (and pairs) JSONL; return the files and the sample's token counts."""
    n_videos = args.videos * (2 if args.pair else 1)
    paths = write_videos(work / "videos", n_videos, args.frames, args.resolution)
    px = args.resolution**2
    sampling = Sampling(fps=None, num_frames=args.frames, min_pixels=px, max_pixels=px, family=FAMILY)
    videos, refs = [read_video(p, sampling) for p in paths], [p.relative_to(work).as_posix() for p in paths]
    maker = Traces(processor)
    # Sized once, on the first video; the others (same frames and resolution) reuse the word counts.
    words = maker.filler_words(videos[0], refs[0], args.prompt_tokens, args.rationale_tokens)
    prompt_tokens, rationale_tokens = maker.counts(maker.messages(videos[0], refs[0], *words, 0))
    traces = [
        {"id": f"bench-{i:02d}", "prompt": maker.prompt(words[0], i), "video": ref, "sampling": sampling.to_dict(),
         "frame_indices": list(video.indices), "scores": maker.scores(i), "split": "train",
         "messages": maker.messages(video, ref, *words, i), "rationale_free": False}
        for i, (video, ref) in enumerate(zip(videos, refs))
    ]  # fmt: skip
    # Exactly one epoch (no epoch-boundary effects), `grad_accum` micro-batches in every optimizer step.
    examples = args.grad_accum * (args.warmup + args.steps)
    pairs_path = work / "pairs.jsonl" if args.pair else None
    if pairs_path:  # each trace once; the pairs repeat (distinct ids)
        _write_jsonl(work / "sft_data.jsonl", traces)
        pairs = [traces[2 * (k % args.videos) : 2 * (k % args.videos) + 2] for k in range(examples)]
        _write_jsonl(pairs_path, (_pair_record(k, a, b) for k, (a, b) in enumerate(pairs)))
    else:  # the traces repeat (distinct ids)
        _write_jsonl(work / "sft_data.jsonl",
                     ({**traces[k % len(traces)], "id": f"bench-{k:04d}"} for k in range(examples)))  # fmt: skip
    return {
        "train": str(work / "sft_data.jsonl"), "pairs": str(pairs_path) if pairs_path else None,
        "videos": n_videos, "frames": args.frames, "resolution": f"{args.resolution}x{args.resolution}",
        "video_tokens": videos[0].video_tokens, "prompt_tokens": prompt_tokens, "rationale_tokens": rationale_tokens,
        "tokens_per_sample": videos[0].video_tokens + prompt_tokens + rationale_tokens, "examples": examples,
    }  # fmt: skip


# ---- runs: each step timed, one configuration at a time, each in its own model and trainer
def _sync(device: torch.device) -> None:
    if device.type == "cuda":  # CUDA runs asynchronously: time finished work only
        torch.cuda.synchronize(device)


def make_timer(trainer, device: torch.device):
    """A callback timing each optimizer step (and the cache's hits/misses in it), plus a `training_step`
    wrapper counting the tokens of the micro-batches the Trainer actually fed."""

    def cache_stats() -> dict:
        stats = trainer.vision_cache.stats() if trainer.vision_cache is not None else {}
        return {f"cache_{k}": stats[k] for k in ("hits", "misses", "tower_calls") if k in stats}

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.steps: list[dict] = []
            self.current: dict | None = None  # the step being timed

        def on_step_begin(self, args, state, control, **kwargs):
            self.stats0 = cache_stats()
            self.current = dict.fromkeys(("micro_batches", "tokens", "padded_tokens", "rows"), 0)
            _sync(device)
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            _sync(device)
            step = {"step": state.global_step, "seconds": time.perf_counter() - self.t0, **self.current}
            self.steps.append(step | {k: v - self.stats0[k] for k, v in cache_stats().items()})
            self.current = None

    timer, original = StepTimer(), trainer.training_step

    def training_step(model, inputs, num_items_in_batch=None):
        if timer.current is not None:  # the mask is still on the CPU here: counting costs no device sync
            mask = inputs["attention_mask"]
            timer.current["micro_batches"] += 1
            timer.current["tokens"] += int(mask.sum())
            timer.current["padded_tokens"] += mask.numel()
            timer.current["rows"] += len(mask)
        return original(model, inputs, num_items_in_batch)

    trainer.training_step = training_step
    trainer.add_callback(timer)
    return timer


def summarize(steps: list[dict], warmup: int) -> dict:
    timed = steps[warmup:]
    out: dict = {"steps": steps, "timed_steps": len(timed)}
    if not timed:
        return out
    seconds, tokens = sum(s["seconds"] for s in timed), sum(s["tokens"] for s in timed)
    out.update(
        tokens_per_s=tokens / seconds, timed_seconds=seconds, timed_tokens=tokens,
        step_s_median=statistics.median(s["seconds"] for s in timed), tokens_per_step=tokens / len(timed),
        micro_batches_per_step=sum(s["micro_batches"] for s in timed) / len(timed),
    )  # fmt: skip
    # Steps served entirely from the cache vs steps that ran the tower (as a first epoch does).
    hit = [s for s in timed if s.get("cache_misses") == 0]
    for kind, chosen in (("hit", hit), ("miss", [s for s in timed if s.get("cache_misses", 0) > 0])):
        if chosen:
            rate = sum(s["tokens"] for s in chosen) / sum(s["seconds"] for s in chosen)
            out |= {f"{kind}_steps": len(chosen), f"{kind}_tokens_per_s": rate}
    return out


def train_once(name: str, cfg, result: dict, args, device: torch.device) -> None:
    """Build through `cot_rm.train.sft.trainer.build`, train, fill `result`. An error (e.g. out of memory) is recorded so
    the other configurations still run; the model is freed, else the next one's peak would include it."""
    model = trainer = timer = alive = None
    try:
        t0 = time.perf_counter()
        naive_ckpt = checkpoint_everything() if name == "naive" else contextlib.nullcontext()
        with random_init_loader(device), naive_ckpt:
            model, trainer, _, examples = build(cfg)
            alive = weakref.ref(model.base_vlm)
            _sync(device)
            result |= {"build_s": time.perf_counter() - t0, "examples": len(examples),
                       "params_total": sum(p.numel() for p in model.parameters()),
                       "params_trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}  # fmt: skip
            timer, t1 = make_timer(trainer, device), time.perf_counter()
            trainer.train()
            _sync(device)
            result["train_s"] = time.perf_counter() - t1
        block = next(m for n, m in model.base_vlm.named_modules() if n.endswith("visual.blocks.0"))
        result["vision_checkpointed"] = bool(getattr(block, "gradient_checkpointing", False))  # naive only
        result.update(summarize(timer.steps, args.warmup))
        if trainer.vision_cache is not None:
            result["vision_cache"] = {k: v for k, v in trainer.vision_cache.stats().items() if k != "hash_s"}
        logs = [h for h in trainer.state.log_history if "lm_loss" in h]
        keys = ("loss", "lm_loss", "head_point_loss", "head_pair_loss")
        result["losses"] = {k: [h.get(k) for h in logs] for k in keys}
    except Exception as err:
        result["error"] = f"{type(err).__name__}: {err}"[:2000]
        traceback.print_exc()
    finally:
        if trainer is not None:
            if trainer.vision_cache is not None:
                trainer.vision_cache.remove()
            trainer.accelerator.free_memory()
        model = trainer = timer = None  # the timer's callbacks reach the trainer too
        gc.collect()
        result["model_freed"] = alive is None or alive() is None


def run_config(name: str, model_dir: Path, work: Path, data: dict, args) -> dict:
    """The 7B SFT config with this bench's model, data and step counts, and `name`'s changes."""
    device, gb = args.device, 2**30
    overrides = [
        f"model.base={model_dir}", f"data.train={data['train']}", f"data.pairs={data['pairs'] or 'null'}",
        "data.eval_pairs=null", f"data.frame_cache={work / 'frames'}", "data.max_length=null",
        f"loss.rationale_dropout={args.rationale_dropout}", f"train.output_dir={work / 'runs' / name}",
        f"train.max_steps={args.warmup + args.steps}", f"train.gradient_accumulation_steps={args.grad_accum}",
        "train.save_strategy='no'", "train.logging_steps=1", "train.report_to=none", "train.disable_tqdm=true",
    ]  # fmt: skip
    if device.type != "cuda":  # CPU: fp32 (bf16 on CPU is slow and gains nothing)
        overrides += ["train.use_cpu=true", "train.bf16=false", "model.dtype=float32"]
    overrides += [*CONFIG_OVERRIDES[name], *args.set]
    cfg = load_config(SFTRunConfig, args.config, overrides)
    check_trl_args(trl.SFTConfig, cfg.train)
    checkpointing = "whole model" if name == "naive" else "language model"
    result: dict = {
        "freeze_vision": cfg.model.freeze_vision,
        "reuse_vision_features": cfg.model.freeze_vision and cfg.model.reuse_vision_features,
        "checkpointing": checkpointing if cfg.train.get("gradient_checkpointing") else "off",
        "overrides": overrides,
    }
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    train_once(name, cfg, result, args, device)
    if device.type == "cuda":
        result["peak_allocated_gb"] = torch.cuda.max_memory_allocated(device) / gb
        result["peak_reserved_gb"] = torch.cuda.max_memory_reserved(device) / gb
        torch.cuda.empty_cache()
        result["end_allocated_gb"] = torch.cuda.memory_allocated(device) / gb
    return result


def ratios(configs: dict) -> dict:
    """tokens/s of each configuration over each later one in CONFIGS order (e.g. reuse_vs_naive)."""
    tok_s = {n: configs[n]["tokens_per_s"] for n in CONFIGS if configs.get(n, {}).get("tokens_per_s")}
    return {f"{a}_vs_{b}": tok_s[a] / tok_s[b] for a, b in itertools.combinations(tok_s, 2)}


def table(configs: dict) -> str:
    base = configs.get("naive", {}).get("tokens_per_s")
    lines = [TABLE_HEAD]
    for name, r in configs.items():
        if "tokens_per_s" not in r:
            lines.append(f"| {name} | | | | failed: {r.get('error', 'no timed step')[:80]} | | | | | |")
            continue
        cache, peak = r.get("vision_cache"), r.get("peak_allocated_gb")
        cells = [
            name, "frozen" if r["freeze_vision"] else "trained", "yes" if r["reuse_vision_features"] else "no",
            r["checkpointing"], f"{r['tokens_per_s']:,.0f}", f"{r['step_s_median']:.3f}",
            f"{r['tokens_per_step']:,.0f}", f"{peak:.1f}" if peak is not None else "n/a",
            f"{cache['hits']}/{cache['misses']}" if cache else "-", f"{r['tokens_per_s'] / base:.2f}x" if base else "-",
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = ap.add_argument
    add("--size", choices=("7b", "tiny"), default="7b", help="architecture (default 7b)")
    add("--configs", default=",".join(CONFIGS), help=f"comma-separated, of {CONFIGS}")
    add("--config", default=str(ROOT / "configs" / "qwen2_5_vl_7b" / "sft.yaml"), help="SFT YAML")
    add("--warmup", type=int, default=2, help="optimizer steps excluded from timing")
    add("--steps", type=int, default=4, help="timed optimizer steps")
    add("--grad-accum", type=int, default=None, help="micro-batches per optimizer step (default: config's)")
    add("--videos", type=int, default=1, help="distinct videos (pairs with --pair)")
    add("--pair", action="store_true", help="pairwise examples: both videos of a pair in one step")
    add("--frames", type=int, default=16, help="frames sampled per video")
    add("--resolution", type=int, default=448, help="frame side in pixels (multiple of 28)")
    add("--prompt-tokens", type=int, default=200, help="at least this many non-vision, non-assistant tokens")
    add("--rationale-tokens", type=int, default=512, help="assistant (LM-loss) tokens")
    add("--rationale-dropout", type=float, default=0.0, help="config: 0.5; 0: every step the same sample")
    add("--set", action="append", default=[], metavar="KEY=VALUE", help="extra config override")
    add("--work", default=None, help="scratch folder (default: a temp dir, removed)")
    add("--out", required=True, help="JSON results file (rewritten after each configuration)")
    add("--results-md", default=str(ROOT / "bench" / "RESULTS.md"), help="markdown to append to")
    add("--no-append", action="store_true", help="print the section, do not append it")
    args = ap.parse_args(argv)
    args.names = [n.strip() for n in args.configs.split(",") if n.strip()]
    if unknown := [n for n in args.names if n not in CONFIGS]:
        ap.error(f"unknown configs {unknown}; choose from {CONFIGS}")
    if args.resolution % 28:
        ap.error("--resolution must be a multiple of 28 (patch 14 x merge 2)")
    args.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.size == "7b" and args.device.type != "cuda":
        ap.error("--size 7b needs a GPU (use --size tiny on CPU)")
    if args.grad_accum is None:
        args.grad_accum = int(read_yaml(args.config).get("train", {}).get("gradient_accumulation_steps", 1))
    return args


def header(args, data: dict, argv: list[str] | None) -> dict:
    """The run's description: command, device, versions, settings and the sample's token counts."""
    return {
        "bench": "sft_step", "size": args.size,
        "command": shlex.join(["python3", "bench/sft_step.py", *(sys.argv[1:] if argv is None else argv)]),
        "device": torch.cuda.get_device_name(args.device) if args.device.type == "cuda" else platform.processor() or "cpu",
        "versions": {"python": platform.python_version(),
                     **{m.__name__: m.__version__ for m in (torch, transformers, trl, peft)}},
        "config_file": os.path.relpath(args.config, ROOT),
        "settings": {"grad_accum": args.grad_accum, "warmup_steps": args.warmup, "timed_steps": args.steps,
                     "rationale_dropout": args.rationale_dropout, "pair": args.pair, "extra_overrides": args.set},
        "sample": {k: v for k, v in data.items() if k not in ("train", "pairs")},
        "env_naive_baseline_tok_s": ENV_NAIVE_TOK_S, "configs": {},
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_start, out = time.perf_counter(), Path(args.out)
    with tempfile.TemporaryDirectory(prefix="sft-step-") as tmp:  # the scratch folder unless --work
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        model_dir = write_model_dir(work / "model", args.size)
        processor = AutoProcessor.from_pretrained(str(model_dir))
        data = build_data(work, processor, args)
        data["setup_s"] = time.perf_counter() - t_start
        results = header(args, data, argv)
        print(f"sft_step: {args.size} on {results['device']}; sample {data['tokens_per_sample']} tokens "
              f"({data['video_tokens']} video + {data['prompt_tokens']} prompt + {data['rationale_tokens']} rationale)",
              flush=True)  # fmt: skip
        out.parent.mkdir(parents=True, exist_ok=True)
        for name in args.names:
            print(f"sft_step: --- {name} ---", flush=True)
            t0 = time.perf_counter()
            r = results["configs"][name] = run_config(name, model_dir, work, data, args)
            r["wall_s"] = time.perf_counter() - t0
            print(f"sft_step: {name}: {r.get('tokens_per_s', float('nan')):,.0f} tok/s, "
                  f"peak {r.get('peak_allocated_gb', float('nan')):.1f} GB, {r['wall_s']:.0f} s"
                  + (f", ERROR {r['error']}" if "error" in r else ""), flush=True)  # fmt: skip
            results |= {"ratios": ratios(results["configs"]), "total_s": time.perf_counter() - t_start}
            out.write_text(json.dumps(results, indent=2) + "\n")  # after each one: partial results survive
    results["machine"] = machine()
    publish(results, section(results), args.out, args.results_md, append=not args.no_append)
    return 1 if any("error" in r for r in results["configs"].values()) else 0


def section(results: dict) -> str:
    """The RESULTS.md section: machine, command, sample, the table and the ratios."""
    s = results["sample"]
    ratio_text = (
        ", ".join(f"{k} {v:.3f}" for k, v in results["ratios"].items()) or "none (a configuration failed)"
    )
    versions = ", ".join(f"{k} {v}" for k, v in results["versions"].items())
    return (
        f"\n## sft_step — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} ({results['device']})\n\n"
        f"- Machine: {results['machine']}; {versions}\n"
        f"- Command: `{results['command']}`\n"
        f"- Model: the Qwen2.5-VL {results['size']} architecture, random weights; config {results['config_file']}\n"
        f"- Sample: {s['tokens_per_sample']:,} tokens ({s['video_tokens']:,} video + {s['prompt_tokens']:,} prompt + "
        f"{s['rationale_tokens']:,} rationale); settings {json.dumps(results['settings'])}\n\n"
        f"{table(results['configs'])}\n\n"
        f"Ratios (tokens/s): {ratio_text}. the earlier plain-transformers naive baseline (H200): {ENV_NAIVE_TOK_S:,.0f} tok/s. "
        f"Total {results['total_s']:.0f} s.\n"
    )


if __name__ == "__main__":
    sys.exit(main())
