"""Training: the pieces SFT and GRPO share (traces and their collator, the validation report), then one subpackage per stage."""
