"""Stage 0 (tiny family only), `cot-rm pretrain --config configs/tiny/pretrain.yaml`: perception pretraining.

A real Qwen-VL base arrives pretrained to see; the tiny CPU twin is built from random weights, and on a few
hundred judged videos it never learns to. This stage gives it the analogue of a base's pretraining, on
descriptive targets only (what is drawn and what happens in which frame, never a score or a verdict):

    corpus   `cot-rm toyworld` with the corpus's own seed; the test split's prompts (the held-out colour x
             shape combinations) are dropped, so no combination any test split uses is ever seen
    phase 1  (`tower:`, cot_rm/train/pretrain/tower.py) the vision tower and merger alone, with linear
             heads on what they hand the language model (`TowerProbe`): the drawn colour, shape, count,
             direction and speed, and which events each temporal slice of the shown frames holds (TRL's
             SFTConfig, transformers' Trainer)
    phase 2  (`train:`) the tower frozen, the language model learns to describe: user: the video as the
             judge samples it + "Describe what you see." -> assistant: `data_synthesis/toyworld/describe.py`'s
             description (a `corpus.frame_task` share: one frame as an image -> that frame's); next-token
             cross-entropy on the assistant tokens (TRL's SFTTrainer, as every stage)
    output   a standard `save_pretrained` folder (model, tokenizer, processor) that `cot-rm sft` loads as
             `model.base`, with `cot_rm_pretrain.json`: corpus seed, sizes, the weights' digest and the end
             report (phase 1's heads and greedy descriptions of held-out corpus videos)

Captioning end to end from random weights (`tower.steps=0`) wipes the tower's features instead: the
language model ignores the video tokens at first, and the gradient it sends back only flattens them.
The same code path as the 7B/8B models (Qwen2_5_VLForConditionalGeneration, its processor); only the
sizes are small. Each phase resumes a killed run from its newest checkpoint like the other stages.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import sys
from pathlib import Path

import torch
from datasets import Dataset
from transformers import set_seed
from trl import SFTConfig, SFTTrainer

from cot_rm.config import ConfigError, add_config_arguments, check_trl_args, config_from_args, dump_config
from cot_rm.media.frame_cache import FrameCache
from cot_rm.media.video import Sampling, read_frames_at, read_video
from cot_rm.model import tiny
from cot_rm.model.processing import encode
from cot_rm.model.tiny import save_processor
from cot_rm.protocol import chat_template, frames_seen
from cot_rm.schema import read_jsonl
from cot_rm.train.common import lm_loss
from cot_rm.train.data import IGNORE, assistant_mask
from cot_rm.train.log import note
from cot_rm.train.pretrain.config import PretrainRunConfig
from cot_rm.train.pretrain.tower import EVENTS, train_tower
from cot_rm.train.runs import start_run, train_to_the_end
from data_synthesis.toyworld import world as toyworld
from data_synthesis.toyworld.describe import (
    describe,
    describe_frame,
    drawn_spec,
    read_description,
)
from data_synthesis.toyworld.plan import COUNTS, DIRECTIONS, HELD_OUT, SPEEDS, TEMPLATES, prompt_text
from data_synthesis.toyworld.render import BACKGROUNDS, COLOURS, SHAPES

# `cot-rm pretrain --help`
DESCRIPTION = (
    "Stage 0 for the tiny model family: perception pretraining of a tiny random Qwen-VL (vision tower "
    "trained) on toy-world descriptions, no reward labels. Builds its corpus when missing, resumes a "
    "killed run, and writes a standard checkpoint to `save_to` that `cot-rm sft` loads as model.base. "
    "Example: cot-rm pretrain --config configs/tiny/pretrain.yaml"
)

MARKER = "cot_rm_pretrain.json"
CORPUS_MARKER = "cot_rm_corpus.json"
ATTRIBUTES = ("count", "colour", "shape", "background", "direction", "speed")


# ------------------------------------------------------------------------------------------- corpus


def build_corpus(args, progress: bool = True) -> list[dict]:
    """The corpus's train and val videos as {"video", "meta", "split"}: built by the toy world when the
    folder does not hold this seed and size yet; test-split prompts (held-out combinations) left out."""
    folder = Path(args.folder)
    want = {"seed": args.seed, "videos": args.videos, "size": args.size}
    marker = folder / CORPUS_MARKER
    if not (marker.is_file() and json.loads(marker.read_text()) == want):
        cfg = toyworld.ToyConfig(args.videos, args.seed, args.size, args.size, workers=os.cpu_count() or 1)
        note(__name__, f"cot-rm pretrain: building the corpus ({args.videos} videos, seed {args.seed}) in {folder}")  # fmt: skip
        toyworld.build(folder, cfg, progress=progress)
        marker.write_text(json.dumps(want) + "\n")  # last: a killed build is rebuilt
    rows = []
    for r in read_jsonl(folder / "pointwise.jsonl", kind="pointwise"):
        if r.split == "test":
            continue
        drawn = drawn_combinations(r.meta)
        if drawn & HELD_OUT:  # the toy world never draws them outside test; a corpus must not either
            raise ValueError(f"{folder}: video {r.id} draws held-out {sorted(drawn & HELD_OUT)}")
        rows.append({"video": r.video, "meta": r.meta, "split": r.split})
    return rows


def drawn_combinations(meta: dict) -> set[tuple[str, str]]:
    """Every (colour, shape) a toy video draws: the spec after alignment defects, and a morph's target."""
    spec = drawn_spec(meta)
    shapes = {spec["shape"]} | {d["params"]["to_shape"] for d in meta["defects"] if d["type"] == "morphing"}
    return {(spec["colour"], s) for s in shapes}


