"""Each video and image the judge shows its model, processed and seen by the vision tower once.

The judge's old path hands the processor the whole conversation each round, so a video's frames are
normalised into patches and run through the tower again every tool round, for the scoring pass and for
every sampled draw. Here each item (the first turn's video, a frame the tool returned) is processed once
and kept as what the language model needs of it:

- `ids`: the tokens its placeholder grows into (`<|video_pad|>` x n, and Qwen3-VL's per-frame
  `<t seconds><|vision_start|>...<|vision_end|>`), taken from the processor's own output for the item,
  so a conversation's tokens are the processor's (`tokens` splices them between the text's tokens: the
  placeholders are special tokens, so text on either side tokenises alone exactly as in the whole);
- `grid` (and Qwen2.5-VL's `seconds` per temporal patch) for the 3-D positions;
- the tower's output: merged embeddings and Qwen3-VL's deepstack features, handed to the model as
  `mm_encoder_outputs` (transformers' pre-encoded input), so the tower never runs on it again.

Keyed by content (a hash of the uint8 pixels, plus the video metadata that the processor reads), so the
same frames from a file or from memory, in another draw or another request, are the same entry. The pixel
patches themselves are not kept: once the tower has seen them they are not needed again.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from cot_rm.model.processing import encode
from cot_rm.model.vision_cache import inner_vision_model

VIDEO, IMAGE = "video", "image"


@dataclass
class Media:
    """One item as the language model takes it (see the module docstring)."""

    kind: str
    ids: list[int]
    grid: tuple[int, int, int]
    seconds: float | None
    embeds: torch.Tensor  # [tokens, hidden]
    deepstack: tuple[torch.Tensor, ...] = ()  # Qwen3-VL: one [tokens, hidden] per deepstack layer

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.embeds, *self.deepstack))


def video_key(video) -> tuple:
    """A `cot_rm.media.video.Video`'s identity for the store: its sampled pixels and the metadata the
    processor reads (fps and frame indices set Qwen2.5-VL's temporal spacing and Qwen3-VL's timestamps)."""
    frames = video.frames.numpy() if isinstance(video.frames, torch.Tensor) else np.asarray(video.frames)
    meta = json.dumps(video.processor_metadata(), sort_keys=True)
    return (VIDEO, _digest(frames), tuple(frames.shape), meta)


def image_key(image: Image.Image) -> tuple:
    """A tool frame's identity for the store: its pixels, size and mode."""
    return (IMAGE, _digest(np.asarray(image)), image.size, image.mode)


def _digest(pixels: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(pixels).data, digest_size=16).digest()


