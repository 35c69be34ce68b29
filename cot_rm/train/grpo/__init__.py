"""Stage 2, `cot-rm grpo`: GRPO with tool rollouts (HF or vLLM), rewards, the head co-trained."""