# -------------------------------------------------------------------------------------------- batches


def request_text(video, prompt: str | None = None) -> str:
    """The user's words beside the video: what was sampled (as the judge is told), the prompt if any (as
    the judge is given it), then the task."""
    if prompt is None:
        return f"{frames_seen(video)}\nDescribe what you see."
    return (
        f'{frames_seen(video)}\nGeneration prompt: "{prompt}"\nQuote the prompt, then describe what you see.'
    )


def random_prompt(rng: random.Random, held_out: bool = False) -> str:
    """A toy-world prompt drawn at random: from the corpus's colour x shape combinations, or (`held_out`,
    only to measure copying in the end report) from the ones the test splits keep."""
    colour, shape = rng.choice([(c, s) for c in COLOURS for s in SHAPES if ((c, s) in HELD_OUT) == held_out])
    spec = {"colour": colour, "shape": shape, "count": rng.choice(COUNTS), "direction": rng.choice(DIRECTIONS),
            "speed": rng.choice(SPEEDS), "background": rng.choice(list(BACKGROUNDS))}  # fmt: skip
    return prompt_text(spec, rng.randrange(len(TEMPLATES)))


def copy_words(tokenizer) -> list[str]:
    """The whole words of the vocabulary (one token each, after a space): what copy samples are made of."""
    words = (tokenizer.decode([i]) for i in range(len(tokenizer)))
    return sorted(
        {w[1:] for w in words if len(w) > 2 and w[0] == " " and w[1:].isalpha() and w[1:].islower()}
    )


def copy_sample(words: list[str], rng: random.Random, lo: int = 6, hi: int = 24) -> list[dict]:
    """Text only: "Repeat exactly: w1 ... wn" -> "w1 ... wn", random words. Word pairs carry no statistics
    to learn, so the only way to the answer is copying from the context: the in-context copying a real
    base learns in pretraining and the judge's "The prompt asks for ..." needs for prompts it never saw.
    A held-out colour x shape pair is never written (the corpus holds none)."""
    while True:
        text = " ".join(rng.choice(words) for _ in range(rng.randint(lo, hi)))
        if not any(f" {c} {s}" in f" {text}" for c, s in HELD_OUT):  # "diamonds" contains "diamond"
            break
    return [{"role": "user", "content": [{"type": "text", "text": f"Repeat exactly: {text}"}]},
            {"role": "assistant", "content": text}]  # fmt: skip


