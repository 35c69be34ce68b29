"""`cot-rm demo`: run what this version has, end to end, on a CPU, and say plainly what it lacks.

Today that is the foundation: real videos are written and decoded, a tiny random Qwen2.5-VL
checkpoint is built locally, a judgment conversation is rendered with the protocol, the model
generates a turn and the one parser reads it (an untrained model usually fails to parse: that is
counted and shown, never scored).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

NOT_YET = [
    ("toy world", "procedural videos with exactly known defects and labels"),
    ("synthesize", "teacher rationales, consistency filter, select_frames traces"),
    ("sft", "SFT cold start with masked loss and the regression head"),
    ("grpo", "GRPO with tool rollouts and the co-trained head"),
    ("eval", "benchmarks and metrics"),
    ("judge / serve", "local judging, HTML critiques, the vLLM-served judge API"),
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument("--max-new-tokens", type=int, default=48, help="tokens the tiny model generates")


def main(args: argparse.Namespace) -> int:
    import torch

    from cot_rm import protocol
    from cot_rm.processing import encode
    from cot_rm.tiny import build_tiny_checkpoint
    from cot_rm.video import Sampling, read_video
    from cot_rm.video_writer import write_video

    out = Path(args.out)
    t0 = time.time()
    _step("1/4 writing demo videos (real H.264 mp4 through PyAV)")
    videos = []
    for name, (frames, fps) in _demo_clips().items():
        path = write_video(out / "videos" / f"{name}.mp4", frames, fps)
        videos.append(path)
        print(f"  {path}")

    _step("2/4 decoding and sampling (video-info)")
    sampling = Sampling(fps=2.0, max_frames=8, max_pixels=112 * 112, family="qwen2_5_vl")
    decoded = [read_video(p, sampling) for p in videos]
    for v in decoded:
        print("  " + json.dumps(v.info()))

    _step("3/4 building a tiny random Qwen2.5-VL checkpoint (no download)")
    ckpt = build_tiny_checkpoint(out / "tiny-qwen2_5_vl", family="qwen2_5_vl")
    print(f"  {ckpt}")

    _step("4/4 rendering a judgment conversation, generating a turn, parsing it")
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(ckpt)
    model = AutoModelForImageTextToText.from_pretrained(ckpt).eval()
    video = decoded[0]
    messages = protocol.judgment_conversation("a red square slides to the right", video)
    text = protocol.render(processor, messages, "qwen2_5_vl", add_generation_prompt=True)
    inputs = encode(processor, [text], videos=[video])
    with torch.no_grad():
        ids = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)
    turn = processor.batch_decode(ids[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)[0]
    parsed = protocol.parse_turn(turn)
    print(f"  prompt tokens: {inputs['input_ids'].shape[1]} (video tokens: {video.video_tokens})")
    print(f"  generated: {turn[:120]!r}")
    print(f"  parsed as: {type(parsed).__name__}: {parsed}")
    print("  (the model is random and untrained: a parse error here is expected and is reported, not scored)")

    print(f"\nDone in {time.time() - t0:.0f} s. Outputs under {out}/.")
    print("Not in this version yet (nothing below was run):")
    for name, what in NOT_YET:
        print(f"  - {name}: {what}")
    return 0


def _demo_clips() -> dict[str, tuple[list[np.ndarray], float]]:
    """Two 2-second clips: a square sliding right, and the same square jumping (a teleport)."""
    clips = {}
    for name, jump in (("slide", False), ("teleport", True)):
        frames = []
        for i in range(16):
            img = np.full((96, 128, 3), 30, np.uint8)
            x = 8 + i * 4 + (30 if jump and i >= 8 else 0)
            img[36:60, x : x + 24] = (220, 40, 40)
            frames.append(img)
        clips[name] = (frames, 8.0)
    return clips


def _step(msg: str) -> None:
    print(f"\n== {msg}", flush=True)
