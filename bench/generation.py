"""Benchmark: rollout / judging generation throughput, HF `generate` vs vLLM, side by side in one run.

The same N requests go to both sides: each is the protocol's first turn (system prompt with the
select_frames tool schema, a real mp4 video, the generation prompt), rendered with `cot_rm.protocol`
and the checkpoint's processor, with the video decoded and sampled once by `cot_rm.media.video`. Greedy, and
exactly M new tokens per request on both sides (HF: `min_new_tokens=M`; vLLM: `min_tokens=M`,
`ignore_eos`), so they do the same work. Three modes are timed (warm-up first, median of the repeats):

    hf_batch1   transformers `generate`, one request at a time
    hf_batched  transformers `generate`, all N at once (left padding)
    vllm        offline `vllm.LLM.generate` with all N at once (continuous batching)

Each side runs in its own interpreter (vLLM pins a torch/transformers pair of its own: `.venv-vllm`,
`make setup-vllm`): this script prepares the inputs (prompts + decoded frames) in a work folder, then
runs itself as a worker under `sys.executable` (HF) and under the vLLM interpreter (vLLM); each worker
writes its token ids and timings back. Timings include the processor (frames -> pixel values and
tokens) on both sides; vLLM's multimodal processor cache is off, so repeats do not skip it.

    .venv/bin/python bench/generation.py [--n 16] [--max-new-tokens 128] [--out gen.json]   # CPU, tiny
    python bench/generation.py --model PATH --out gen.json                                  # GPU
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = ("hf_batch1", "hf_batched", "vllm")
PROMPTS = (
    "two red circles moving left slowly on a white background",
    "a blue square moving up quickly on a black background",
    "three green triangles moving right on a grey background",
    "one yellow diamond moving down slowly on a white background",
)
RATIOS = {  # name: (numerator mode, denominator mode), on new tokens / s
    "vllm_vs_hf_batched": ("vllm", "hf_batched"),
    "vllm_vs_hf_batch1": ("vllm", "hf_batch1"),
    "hf_batched_vs_hf_batch1": ("hf_batched", "hf_batch1"),
}
SIZES = [(96, 128), (112, 112), (128, 96), (80, 144)]  # (height, width) of the generated clips


# ------------------------------------------------------------------------------------------- inputs


def make_videos(root: Path, n: int) -> list[Path]:
    """N distinct small H.264 clips (a red square sliding over a moving gradient), 2-4 s at 8 fps, so
    the requests differ in frame count and size (and so in prompt length: batching pads for real)."""
    import numpy as np

    from cot_rm.media.writer import write_video

    paths = []
    for i in range(n):
        (h, w), frames = SIZES[i % len(SIZES)], []
        ys, xs = np.mgrid[0:h, 0:w]
        for t in range(8 * (2 + i % 3)):
            img = np.stack([(xs * 2 + t * 7) % 256, (ys * 2 + i * 40) % 256, np.full_like(xs, 60)], -1)
            x = t * 3 % max(w - h // 4, 1)
            img[h // 3 : h // 3 + h // 4, x : x + h // 4] = (230, 20, 20)
            frames.append(img.astype(np.uint8))
        paths.append(write_video(root / f"v{i}.mp4", frames, 8))
    return paths


def prepare(args, work: Path) -> dict:
    """Model path, rendered prompts and decoded frames (frames.npz) for both workers: inputs.json."""
    import numpy as np
    from transformers import AutoProcessor

    from cot_rm import protocol
    from cot_rm.media.video import Sampling, read_video_numpy
    from cot_rm.model import tiny

    model = Path(args.model) if args.model else tiny.build_tiny_checkpoint(work / "tiny_qwen2_5_vl")
    family = json.loads((model / "config.json").read_text())["model_type"]
    processor = AutoProcessor.from_pretrained(model)
    paths = [Path(p) for p in args.video] or make_videos(work / "videos", args.videos)
    sampling = Sampling(fps=args.fps, max_frames=args.max_frames, max_pixels=args.max_pixels, family=family)
    videos = [read_video_numpy(p, sampling) for p in paths]
    requests = []
    for i in range(args.n):
        k = i % len(videos)
        messages = protocol.judgment_conversation(PROMPTS[i % len(PROMPTS)], videos[k])
        text = protocol.render(processor, messages, family, add_generation_prompt=True)
        requests.append({"text": text, "video": k})
    np.savez(work / "frames.npz", **{f"v{k}": v.frames.transpose(0, 2, 3, 1) for k, v in enumerate(videos)})
    inputs = {
        "model": str(model), "family": family, "n": args.n, "max_new_tokens": args.max_new_tokens,
        "repeats": args.repeats, "dtype": args.dtype, "sampling": sampling.to_dict(),
        "videos": [{"path": str(v.path), "metadata": _vllm_metadata(v, family), "frames": list(v.frames.shape),
                    "video_tokens": v.video_tokens} for v in videos],
        "requests": requests,
    }  # fmt: skip
    (work / "inputs.json").write_text(json.dumps(inputs, indent=1))
    return inputs


def _vllm_metadata(video, family: str) -> dict:
    """The video metadata vLLM gets: the serve path's rule (`serve_engine.vllm_video_metadata`), so its
    video positions match transformers' (sent with source indices, a trained model's greedy text diverges)."""
    from cot_rm.engine.vllm import vllm_video_metadata

    meta = {k: v for k, v in video.processor_metadata().items() if k != "frames_indices"}
    return meta | vllm_video_metadata(video, family)


def _torch_dtype(name: str, cuda: bool):
    import torch

    return getattr(torch, name) if name != "auto" else (torch.bfloat16 if cuda else torch.float32)


# ------------------------------------------------------------------------------------------ workers


def hf_worker(work: Path) -> dict:
    """transformers `generate`: batch 1 and batched, alternating within each repeat."""
    import numpy as np
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from cot_rm.media.video import Sampling, read_video
    from cot_rm.model.processing import encode
    from cot_rm.model.rope import use_qwen_positions

    inp = json.loads((work / "inputs.json").read_text())
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    t0 = time.perf_counter()
    dtype = _torch_dtype(inp["dtype"], cuda)
    model = AutoModelForImageTextToText.from_pretrained(inp["model"], dtype=dtype).to(device).eval()
    use_qwen_positions(model)  # the positions vLLM uses too
    processor = AutoProcessor.from_pretrained(inp["model"])
    load_s = time.perf_counter() - t0
    sampling, frames = Sampling.from_dict(inp["sampling"]), np.load(work / "frames.npz")
    videos = [read_video(v["path"], sampling) for v in inp["videos"]]
    for k, v in enumerate(videos):  # the very frames the vLLM side gets
        assert np.array_equal(v.frames.numpy().transpose(0, 2, 3, 1), frames[f"v{k}"]), "frames differ"
    reqs, m = inp["requests"], inp["max_new_tokens"]

    @torch.inference_mode()
    def generate(batch: list[dict]) -> tuple[list[list[int]], list[int]]:
        enc = encode(processor, [r["text"] for r in batch], videos=[videos[r["video"]] for r in batch],
                     padding_side="left").to(device)  # fmt: skip
        ids = model.generate(**enc, max_new_tokens=m, min_new_tokens=m, do_sample=False)
        if cuda:
            torch.cuda.synchronize()
        new = ids[:, enc["input_ids"].shape[1] :].tolist()
        return new, enc["attention_mask"].sum(1).tolist()

    runs = {"hf_batch1": lambda: [x for r in reqs for x in zip(*generate([r]))],
            "hf_batched": lambda: list(zip(*generate(reqs)))}  # fmt: skip
    out = {"load_s": load_s, "device": str(device), "dtype": str(dtype).replace("torch.", "")}
    out |= {mode: {"seconds": []} for mode in runs}
    for mode, fn in runs.items():  # warm-up: one full pass of each mode
        t0 = time.perf_counter()
        res = fn()
        out[mode]["warmup_s"] = time.perf_counter() - t0
        out[mode]["token_ids"] = [list(t) for t, _ in res]
        out[mode]["prompt_tokens"] = [int(p) for _, p in res]
    for _ in range(inp["repeats"]):
        for mode, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            out[mode]["seconds"].append(time.perf_counter() - t0)
    out["versions"] = {"torch": torch.__version__, "transformers": __import__("transformers").__version__}
    return out


def vllm_worker(work: Path) -> dict:
    """Offline `vllm.LLM.generate` with all N requests at once."""
    import numpy as np
    import torch
    import vllm
    from vllm import LLM, SamplingParams

    inp = json.loads((work / "inputs.json").read_text())
    cuda = torch.cuda.is_available()
    frames = dict(np.load(work / "frames.npz"))
    m, max_video_tokens = inp["max_new_tokens"], max(v["video_tokens"] for v in inp["videos"])
    mm_limits = {"image": 0, "video": {"count": 1, **_largest_video(inp["videos"])}}
    t0 = time.perf_counter()
    llm = LLM(
        model=inp["model"],
        dtype=str(_torch_dtype(inp["dtype"], cuda)).replace("torch.", ""),
        enforce_eager=not cuda,  # CPU: no compile / graph capture (start-up stays short)
        # characters bound tokens from above; plus the expanded video placeholder and the new tokens
        max_model_len=max(len(r["text"]) for r in inp["requests"]) + max_video_tokens + m + 16,
        max_num_seqs=max(inp["n"], 1),
        seed=0,
        limit_mm_per_prompt=mm_limits,
        mm_processor_cache_gb=0,  # repeats must redo the processor, as HF does
        enable_prefix_caching=False,  # and the prefill: identical prompts across passes must not hit a cache
    )
    load_s = time.perf_counter() - t0
    params = SamplingParams(temperature=0.0, max_tokens=m, min_tokens=m, ignore_eos=True)
    prompts = []
    for r in inp["requests"]:
        meta = inp["videos"][r["video"]]["metadata"]
        prompts.append({"prompt": r["text"], "multi_modal_data": {"video": (frames[f"v{r['video']}"], meta)}})
    out = {
        "load_s": load_s,
        "vllm": {"seconds": []},
        "versions": {"vllm": vllm.__version__, "torch": torch.__version__},
    }
    t0 = time.perf_counter()
    res = llm.generate(prompts, params, use_tqdm=False)
    out["vllm"]["warmup_s"] = time.perf_counter() - t0
    out["vllm"]["token_ids"] = [list(r.outputs[0].token_ids) for r in res]
    out["vllm"]["prompt_tokens"] = [len(r.prompt_token_ids) for r in res]
    for _ in range(inp["repeats"]):
        t0 = time.perf_counter()
        llm.generate(prompts, params, use_tqdm=False)
        out["vllm"]["seconds"].append(time.perf_counter() - t0)
    return out


def _largest_video(videos: list[dict]) -> dict:
    """vLLM's start-up profiling item: no bigger than the largest real video (cheap on CPU)."""
    t, h, w, _ = (max(v["frames"][i] for v in videos) for i in range(4))
    return {"num_frames": t, "height": h, "width": w}


