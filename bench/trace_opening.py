"""Learning experiment: does the tiny model quote the prompt right when the quote is written next to it?

Rewrites an `oracle:plain` SFT file (`cot-rm synthesize --teacher oracle:plain`) so that the first
assistant turn opens with the critique's two opening sentences, "I see ..." (what the video shows) and
"The prompt asks for ..." (the prompt, quoted), about 20 tokens after the prompt itself, instead of
150-670 tokens later in the final turn. The rest of the critique stays in the final turn. Traces
without a tool call, and critiques without both sentences, are copied as they are.

    .venv/bin/python bench/trace_opening.py runs/demo/sft_data.jsonl runs/demo/sft_data_opening.jsonl \
        [--prompt-first]
    .venv/bin/cot-rm sft --config configs/tiny/sft.yaml data.train=runs/demo/sft_data_opening.jsonl \
        train.output_dir=runs/opening/sft

Write the output beside the input: the traces' video paths are relative to the file's folder.
Measured figures: bench/RESULTS.md ("Learning", "On a second world").
"""

from __future__ import annotations

import argparse
import json
import re
import sys

CAPTION = re.compile(r"<think>(I see [^.]*\.) ")
QUOTE = re.compile(r" (The prompt asks for [^.]*\.)(?= )")  # toy prompts hold no full stop


def move_opening(row: dict, prompt_first: bool) -> bool:
    """Move the critique's caption and prompt quote into the first assistant turn; False if not moved."""
    turns = [m for m in row["messages"] if m["role"] == "assistant"]
    if len(turns) < 2:
        return False
    final = turns[-1]["content"]
    caption, quote = CAPTION.match(final), QUOTE.search(final)
    if not (caption and quote):
        return False
    first, second = (quote, caption) if prompt_first else (caption, quote)
    turns[-1]["content"] = final.replace(caption.group(1) + " ", "", 1).replace(" " + quote.group(1), "", 1)
    turns[0]["content"] = turns[0]["content"].replace(
        "<think>", f"<think>{first.group(1)} {second.group(1)} ", 1
    )
    return True


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="an SFT traces JSONL written with --teacher oracle:plain")
    p.add_argument("dst", help="the rewritten JSONL (beside src)")
    p.add_argument("--prompt-first", action="store_true", help="quote the prompt before saying what is seen")
    args = p.parse_args()
    moved = total = 0
    with open(args.src) as src, open(args.dst, "w") as dst:
        for line in src:
            row = json.loads(line)
            moved += move_opening(row, args.prompt_first)
            total += 1
            dst.write(json.dumps(row) + "\n")
    print(f"{moved} of {total} traces rewritten -> {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