class MediaStore:
    """LRU store of `Media` for one model, bounded by the bytes of the tower outputs it holds."""

    def __init__(self, model, max_bytes: int = 512 << 20):
        self.model, self.processor = model, model.processor
        self.inner = inner_vision_model(model)
        self.max_bytes = max_bytes
        self._store: OrderedDict[tuple, Media] = OrderedDict()
        self._bytes = 0
        self._out_cls: dict[str, type] = {}  # the tower's output class per modality, seen on a real call
        self.counts = {"hits": 0, "misses": 0, "tower_calls": 0}

    def clear(self) -> None:
        self._store.clear()
        self._bytes = 0

    def get(self, kind: str, items: Sequence[tuple[tuple, Any]]) -> list[Media]:
        """`Media` for each (key, item) of one kind, in order, the missing ones computed (each alone)."""
        found = {key: self._store.get(key) for key, _ in items}
        missing = {key: item for key, item in items if found[key] is None}
        self.counts["misses"] += len(missing)
        self.counts["hits"] += len(items) - len(missing)
        if missing:
            for key, media in zip(missing, self._compute(kind, list(missing.values())), strict=True):
                found[key] = media
                self._put(key, media)
        for key, _ in items:
            if key in self._store:
                self._store.move_to_end(key)
        return [found[key] for key, _ in items]

    def encoder_outputs(self, kind: str, media: Sequence[Media]):
        """What the model's forward takes as `mm_encoder_outputs[kind]` for these items, in order."""
        cls = self._out_cls[kind]
        fields: dict[str, Any] = {"pooler_output": tuple(m.embeds for m in media)}
        if media and media[0].deepstack:
            fields["deepstack_features"] = [tuple(layer) for layer in zip(*(m.deepstack for m in media))]
        return cls(**fields)

    def _put(self, key: tuple, media: Media) -> None:
        if media.nbytes > self.max_bytes:
            return  # bigger than the whole budget: used this once, never kept
        self._store[key] = media
        self._bytes += media.nbytes
        while self._bytes > self.max_bytes:
            _, old = self._store.popitem(last=False)
            self._bytes -= old.nbytes

    def _compute(self, kind: str, items: list) -> list[Media]:
        """The items through the processor together (its work is per pixel: the same patches as alone),
        then through the tower one at a time: its features are then the same bits whichever other items
        are judged beside it, so a judgment does not depend on what the judge saw before."""
        token = self.processor.video_token if kind == VIDEO else self.processor.image_token
        # The processor on each placeholder alone: the item's own expansion and pixel patches.
        batch = encode(
            self.processor, [token] * len(items), **{f"{kind}s": list(items)}, padding_side="right"
        )
        grids = batch[f"{kind}_grid_thw"]
        rows = torch.split(
            batch["pixel_values_videos" if kind == VIDEO else "pixel_values"], grids.prod(-1).tolist()
        )
        seconds = batch.get("second_per_grid_ts") if kind == VIDEO else None
        out = []
        for i, (pixels, grid) in enumerate(zip(rows, grids, strict=True)):
            ids = batch["input_ids"][i][batch["attention_mask"][i].bool()].tolist()
            embeds, deepstack = self._tower(kind, pixels, grid[None])
            second = None if seconds is None else float(seconds[i])
            out.append(Media(kind, ids, tuple(int(n) for n in grid.tolist()), second, embeds, deepstack))
        return out

    def _tower(self, kind: str, pixels: torch.Tensor, grid: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        """One item's merged embeddings and deepstack features (none for Qwen2.5-VL)."""
        device = next(self.inner.visual.parameters()).device
        method = self.inner.get_video_features if kind == VIDEO else self.inner.get_image_features
        out = method(pixels.to(device), grid.to(device), return_dict=True)
        self.counts["tower_calls"] += 1
        self._out_cls[kind] = type(out)
        (embeds,) = out.pooler_output
        layers = getattr(out, "deepstack_features", None) or []
        return embeds, tuple(f[0] if isinstance(f, tuple | list) else f for f in layers)


# --------------------------------------------------------------------------------------------- tokens


def placeholders(processor) -> re.Pattern:
    """The chat template's video and image placeholders, in the order they appear in a rendered text."""
    return re.compile(f"({re.escape(processor.video_token)}|{re.escape(processor.image_token)})")


def tokens(processor, texts: Sequence[str], media: Sequence[Sequence[Media]]) -> list[tuple[list[int], list[tuple[int, int]]]]:  # fmt: skip
    """Per rendered text, its token ids with each placeholder replaced by its item's `ids` (the items in
    order of appearance), and the [start, end) span of each item among them."""
    kinds = {processor.video_token: VIDEO, processor.image_token: IMAGE}
    split = [placeholders(processor).split(text) for text in texts]  # text, placeholder, text, ...
    flat = [p for parts in split for p in parts[::2]]
    encoded = iter(processor.tokenizer(flat, add_special_tokens=False)["input_ids"])
    out = []
    for parts, items in zip(split, media, strict=True):
        if [kinds[p] for p in parts[1::2]] != [m.kind for m in items]:
            raise ValueError(f"a rendered conversation's placeholders {parts[1::2]} do not match its "
                             f"media {[m.kind for m in items]}")  # fmt: skip
        ids, spans = list(next(encoded)), []
        for item in items:
            spans.append((len(ids), len(ids) + len(item.ids)))
            ids += item.ids
            ids += next(encoded)
        out.append((ids, spans))
    return out