class DescribeCollator:
    """Examples ({"example": json}) -> a padded batch of description conversations, labels on the answers."""

    def __init__(self, processor, family: str, corpus_args, seed: int = 0, cache_dir: str | None = None):
        self.processor, self.family, self.args, self.seed = processor, family, corpus_args, seed
        self.sampling = Sampling(fps=None, num_frames=corpus_args.frames, min_pixels=corpus_args.max_pixels,
                                 max_pixels=corpus_args.max_pixels, family=family,
                                 overlap=corpus_args.overlap)  # fmt: skip
        self.cache = FrameCache(cache_dir)
        self.calls = 0
        tok = processor.tokenizer
        self.im_start, self.im_end = (tok.convert_tokens_to_ids(t) for t in ("<|im_start|>", "<|im_end|>"))
        self.words = copy_words(tok) if corpus_args.copy_task else []

    def __call__(self, batch: list[dict]) -> dict[str, torch.Tensor]:
        rng = random.Random(f"{self.seed}:{os.environ.get('RANK', 0)}:{torch.initial_seed()}:{self.calls}")
        self.calls += 1
        texts, videos, images = [], [], []
        for item in batch:
            row = json.loads(item["example"])
            if rng.random() < self.args.copy_task:
                texts.append(self.render(copy_sample(self.words, rng)))
                continue
            if rng.random() < self.args.frame_task:
                messages, image = self.frame_sample(row, rng)
                images.append(image)
            else:
                prompt = random_prompt(rng) if rng.random() < self.args.quote_task else None
                messages, video = self.video_sample(row, prompt=prompt)
                videos.append(video)
            texts.append(self.render(messages))
        return self.encode(texts, videos, images)

    def video_sample(self, row: dict, answer: bool = True, prompt: str | None = None):
        """The video and "Describe what you see."; with a `prompt` (one unrelated to the video), the prompt
        is quoted first, in the words the user turn gives it (`Generation prompt: "..."`, so the quote
        starts where the same words stand in the context), then the description: what is learned is
        copying, since neither the video nor the description tells what the prompt says."""
        video = read_video(row["video"], self.sampling, self.cache)
        text = request_text(video, prompt)
        messages = [{"role": "user", "content": [{"type": "video", "video": row["video"]},
                                                 {"type": "text", "text": text}]}]  # fmt: skip
        if answer:
            said = describe(row["meta"], video.shown)
            said = f'Generation prompt: "{prompt}". {said}' if prompt else said
            messages.append({"role": "assistant", "content": said})
        return messages, video

    def frame_sample(self, row: dict, rng: random.Random):
        """One frame as the tool returns it; half the time one where something is wrong, so events show."""
        meta = row["meta"]
        flawed = sorted({f for d in meta["defects"] for f in d["frames"]})
        frame = rng.choice(flawed) if flawed and rng.random() < 0.5 else rng.randrange(meta["num_frames"])
        (image,) = read_frames_at(row["video"], [frame], self.args.frame_max_pixels, self.family)
        text = f"Frame {frame} ({frame / meta['fps']:.2f} s) of a video. Describe this frame."
        messages = [
            {
                "role": "user",
                "content": [{"type": "image", "image": row["video"]}, {"type": "text", "text": text}],
            },
            {"role": "assistant", "content": describe_frame(meta, frame)},
        ]
        return messages, image

    def render(self, messages: list[dict], generation: bool = False) -> str:
        return self.processor.apply_chat_template(
            messages,
            chat_template=chat_template(self.family),
            tokenize=False,
            add_generation_prompt=generation,
        )

    def encode(self, texts, videos, images) -> dict[str, torch.Tensor]:
        batch = dict(encode(self.processor, texts, videos=videos or None, images=images or None))
        labels = torch.full_like(batch["input_ids"], IGNORE)
        for i, ids in enumerate(batch["input_ids"].tolist()):
            mask = assistant_mask(ids, self.im_start, self.im_end, self.processor.tokenizer)
            labels[i, mask] = batch["input_ids"][i, mask]
        batch["labels"] = labels
        return batch


# -------------------------------------------------------------------------------------------- trainer


