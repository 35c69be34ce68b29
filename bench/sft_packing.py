"""Benchmark: SFT steps on padded vs packed (padding-free) VLM batches, tokens/s of real tokens, one run.

The same batches go through every mode: real toy-world SFT examples (`runs/demo/sft_data.jsonl` + its
pairs, both videos of a pair in one batch) collated by the project's `SFTCollator` with the tiny config's
rationale dropout, so a batch mixes head-only samples (video + prompt), short and long critiques and tool
images, and the padded batch pads every row to the longest. A step is the SFT trainer's work on one
batch: forward, LM loss + head losses (`cot_rm.train.common.lm_loss`, `head_losses`), backward, AdamW step:

    padded         the collator's batch as it is (right padding, sdpa with the padding mask)
    padded_nomask  the same batch without the attention mask: with right padding the real tokens never
                   attend to a pad, so their outputs are the same, and sdpa runs its plain causal kernel
    packed         `cot_rm.model.packing.pack_batch` (one row, no pads) + `packed_forward`, transformers' sdpa
                   with the block-diagonal causal mask it builds from the packed text positions
    packed_varlen  the same packed row, attention by `cot_rm.model.packing.varlen_sdpa` (sdpa per sequence)

Packing runs inside the timed step (as the model's own rope-index computation does in `padded`). The
frozen tower's features come from the vision-feature cache in every mode (as in the SFT config), filled by
an untimed warm-up pass per mode. The learning rate is 0, so the weights never change and every mode's
losses on a batch must agree: the JSON records the largest difference (both sides did the same work).
Passes are interleaved (padded, packed, packed_varlen, padded, ...); a pass = every batch once.

    .venv/bin/python bench/sft_packing.py [--batches 12] [--repeats 3] [--out /tmp/sft_packing.json]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import platform
import random
import shlex
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

# ruff: noqa: E402  (the path and environment below must be set before the project and HF imports)
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
import transformers

from bench.generation import machine, need_inputs, publish
from cot_rm.config import read_yaml
from cot_rm.model.modeling import ThinkThenScore
from cot_rm.model.packing import pack_batch, packed_forward, use_varlen_sdpa
from cot_rm.model.vision_cache import VisionFeatureCache
from cot_rm.protocol import JudgeSpec
from cot_rm.train.common import head_losses, lm_loss
from cot_rm.train.data import SFTCollator, build_examples, load_traces
from cot_rm.train.sft.trainer import HEAD_KEYS

MODES = ("padded", "padded_nomask", "packed", "packed_varlen")
LOSS_KEYS = ("lm", "point", "pair")


def load_batches(model, args) -> list[dict]:
    """`args.batches` batches of `args.batch_size` examples, drawn (seeded) from the traces and pairs."""
    traces = load_traces(args.data, ["train"])
    examples = build_examples(traces, args.pairs, ["train"])
    random.Random(args.seed).shuffle(examples)
    need = args.batches * args.batch_size
    if len(examples) < need:
        raise SystemExit(f"{args.data}: {len(examples)} examples, {need} needed")
    spec = JudgeSpec(dimensions=tuple(model.config.dimensions))
    collator = SFTCollator(model.processor, model.config.family, spec, model.config.reward_token,
                           args.rationale_dropout, args.frame_cache, args.seed)  # fmt: skip
    return [
        collator([{"example": json.dumps(e)} for e in examples[i : i + args.batch_size]])
        for i in range(0, need, args.batch_size)
    ]


def batch_shape(batch: dict) -> dict:
    mask = batch["attention_mask"]
    lengths = mask.sum(-1).tolist()
    return {"rows": len(lengths), "lengths": lengths, "real_tokens": int(mask.sum()), "padded_tokens": mask.numel(),
            "labelled_tokens": int((batch["labels"] != -100).sum()), "pairs": int(batch["pair_index"].shape[0]),
            "images": int(batch["image_grid_thw"].shape[0]) if "image_grid_thw" in batch else 0}  # fmt: skip


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def step(model, optimizer, batch: dict, mode: str, cache, la, device: torch.device) -> tuple[float, dict]:
    """One timed SFT step on `batch` in `mode`: (seconds, losses)."""
    _sync(device)
    t0 = time.perf_counter()
    inputs = _to(batch, device)
    head = {k: inputs.pop(k) for k in HEAD_KEYS}
    keys = inputs.pop("vision_keys")
    inputs.pop("skipped_too_long", None)
    with cache.key_hints(**keys) if cache is not None else contextlib.nullcontext():
        if mode.startswith("padded"):
            labels = inputs.pop("labels")
            tokens = int(inputs["attention_mask"].sum())
            if mode == "padded_nomask":  # right padding: causal attention never reaches the pads anyway
                inputs["attention_mask"] = None
            out = model(**inputs, return_logits=True)
        else:
            packed = pack_batch(inputs, model)
            labels, tokens = (
                packed["labels"],
                packed["input_ids"].shape[1],
            )  # the packed row: real tokens only
            out = packed_forward(model, packed)
    lm = lm_loss(out.logits, labels)
    point, pair, _ = head_losses(out.rewards, out.log_var, head, la, math.log(la.tie_theta))
    (lm + point + pair).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    _sync(device)
    seconds = time.perf_counter() - t0
    return seconds, {"lm": lm.item(), "point": point.item(), "pair": pair.item(), "tokens": tokens}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_pass(model, optimizer, batches, mode, cache, la, device) -> dict:
    """Every batch once in `mode` (the untimed warm-up)."""
    use_varlen_sdpa(model, mode == "packed_varlen")
    timed = [step(model, optimizer, batch, mode, cache, la, device) for batch in batches]
    return {"seconds": sum(t for t, _ in timed), "losses": [loss for _, loss in timed]}


def run_interleaved(model, optimizer, batches, modes, cache, la, device, repeats: int) -> dict:
    """`repeats` rounds; in each, every batch in every mode back to back (the mode order rotating with the
    batch and round), so each batch's modes run under the same load. Per mode and round: the pass time."""
    passes: dict[str, list] = {m: [] for m in modes}
    for r in range(repeats):
        load0, seconds = os.getloadavg()[0], {m: [] for m in modes}
        losses: dict[str, list] = {m: [] for m in modes}
        for i, batch in enumerate(batches):
            k = (i + r) % len(modes)
            for mode in modes[k:] + modes[:k]:
                use_varlen_sdpa(model, mode == "packed_varlen")
                t, loss = step(model, optimizer, batch, mode, cache, la, device)
                seconds[mode].append(t)
                losses[mode].append(loss)
        load = [load0, os.getloadavg()[0]]
        for m in modes:
            passes[m].append({"seconds": sum(seconds[m]), "step_seconds": seconds[m], "losses": losses[m],
                              "loadavg_1min": load})  # fmt: skip
        print("sft_packing: round " + str(r + 1) + ": "
              + ", ".join(f"{m} {passes[m][-1]['seconds']:.2f} s" for m in modes), flush=True)  # fmt: skip
    use_varlen_sdpa(model, False)
    return passes


