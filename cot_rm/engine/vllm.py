"""The vLLM side of `cot-rm serve`: the engine subprocess and the judge's turns sent to it.

The engine is vLLM's own OpenAI-compatible server, started from the vLLM interpreter (its own venv:
vLLM pins a torch/transformers pair of its own) on an internal port, for the checkpoint's language
model: the protocol's tool-capable chat template (`--chat-template`), the hermes tool-call parser
(the protocol's `<tool_call>{"name": ..., "arguments": ...}</tool_call>` form is hermes'), limits on
media per prompt, local media restricted to the allowed root, no remote media at all (the front server
fetches http(s) media under its own policy and hands the engine the bytes), greedy-friendly seed.

A judge turn goes to that engine through the public `/v1/chat/completions` route, so the same code
drives a remote vLLM too. The model must see what the local judge shows it, so nothing is left to
vLLM's own video loading: the frames `cot_rm.media.video` sampled and resized travel as lossless PNGs in a
`video/jpeg` frame-sequence data URL (vLLM decodes each frame with PIL, whatever its format) with
their metadata (`frames_indices`, fps, total frames, duration, no re-sampling) in `media_io_kwargs`;
the tool's frames go as PNG `image_url`s. The answer comes back as raw text (`tool_choice: none`
keeps the tools in the prompt but leaves the text unparsed): `cot_rm.protocol` parses it, as it
parses the local judge's.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cot_rm import protocol
from cot_rm.media.images import image_b64, image_data_url
from cot_rm.model.config import CotRmConfig
from cot_rm.model.modeling import ThinkThenScore

VLLM_PYTHON_ENV = "COT_RM_VLLM_PYTHON"
# Files of a cot-rm checkpoint that are not the language model's (vLLM would try to load every
# *.safetensors of the folder, the head's too).
NOT_FOR_VLLM = {"head.safetensors", "cot_rm.json", "report.json", "trainer_state.json"}
# The one host the engine may fetch media from: under .invalid, which never resolves (RFC 2606). vLLM
# has no switch that turns URL fetching off, so an allowlist of a host that cannot exist does it.
NO_MEDIA_HOST = "no-remote-media.invalid"


def default_vllm_python() -> str:
    """$COT_RM_VLLM_PYTHON, else .venv-vllm beside the working directory or the package, else this
    interpreter (a GPU install has vLLM in the main environment: the `gpu` extra)."""
    if os.environ.get(VLLM_PYTHON_ENV):
        return os.environ[VLLM_PYTHON_ENV]
    for root in (Path.cwd(), Path(__file__).resolve().parents[1]):
        if (root / ".venv-vllm" / "bin" / "python").exists():
            return str(root / ".venv-vllm" / "bin" / "python")
    return sys.executable


def engine_view(ckpt: Path, work: Path) -> Path:
    """A folder vLLM can load: the checkpoint's VLM files (symlinks) without the head.

    A LoRA checkpoint is merged first (adapter and the trained `<|reward|>` row folded into the base),
    which needs the base weights named in `cot_rm.json`; the merged weights are written under `work`.
    """
    config = CotRmConfig.load(ckpt)
    view = work / "engine_model"
    view.mkdir(parents=True, exist_ok=True)
    if config.lora is not None:
        ThinkThenScore.from_pretrained(ckpt).merge_lora().save_pretrained(view)
        for name in NOT_FOR_VLLM:
            (view / name).unlink(missing_ok=True)
        return view
    for f in ckpt.iterdir():
        if f.name not in NOT_FOR_VLLM and not f.name.startswith("."):
            (view / f.name).symlink_to(f.resolve())
    return view


@dataclass
class EngineSettings:
    python: str
    port: int
    allowed_media_root: str
    served_model_name: str
    family: str
    max_model_len: int = 4096
    max_num_seqs: int = 32
    dtype: str = "auto"
    seed: int = 0
    extra_args: list[str] = field(default_factory=list)
    mm_limits: dict = field(
        default_factory=lambda: {
            "image": {"count": 32, "width": 448, "height": 448},
            "video": {"count": 1, "num_frames": 32, "width": 448, "height": 448},
        }
    )


def free_port() -> int:
    """A port nothing listens on right now (the OS picks it; a tiny race with other binders)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def engine_env(cpu_kv_cache_gib: int = 1, **overrides: str) -> dict[str, str]:
    """The environment a vLLM server starts in: no PYTHONPATH (our venv's packages must not shadow
    vLLM's torch), no VLLM_API_KEY (a key exported for a teacher endpoint would make this private
    engine refuse its own clients, which send none), no usage reports, a small CPU KV cache unless the
    caller's environment sets one."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env.pop("VLLM_API_KEY", None)
    env.update(VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1", TOKENIZERS_PARALLELISM="false")
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cpu_kv_cache_gib))  # GiB (CPU builds); ignored on GPU
    env.update(overrides)
    return env


class EngineProcess:
    """A vLLM OpenAI server as a child process: its own process group (stopped as a whole: vLLM forks
    an engine-core process), killed with us (PDEATHSIG), its output in a log file."""

    def __init__(self, port: int, log_path: Path):
        self.port, self.log_path = port, Path(log_path)
        self.proc: subprocess.Popen | None = None
        self.command: list[str] = []

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def launch(self, command: list[str], env: dict[str, str], cwd: Path) -> None:
        self.command = command
        with open(self.log_path, "wb") as log:  # a file, not a pipe: a full pipe would stall the engine
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env, cwd=str(cwd),
                                         start_new_session=True, preexec_fn=_die_with_parent)  # fmt: skip

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.base_url + "/health", timeout=2) as resp:
                return resp.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def wait_healthy(self, timeout_s: float) -> None:
        """Poll /health; fail fast, with the log tail, if the process dies or time runs out."""
        start = time.monotonic()
        while time.monotonic() - start < timeout_s:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"the vLLM engine exited ({self.proc.returncode}) before it was ready\n"
                                   f"{self._context()}")  # fmt: skip
            if self.healthy():
                return
            time.sleep(1.0)
        raise RuntimeError(f"the vLLM engine is not ready after {timeout_s:.0f} s\n{self._context()}")

    def _context(self) -> str:
        return f"command: {' '.join(self.command)}\nlog tail ({self.log_path}):\n{self.log_tail()}"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM the process group, SIGKILL after `grace_s`; then sweep the group once more (the
        engine core may outlive its parent)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            _signal_group(self.proc, signal.SIGTERM)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                _signal_group(self.proc, signal.SIGKILL)
                self.proc.wait(10)
        _signal_group(self.proc, signal.SIGKILL)


class Engine(EngineProcess):
    """`cot-rm serve`'s engine: vLLM's OpenAI server for a checkpoint's language model."""

    def __init__(self, ckpt: Path, settings: EngineSettings, work: Path | None = None):
        self.settings = settings
        self.work = Path(work or tempfile.mkdtemp(prefix="cot-rm-serve-"))
        self.ckpt = ckpt
        super().__init__(settings.port, self.work / "vllm.log")

    def start(self) -> None:
        s = self.settings
        model = engine_view(self.ckpt, self.work)
        template = self.work / "chat_template.jinja"
        template.write_text(protocol.chat_template(s.family))
        dtype = s.dtype
        if dtype == "auto":
            dtype = "auto" if _has_cuda_hint() else "float32"
        command = [
            s.python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
            "--served-model-name", s.served_model_name, "--host", "127.0.0.1", "--port", str(s.port),
            "--chat-template", str(template), "--enable-auto-tool-choice", "--tool-call-parser", "hermes",
            "--limit-mm-per-prompt", json.dumps(s.mm_limits), "--allowed-local-media-path",
            s.allowed_media_root, "--max-model-len", str(s.max_model_len), "--max-num-seqs",
            str(s.max_num_seqs), "--dtype", dtype, "--seed", str(s.seed), *s.extra_args,
            "--allowed-media-domains", NO_MEDIA_HOST,  # last: no --vllm-arg lets the engine fetch
        ]  # fmt: skip
        if dtype == "float32" and "--enforce-eager" not in command:
            command.append("--enforce-eager")  # CPU: no graph capture, start-up stays ~1 min
        self.launch(command, engine_env(VLLM_MEDIA_URL_ALLOW_REDIRECTS="0"), self.work)

    def stop(self, grace_s: float = 20.0) -> None:
        super().stop(grace_s)
        shutil.rmtree(self.work / "engine_model", ignore_errors=True)


