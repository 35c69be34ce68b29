"""`cot-rm serve --model CKPT --allowed-media-root DIR [...]`: the command line. It checks the options,
builds the server's settings and hands over to `cot_rm.serve.lifecycle` (the engine, the head, the HTTP
server); what the server answers is in `cot_rm.serve.app`."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from cot_rm.config import positive
from cot_rm.serve.deps import Settings
from cot_rm.serve.lifecycle import run
from cot_rm.serve.media_policy import MediaPolicy, parse_domains

PROG = "cot-rm serve"
API_KEY_ENV = "COT_RM_API_KEY"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Serve a cot-rm checkpoint on one port: POST /v1/judge (the select_frames tool loop on vLLM, "
        "then the head: Judgment JSON), the OpenAI-compatible /v1/models and /v1/chat/completions, "
        'GET /health and an interactive page at /. /v1/judge takes JSON {"video": PATH or http(s) URL, '
        '"prompt": TEXT} or a multipart form (file, prompt); ?stream=1 streams the turns as NDJSON, '
        "?report=1 adds the HTML critique; samples, temperature, top_p and seed ask for K seeded sampled "
        "draws. POST /v1/judge/pair takes video_a, video_b and a prompt (or a form with file_a, file_b) and "
        "answers P(A better), P(tie), P(B better) per dimension with both Judgments. Starts vLLM's OpenAI "
        "server for the checkpoint's language model as a child process; the head runs here with transformers."
    )
    parser.add_argument("--model", required=True, type=Path, help="cot-rm checkpoint folder")
    parser.add_argument("--port", type=int, default=8000, help="port to serve on (default 8000)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--allowed-media-root", required=True, type=Path,
                        help="videos named by path must lie under this folder (after resolving symlinks)")  # fmt: skip
    parser.add_argument("--api-key", default=None,
                        help=f"require `Authorization: Bearer KEY` on /v1 routes (default: ${API_KEY_ENV})")  # fmt: skip
    parser.add_argument(
        "--max-queue", type=positive(int), default=64, help="requests in progress before 503 (default 64)"
    )
    parser.add_argument("--max-upload-mb", type=positive(float), default=200,
                        help="largest upload or http(s) download (default 200 MB)")  # fmt: skip
    parser.add_argument("--media-urls", action=argparse.BooleanOptionalAction, default=True,
                        help="fetch http(s) media URLs given to /v1/judge and in chat requests, under "
                        "the two options below (default on; --no-media-urls refuses every URL)")  # fmt: skip
    parser.add_argument("--allowed-media-domains", type=_domains, default=frozenset(), metavar="HOST,HOST",
                        help="fetch media URLs from these hosts only (exact names, comma-separated; "
                        "default: any host whose addresses are public)")  # fmt: skip
    parser.add_argument("--allow-private-media-urls", action="store_true",
                        help="also fetch from loopback, private, link-local and other non-public "
                        "addresses (default: refused; only on a trusted network, best with "
                        "--allowed-media-domains)")  # fmt: skip
    parser.add_argument("--fetch-timeout", type=positive(float), default=60,
                        help="seconds for one request's http(s) downloads, all of them (default 60)")  # fmt: skip
    parser.add_argument(
        "--max-new-tokens", type=positive(int), default=512, help="per assistant turn (default 512)"
    )
    parser.add_argument(
        "--score-batch-size", type=positive(int), default=8, help="judgments per head pass (default 8)"
    )
    parser.add_argument("--served-model-name", default=None, help="model name on /v1 (default: folder name)")
    parser.add_argument("--device", default="auto", help="the head's device: auto, cpu, cuda, cuda:1 ...")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                        help="auto: bf16 on GPU, float32 on CPU (head and engine)")  # fmt: skip
    parser.add_argument("--vllm-python", default=None,
                        help="interpreter with vLLM (default: $COT_RM_VLLM_PYTHON, else .venv-vllm)")  # fmt: skip
    parser.add_argument("--vllm-port", type=int, default=0, help="the engine's internal port (default: free)")
    parser.add_argument(
        "--max-model-len", type=positive(int), default=8192, help="engine context length (default 8192)"
    )
    parser.add_argument("--vllm-arg", action="append", default=[], metavar="ARG",
                        help="extra argument for vLLM, repeatable (--vllm-arg=--gpu-memory-utilization=0.5)")  # fmt: skip
    parser.add_argument("--backend", choices=("vllm", "local"), default="vllm",
                        help="vllm (default): a vLLM engine generates the turns; local: the local "
                        "transformers judge answers /v1/judge and /v1/judge/pair, one request at a time, "
                        "exactly as `cot-rm judge` (no engine, no OpenAI routes)")  # fmt: skip
    parser.add_argument("--engine-url", default=None,
                        help="use a vLLM server already running there instead of starting one")  # fmt: skip
    parser.add_argument("--start-timeout", type=positive(float), default=900,
                        help="seconds for the engine to come up (default 900)")  # fmt: skip


def _domains(text: str) -> frozenset[str]:
    try:
        return parse_domains(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def main(args: argparse.Namespace) -> int:
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    root = Path(os.path.realpath(args.allowed_media_root))
    if not root.is_dir():
        print(f"{PROG}: --allowed-media-root {args.allowed_media_root}: not a folder", file=sys.stderr)
        return 2
    if not (args.model / "cot_rm.json").is_file():
        print(f"{PROG}: {args.model}: not a cot-rm checkpoint (no cot_rm.json)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="cot-rm-serve-"))
    (work / "uploads").mkdir()
    policy = MediaPolicy(allow_private=args.allow_private_media_urls, domains=args.allowed_media_domains)
    settings = Settings(root, work / "uploads", api_key, int(args.max_upload_mb * 2**20),
                        args.served_model_name or args.model.resolve().name, args.media_urls,
                        args.fetch_timeout, policy)  # fmt: skip
    return run(args, settings, work)