def summarize(passes: dict, shapes: list[dict], warm: dict) -> dict:
    real = sum(s["real_tokens"] for s in shapes)
    modes = {}
    for mode, runs in passes.items():
        secs = [r["seconds"] for r in runs]
        med, best = statistics.median(secs), min(secs)
        modes[mode] = {"pass_seconds": secs, "median_s": med, "best_s": best, "real_tokens_per_pass": real,
                       "tokens_per_s": real / med, "tokens_per_s_best": real / best, "steps_per_pass": len(shapes),
                       "loadavg_1min": [r["loadavg_1min"] for r in runs], "warmup_s": warm[mode]["seconds"],
                       "tokens_seen_per_pass": [sum(x["tokens"] for x in r["losses"]) for r in runs],
                       "labelled_tokens_per_pass": sum(s["labelled_tokens"] for s in shapes)}  # fmt: skip
    base = modes["padded"]
    others = [m for m in modes if m != "padded"]
    ratios = {f"{m}_vs_padded": modes[m]["tokens_per_s"] / base["tokens_per_s"] for m in others}
    ratios_best = {
        f"{m}_vs_padded": modes[m]["tokens_per_s_best"] / base["tokens_per_s_best"] for m in others
    }
    # the same batch, same round, back to back: padded seconds / mode seconds (= the tokens/s ratio)
    paired = {f"{m}_vs_padded": statistics.median(p / q for a, b in zip(passes["padded"], passes[m])
                                                  for p, q in zip(a["step_seconds"], b["step_seconds"]))
              for m in others}  # fmt: skip
    # the same work: every mode's losses on every batch (warm-up and timed rounds, lr 0) against padded's
    ref = warm["padded"]["losses"]
    diff = max(abs(a[k] - b[k]) for m in passes for r in [warm[m], *passes[m]]
               for a, b in zip(r["losses"], ref, strict=True) for k in LOSS_KEYS)  # fmt: skip
    padded = sum(s["padded_tokens"] for s in shapes)
    return {"modes": modes, "ratios": ratios, "ratios_best": ratios_best, "ratios_paired_median": paired,
            "max_loss_diff": diff, "real_tokens": real, "padded_tokens": padded, "pad_fraction": 1 - real / padded}  # fmt: skip