def run_worker(side: str, python: str, work: Path, timeout_s: float) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    if side == "vllm":
        env.pop("PYTHONPATH", None)  # .venv's packages must not shadow the vLLM venv's torch
        env.update(VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1")
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; the default is wasted on a tiny model
    else:
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    cmd = [python, str(Path(__file__).resolve()), "--worker", side, "--work", str(work)]
    log, load_before = work / f"{side}.log", os.getloadavg()[0]
    with log.open("wb") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=work, timeout=timeout_s)
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        raise RuntimeError(f"{side} worker failed (exit {proc.returncode}): {shlex.join(cmd)}\n{tail}")
    res = json.loads((work / f"{side}.json").read_text())
    return res | {"loadavg_1min": [load_before, os.getloadavg()[0]]}  # other jobs on a shared machine


# ------------------------------------------------------------------------------------------ results


def summarize(inp: dict, hf: dict, vl: dict) -> dict:
    n, m = inp["n"], inp["max_new_tokens"]
    modes = {}
    for mode, r in [("hf_batch1", hf["hf_batch1"]), ("hf_batched", hf["hf_batched"]), ("vllm", vl["vllm"])]:
        med, best = statistics.median(r["seconds"]), min(r["seconds"])
        modes[mode] = {**r, "median_s": med, "best_s": best, "new_tokens": [len(t) for t in r["token_ids"]],
                       "tokens_per_s": n * m / med, "requests_per_s": n / med,
                       "tokens_per_s_best": n * m / best}  # fmt: skip
    ratios, ratios_best = {}, {}
    for key, (a, b) in RATIOS.items():
        ratios[key] = modes[a]["tokens_per_s"] / modes[b]["tokens_per_s"]
        ratios_best[key] = modes[a]["tokens_per_s_best"] / modes[b]["tokens_per_s_best"]
    ref, other = modes["hf_batch1"]["token_ids"], modes["vllm"]["token_ids"]
    prefix = [next((i for i, (a, b) in enumerate(zip(x, y)) if a != b), min(len(x), len(y)))
              for x, y in zip(ref, other)]  # fmt: skip
    agreement = {
        "identical_vllm_vs_hf_batch1": sum(x == y for x, y in zip(ref, other)),
        "identical_hf_batched_vs_hf_batch1": sum(
            x == y for x, y in zip(ref, modes["hf_batched"]["token_ids"])
        ),
        "mean_common_prefix_vllm_vs_hf_batch1": statistics.mean(prefix),
        "prompt_tokens_match": modes["vllm"]["prompt_tokens"] == modes["hf_batch1"]["prompt_tokens"],
    }
    return {"modes": modes, "ratios": ratios, "ratios_best": ratios_best, "agreement": agreement,
            "loadavg_1min": {"hf": hf["loadavg_1min"], "vllm": vl["loadavg_1min"]}, "load_s": {"hf": hf["load_s"], "vllm": vl["load_s"]}, "device": hf["device"], "dtype": hf["dtype"],
            "versions": {**hf["versions"], **{f"vllm_{k}": v for k, v in vl["versions"].items()}}}  # fmt: skip


