# The 8-GPU pipeline shared by qwen2_5_vl_7b.sh and qwen3_vl_8b.sh (sourced after they set FAMILY,
# SFT_CONFIG, BASE_MODEL, TEACHER_MODEL, OUT): one body, so the two models cannot drift apart.
#
#   synth (vLLM-served teacher) -> sft (ZeRO-3, accelerate) -> rft (RFT_CONFIG: the judgments drawn in
#        one process, from a vLLM server when the config says backend: vllm_server, then ZeRO-3 training)
#        -> grpo (GRPO_CONFIG; vLLM rollout server on the last GPU when the config says backend:
#        vllm_server; from RFT's checkpoint when RFT ran) -> eval (public benchmarks) -> serve
#
# NOT yet run on 8 GPUs here (like the configs it launches). Nothing is downloaded by cot-rm: fetch
# the models (`hf download ...`) and the benchmarks (README, "Public benchmarks") yourself.
#
# Environment (all optional):
#   POINTWISE     your labelled videos, pointwise JSONL (README, "Data formats"); default data/pointwise.jsonl
#   PAIRS         pairwise labels over those videos for the head's Bradley-Terry loss (SFT and GRPO);
#                 default: the configs' own; PAIRS=null trains without pairs
#   TEACHER_PORT  port of the local vLLM teacher (8000); TEACHER_TP its tensor-parallel size (GPUS_PER_NODE)
#   OPENAI_API_KEY / VLLM_API_KEY  only from the environment, never written to a file: set both to the
#                 same value to make the teacher endpoint require a key (the rollout and serving
#                 engines, private to cot-rm, start without it)
#   NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT, GPUS_PER_NODE   multi-node SFT (defaults: one node);
#                 GRPO, eval and serving run on node 0's GPUs
#   ROLLOUT_PORT  port of GRPO's vLLM rollout server (8001; passed to the trainer as rollout.vllm_url)
#   SERVER_WAIT_S how long a vLLM server may take to answer /health (1800 s)
#   BENCH_DIR     where the public benchmarks were unpacked (data/benchmarks)
#   SERVE_PORT, MEDIA_ROOT   the serve stage's port (8080) and the folder callers' video paths must lie
#                 under (the repo root)
#   SKIP          stages to skip, e.g. SKIP="synth rft grpo"

POINTWISE=${POINTWISE:-data/pointwise.jsonl}
PAIRS=${PAIRS:-}
TEACHER_PORT=${TEACHER_PORT:-8000}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
TEACHER_TP=${TEACHER_TP:-$GPUS_PER_NODE}
BENCH_DIR=${BENCH_DIR:-data/benchmarks}
SERVE_PORT=${SERVE_PORT:-8080}
SKIP=${SKIP:-}
# The RFT config (between SFT and GRPO): set by the model's recipe; RFT_CONFIG="" skips RFT.
RFT_CONFIG=${RFT_CONFIG:-}
# The GRPO config (stage 2): set by the model's recipe; GRPO_CONFIG="" skips GRPO.
GRPO_CONFIG=${GRPO_CONFIG:-}
ROLLOUT_PORT=${ROLLOUT_PORT:-8001}
SERVER_WAIT_S=${SERVER_WAIT_S:-1800}

source recipes/lib.sh

SFT_DATA=$OUT/sft_data.jsonl
SFT_OUT=$OUT/sft
RFT_OUT=$OUT/rft

# Multi-node: every node runs SFT; data synthesis, eval and serving run on node 0 only, and the
# other nodes wait for node 0's synthesis marker (OUT must be on a filesystem all nodes share).
SYNTH_SKIPPED=0
if skipped synth; then SYNTH_SKIPPED=1; fi  # by the user: the SFT data exists already
if [[ $NODE_RANK != 0 ]]; then
    SKIP="$SKIP synth rft grpo eval serve"
fi

SERVER_PID=  # the background vLLM server of the running stage (teacher or rollouts)
stop_server() {
    if [[ -n $SERVER_PID ]]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=
    fi
}
trap stop_server EXIT  # never leave a server holding the GPUs, whatever way the recipe ends

# wait_health URL LOG: until the background server answers URL/health (or dies, or SERVER_WAIT_S pass).
wait_health() {
    local url=$1 log=$2 waited=0
    echo "   server pid $SERVER_PID (log $log): waiting for $url/health"
    until curl -sf "$url/health" >/dev/null; do
        kill -0 "$SERVER_PID" 2>/dev/null || { echo "the server exited: see $log" >&2; exit 1; }
        ((waited += 10)) && ((waited <= SERVER_WAIT_S)) || { echo "server not up after ${SERVER_WAIT_S}s" >&2; exit 1; }
        sleep 10
    done
}