def section(res: dict) -> str:
    s, inp = res["summary"], res["inputs"]
    lengths = [n for b in res["batches"] for n in b["lengths"]]
    rows = "\n".join(
        f"| {m} | {r['median_s']:.2f} | {r['tokens_per_s']:,.0f} | {r['best_s']:.2f} | {r['tokens_per_s_best']:,.0f} | "
        f"{', '.join(f'{x:.2f}' for x in r['pass_seconds'])} |"
        for m, r in s["modes"].items()
    )  # fmt: skip
    name = {k: k.replace("_vs_", " vs ") for k in s["ratios"]}
    paired = "; ".join(f"{name[k]}: {v:.2f}x" for k, v in s["ratios_paired_median"].items())
    medians = ", ".join(f"{v:.2f}x" for v in s["ratios"].values())
    best = ", ".join(f"{v:.2f}x" for v in s["ratios_best"].values())
    loads = ", ".join(f"{a:.1f}/{b:.1f}" for a, b in next(iter(s["modes"].values()))["loadavg_1min"])
    return f"""
## sft_packing — {dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")} ({res["device"]})

- Machine: {res["machine"]}; Python {platform.python_version()}, torch {res["versions"]["torch"]}, transformers {res["versions"]["transformers"]}; {res["threads"]} torch threads
- Command: `{res["command"]}`
- Model: `{inp["model"]}` ({inp["family"]}, {inp["dtype"]}, tower frozen, its features from the vision-feature cache in every mode); AdamW at lr 0 (the weights stay fixed, so every mode's losses can be compared)
- Data: {inp["batches"]} batches of {inp["batch_size"]} examples from `{inp["data"]}` + `{inp["pairs"]}` (both sides of a pair in one batch), rationale dropout {inp["rationale_dropout"]}: {len(lengths)} sequences of {min(lengths)}-{max(lengths)} tokens (median {statistics.median(lengths):.0f}); {s["real_tokens"]:,} real tokens per pass, {s["padded_tokens"]:,} in the padded batches ({100 * s["pad_fraction"]:.0f}% pads)
- A step = pack (packed modes) + forward + LM and head losses + backward + AdamW; one untimed warm-up pass per mode, then {inp["repeats"]} rounds, each running every batch in every mode back to back (mode order rotating); a mode's pass = its {inp["batches"]} steps in one round
- Load average (1 min) before/after each round: {loads}

| mode | s / pass (median) | real tokens / s | s / pass (best) | real tokens / s (best) | passes (s) |
|---|---:|---:|---:|---:|---|
{rows}

**{paired}** (real tokens / s; median over every batch and round of the padded step's time over the mode's, on the same batch back to back). From the median passes: {medians}; from the best passes: {best}.
Same work in every mode: the largest difference of any loss (LM, head point, head pair) on any batch against the padded step is {s["max_loss_diff"]:.1e}.
"""


