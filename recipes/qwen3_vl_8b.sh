#!/usr/bin/env bash
# qwen3_vl_8b.sh: the full pipeline for Qwen3-VL-8B-Instruct on 8 GPUs (80 GB each): synthesis with a vLLM-served
# teacher, SFT with DeepSpeed ZeRO-3, RFT (its own agreeing judgments), GRPO (vLLM rollouts), serving,
# evaluation on the public benchmarks.
# The stages live in recipes/multi_gpu.sh (shared with the other model's recipe); its header lists the
# environment variables (data, ports, multi-node, benchmarks). CPU twin: recipes/tiny_cpu.sh.
#
# Usage (from anywhere; it runs from the repo root):
#   POINTWISE=data/pointwise.jsonl PAIRS=data/pairs.jsonl recipes/qwen3_vl_8b.sh
#   SKIP="synth" recipes/qwen3_vl_8b.sh                       # SFT data already made
#   NNODES=2 NODE_RANK=$RANK MASTER_ADDR=node0 recipes/qwen3_vl_8b.sh   # on each node
# Rerunning skips the stages that finished ($OUT/.done/NAME); eval runs again when the model changed.
# Delete a marker to redo its stage (recipes/lib.sh).
set -euo pipefail
# Paths given in the environment are the caller's: relative ones are read from where the recipe was started.
for var in OUT POINTWISE PAIRS BENCH_DIR; do
    if [[ -n ${!var:-} && ${!var} != /* && ${!var} != null ]]; then printf -v "$var" '%s' "$PWD/${!var}"; fi
done
cd "$(dirname "$0")/.."  # config paths are relative to the repo root

OUT=${OUT:-runs/qwen3_vl_8b}                    # the config's own output paths
FAMILY=qwen3_vl                             # frame sizing at synthesis (patch size differs per family)
SFT_CONFIG=configs/qwen3_vl_8b/sft.yaml
# The model to fine-tune: a hub id (download it first: hf download Qwen/Qwen3-VL-8B-Instruct) or a local folder.
BASE_MODEL=${BASE_MODEL:-Qwen/Qwen3-VL-8B-Instruct}
# The teacher that writes the critiques, served by vLLM on this node (a local folder works too).
TEACHER_MODEL=${TEACHER_MODEL:-Qwen/Qwen2.5-VL-72B-Instruct}

# Between SFT and GRPO: rejection-sampling fine-tuning; RFT_CONFIG="" skips it (GRPO then starts from SFT).
RFT_CONFIG=${RFT_CONFIG-configs/qwen3_vl_8b/rft.yaml}

# Stage 2; GRPO_CONFIG="" skips it.
GRPO_CONFIG=${GRPO_CONFIG-configs/qwen3_vl_8b/grpo.yaml}

source recipes/multi_gpu.sh
