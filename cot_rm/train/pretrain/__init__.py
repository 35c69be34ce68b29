"""Stage 0, `cot-rm pretrain` (tiny family only): perception pretraining on toy-world descriptions."""