def _has_cuda_hint() -> bool:
    return shutil.which("nvidia-smi") is not None


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _die_with_parent() -> None:
    """In the child: SIGTERM when the server dies (Linux), so no engine outlives a killed server."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


# ------------------------------------------------------------------------------------ judge turns


def vllm_video_metadata(video, family: str = "qwen2_5_vl") -> dict:
    """What vLLM is told about a clip `cot_rm.media.video` already sampled, so that it places the video's
    positions as transformers (the local judge, SFT, GRPO) does."""
    meta = {"fps": float(video.fps), "duration": float(video.duration_s), "do_sample_frames": False}
    if family == "qwen2_5_vl":
        # Qwen2.5-VL spaces a video's temporal positions by temporal_patch_size / fps, the fps being
        # transformers' `VideoMetadata.sampled_fps`: frames sampled / source frames x source fps in the
        # local judge (SFT, GRPO), but just `fps` for a clip without source indices, as vLLM gets it.
        # So vLLM is told the frames are a clip of their own at the SAMPLED rate. Then every position
        # agrees (with cot_rm.model.rope on the transformers side), and GRPO's log-probs equal to 5e-7.
        meta["fps"] = len(video.indices) / video.total_frames * float(video.fps)
        meta["total_num_frames"] = len(video.frames)
    else:
        # Qwen3-VL writes each frame pair's time into the prompt ("<1.6 seconds>"): the mean source index
        # of the pair / the source fps, as transformers computes it from the same metadata. So vLLM gets
        # the source indices and fps, and the video becomes the same tokens on both sides (served turns,
        # rollouts: tests/test_serve.py, tests/test_grpo_vllm.py, tests/test_video.py).
        meta |= {"frames_indices": list(video.indices), "total_num_frames": int(video.total_frames)}
    return meta


def video_part(video, family: str = "qwen2_5_vl") -> tuple[dict, dict]:
    """(the content part, media_io_kwargs) for a sampled `cot_rm.media.video.Video`: its frames as PNGs."""
    frames = video.frames.numpy() if hasattr(video.frames, "numpy") else np.asarray(video.frames)
    url = "data:video/jpeg;base64," + ",".join(image_b64(f) for f in frames)
    media = {"video": {"num_frames": -1, **vllm_video_metadata(video, family)}}
    return {"type": "video_url", "video_url": {"url": url}}, media


def openai_messages(messages: list[dict], video_content: dict, images: dict) -> list[dict]:
    """Protocol messages (memory window applied) -> OpenAI chat messages for vLLM.

    `images` maps the tool turns' image refs to PIL images; tool-call ids are made up (the Qwen
    template does not render them, the OpenAI format wants them).
    """
    out, calls = [], 0
    for m in messages:
        if m["role"] == "user":
            parts = [video_content if p.get("type") == "video" else p for p in m["content"]]
            out.append({"role": "user", "content": parts})
        elif m["role"] == "tool":
            parts = []
            for p in m["content"]:
                if p.get("type") == "image":
                    parts.append({"type": "image_url",
                                  "image_url": {"url": image_data_url(images[p["image"]])}})  # fmt: skip
                else:
                    parts.append(p)
            out.append({"role": "tool", "tool_call_id": f"call_{max(calls - 1, 0)}", "content": parts})
        elif m["role"] == "assistant" and m.get("tool_calls"):
            tcs = []
            for tc in m["tool_calls"]:
                fn = tc["function"]
                tcs.append({"id": f"call_{calls}", "type": "function",
                            "function": {"name": fn["name"], "arguments": json.dumps(fn["arguments"])}})  # fmt: skip
                calls += 1
            out.append({"role": "assistant", "content": m["content"], "tool_calls": tcs})
        else:
            out.append({"role": m["role"], "content": m["content"]})
    return out


def chat_request(model: str, messages: list[dict], media_io_kwargs: dict, spec: protocol.JudgeSpec,
                 max_tokens: int, temperature: float = 0.0, top_p: float = 1.0, seed: int | None = 0) -> dict:  # fmt: skip
    """The /v1/chat/completions body of one judge turn (greedy unless `temperature` > 0)."""
    body = {
        "model": model,
        "messages": messages,
        "tools": [protocol.tool_schema(spec)],
        "tool_choice": "none",  # tools listed in the prompt; the text comes back unparsed
        "max_tokens": max_tokens,
        "temperature": temperature,
        "top_p": top_p,
        "media_io_kwargs": media_io_kwargs,
        # cot_rm.media.video already sized every frame for the model: vLLM resizing again would upscale small
        # clips past its own minimum and change the token count (seen: 12 video tokens against HF's 4).
        "mm_processor_kwargs": {"do_resize": False},
        "skip_special_tokens": True,  # as the local judge decodes
    }
    if seed is not None:
        body["seed"] = seed
    return body
