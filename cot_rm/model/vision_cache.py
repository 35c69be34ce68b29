"""Reuse a FROZEN vision tower's outputs: compute each video's (and image's) features once.

On a naive 7B step the vision tower is ~85% of the time. When it is frozen its output is a pure
function of the pixels, so every SFT epoch, every turn / tool image of a sample, every rollout of a
GRPO group and every log-prob pass can reuse it:

    cache = VisionFeatureCache(model, max_items=64)          # ThinkThenScore, PeftModel or HF model
    with cache:                                               # or cache.install() ... cache.remove()
        out = model(**batch)                                  # only unseen items hit the tower
    cache.stats()   # {"hits": ..., "misses": ..., "tower_calls": ..., "hit_rate": ...}

How: the inner `Qwen2_5_VLModel` / `Qwen3VLModel` instance's `get_video_features` and
`get_image_features` are wrapped (instance attributes, restored exactly on removal). The wrapper splits
the batched patches per item with the grids (t*h*w patch rows each), keys each item by a blake2b
hash of its bytes + grid (+ the tower dtype), or by caller-given `key_hints`, and runs the ORIGINAL
method once on the missing items only. It returns what the model's forward expects in the running
transformers version: `pooler_output` as per-item tuples; Qwen3-VL's `deepstack_features` per layer,
as per-item tuples (5.19) or concatenated tensors (5.17), copied from the first real tower call.

Why only a frozen tower: cached features are detached, so a trainable tower would silently get no
gradient; `install()` raises if any vision parameter requires grad (and each call checks again).

Why the tower runs with gradient checkpointing off (and under no_grad) here: checkpointing re-runs a
block's forward in backward; a frozen tower needs no backward at all, so checkpointing could only add
work, and that recomputation is what made the tower cost 3x (1.87 s vs 0.56 s fwd+bwd on a 7B step).

Not served from the cache: the tower's `last_hidden_state` (pre-merger patches; None in served
outputs) and per-layer hidden states / attentions (`output_hidden_states=True`). Calls asking for
tuples (`return_dict=False`) or carrying precomputed tensor kwargs (e.g. `video_cu_seqlens`) pass
straight to the original method (counted as `bypassed`).
"""

from __future__ import annotations

import hashlib
import os
import time
import warnings
from collections import Counter, OrderedDict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache, wraps
from typing import Any

import torch

# (pixel kwarg, grid kwarg) of each get_<modality>_features method.
_ARG_NAMES = {"video": ("pixel_values_videos", "video_grid_thw"), "image": ("pixel_values", "image_grid_thw")}
_METHODS = {"video": "get_video_features", "image": "get_image_features"}
# The text model's flash-varlen kwargs that forward() broadcasts to every encoder; 5.19 drops them
# before the tower, so they do not make an item's features depend on the batch.
_TEXT_VARLEN = frozenset({"cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k"})
_MISSING = object()
_CHUNK = 4 << 20  # bytes per hashed leaf


@dataclass
class _Entry:
    """One item's tower output: merged embeddings [n, D] and Qwen3-VL's deepstack layers ([n, D] each)."""

    embeds: torch.Tensor
    deepstack: tuple[torch.Tensor, ...] = ()

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.embeds, *self.deepstack))

    def owned(self, device: torch.device | None) -> _Entry:
        """A copy for the store: on `device`, each tensor compact (a split view would pin the batch)."""
        return _Entry(_own(self.embeds, device), tuple(_own(t, device) for t in self.deepstack))

    def to(self, device: torch.device) -> _Entry:
        return _Entry(self.embeds.to(device), tuple(t.to(device) for t in self.deepstack))


