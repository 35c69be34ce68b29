"""cot-rm serve: the front server (FastAPI), its media policy and the vLLM engine it runs."""
