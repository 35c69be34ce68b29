"""Between stages 1 and 2, `cot-rm rft`: rejection-sampling fine-tuning on the model's own agreeing judgments."""
