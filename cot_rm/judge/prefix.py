"""Continuing a conversation from the keys and values of a prefix already computed, exactly.

Each tool round of the old judge path re-encodes the whole conversation: system prompt, video, every
turn so far. A token's keys and values depend only on the tokens up to it (causal attention) and on
its position, and the 3-D (M-RoPE) position of a token depends only on the tokens before it and their
images' grids (each text or vision run starts after the largest position so far: Qwen2.5-VL's rule
in `cot_rm.model.rope`, Qwen3-VL's own `get_rope_index`). So where a new input starts with the same
tokens as something already encoded (the previous round's prompt and the turn it generated; the system
prompt every video shares; the first turn of an earlier draw of the same video), those tokens' keys and
values are the ones already computed, and only the rest is run.

How a batch is laid out (`layout`): each row reuses its own number of tokens `cut`, so the reused part
and the new part are padded separately: columns [0, P) hold each row's reused keys and values, right
aligned (P the largest cut), and columns [P, P + S) each row's new tokens, right aligned too (S the
longest new part). The attention mask is 0 on every padding column, wherever it sits, and the 3-D
positions are computed on the whole row with its padding masked out, as the model's own
`get_rope_index` does, then passed in explicitly: so every real token sees exactly the tokens and
positions it would see in the old path's single left-padded row.

A media item (a video, a tool frame) is never split: a cut that falls inside one moves back to the
item's first token, so the new part holds whole items, whose tower features go in as the model's
pre-encoded `mm_encoder_outputs` (`cot_rm.judge.media`). Two items of one size are the same run of
placeholder tokens, so a prefix also records which item (by content key) starts where, and what is
shared ends at the first item that differs. A conversation's next turn re-renders what the
model wrote (the chat template rewrites a tool call in its own layout), so reuse stops at the first
token that differs, as it does where the memory window turns an older round's images into text.

Exact in arithmetic; in floating point the kernels see other shapes than the old path's one pass over
the whole conversation, so the two agree to float noise (about 1e-6 on the tiny models in float32), as two
batch sizes of the old path do. Only for caches made of plain full-attention layers (`supported`): a
sliding-window layer keeps just its window, which a prefix cannot be cut from.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

Marks = tuple[tuple[int, tuple], ...]  # (first token, content key) of each media item, in order


@dataclass
class Prefix:
    """Token ids [n] (on the CPU), the media items among them, and per layer their keys and values
    [kv_heads, n, head_dim]. `bounds`: the ends of the chunks it was computed in, each alone (a prompt's
    canonical chunks, see `PrefixStore`); empty for a conversation's own keys and values."""

    ids: torch.Tensor
    media: Marks
    keys: tuple[torch.Tensor, ...]
    values: tuple[torch.Tensor, ...]
    bounds: tuple[int, ...] = ()

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))

    def head(self, n: int) -> Prefix:
        """The first n tokens, copied (a view would keep the whole conversation's memory alive)."""
        keys, values = (tuple(t[:, :n].clone() for t in ts) for ts in (self.keys, self.values))
        media, bounds = tuple(m for m in self.media if m[0] < n), tuple(b for b in self.bounds if b <= n)
        return Prefix(self.ids[:n].clone(), media, keys, values, bounds)


def supported(config) -> bool:
    """Whether this model's cache can be cut to a prefix and continued: full-attention layers only."""
    return all(type(layer) is DynamicLayer for layer in DynamicCache(config=config).layers)


def shared(prefix: Prefix, ids: torch.Tensor, media: Marks) -> int:
    """How many leading tokens `prefix` shares with `ids` (whose media items are `media`): the same ids,
    and the same item (by content) wherever an item starts among them."""
    n = min(len(prefix), len(ids))
    differ = (prefix.ids[:n] != ids[:n]).nonzero()
    n = int(differ[0]) if len(differ) else n
    held = set(prefix.media)
    for start, key in media:
        if start >= n:
            break
        if (start, key) not in held:
            return start
    return n


def cut_at(n: int, spans: Sequence[tuple[int, int]], limit: int) -> int:
    """Tokens to reuse of n shared ones: at most `limit`, and never part of a media item's span."""
    n = min(n, limit)
    for start, end in spans:
        if start < n < end:
            return start
    return n


@dataclass
class Layout:
    """A batch in the layout the module docstring describes: ids and mask [B, P + S], the reused keys and
    values (a cache of length P, or None when nothing is reused) and where each row's tokens sit."""

    ids: torch.Tensor
    mask: torch.Tensor
    cache: DynamicCache | None
    reused: int  # P
    new: int  # S

    @property
    def new_ids(self) -> torch.Tensor:
        return self.ids[:, self.reused :]