stage_synth() {
    [[ -f $POINTWISE ]] || { echo "no labelled videos at $POINTWISE: set POINTWISE (README, Data formats)" >&2; exit 2; }
    # The teacher is a large VLM behind vLLM's OpenAI-compatible server, on this node's GPUs.
    "$VLLM" serve "$TEACHER_MODEL" --port "$TEACHER_PORT" --tensor-parallel-size "$TEACHER_TP" \
        >"$OUT/teacher.log" 2>&1 &
    SERVER_PID=$!
    wait_health "http://localhost:$TEACHER_PORT" "$OUT/teacher.log"  # a 72B model loads for minutes
    # The published frame settings (see the header of $SFT_CONFIG): 16 frames at 448x448, tool frames
    # at twice the pixels, VR-Thinker's budgets. No --restart: a killed run resumes.
    "$COT_RM" synthesize --input "$POINTWISE" --teacher "openai:http://localhost:$TEACHER_PORT/v1#$TEACHER_MODEL" \
        --splits train,val --negatives prompt_swap,shuffle,reverse,drop --family "$FAMILY" \
        --frames 16 --max-pixels 200704 --tool-max-pixels 401408 \
        --max-tool-calls 3 --max-frames-per-call 8 --memory-window 1 --out "$SFT_DATA"
    stop_server  # free the GPUs for SFT
}

stage_sft() {
    if [[ $NODE_RANK != 0 && $SYNTH_SKIPPED == 0 ]]; then
        until [[ -f $OUT/.done/synth ]]; do
            echo "   waiting for node 0's synthesis ($OUT/.done/synth; SKIP=synth on every node if it is made)"
            sleep 60
        done
    fi
    [[ -f $SFT_DATA ]] || { echo "no SFT data at $SFT_DATA: run the synth stage (or set OUT)" >&2; exit 2; }
    local overrides=(model.base="$BASE_MODEL" data.train="$SFT_DATA" train.output_dir="$SFT_OUT")
    if [[ -n $PAIRS ]]; then overrides+=(data.pairs="$PAIRS" data.eval_pairs="$PAIRS"); fi
    # ZeRO-3 shards weights, grads and Adam states over all processes; num_processes counts ALL of them.
    # A killed run resumes from its newest checkpoint in $SFT_OUT.
    "$ACCELERATE" launch --config_file configs/accelerate/zero3.yaml \
        --num_machines "$NNODES" --num_processes $((NNODES * GPUS_PER_NODE)) \
        --machine_rank "$NODE_RANK" --main_process_ip "$MASTER_ADDR" --main_process_port "$MASTER_PORT" \
        -m cot_rm.cli sft --config "$SFT_CONFIG" "${overrides[@]}"
}

stage_rft() {
    rft_ready || return 0
    local overrides=(model.checkpoint="$SFT_OUT" data.train="$SFT_DATA" train.output_dir="$RFT_OUT"
        sampling.vllm_url="http://127.0.0.1:$ROLLOUT_PORT")
    if [[ -n $PAIRS ]]; then overrides+=(data.pairs="$PAIRS" data.eval_pairs="$PAIRS"); fi
    if grep -qE '^ *backend: *vllm_server' "$RFT_CONFIG"; then
        # The same server as GRPO's, on the SFT checkpoint (nothing trains while the judgments are drawn).
        CUDA_VISIBLE_DEVICES=0 "$PY" -m cot_rm.train.grpo.vllm_server --model "$SFT_OUT" --port "$ROLLOUT_PORT" \
            -- --dtype bfloat16 --gpu-memory-utilization 0.9 --max-model-len 16384 >"$OUT/rft_server.log" 2>&1 &
        SERVER_PID=$!
        wait_health "http://127.0.0.1:$ROLLOUT_PORT" "$OUT/rft_server.log"
    fi
    # The judgments are drawn in one process (backend hf: transformers on one GPU) into
    # $RFT_OUT/samples.jsonl, a killed run drawing only what is missing; the training on every GPU of
    # node 0 then reads them back (ZeRO-3, as SFT; a killed run resumes from its newest checkpoint).
    "$COT_RM" rft --config "$RFT_CONFIG" --sample-only "${overrides[@]}"
    stop_server
    "$ACCELERATE" launch --config_file configs/accelerate/zero3.yaml \
        --num_machines 1 --num_processes "$GPUS_PER_NODE" --main_process_port "$MASTER_PORT" \
        -m cot_rm.cli rft --config "$RFT_CONFIG" "${overrides[@]}"
}

