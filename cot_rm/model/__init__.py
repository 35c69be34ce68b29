"""The reward model: the VLM with its regression head, its checkpoint config, processing, M-RoPE, packing, the vision-feature cache, the losses, the tiny CPU family."""