def layout(rows: Sequence[tuple[list[int], Prefix | None, int]], pad_id: int, config, device) -> Layout:
    """The batch of (token ids, prefix, tokens of it to reuse) rows."""
    reused = max(cut for _, _, cut in rows)
    new = max(len(ids) - cut for ids, _, cut in rows)
    ids = torch.full((len(rows), reused + new), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, (row, _, cut) in enumerate(rows):
        ids[b, reused - cut : reused] = torch.tensor(row[:cut], dtype=torch.long)
        ids[b, reused + new - (len(row) - cut) :] = torch.tensor(row[cut:], dtype=torch.long)
        mask[b, reused - cut : reused] = 1
        mask[b, reused + new - (len(row) - cut) :] = 1
    cache = _cache([(p, cut) for _, p, cut in rows], reused, config, device) if reused else None
    return Layout(ids.to(device), mask.to(device), cache, reused, new)


def _cache(rows: Sequence[tuple[Prefix | None, int]], length: int, config, device) -> DynamicCache:
    """Each row's first `cut` keys and values, right-aligned in `length` columns (zeros before: masked)."""
    like = next(p for p, cut in rows if cut)
    layers = []
    for i, (k0, v0) in enumerate(zip(like.keys, like.values, strict=True)):
        keys = k0.new_zeros(len(rows), k0.shape[0], length, k0.shape[-1])
        values = v0.new_zeros(len(rows), v0.shape[0], length, v0.shape[-1])
        for b, (p, cut) in enumerate(rows):
            if cut:
                keys[b, :, length - cut :] = p.keys[i][:, :cut]
                values[b, :, length - cut :] = p.values[i][:, :cut]
        layers.append((keys.to(device), values.to(device)))
    return DynamicCache(ddp_cache_data=layers, config=config)


def rows_of(
    cache: DynamicCache, ids: torch.Tensor, mask: torch.Tensor, media: Sequence[Marks]
) -> list[Prefix]:
    """Each row's real tokens (mask 1) of a batch `cache` covers, as a `Prefix` of its own (`media`: each
    row's items, by their place among its real tokens)."""
    length = cache.get_seq_length()
    keep = mask[:, :length].bool()
    out = []
    for b in range(ids.shape[0]):
        cols = keep[b].nonzero().flatten()
        keys = tuple(layer.keys[b].index_select(1, cols) for layer in cache.layers)
        values = tuple(layer.values[b].index_select(1, cols) for layer in cache.layers)
        out.append(Prefix(ids[b, :length][keep[b]].cpu(), tuple(media[b]), keys, values))
    return out


class PrefixStore:
    """Prompt prefixes shared across conversations, least recently used first out past `max_bytes`.

    Only prefixes computed in canonical chunks are stored (a prompt's tokens before its first media item,
    alone; then the rest of it but its last token, alone, continuing from the first chunk), and one is
    only ever reused up to a chunk end that both it and the new prompt have. So what a prompt starts
    from is bit for bit what computing it afresh would give: a judgment does not depend on what this
    judge judged before (the same request, the same result; draw s of a seed equals draw 0 of seed + s).
    """

    def __init__(self, max_bytes: int = 512 << 20):
        self.max_bytes = max_bytes
        self._store: OrderedDict[int, Prefix] = OrderedDict()
        self._bytes = 0
        self._next = 0

    def clear(self) -> None:
        self._store.clear()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._store)

    def best(self, ids: torch.Tensor, media: Marks, bounds: Sequence[int]) -> tuple[Prefix | None, int]:
        """The stored prefix to start `ids` (media `media`) from, and how many tokens of it: the largest
        of `bounds` that it shares and ends a chunk of it too (the shortest such prefix)."""
        found, most, at = None, 0, None
        for key, prefix in self._store.items():
            n = shared(prefix, ids, media)
            usable = max((b for b in bounds if b <= n and b in prefix.bounds), default=0)
            if usable > most or (usable and usable == most and len(prefix) < len(found)):
                found, most, at = prefix, usable, key
        if found is not None:
            self._store.move_to_end(at)
        return found, most

    def add(self, prefix: Prefix) -> None:
        if prefix.nbytes > self.max_bytes or not len(prefix):
            return
        for held in self._store.values():  # already held (or a longer one that starts with it)
            if shared(held, prefix.ids, prefix.media) == len(prefix) and set(prefix.bounds) <= set(
                held.bounds
            ):
                return
        self._store[self._next] = prefix
        self._next += 1
        self._bytes += prefix.nbytes
        while self._bytes > self.max_bytes:
            _, old = self._store.popitem(last=False)
            self._bytes -= old.nbytes
