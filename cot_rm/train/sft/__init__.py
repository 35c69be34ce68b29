"""Stage 1, `cot-rm sft`: the SFT cold start (masked LM loss + head losses)."""
