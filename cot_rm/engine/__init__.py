"""The vLLM engine (an OpenAI-compatible server in its own venv) that serving and GRPO rollouts both use."""
