"""Learning experiment: the tiny base trained in two phases instead of captioning end to end.

Phase 1 trains the vision tower and merger alone, with linear heads on its features (mean-pooled over
space per temporal slice) that name what is drawn (colour, shape, count, direction, speed) and which
events the shown frames hold: descriptive targets, no scores. Phase 2 freezes the tower and trains the
language model to write the descriptions of `cot-rm pretrain` (DescribeCollator, video task only). The
end report is `cot-rm pretrain`'s (greedy descriptions of held-out corpus videos). Measured figures:
bench/RESULTS.md, "Learning". The corpus is one `cot-rm pretrain` built (corpus.folder).

    .venv/bin/python bench/pretrain_two_phase.py --corpus runs/pretrain/corpus --out runs/two_phase
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import torch

from cot_rm import tiny
from cot_rm.pretrain import DescribeCollator, caption_report
from cot_rm.pretrain_config import CorpusArgs
from data_synthesis.describe import EVENT_WORDS, drawn_spec, visible_frames
from data_synthesis.toyworld_render import COLOURS, SHAPES
from eval.perception import pooled_slices

FAMILY = "qwen2_5_vl"
CLASSES = {"colour": list(COLOURS), "shape": list(SHAPES), "count": [1, 2, 3],
           "direction": ["left", "right", "up", "down"], "speed": ["slow", "fast"]}  # fmt: skip
EVENTS = list(EVENT_WORDS)


def tower_loss(model, heads, collator, rows) -> torch.Tensor:
    videos = [collator.video_sample(r, answer=False)[1] for r in rows]
    feats = pooled_slices(model, collator.processor, videos)
    loss = sum(
        torch.nn.functional.cross_entropy(
            heads[k](feats), torch.tensor([v.index(drawn_spec(r["meta"])[k]) for r in rows])
        )
        for k, v in CLASSES.items()
    )
    shown = torch.tensor([[float(any(d["type"] == e and visible_frames(d, v.indices) for d in r["meta"]["defects"]))
                           for e in EVENTS] for r, v in zip(rows, videos)])  # fmt: skip
    return loss + torch.nn.functional.binary_cross_entropy_with_logits(heads["events"](feats), shown)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", required=True, help="a corpus folder `cot-rm pretrain` built")
    p.add_argument("--out", required=True, help="where the base and its report go")
    p.add_argument("--tower-steps", type=int, default=600, help="phase 1 steps of 16 videos")
    p.add_argument("--lm-steps", type=int, default=900, help="phase 2 steps of 16 videos")
    args = p.parse_args()
    tok = tiny.build_tokenizer(FAMILY)
    proc = tiny.build_processor(FAMILY, tok)
    model = tiny.build_model(tiny.build_config(FAMILY, tok), 0).train()
    model.generation_config = tiny.generation_config(tok)
    collator = DescribeCollator(proc, FAMILY, CorpusArgs(folder=args.corpus, frame_task=0.0))
    rows = [{"video": str(Path(args.corpus) / r["video"]), "meta": r["meta"], "split": r["split"]}
            for r in map(json.loads, open(Path(args.corpus) / "pointwise.jsonl")) if r["split"] != "test"]  # fmt: skip
    train, val = [r for r in rows if r["split"] == "train"], [r for r in rows if r["split"] == "val"][:96]
    width = 4 * model.config.text_config.hidden_size  # 8 frames = 4 temporal slices, concatenated
    heads = torch.nn.ModuleDict({k: torch.nn.Linear(width, len(v)) for k, v in CLASSES.items()})
    heads["events"] = torch.nn.Linear(width, len(EVENTS))
    opt = torch.optim.AdamW([*model.model.visual.parameters(), *heads.parameters()], lr=4e-3)
    start = time.time()
    for step in range(args.tower_steps):
        loss = tower_loss(model, heads, collator, random.Random(step).sample(train, 16))
        loss.backward()
        opt.step()
        opt.zero_grad()
        if step % 100 == 0:
            print(f"tower {step} loss {loss.item():.3f} {time.time() - start:.0f}s", file=sys.stderr)
    with torch.no_grad():
        vrows = val[:64]
        videos = [collator.video_sample(r, answer=False)[1] for r in vrows]
        feats = pooled_slices(model, collator.processor, videos)
        acc = {k: float((heads[k](feats).argmax(1) == torch.tensor([v.index(drawn_spec(r["meta"])[k]) for r in vrows])).float().mean()) for k, v in CLASSES.items()}
        shown = torch.tensor([[float(any(d["type"] == e and visible_frames(d, v.indices) for d in r["meta"]["defects"])) for e in EVENTS] for r, v in zip(vrows, videos)])
        pred = (heads["events"](feats) > 0).float()
        acc["events_f1"] = float(2 * (pred * shown).sum() / (pred.sum() + shown.sum()).clamp(min=1))
        print("phase-1 val", json.dumps(acc), file=sys.stderr)
    model.model.visual.requires_grad_(False)
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=2e-3)
    total = args.lm_steps
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1, (s + 1) / 30) * max(0.05, 0.5 * (1 + math.cos(math.pi * s / total)))
    )
    for step in range(total):
        batch = collator([{"example": json.dumps(r)} for r in random.Random(10**6 + step).sample(train, 16)])
        labels = batch.pop("labels")
        loss = model(**batch, labels=labels).loss
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
        if step % 100 == 0:
            print(f"lm {step} loss {loss.item():.3f} {time.time() - start:.0f}s", file=sys.stderr)
    report = caption_report(model, collator, val)
    out = Path(args.out)
    model.save_pretrained(out)
    tiny.save_processor(proc, out)
    (out / "report.json").write_text(
        json.dumps({"minutes": round((time.time() - start) / 60, 1), **report}, indent=2)
    )
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