def inner_vision_model(model) -> torch.nn.Module:
    """The module that owns `visual` and `get_video_features` (the one the forward calls), through
    ThinkThenScore (`.base_vlm`), a PEFT wrapper and `...ForConditionalGeneration` (`.model`)."""
    m = getattr(model, "base_vlm", model)
    if hasattr(m, "peft_config") and hasattr(m, "get_base_model"):
        m = m.get_base_model()
    for candidate in (getattr(m, "model", None), m):
        if hasattr(candidate, "visual") and hasattr(candidate, "get_video_features"):
            return candidate
    raise TypeError(f"{type(model).__name__}: no inner model with `visual` and `get_video_features`")


def training_cache(model) -> VisionFeatureCache:
    """The cache SFT and GRPO install on a frozen tower: in host memory, bounded by bytes (a 16-frame
    448x448 video is ~15 MB of 7B features; 8 GiB holds ~550 of them)."""
    return VisionFeatureCache(model, max_items=None, max_bytes=8 << 30, device="cpu").install()


def trainable_vision_params(model) -> list[str]:
    """Names of vision-tower parameters (merger and deepstack mergers included) that require grad."""
    visual = inner_vision_model(model).visual
    return [name for name, p in visual.named_parameters() if p.requires_grad]


class VisionFeatureCache:
    """LRU cache of a frozen vision tower's per-item outputs, installed on one model.

    `max_items` / `max_bytes` bound the store (least recently used first out; None: unbounded).
    `device`: where entries live (None: where the tower computed them, i.e. the model's device;
    "cpu" to keep a whole dataset's features across SFT epochs in host memory). Entries are moved to
    the tower's device when served.
    """

    def __init__(
        self,
        model,
        max_items: int | None = 64,
        max_bytes: int | None = None,
        device: str | torch.device | None = None,
    ):
        self.inner = inner_vision_model(model)
        self.max_items, self.max_bytes = max_items, max_bytes
        self.device = torch.device(device) if device is not None else None
        self._store: OrderedDict[tuple, _Entry] = OrderedDict()
        self._bytes = 0
        self._counts: Counter[str] = Counter()
        self._hash_s = 0.0
        self._hints: dict[str, list] = {}
        self._saved: dict[str, Any] | None = None  # method name -> previous instance attr or _MISSING
        self._busy = False  # inside a real tower call: nested get_*_features pass straight through
        self._out_cls: dict[str, type] = {}  # output class per modality, seen on a real call
        self._split_deepstack: bool | None = None  # 5.19: per-item tuples; 5.17: concatenated

    # ------------------------------------------------------------------------------ install / remove

    @property
    def installed(self) -> bool:
        return self._saved is not None

    def install(self) -> VisionFeatureCache:
        """Wrap the inner model's feature methods; raises if the tower is trainable or already cached."""
        if self.installed:
            return self
        if trainable := trainable_vision_params(self.inner):
            raise RuntimeError(_trainable_message(trainable))
        if getattr(self.inner, "_cot_rm_vision_cache", None) is not None:
            raise RuntimeError("another VisionFeatureCache is already installed on this model")
        self._saved = {}
        for modality, name in _METHODS.items():
            self._saved[name] = self.inner.__dict__.get(name, _MISSING)
            setattr(self.inner, name, self._wrap(modality, getattr(self.inner, name)))
        self.inner._cot_rm_vision_cache = self
        return self

    def remove(self) -> None:
        """Restore the methods exactly as they were (class methods again unless patched before us)."""
        if not self.installed:
            return
        for name, previous in self._saved.items():
            if getattr(self.inner.__dict__.get(name), "_cot_rm_cache", None) is not self:
                # Someone patched over our wrapper: restoring drops their patch too; say so.
                warnings.warn(
                    f"{name} was re-patched after VisionFeatureCache; restoring the original", stacklevel=2
                )
            if previous is _MISSING:
                self.inner.__dict__.pop(name, None)
            else:
                setattr(self.inner, name, previous)
        self.inner.__dict__.pop("_cot_rm_vision_cache", None)
        self._saved = None

    def __enter__(self) -> VisionFeatureCache:
        return self.install()

    def __exit__(self, *exc) -> None:
        self.remove()

    # ------------------------------------------------------------------------------------ bookkeeping

    def stats(self) -> dict[str, float]:
        """Counters since the last `reset_stats()`: items served from the store (`hits`, also in-batch
        duplicates), items computed (`misses`), batched `tower_calls`, `bypassed` calls, `evictions`,
        current `items` / `bytes`, `hit_rate`, and `hash_s` (time spent hashing pixels)."""
        hits, misses = self._counts["hits"], self._counts["misses"]
        return {
            "hits": hits,
            "misses": misses,
            "hit_rate": hits / (hits + misses) if hits + misses else 0.0,
            "tower_calls": self._counts["tower_calls"],
            "bypassed": self._counts["bypassed"],
            "evictions": self._counts["evictions"],
            "items": len(self._store),
            "bytes": self._bytes,
            "hash_s": self._hash_s,
        }

    def reset_stats(self) -> None:
        self._counts.clear()
        self._hash_s = 0.0

    def clear(self) -> None:
        """Drop every entry: call it if the tower's weights change under the cache (keys see only the
        pixels, the grid and the tower's dtype)."""
        self._store.clear()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._store)

    @contextmanager
    def key_hints(self, videos: Sequence | None = None, images: Sequence | None = None) -> Iterator[None]:
        """Use these keys (one per item, in batch order, e.g. a video path + sampling) instead of hashing
        the pixels, for every feature call inside the block. Cheaper, but only as correct as the keys:
        the same key must always mean the same pixels (the grid is still checked as part of the key)."""
        saved = self._hints
        self._hints = {k: list(v) for k, v in (("video", videos), ("image", images)) if v is not None}
        try:
            yield
        finally:
            self._hints = saved

    # ---------------------------------------------------------------------------------------- wrapper

    def _wrap(self, modality: str, original):
        pixel_name, grid_name = _ARG_NAMES[modality]

        @wraps(original)
        def features(*args, **kwargs):
            # Qwen3-VL's get_video_features calls get_image_features: inside a real tower call, pass.
            if self._busy:
                return original(*args, **kwargs)
            args = list(args)
            pixels = args.pop(0) if args else kwargs.pop(pixel_name)
            grid = args.pop(0) if args else kwargs.pop(grid_name, None)
            if (
                args
                or grid is None
                or len(grid) == 0
                or not self._wants_dict(kwargs)
                or _has_batch_tensors(kwargs)
            ):
                self._counts["bypassed"] += 1
                with self._passthrough():  # and Qwen3-VL's nested get_image_features with it
                    return original(pixels, grid, *args, **kwargs)
            kwargs.pop("return_dict", None)
            return self._lookup(modality, original, pixels, grid, kwargs)

        features._cot_rm_cache = self
        return features

    def _wants_dict(self, kwargs: dict) -> bool:
        """The model forward always asks for a ModelOutput; tuples (whose first field would be the
        uncached `last_hidden_state`) are left to the original method."""
        return_dict = kwargs.get("return_dict")
        return getattr(self.inner.config, "return_dict", True) if return_dict is None else bool(return_dict)

    def _lookup(self, modality: str, original, pixels: torch.Tensor, grid: torch.Tensor, kwargs: dict):
        if trainable := trainable_vision_params(self.inner):  # unfrozen after install
            raise RuntimeError(_trainable_message(trainable))
        grids = [tuple(int(n) for n in g) for g in grid.tolist()]
        keys = self._keys(modality, pixels, grids)
        found: dict[tuple, _Entry | None] = {}
        missing: list[int] = []  # first occurrence of each key not in the store
        for i, key in enumerate(keys):
            if key not in found:
                found[key] = self._get(key)
                if found[key] is None:
                    missing.append(i)
        self._counts["misses"] += len(missing)
        self._counts["hits"] += len(keys) - len(missing)
        if missing:
            computed = self._compute(modality, original, pixels, grid, grids, missing, kwargs)
            for i, entry in zip(missing, computed, strict=True):
                found[keys[i]] = entry
                self._put(keys[i], entry)
        return self._assemble(modality, [found[k] for k in keys])

    # ------------------------------------------------------------------------------------------- keys

    def _keys(self, modality: str, pixels: torch.Tensor, grids: list[tuple[int, int, int]]) -> list[tuple]:
        sizes = [t * h * w for t, h, w in grids]
        if sum(sizes) != pixels.shape[0]:
            raise ValueError(
                f"{modality}: grids hold {sum(sizes)} patches but pixels have {pixels.shape[0]} rows"
            )
        dtype = str(self.inner.visual.dtype)  # the tower casts its input: its dtype is part of the key
        hints = self._hints.get(modality)
        if hints is not None:
            if len(hints) != len(grids):
                raise ValueError(f"key_hints: {len(hints)} {modality} keys for {len(grids)} {modality}s")
            return [("hint", hint, g, dtype) for hint, g in zip(hints, grids)]
        start = time.perf_counter()
        # One device-to-host copy for the whole batch, then a hash per item.
        rows = pixels.detach().contiguous().cpu()
        keys, offset = [], 0
        for g, n in zip(grids, sizes):
            digest = _digest(rows[offset : offset + n])
            keys.append(("blake2b", digest, g, str(pixels.dtype), dtype))
            offset += n
        self._hash_s += time.perf_counter() - start
        return keys

    # ------------------------------------------------------------------------------------------ store

    def _get(self, key: tuple) -> _Entry | None:
        entry = self._store.get(key)
        if entry is not None:
            self._store.move_to_end(key)  # most recently used
        return entry

    def _put(self, key: tuple, entry: _Entry) -> None:
        stored = entry.owned(self.device)
        if self.max_bytes is not None and stored.nbytes > self.max_bytes:
            return  # bigger than the whole budget: served this once, never stored
        self._store[key] = stored
        self._bytes += stored.nbytes
        while self._store and (
            (self.max_items is not None and len(self._store) > self.max_items)
            or (self.max_bytes is not None and self._bytes > self.max_bytes)
        ):
            _, old = self._store.popitem(last=False)
            self._bytes -= old.nbytes
            self._counts["evictions"] += 1

    # ------------------------------------------------------------------------------------------ tower

    def _compute(self, modality, original, pixels, grid, grids, missing, kwargs) -> list[_Entry]:
        """One ORIGINAL call on just the missing items' patch rows; their outputs, detached."""
        if len(missing) < len(grids):
            bounds = _offsets([t * h * w for t, h, w in grids])
            pixels = torch.cat([pixels[bounds[i] : bounds[i + 1]] for i in missing])
            grid = grid[torch.tensor(missing, device=grid.device)]
        with self._tower_mode():
            out = original(pixels, grid, return_dict=True, **kwargs)
        self._counts["tower_calls"] += 1
        self._out_cls[modality] = type(out)
        embeds = [e.detach() for e in out.pooler_output]
        layers = _per_item_layers(out, [e.shape[0] for e in embeds])
        if layers is not None and self._split_deepstack is None:
            self._split_deepstack = isinstance(out.deepstack_features[0], tuple | list)
        if layers is None:
            return [_Entry(e) for e in embeds]
        return [_Entry(e, tuple(layer[i] for layer in layers)) for i, e in enumerate(embeds)]

    @contextmanager
    def _tower_mode(self) -> Iterator[None]:
        """no_grad, normal (non-inference) tensors, and gradient checkpointing off in the tower.

        inference_mode(False): features computed inside a caller's inference_mode would otherwise be
        inference tensors that a later training forward may not save for backward.
        """
        checkpointed = [m for m in self.inner.visual.modules() if getattr(m, "gradient_checkpointing", False)]
        try:
            for m in checkpointed:
                m.gradient_checkpointing = False
            with self._passthrough(), torch.inference_mode(False), torch.no_grad():
                yield
        finally:
            for m in checkpointed:
                m.gradient_checkpointing = True

    @contextmanager
    def _passthrough(self) -> Iterator[None]:
        """While the original method runs, nested get_*_features calls go straight to the originals."""
        self._busy = True
        try:
            yield
        finally:
            self._busy = False

    def _assemble(self, modality: str, entries: list[_Entry]):
        """The output the model's forward expects, in the format the original returned."""
        device = _param_device(self.inner.visual)
        entries = [e if e.embeds.device == device else e.to(device) for e in entries]
        cls = self._out_cls.get(modality) or next(iter(self._out_cls.values()))
        fields: dict[str, Any] = {"pooler_output": tuple(e.embeds for e in entries)}
        if entries and entries[0].deepstack:
            layers = zip(*(e.deepstack for e in entries), strict=True)
            join = tuple if self._split_deepstack else (lambda items: torch.cat(list(items)))
            fields["deepstack_features"] = [join(layer) for layer in layers]
        return cls(**fields)