def publish(res: dict, text: str, out: str | None, results_md: str, append: bool = True) -> None:
    """Every bench's ending: the full results as JSON (`--out`), the section appended to RESULTS.md."""
    if out:
        Path(out).write_text(json.dumps(res, indent=1) + "\n")
    if append:
        with Path(results_md).open("a") as f:
            f.write(text)
    print(text)


def need_inputs(ap, *paths: str) -> None:
    """argparse error naming the first missing input (the defaults are the demo's outputs)."""
    for path in paths:
        if path and not Path(path).exists():
            ap.error(f"{path} not found: run `make demo` first (it writes runs/demo), or pass your own")


def machine() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20)  # fmt: skip
        if out.returncode == 0 and out.stdout.strip():
            return ", ".join(out.stdout.strip().splitlines())
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    return f"{platform.processor() or 'unknown CPU'}, {os.cpu_count()} cores"


def section(res: dict, command: str) -> str:
    inp, s, modes = res["inputs"], res["summary"], res["summary"]["modes"]
    cpu = s["device"] == "cpu"
    label = f"CPU, {os.cpu_count()} cores" if cpu else res["machine"]
    ptoks, vt = modes["hf_batch1"]["prompt_tokens"], [v["video_tokens"] for v in inp["videos"]]
    rows = "\n".join(f"| {k} | {v['median_s']:.3f} | {v['tokens_per_s']:,.1f} | {v['requests_per_s']:.2f} | "
                     f"{v['best_s']:.3f} | {v['tokens_per_s_best']:,.1f} | "
                     f"{min(v['new_tokens'])}-{max(v['new_tokens'])} | {', '.join(f'{x:.2f}' for x in v['seconds'])} |"
                     for k, v in modes.items())  # fmt: skip
    r, rb, a, ver = s["ratios"], s["ratios_best"], s["agreement"], s["versions"]
    load = s["loadavg_1min"]
    note = (
        "- Tiny random model (2 layers, hidden 128): per-step overheads (Python, scheduling, the processor, the "
        "vision tower's small kernels) dominate, not the matmuls; on this shared CPU the figures are ratios "
        "from one run, not absolute speeds. Absolute throughput only from a GPU run with a real model (`--model`)."
        if cpu
        else "- One GPU; compare only ratios within this run."
    )
    return f"""
## generation — {dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")} ({label})

- Machine: {res["machine"]}; Python {platform.python_version()}; HF side: torch {ver["torch"]}, transformers {ver["transformers"]}; vLLM side: vllm {ver["vllm_vllm"]}, torch {ver["vllm_torch"]} (own venv)
- Command: `{command}`
- Model: `{Path(inp["model"]).name}` ({inp["family"]}, {s["dtype"]}, {s["device"]}); load: HF {s["load_s"]["hf"]:.1f} s, vLLM {s["load_s"]["vllm"]:.1f} s (engine start, not timed below)
- Inputs, the same on both sides: {inp["n"]} requests, each the protocol's first turn (system prompt + select_frames tool, one mp4 + prompt); {len(inp["videos"])} distinct clips, {min(vt)}-{max(vt)} video tokens; prompts {min(ptoks)}-{max(ptoks)} tokens (vLLM's counts equal HF's: {a["prompt_tokens_match"]})
- Greedy, exactly {inp["max_new_tokens"]} new tokens per request (HF `min_new_tokens`, vLLM `min_tokens` + `ignore_eos`); one warm-up pass per mode, then {inp["repeats"]} timed passes (median); a pass = all {inp["n"]} requests, processor included

| mode | s / pass (median) | new tokens / s | requests / s | s / pass (best) | new tokens / s (best) | new tokens per request | passes (s) |
|---|---:|---:|---:|---:|---:|---|---|
{rows}

**vLLM vs HF batched: {r["vllm_vs_hf_batched"]:.2f}x; vLLM vs HF batch 1: {r["vllm_vs_hf_batch1"]:.2f}x; HF batched vs HF batch 1: {r["hf_batched_vs_hf_batch1"]:.2f}x** (new tokens / s, medians).
From the best passes: {rb["vllm_vs_hf_batched"]:.2f}x, {rb["vllm_vs_hf_batch1"]:.2f}x, {rb["hf_batched_vs_hf_batch1"]:.2f}x.

Notes:
{note}
- Greedy outputs: vLLM equals HF batch 1 on {a["identical_vllm_vs_hf_batch1"]}/{inp["n"]} requests (mean common prefix {a["mean_common_prefix_vllm_vs_hf_batch1"]:.1f} tokens), HF batched equals HF batch 1 on {a["identical_hf_batched_vs_hf_batch1"]}/{inp["n"]}. Shown to confirm both sides did the same work, not a correctness check: with random weights, near-tied logits could flip a token on small numeric differences.
- Load average (1 min) before / after each side: HF {load["hf"][0]:.1f} / {load["hf"][1]:.1f}, vLLM {load["vllm"][0]:.1f} / {load["vllm"][1]:.1f}. Other jobs share these cores, so passes of one mode can differ severalfold (see the passes column); the best pass is the least disturbed one.
- vLLM gets the frames `cot_rm.media.video` decoded (no resampling, `do_sample_frames` off) and its multimodal processor cache is off, so each pass re-runs its processor as HF does; the HF side alternates batch 1 and batched within each repeat; the two sides run one after the other, not at once.
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--model", help="checkpoint folder (default: the tiny Qwen2.5-VL, built in the work folder)"
    )
    ap.add_argument("--n", type=int, default=16, help="requests (default 16)")
    ap.add_argument(
        "--max-new-tokens", type=int, default=128, help="new tokens per request, exactly (default 128)"
    )
    ap.add_argument("--repeats", type=int, default=3, help="timed passes per mode; the median is reported")
    ap.add_argument("--videos", type=int, default=4, help="distinct generated clips (default 4)")
    ap.add_argument("--video", action="append", default=[], help="use this mp4 instead (repeatable)")
    ap.add_argument("--fps", type=float, default=2.0)
    ap.add_argument("--max-frames", type=int, default=8)
    ap.add_argument("--max-pixels", type=int, default=224 * 224, help="per frame (default 224x224)")
    ap.add_argument("--dtype", default="auto", help="auto: float32 on CPU, bfloat16 on GPU")
    ap.add_argument(
        "--vllm-python", default=os.environ.get("COT_RM_VLLM_PYTHON") or str(ROOT / ".venv-vllm/bin/python")
    )
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per worker")
    ap.add_argument("--work", help="work folder (default: a temp dir, removed)")
    ap.add_argument("--out", help="write the full results (JSON) here")
    ap.add_argument("--results-md", default=str(ROOT / "bench" / "RESULTS.md"), help="markdown to append to")
    ap.add_argument("--no-append", action="store_true", help="print the section, do not append it")
    ap.add_argument("--worker", choices=["hf", "vllm"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:  # inside a worker interpreter
        work = Path(args.work)
        res = hf_worker(work) if args.worker == "hf" else vllm_worker(work)
        (work / f"{args.worker}.json").write_text(json.dumps(res))
        return 0
    if not Path(args.vllm_python).exists():
        print(f"no vLLM interpreter at {args.vllm_python}: run `make setup-vllm`", file=sys.stderr)
        return 2
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    command = shlex.join(["python", "bench/generation.py", *(sys.argv[1:] if argv is None else argv)])
    with tempfile.TemporaryDirectory(prefix="cot-rm-gen-") as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        inp = prepare(args, work)
        hf = run_worker("hf", sys.executable, work, args.timeout)
        vl = run_worker("vllm", args.vllm_python, work, args.timeout)
    res = {"command": command, "machine": machine(), "inputs": inp, "summary": summarize(inp, hf, vl)}
    text = section(res, command)
    publish(res, text, args.out, args.results_md, append=not args.no_append)
    return 0


if __name__ == "__main__":
    sys.exit(main())
