#!/usr/bin/env bash
# tiny_cpu.sh: the whole pipeline, small, on a CPU (2 cores are enough; no GPU, no downloads).
# The CPU twin of qwen2_5_vl_7b.sh / qwen3_vl_8b.sh: the same stages and commands, a tiny Qwen2.5-VL
# (perception-pretrained on a separate toy world, shipped in assets/) instead of a 7B model, and the
# oracle teacher instead of a served VLM.
#
#   toyworld -> synth (oracle teacher) -> sft (configs/tiny/sft.yaml) -> [rft (configs/tiny/rft.yaml)]
#            -> grpo (configs/tiny/grpo.yaml) -> eval (toy test pairs) -> judge (one HTML critique)
#
# RFT is optional here (RFT_CONFIG=configs/tiny/rft.yaml runs it; GRPO then starts from its checkpoint).
#
# Usage (from anywhere; it runs from the repo root):
#   recipes/tiny_cpu.sh
#   RFT_CONFIG=configs/tiny/rft.yaml recipes/tiny_cpu.sh   # with the RFT stage between SFT and GRPO
#   SKIP="synth sft" recipes/tiny_cpu.sh               # skip stages by name
#   N=24 SFT_ARGS="train.max_steps=2" GRPO_ARGS="train.max_steps=1" recipes/tiny_cpu.sh   # the test's sizes
# Rerunning skips the stages that finished ($OUT/.done/NAME); eval and judge run again when the model
# they judge changed (GRPO finished since). Delete a marker to redo its stage (recipes/lib.sh).
set -euo pipefail
# Paths given in the environment are the caller's: relative ones are read from where the recipe was started.
for var in OUT BASE; do
    if [[ -n ${!var:-} && ${!var} != /* && ${!var} != null && ${!var} != random ]]; then printf -v "$var" '%s' "$PWD/${!var}"; fi
done
cd "$(dirname "$0")/.."  # config paths and cot-rm's defaults are relative to the repo root

OUT=${OUT:-runs/recipe_tiny}
N=${N:-400}                                # toy-world videos (the demo's size)
SEED=${SEED:-0}                            # toy-world seed: same seed, same bytes
# Extra `cot-rm toyworld` flags, e.g. "--defect-types visible" (only the defect types a random tiny
# vision tower sees best; tried for the demo: no better head accuracy, and more looping critiques).
TOY_ARGS=${TOY_ARGS:-}
# The teacher that writes the critiques: `oracle` (varied wording), `oracle:plain` (one wording, fixed
# order of dimensions) or `oracle:fields` (plain, the prompt restated attribute by attribute);
# bench/RESULTS.md, "Learning", compares them on the tiny model.
TEACHER=${TEACHER:-oracle:plain}
SFT_CONFIG=configs/tiny/sft.yaml
# Extra SFT key=value overrides, space-separated, e.g. "train.max_steps=2 data.eval_limit=2".
SFT_ARGS=${SFT_ARGS:-}
EVAL_LIMIT=${EVAL_LIMIT:-64}               # test pairs judged by `cot-rm eval` (greedy, CPU)
MAX_NEW_TOKENS=${MAX_NEW_TOKENS:-512}      # per assistant turn, for eval and judge
SKIP=${SKIP:-}
# The RFT stage's config: empty by default (the stage is skipped), configs/tiny/rft.yaml runs it.
RFT_CONFIG=${RFT_CONFIG-}
# Extra RFT key=value overrides, e.g. "data.limit=40 sampling.k=2".
RFT_ARGS=${RFT_ARGS:-}
GRPO_CONFIG=${GRPO_CONFIG-configs/tiny/grpo.yaml}  # GRPO_CONFIG="" skips GRPO
# Extra GRPO key=value overrides, e.g. "train.max_steps=2".
GRPO_ARGS=${GRPO_ARGS:-}

source recipes/lib.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false  # nothing is downloaded: the model is built here

TOY=$OUT/toy
SFT_DATA=$OUT/sft_data.jsonl
# The tiny base SFT starts from: the perception-pretrained one shipped in assets/ (rebuilt by
# `cot-rm pretrain --config configs/tiny/pretrain.yaml`), or BASE=random for a random one built here.
BASE=${BASE:-assets/tiny-qwen2_5_vl-base}
SFT_OUT=$OUT/sft
RFT_OUT=$OUT/rft

stage_toyworld() {
    # Deterministic, so a rerun after a kill rewrites the same files.
    local extra=()
    read -r -a extra <<<"$TOY_ARGS"
    "$COT_RM" toyworld --out "$TOY" --n "$N" --seed "$SEED" --no-progress "${extra[@]}"
}

# The frame sampling of the traces: the one the base was pretrained on (its cot_rm_pretrain.json),
# else 8 frames of 112x112, the sizes configs/tiny/sft.yaml was written for.
base_sampling() {
    "$PY" - "$BASE" <<'PYEOF'
import json, pathlib, sys
marker = pathlib.Path(sys.argv[1]) / "cot_rm_pretrain.json"
corpus = json.loads(marker.read_text()).get("corpus", {}) if marker.is_file() else {}
flags = f"--frames {corpus.get('frames', 8)} --max-pixels {corpus.get('max_pixels', 12544)}"
print(flags + (" --overlap" if corpus.get("overlap") else ""))
PYEOF
}

stage_synth() {
    # What `cot-rm demo` does in-process: train+val videos, the four negative kinds, oracle critiques,
    # the consistency filter, select_frames traces. No --restart: a killed run resumes.
    local sampling=()
    read -r -a sampling <<<"$(base_sampling)"
    "$COT_RM" synthesize --input "$TOY/pointwise.jsonl" --teacher "$TEACHER" --splits train,val \
        --negatives prompt_swap,shuffle,reverse,drop "${sampling[@]}" --out "$SFT_DATA" --no-progress
}

stage_sft() {
    local base=$BASE
    if [[ $base == random ]]; then  # built locally; skipped when a complete one is already there
        base=$OUT/tiny-qwen2_5_vl
        "$PY" -c 'import sys; from cot_rm.model.tiny import build_tiny_checkpoint; build_tiny_checkpoint(sys.argv[1], family="qwen2_5_vl")' "$base"
    fi
    # The config's paths point at runs/demo: redirect every one of them to $OUT. The held-out report
    # reads the test split of the same pairs file (data.eval_split: test), never trained on.
    local extra=()
    read -r -a extra <<<"$SFT_ARGS"
    "$COT_RM" sft --config "$SFT_CONFIG" \
        model.base="$base" data.train="$SFT_DATA" data.pairs="$TOY/pairs.jsonl" \
        data.eval_pairs="$TOY/pairs.jsonl" train.output_dir="$SFT_OUT" "${extra[@]}"
}

stage_rft() {
    rft_ready || return 0
    local extra=()
    read -r -a extra <<<"$RFT_ARGS"
    # From the SFT checkpoint: its own judgments of the training videos that agree with the labels (a
    # video with none keeps its synthesized trace), then SFT's losses. A killed run resumes its draws.
    "$COT_RM" rft --config "$RFT_CONFIG" model.checkpoint="$SFT_OUT" data.train="$SFT_DATA" \
        data.pairs="$TOY/pairs.jsonl" data.eval_pairs="$TOY/pairs.jsonl" train.output_dir="$RFT_OUT" "${extra[@]}"
}

stage_grpo() {
    grpo_ready "eval and judge use the $(basename "$(grpo_start)") checkpoint" || return 0
    # A GRPO run from another starting checkpoint (RFT finished since) is kept aside, not continued.
    if [[ -f "$OUT/.done/grpo" ]]; then set_aside "$OUT/grpo"; fi
    local extra=()
    read -r -a extra <<<"$GRPO_ARGS"
    # From the SFT (or RFT) checkpoint, on the same traces (video, prompt, sampling, label scores) and pairs.
    "$COT_RM" grpo --config "$GRPO_CONFIG" model.checkpoint="$(grpo_start)" data.train="$SFT_DATA" \
        data.pairs="$TOY/pairs.jsonl" train.output_dir="$OUT/grpo" "${extra[@]}"
}

# The model the later stages judge with: GRPO's when that stage finished, else RFT's, else SFT's.
final_model() {
    if [[ -f "$OUT/.done/grpo" ]]; then echo "$OUT/grpo"; else grpo_start; fi
}

stage_eval() {
    # The toy world's held-out test pairs (colour x shape combinations never seen in training).
    # eval caches judgments in $OUT/eval and resumes a killed run by itself; another model's are set aside.
    if [[ -n $PREVIOUS_INPUT ]]; then set_aside "$OUT/eval"; fi
    "$COT_RM" eval --model "$(final_model)" --bench jsonl --data "$TOY/pairs.jsonl" --split test \
        --limit "$EVAL_LIMIT" --max-new-tokens "$MAX_NEW_TOKENS" --out "$OUT/eval"
}

stage_judge() {
    # One held-out (test split) video and its prompt, judged greedily, as JSON + an HTML critique.
    local video prompt
    { read -r video; read -r prompt; } < <("$PY" - "$TOY/pointwise.jsonl" <<'PYEOF'
import json, os, sys
path = sys.argv[1]
with open(path) as f:
    rec = next(r for r in map(json.loads, f) if r.get("split") == "test")
print(os.path.join(os.path.dirname(path), rec["video"]))
print(rec["prompt"])
PYEOF
    )
    # Written to a temporary name first: a killed run leaves no judgment.json that looks finished.
    "$COT_RM" judge --model "$(final_model)" "$video" --prompt "$prompt" \
        --max-new-tokens "$MAX_NEW_TOKENS" --html "$OUT/critique.html" >"$OUT/judgment.json.tmp"
    mv "$OUT/judgment.json.tmp" "$OUT/judgment.json"
    echo "   $video: $OUT/judgment.json, $OUT/critique.html"
}

echo "tiny_cpu recipe: OUT=$OUT N=$N cot-rm=$COT_RM ${SKIP:+SKIP=\"$SKIP\"}"
run_stage toyworld "toy world: $N procedural videos with exact defect labels"
run_stage synth "synthesis: oracle critiques -> consistency filter -> select_frames traces (+ negatives)"
run_stage sft "SFT cold start of the tiny Qwen2.5-VL base $BASE ($SFT_CONFIG)"
run_stage rft "RFT: the SFT model's own judgments that agree with the labels, fine-tuned on (optional)"
run_stage grpo "GRPO with tool rollouts (stage 2)" "$(grpo_input)"
run_stage eval "eval: held-out toy test pairs (metrics.json, report.md)" "$(model_stamp "$(final_model)")"
run_stage judge "judge: one held-out video -> HTML critique" "$(model_stamp "$(final_model)")"
echo
echo "Done in ${SECONDS} s. Outputs under $OUT/:"
echo "  toy/ (videos, pointwise.jsonl, pairs.jsonl)   sft_data.jsonl (synthesised traces)"
echo "  sft/ (checkpoint + report.json)   rft/ (when run: checkpoint, rft_summary.json)   grpo/ (checkpoint)"
echo "  eval/ (metrics.json, report.md, predictions.jsonl)   judgment.json + critique.html (open in a browser)"
echo "Judge your own video: $COT_RM judge --model $(final_model) VIDEO.mp4 --prompt TEXT --html critique.html"