# -------------------------------------------------------------------------------------------- helpers


def _trainable_message(names: list[str]) -> str:
    return (
        f"VisionFeatureCache needs a frozen vision tower, but {len(names)} vision parameters require "
        f"grad (e.g. {names[0]}): cached features carry no gradient. Freeze the tower "
        "(ThinkThenScore.from_base(..., freeze_vision=True), or LoRA without lora_vision) or drop the cache."
    )


def _has_batch_tensors(kwargs: dict) -> bool:
    """Precomputed tensor kwargs (e.g. `video_cu_seqlens`) describe the whole batch: no per-item reuse."""
    return any(isinstance(v, torch.Tensor) and k not in _TEXT_VARLEN for k, v in kwargs.items())


def _digest(rows: torch.Tensor) -> bytes:
    """blake2b over the item's raw bytes, as a two-level tree of 4 MiB chunks hashed on threads.

    hashlib releases the GIL on large buffers, so a 16-frame 448x448 video (38 MB of float32
    patches) hashes in parallel instead of ~40 ms on one core.
    """
    # Raw bytes whatever the dtype (bf16 has no NumPy type): view as uint8 first.
    data = memoryview(rows.contiguous().view(torch.uint8).numpy().reshape(-1)) if rows.numel() else b""
    if len(data) <= _CHUNK:
        return hashlib.blake2b(data, digest_size=16).digest()
    chunks = [data[i : i + _CHUNK] for i in range(0, len(data), _CHUNK)]
    leaves = _hash_pool().map(lambda c: hashlib.blake2b(c, digest_size=16).digest(), chunks)
    return hashlib.blake2b(b"".join(leaves), digest_size=16, person=b"cot-rm-tree").digest()


@lru_cache(maxsize=1)
def _hash_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1), thread_name_prefix="vision-cache-hash")


def _offsets(sizes: list[int]) -> list[int]:
    bounds = [0]
    for n in sizes:
        bounds.append(bounds[-1] + n)
    return bounds


def _per_item_layers(out, sizes: list[int]) -> list[tuple[torch.Tensor, ...]] | None:
    """Qwen3-VL deepstack features as [layer][item] detached tensors (None for Qwen2.5-VL)."""
    features = getattr(out, "deepstack_features", None)
    if not features:
        return None
    layers = []
    for feat in features:
        items = tuple(feat) if isinstance(feat, tuple | list) else torch.split(feat, sizes)
        layers.append(tuple(t.detach() for t in items))
    return layers


def _own(t: torch.Tensor, device: torch.device | None) -> torch.Tensor:
    t = t.to(device) if device is not None else t
    # torch.split gives views of the whole batch's output: keeping one would keep (and under-count)
    # the whole batch's memory, so views are copied out.
    return t.clone() if t.untyped_storage().nbytes() > t.numel() * t.element_size() else t


def _param_device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device
