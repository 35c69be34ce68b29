# Shared by the recipes (sourced, not run): stage headers, SKIP, resume markers, command lookup.
#
# Conventions every recipe follows:
#   - a stage is a shell function `stage_NAME`, run by `run_stage NAME "what it does"`;
#   - SKIP="synth sft" (names separated by spaces or commas) skips those stages;
#   - a stage that finished writes $OUT/.done/NAME only AFTER its command succeeded, so a killed
#     stage is never counted as done; the next run skips finished stages and reruns the rest (whose
#     commands resume on their own where they can: synthesize, sft and eval do);
#   - a stage that judges a model (eval, judge) records that model (`model_stamp`: folder + digest of its
#     files) in its marker, and runs again when the model changed (GRPO finished, or retrained, after it
#     ran): its function sees the old stamp in PREVIOUS_INPUT;
#   - to redo a finished stage, delete its marker (rm $OUT/.done/NAME) and, to start it from scratch
#     rather than resume, its output too.

# The repo's own venv when present (make setup), else whatever is on PATH (a GPU machine's env).
if [[ -x .venv/bin/cot-rm ]]; then
    COT_RM=.venv/bin/cot-rm
    PY=.venv/bin/python
else
    COT_RM=cot-rm
    PY=python
fi
# accelerate and vllm from the same environment as cot-rm when it has them (a GPU setup with
# `pip install -e '.[gpu]'` into .venv), else from PATH.
ACCELERATE=accelerate
VLLM=vllm
if [[ -x .venv/bin/accelerate ]]; then ACCELERATE=.venv/bin/accelerate; fi
if [[ -x .venv/bin/vllm ]]; then VLLM=.venv/bin/vllm; fi

# Markers go under the recipe's output folder, so a fresh OUT is a fresh run.
_done_dir() { echo "$OUT/.done"; }

# A stage sets this to 1 when it decided not to run (e.g. its command is not built yet): no marker
# is written then, so a later run does the stage once it can.
STAGE_NOT_RUN=0

# skipped NAME: does SKIP name the stage?
skipped() { [[ " ${SKIP//,/ } " == *" $1 "* ]]; }

# run_stage NAME "title" [INPUT]: header, then skip / already done / run + marker. INPUT (the model a
# stage judges) is written into the marker; a marker holding another INPUT does not count as done.
run_stage() {
    local name=$1 title=$2 input=${3:-} marker
    marker="$(_done_dir)/$name"
    echo
    echo "== [$name] $title"
    if skipped "$name"; then
        echo "   skipped: SKIP names it"
        return 0
    fi
    PREVIOUS_INPUT=
    if [[ -f $marker ]]; then
        if [[ "$(cat "$marker")" == "$input" ]]; then
            echo "   already done ($marker exists; delete it to redo this stage)"
            return 0
        fi
        PREVIOUS_INPUT=$(cat "$marker")
        echo "   done before with ${PREVIOUS_INPUT:-another input}; now with $input: running again"
    fi
    local t0=$SECONDS
    STAGE_NOT_RUN=0
    # Called plainly (not inside `if`), so `set -e` still stops the recipe on the first failure.
    "stage_$name"
    if [[ $STAGE_NOT_RUN == 1 ]]; then
        return 0
    fi
    mkdir -p "$(_done_dir)"
    printf '%s' "$input" >"$marker"
    echo "   done in $((SECONDS - t0)) s"
}

# model_stamp DIR: the checkpoint's folder and a digest of its weight files' and cot_rm.json's sizes and
# times: the input of a stage that judges it, so the stage runs again when the model there changed.
model_stamp() {
    local digest
    digest=$(find "$1" -maxdepth 1 -type f \( -name '*.safetensors' -o -name cot_rm.json \) -printf '%f %s %T@\n' \
        2>/dev/null | sort | md5sum | cut -c1-12)
    echo "$1@$digest"
}

# set_aside DIR: move an earlier model's results out of the way (to DIR.before-N), so a stage that
# runs again for a new model starts clean and nothing is lost.
set_aside() {
    [[ -e $1 ]] || return 0
    local n=1
    while [[ -e $1.before-$n ]]; do ((n += 1)); done
    mv "$1" "$1.before-$n"
    echo "   earlier results moved to $1.before-$n"
}

# available CMD: does this build of cot-rm have the subcommand? Asks cli.py itself (the same test
# it uses to print "not available yet"), so the answer changes the day the module lands.
# Exit 0: built; 1: not built; anything else (a broken import, say) stops the recipe.
available() {
    local rc=0
    "$PY" - "$1" <<'PYEOF' || rc=$?
import sys
from cot_rm.cli import COMMANDS, _load
sys.exit(0 if _load(COMMANDS[sys.argv[1]][0]) is not None else 3)
PYEOF
    case $rc in
        0) return 0 ;;
        3) return 1 ;;
        *) echo "cannot tell whether 'cot-rm $1' is built (exit $rc)" >&2; exit "$rc" ;;
    esac
}

# rft_ready: 0 when the RFT stage can run (RFT_CONFIG names a config); else says why it is skipped and
# marks the stage as not run, so a later run with RFT_CONFIG set does it.
rft_ready() {
    if [[ -n ${RFT_CONFIG:-} ]]; then return 0; fi
    echo "   skipped: optional; RFT_CONFIG=<its config> runs it (GRPO then starts from its checkpoint)"
    STAGE_NOT_RUN=1
    return 1
}

# grpo_start: the checkpoint GRPO starts from, RFT's when that stage finished (RFT_OUT), else SFT's.
grpo_start() {
    if [[ -f "$OUT/.done/rft" ]]; then echo "$RFT_OUT"; else echo "$SFT_OUT"; fi
}

# grpo_input: what the GRPO stage's marker records: nothing from SFT (as before RFT existed), RFT's
# checkpoint stamp from RFT, so GRPO runs again (from RFT) when RFT finishes after it.
grpo_input() {
    if [[ -f "$OUT/.done/rft" ]]; then model_stamp "$RFT_OUT"; fi
}

# grpo_ready WHY: 0 when the GRPO stage can run; else says why it is skipped (WHY: what the later
# stages use instead) and marks the stage as not run, so a later run does it.
grpo_ready() {
    if ! available grpo; then
        echo "   skipped: cot-rm grpo is not built yet ($1)"
    elif [[ -z $GRPO_CONFIG ]]; then
        echo "   skipped: cot-rm grpo is built, but GRPO_CONFIG is not set (see the top of this file)"
    else
        return 0
    fi
    STAGE_NOT_RUN=1
    return 1
}