class PretrainTrainer(SFTTrainer):
    """TRL's SFTTrainer on the plain VLM with `DescribeCollator` batches and the masked LM loss."""

    def __init__(self, model, args: SFTConfig, **kwargs):
        args.remove_unused_columns = False  # the collator needs the raw example column
        args.dataset_kwargs = {**(args.dataset_kwargs or {}), "skip_prepare_dataset": True}
        super().__init__(model=model, args=args, **kwargs)
        # The loss is a per-micro-batch mean: the Trainer divides by the accumulation steps (5.19+ / 5.17).
        self.loss_is_scaled_for_ga = False
        self.model_accepts_loss_kwargs = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        out = model(**inputs)
        loss = lm_loss(out.logits, labels)
        self._metrics["train" if model.training else "eval"]["lm_loss"].append(float(loss.detach()))
        return (loss, out) if return_outputs else loss

    def create_model_card(self, *args, **kwargs) -> None:
        return None  # cot_rm_pretrain.json describes the run


def build(cfg):
    """The random tiny model, its processor, the corpus and the trainer for a resolved config."""
    m = cfg.model
    args = SFTConfig(**cfg.train)
    set_seed(args.seed)
    tokenizer = tiny.build_tokenizer(m.family)
    processor = tiny.build_processor(m.family, tokenizer)
    model = tiny.build_model(
        tiny.build_config(m.family, tokenizer, tiny.TinySize(**m.size())), m.seed
    ).train()
    model.generation_config = tiny.generation_config(tokenizer)
    if cfg.tower.steps:  # phase 2 captions with the tower that phase 1 trained, frozen
        model.model.visual.requires_grad_(False)
    rows = build_corpus(cfg.corpus)
    train = [r for r in rows if r["split"] == "train"]
    dataset = Dataset.from_dict({"example": [json.dumps(r) for r in train]})
    collator = DescribeCollator(processor, m.family, cfg.corpus, args.seed)
    trainer = PretrainTrainer(
        model, args, data_collator=collator, train_dataset=dataset, processing_class=processor
    )
    return model, processor, trainer, rows


# --------------------------------------------------------------------------------------------- report


@torch.no_grad()
def describe_greedily(model, collator, rows: list[dict], prompts=None, batch_size=16, max_new_tokens=80):
    """Greedy answers to the description task for `rows` (with `prompts[i]` to quote, when given), as
    (row, the sampled video, the text) triples."""
    model.eval()
    prompts = prompts or [None] * len(rows)
    for start in range(0, len(rows), batch_size):
        chunk = list(zip(rows[start : start + batch_size], prompts[start : start + batch_size]))
        samples = [collator.video_sample(r, answer=False, prompt=p) for r, p in chunk]
        texts = [collator.render(msgs, generation=True) for msgs, _ in samples]
        batch = encode(collator.processor, texts, videos=[v for _, v in samples], padding_side="left")
        out = model.generate(**batch.to(model.device), max_new_tokens=max_new_tokens, do_sample=False)
        for (row, _), (_, video), ids in zip(chunk, samples, out[:, batch["input_ids"].shape[1] :]):
            yield row, video, collator.processor.tokenizer.decode(ids, skip_special_tokens=True).strip()


def caption_report(model, collator, rows: list[dict], batch_size: int = 16) -> dict:
    """Greedy descriptions of `rows`' videos against the truth: per-attribute accuracy, and the precision
    and recall of the event kinds named (which kinds the sampled frames show, `describe` decides), with
    the counts behind them per kind."""
    hits = dict.fromkeys(ATTRIBUTES, 0)
    counts = {kind: [0, 0, 0] for kind in EVENTS}  # true positives, false positives, misses
    examples = []
    for row, video, text in describe_greedily(model, collator, rows, batch_size=batch_size):
        truth, got = drawn_spec(row["meta"]), read_description(text)
        for key in ATTRIBUTES:
            hits[key] += got[key] == truth[key]
        truth_text = describe(row["meta"], video.shown)
        want = read_description(truth_text)["events"]
        for kind in want | got["events"]:
            counts[kind][(kind not in want) + 2 * (kind not in got["events"])] += 1
        if len(examples) < 3:
            examples.append({"video": row["video"], "truth": truth_text, "said": text})
    n = max(len(rows), 1)
    tp, fp, fn = (sum(c[i] for c in counts.values()) for i in range(3))
    return {
        "videos": len(rows),
        "attribute_accuracy": {k: round(v / n, 3) for k, v in hits.items()},
        "event_precision": round(tp / max(tp + fp, 1), 3),
        "event_recall": round(tp / max(tp + fn, 1), 3),
        # Per kind: [named and shown, named but not shown, shown but not named].
        "events_by_kind": {k: c for k, c in counts.items() if any(c)},
        "examples": examples,
    }