stage_grpo() {
    grpo_ready "eval and serve use the $(basename "$(grpo_start)") checkpoint" || return 0
    # A GRPO run from another starting checkpoint (RFT finished since) is kept aside, not continued.
    if [[ -f "$OUT/.done/grpo" ]]; then set_aside "$OUT/grpo"; fi
    local start gpus=$GPUS_PER_NODE accel=configs/accelerate/zero3.yaml
    start=$(grpo_start)
    if grep -qE '^ *backend: *vllm_server' "$GRPO_CONFIG"; then
        # Rollouts from a vLLM server on the last GPU, the policy trained on the others; the weights
        # reach the server through rollout.vllm_sync_dir each step (same host), read whole on rank 0,
        # hence ZeRO-2 (ZeRO-3 would leave rank 0 a shard).
        gpus=$((GPUS_PER_NODE - 1)) accel=configs/accelerate/zero2.yaml
        CUDA_VISIBLE_DEVICES=$gpus "$PY" -m cot_rm.train.grpo.vllm_server --model "$start" --port "$ROLLOUT_PORT" \
            -- --dtype bfloat16 --gpu-memory-utilization 0.9 --max-model-len 16384 >"$OUT/rollout_server.log" 2>&1 &
        SERVER_PID=$!
        wait_health "http://127.0.0.1:$ROLLOUT_PORT" "$OUT/rollout_server.log"
    fi
    # From the SFT (or RFT) checkpoint on the same traces and pairs (`cot-rm grpo --help` lists every key).
    # Node 0 only (the other nodes skip this stage). A killed run resumes from its newest checkpoint.
    local overrides=(model.checkpoint="$start" data.train="$SFT_DATA" train.output_dir="$OUT/grpo"
        rollout.vllm_url="http://127.0.0.1:$ROLLOUT_PORT")
    if [[ -n $PAIRS ]]; then overrides+=(data.pairs="$PAIRS"); fi
    CUDA_VISIBLE_DEVICES=$(seq -s, 0 $((gpus - 1))) "$ACCELERATE" launch --config_file "$accel" \
        --num_machines 1 --num_processes "$gpus" --main_process_port "$MASTER_PORT" \
        -m cot_rm.cli grpo --config "$GRPO_CONFIG" "${overrides[@]}"
    stop_server
}

final_model() {
    if [[ -f "$OUT/.done/grpo" ]]; then echo "$OUT/grpo"; else grpo_start; fi
}

# eval_bench BENCH DATA [extra args]: one public benchmark, with its own marker (holding the model
# judged), so a finished benchmark is not redone when a later one fails, and is when the model changed
# (its earlier results are set aside). A benchmark whose file is absent is skipped with where to get it
# (README, "Public benchmarks"), and the eval stage stays unfinished.
eval_bench() {
    local bench=$1 data=$2 model stamp marker=$OUT/.done/eval-$1
    shift 2
    model=$(final_model)
    stamp=$(model_stamp "$model")
    if [[ -f $marker && "$(cat "$marker")" == "$stamp" ]]; then echo "   $bench: already done"; return 0; fi
    if [[ -f $marker ]]; then set_aside "$OUT/eval/$bench"; fi
    if [[ ! -f $data ]]; then
        echo "   $bench: skipped, $data not found (README, 'Public benchmarks', says where to get it)"
        STAGE_NOT_RUN=1
        return 0
    fi
    echo "   $bench: $data"
    # Greedy, the checkpoint's own frame sampling; judgments are cached in the out folder (resumable).
    "$COT_RM" eval --model "$model" --bench "$bench" --data "$data" "$@" --out "$OUT/eval/$bench"
    mkdir -p "$OUT/.done"
    printf '%s' "$stamp" >"$marker"
}

stage_eval() {
    eval_bench videogen-rewardbench "$BENCH_DIR/videogen-rewardbench/videogen-rewardbench.csv"
    eval_bench genai-bench "$BENCH_DIR/genai-bench/test_v1.jsonl"
    eval_bench mj-bench-video "$BENCH_DIR/mj-bench-video/test.json"
    # Videos are saved as ROOT/{video_name}.mp4, as VideoScore2's own scripts do.
    eval_bench videoscore-bench-v2 "$BENCH_DIR/videoscore-bench-v2/test.json" --root "$BENCH_DIR/videoscore-bench-v2/videos"
}

stage_serve() {
    if ! available serve; then
        echo "   skipped: cot-rm serve is not built yet; judge locally meanwhile: cot-rm judge --model $(final_model) VIDEO --prompt ..."
        STAGE_NOT_RUN=1
        return 0
    fi
    # Runs until stopped, so it never writes a marker. recipes/serve.sh says how it shares the GPU.
    COT_RM="$COT_RM" MODEL="$(final_model)" PORT="$SERVE_PORT" MEDIA_ROOT="${MEDIA_ROOT:-$PWD}" recipes/serve.sh
    STAGE_NOT_RUN=1
}

echo "$(basename "$0"): OUT=$OUT base=$BASE_MODEL teacher=$TEACHER_MODEL node $NODE_RANK of $NNODES ${SKIP:+SKIP=\"$SKIP\"}"
mkdir -p "$OUT"
run_stage synth "synthesis: $TEACHER_MODEL (vLLM) critiques -> consistency filter -> select_frames traces"
run_stage sft "SFT cold start, ZeRO-3 on $((NNODES * GPUS_PER_NODE)) GPUs ($SFT_CONFIG)"
run_stage rft "RFT: the SFT model's own judgments that agree with the labels, fine-tuned on"
run_stage grpo "GRPO with tool rollouts (stage 2)" "$(grpo_input)"
run_stage eval "eval: public benchmarks (VideoGen-RewardBench, GenAI-Bench, MJ-Bench-Video, VideoScore-Bench-v2)" "$(model_stamp "$(final_model)")"
run_stage serve "serve: judge API and interactive page"