def _rel(path: str) -> str:
    """A path inside the repo relative to its root (as the command is run), others as given."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else str(path)


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = ap.add_argument
    add(
        "--model",
        default=str(ROOT / "runs" / "demo" / "sft"),
        help="cot-rm checkpoint (default: the demo's SFT)",
    )
    add("--data", default=str(ROOT / "runs" / "demo" / "sft_data.jsonl"), help="SFT traces")
    add("--pairs", default=str(ROOT / "runs" / "demo" / "toy" / "pairs.jsonl"), help="pairs ('' for none)")
    add(
        "--config",
        default=str(ROOT / "configs" / "tiny" / "sft.yaml"),
        help="batch size, dropout, losses from here",
    )
    add("--batch-size", type=int, default=None, help="examples per batch (default: the config's)")
    add("--rationale-dropout", type=float, default=None, help="default: the config's")
    add("--batches", type=int, default=12, help="distinct batches (steps per pass)")
    add("--repeats", type=int, default=3, help="timed passes per mode")
    add("--modes", default=",".join(MODES), help=f"comma-separated, of {MODES}; padded first")
    add("--frame-cache", default="off", help="decoded-frame cache folder, or off")
    add("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    add("--seed", type=int, default=0)
    add("--out", help="write the full results (JSON) here")
    add("--results-md", default=str(ROOT / "bench" / "RESULTS.md"), help="markdown to append to")
    add("--no-append", action="store_true", help="print the section, do not append it")
    args = ap.parse_args(argv)
    need_inputs(ap, str(Path(args.model) / "cot_rm.json"), args.data, args.pairs)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if args.modes[:1] != ["padded"] or any(m not in MODES for m in args.modes):
        ap.error(f"--modes: padded first, then any of {MODES[1:]}")
    cfg = read_yaml(args.config)
    args.batch_size = args.batch_size or int(cfg["train"]["per_device_train_batch_size"])
    if args.rationale_dropout is None:
        args.rationale_dropout = float(cfg["loss"]["rationale_dropout"])
    args.loss = SimpleNamespace(
        **{k: cfg["loss"][k] for k in ("point_loss", "pair_loss", "tie_theta")}, margin=0.0
    )
    args.pairs = args.pairs or None
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join(["python", "bench/sft_packing.py", *(sys.argv[1:] if argv is None else argv)])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = ThinkThenScore.from_pretrained(args.model, torch_dtype=dtype, attn_implementation="sdpa",
                                           is_trainable=True).to(device)  # fmt: skip
    cache = VisionFeatureCache(model, max_items=None).install() if model.config.freeze_vision else None
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.0)
    batches = load_batches(model, args)
    shapes = [batch_shape(b) for b in batches]
    for b in batches:  # padded_nomask is only exact when every row's pads come after its tokens
        mask = b["attention_mask"]
        if not torch.equal(mask, mask.cummin(-1).values):
            raise SystemExit(
                "sft_packing: the collator padded on the left; padded_nomask needs right padding"
            )
    print(f"sft_packing: {len(batches)} batches, {sum(s['real_tokens'] for s in shapes):,} real / "
          f"{sum(s['padded_tokens'] for s in shapes):,} padded tokens per pass", flush=True)  # fmt: skip
    warm = {m: run_pass(model, optimizer, batches, m, cache, args.loss, device) for m in args.modes}
    passes = run_interleaved(model, optimizer, batches, args.modes, cache, args.loss, device, args.repeats)
    inputs = {"model": _rel(args.model), "family": model.config.family, "dtype": str(dtype).removeprefix("torch."),
              "batches": args.batches, "batch_size": args.batch_size, "rationale_dropout": args.rationale_dropout,
              "repeats": args.repeats, "data": _rel(args.data), "pairs": args.pairs and _rel(args.pairs)}  # fmt: skip
    res = {"bench": "sft_packing", "command": command, "machine": machine(), "device": device.type,
           "threads": torch.get_num_threads(), "inputs": inputs, "batches": shapes,
           "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
           "vision_cache": cache.stats() if cache is not None else None,
           "summary": summarize(passes, shapes, warm)}  # fmt: skip
    text = section(res)
    publish(res, text, args.out, args.results_md, append=not args.no_append)
    return 0


if __name__ == "__main__":
    sys.exit(main())
