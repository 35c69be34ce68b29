#!/usr/bin/env bash
# serve.sh: serve a cot-rm checkpoint with `cot-rm serve` on one machine: the judge API (POST /v1/judge),
# the OpenAI-compatible routes and the interactive page on one port. A 7B/8B checkpoint fits one 80 GB
# GPU: vLLM (a child process) holds the language model and its KV cache in GPU_MEM of the card, the
# head's scoring pass (transformers, bf16) holds a second copy of the weights (~16 GB) in the rest.
# The tiny demo checkpoint runs the same way on CPU.
#
# Usage (from anywhere; it runs from the repo root):
#   MODEL=runs/qwen2_5_vl_7b/grpo MEDIA_ROOT=/data/videos recipes/serve.sh
#   COT_RM_API_KEY=... HOST=0.0.0.0 MODEL=... MEDIA_ROOT=... recipes/serve.sh   # the key from the environment only
#   MODEL=runs/demo/grpo MEDIA_ROOT=$PWD recipes/serve.sh                        # the tiny demo model, CPU
#   MODEL=... MEDIA_ROOT=... recipes/serve.sh --max-new-tokens 1024              # extra flags go to cot-rm serve
# Variables: MODEL (a cot-rm checkpoint folder; a LoRA one is merged into its base at start-up, under
# $TMPDIR), MEDIA_ROOT (videos named by path must lie under it), PORT (8000), HOST (127.0.0.1),
# GPU_MEM (0.55: vLLM's share of the GPU), MAX_MODEL_LEN (16384), MAX_QUEUE (64 requests in progress,
# then 503), VLLM_PYTHON (an interpreter with vLLM: .venv-vllm on CPU, .venv with the `gpu` extra on GPU).
# Check: curl -s localhost:$PORT/health; then open http://localhost:$PORT/ in a browser.
set -euo pipefail
# Paths given in the environment are the caller's: relative ones are read from where the recipe was started.
for var in MODEL MEDIA_ROOT; do
    if [[ -n ${!var:-} && ${!var} != /* && ${!var} != null ]]; then printf -v "$var" '%s' "$PWD/${!var}"; fi
done
cd "$(dirname "$0")/.."

MODEL=${MODEL:?set MODEL to a checkpoint folder (e.g. runs/demo/grpo)}
MEDIA_ROOT=${MEDIA_ROOT:?set MEDIA_ROOT to the folder whose videos may be judged by path}
PORT=${PORT:-8000}
HOST=${HOST:-127.0.0.1}
GPU_MEM=${GPU_MEM:-0.55}
MAX_MODEL_LEN=${MAX_MODEL_LEN:-16384}
MAX_QUEUE=${MAX_QUEUE:-64}
if [[ -z ${COT_RM:-} ]]; then  # the venv's when present, else the one on PATH (as recipes/lib.sh)
    if [[ -x .venv/bin/cot-rm ]]; then COT_RM=.venv/bin/cot-rm; else COT_RM=cot-rm; fi
fi

args=(--model "$MODEL" --port "$PORT" --host "$HOST" --allowed-media-root "$MEDIA_ROOT"
      --max-queue "$MAX_QUEUE" --max-model-len "$MAX_MODEL_LEN")
if [[ -n "${VLLM_PYTHON:-}" ]]; then
    args+=(--vllm-python "$VLLM_PYTHON")
fi
if command -v nvidia-smi >/dev/null 2>&1; then
    args+=("--vllm-arg=--gpu-memory-utilization=$GPU_MEM")
fi
if [[ "$HOST" != "127.0.0.1" && "$HOST" != "localhost" && -z "${COT_RM_API_KEY:-}" ]]; then
    echo "serve.sh: HOST=$HOST is reachable from other machines: set COT_RM_API_KEY (never on the command line)" >&2
    exit 2
fi
echo "serve.sh: $MODEL on http://$HOST:$PORT/ (media under $MEDIA_ROOT)"
exec "$COT_RM" serve "${args[@]}" "$@"