def quote_report(model, collator, rows: list[dict], seed: int = 0, batch_size: int = 16) -> dict:
    """Copying, measured where it matters: each video beside a prompt with a colour x shape combination
    the corpus never holds (the test splits'), asked to quote it and describe the video. `exact`: the
    quote is the prompt; `colour_shape`: it at least names the prompt's colour and shape together."""
    rng = random.Random(f"quote:{seed}")
    prompts = [random_prompt(rng, held_out=True) for _ in rows]
    exact = pair = 0
    examples = []
    for (_, _, text), prompt in zip(
        describe_greedily(model, collator, rows, prompts, batch_size, 120), prompts
    ):
        hits = quoted(prompt, text)
        exact, pair = exact + hits[0], pair + hits[1]
        if len(examples) < 3:
            examples.append({"prompt": prompt, "said": text})
    n = max(len(rows), 1)
    return {"videos": len(rows), "exact": round(exact / n, 3), "colour_shape": round(pair / n, 3),
            "examples": examples}  # fmt: skip


def quoted(prompt: str, said: str) -> tuple[bool, bool]:
    """(the answer quotes the prompt word for word, its quote names the prompt's colour and shape together)."""
    quote = said.partition('Generation prompt: "')[2].partition('"')[0]
    colour, shape = next((c, s) for c in COLOURS for s in SHAPES if f" {c} {s}" in f" {prompt}")
    return quote == prompt, f" {colour} {shape}" in f" {quote}"


def digest(path: str | Path) -> str:
    """sha256 of a file (the shipped base's weights, recorded in its marker)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_base(model, processor, cfg, report: dict, out: Path) -> Path:
    """The final base as a standard checkpoint folder, written beside `out` and renamed into place."""
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    save_processor(processor, tmp)
    info = {
        "what": "tiny Qwen-VL base, perception-pretrained on toy-world descriptions (no reward labels)",
        "rebuild": "cot-rm pretrain --config configs/tiny/pretrain.yaml",
        # with the sampling it reads videos with, which the judge's traces must use (recipes/tiny_cpu.sh)
        "corpus": {
            k: getattr(cfg.corpus, k) for k in ("seed", "videos", "size", "frames", "max_pixels", "overlap")
        },
        "model": dump_config(cfg.model),
        "tower": dump_config(cfg.tower),
        "train": {k: v for k, v in cfg.train.items() if k != "output_dir"},
        "weights_sha256": digest(tmp / "model.safetensors"),
        "report": report,
    }
    (tmp / MARKER).write_text(json.dumps(info, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


# ------------------------------------------------------------------------------------------------ CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p, PretrainRunConfig, DESCRIPTION)


def main(args: argparse.Namespace) -> int:
    try:
        cfg = config_from_args(PretrainRunConfig, args)
        check_trl_args(SFTConfig, cfg.train)
        model, processor, trainer, rows = build(cfg)
        # A finished phase 1 is loaded again (phase 2 resumes on top of it), not retrained.
        tower = train_tower(cfg, model, trainer.data_collator, rows) if cfg.tower.steps else {}
        if isinstance(tower, int):
            return tower
        resume = start_run(trainer, cfg, "cot-rm pretrain", f"{len(trainer.train_dataset)} corpus videos")
    except (ConfigError, FileNotFoundError, ValueError) as err:
        print(f"cot-rm pretrain: {err}", file=sys.stderr)
        return 2
    # The marker is also left in output_dir: a finished run with its base written has nothing left to do.
    if (status := train_to_the_end(trainer, resume, "cot-rm pretrain", (MARKER,))) is not None:
        return status
    trainer.save_state()
    val = [r for r in rows if r["split"] == "val"][: cfg.corpus.eval_videos]
    report = caption_report(model, trainer.data_collator, val)
    report["quote"] = quote_report(model, trainer.data_collator, val, trainer.args.seed)
    if tower:
        report = {"tower": tower, **report}
    out = save_base(model, processor, cfg, report, Path(cfg.save_to))
    shutil.copy(out / MARKER, Path(cfg.train["output_dir"]) / MARKER)
    print(json.dumps({"base": str(out), **report}, indent=2))
    return 0
