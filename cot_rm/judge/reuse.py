"""The local judge's fast path: each round and the scoring pass run only what is new.

`cot_rm.judge.local.Judge` renders each conversation as it always does; this module turns the rendered
texts into the model's input without redoing what was done before:

- the tokens come from the text and each item's stored expansion (`cot_rm.judge.media`), so a video is
  processed, and seen by the vision tower, once for all the rounds, draws and requests that show it;
- a conversation continues from its own keys and values: the previous round's input and the turn it
  generated (`cot_rm.judge.prefix`, where the layout and why it is exact are explained);
- a first turn starts from stored prompt prefixes (the system prompt all videos share, computed once;
  the whole prompt of a video an earlier draw or request judged), computed in canonical chunks so that
  a judgment never depends on what the judge did before (`prefix.PrefixStore`);
- the 3-D positions are the model's own `get_rope_index` on the whole conversation, passed in.

Generation goes through the model's own `generate` (the same sampling, logits processors and stopping
as the old path), continuing from the reused cache. The old path stays (`Judge(reuse=False)`): the
reference the tests and `bench/judge_speed.py` compare this one with.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from cot_rm.judge import prefix as kv
from cot_rm.judge.media import IMAGE, VIDEO, Media, MediaStore, tokens
from cot_rm.model.processing import mm_token_type_ids
from cot_rm.model.vision_cache import inner_vision_model


@dataclass
class Row:
    """One conversation's input: its token ids, its media items in order with their [start, end) spans
    and their (start, content key) marks."""

    ids: list[int]
    media: list[Media]
    spans: list[tuple[int, int]]
    marks: kv.Marks


@dataclass
class Batch:
    """The model's input for one batched step: the layout, its 3-D positions [4, B, P + S] and the new
    part's pre-encoded media."""

    layout: kv.Layout
    positions: torch.Tensor
    encoder_outputs: dict | None
    rows: list[Row]


class Reuse:
    """What the fast path keeps for one model: the media store, the shared prefixes, and counters."""

    def __init__(self, model, media_bytes: int = 512 << 20, prefix_bytes: int = 512 << 20):
        self.model, self.processor = model, model.processor
        self.inner = inner_vision_model(model)
        self.config = model.base_vlm.config
        self.media = MediaStore(model, media_bytes)
        self.prefixes = kv.PrefixStore(prefix_bytes)
        self.kv = kv.supported(self.config)  # else: media reuse only, every token run
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()  # the stores are shared by every request this judge serves

    def clear(self) -> None:
        """Forget every stored item and prefix (the counters stay)."""
        self.media.clear()
        self.prefixes.clear()

    @torch.inference_mode()
    def generate(self, convs: Sequence, texts: Sequence[str], media: Sequence[Sequence[tuple]],
                 **how) -> torch.Tensor:  # fmt: skip
        """The new tokens [B, n] of each conversation's next turn (`generate` keyword arguments in `how`);
        each conversation keeps its keys and values (`conv.prefix`) for the next round."""
        with self._lock:
            batch = self._batch(convs, texts, media, keep=[1] * len(convs), first_turn=True)
            lay = batch.layout
            out = self.model.vlm.generate(input_ids=lay.ids, attention_mask=lay.mask, position_ids=batch.positions,
                                          past_key_values=lay.cache, mm_encoder_outputs=batch.encoder_outputs,
                                          return_dict_in_generate=True, **how)  # fmt: skip
            if self.kv:
                generated = out.sequences.shape[1] - lay.ids.shape[1]
                mask = torch.cat([lay.mask, lay.mask.new_ones(len(convs), generated)], 1)
                marks = [row.marks for row in batch.rows]
                for conv, own in zip(
                    convs, kv.rows_of(out.past_key_values, out.sequences, mask, marks), strict=True
                ):
                    conv.prefix = own
            return out.sequences[:, lay.ids.shape[1] :]

    @torch.inference_mode()
    def hidden(self, convs: Sequence, texts: Sequence[str], media: Sequence[Sequence[tuple]],
               keep: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
        """The final norm's output [B, S, H] on each conversation's new part, with its ids and mask [B, S]
        (rows left-padded); the last `keep[b]` tokens of row b are always in it (what the caller reads).

        Conversations with keys and values of their own (judged here) are run together; each one without
        (its turns generated elsewhere, as the vLLM server does) alone, so that its scores do not depend
        on which other judgments happen to finish with it."""
        with self._lock:
            own = [i for i, c in enumerate(convs) if c.prefix is not None]
            groups = ([own] if own else []) + [[i] for i, c in enumerate(convs) if c.prefix is None]
            parts = [
                (g, self._hidden(*([seq[i] for i in g] for seq in (convs, texts, media, keep))))
                for g in groups
            ]
            for conv in convs:
                conv.prefix = None  # the judgment is over: its keys and values are not needed again
            return _stacked(parts, len(convs), self.processor.tokenizer.pad_token_id)

    def _hidden(self, convs, texts, media, keep) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch = self._batch(convs, texts, media, keep, first_turn=False)
        lay = batch.layout
        out = self.model.base_vlm.model(input_ids=lay.new_ids, attention_mask=lay.mask,
                                        position_ids=batch.positions[..., lay.reused :],
                                        past_key_values=lay.cache, use_cache=lay.cache is not None,
                                        mm_encoder_outputs=batch.encoder_outputs)  # fmt: skip
        return out.last_hidden_state, lay.new_ids, lay.mask[:, lay.reused :]

    # ------------------------------------------------------------------------------------------ batch

    def _batch(self, convs, texts, media, keep: Sequence[int], first_turn: bool) -> Batch:
        """`first_turn`: a conversation without keys and values of its own is at its first turn (it
        starts from the whole stored prompt); else (the scoring pass of turns generated elsewhere) only
        the part before its first media item is taken from the store."""
        rows, starts, fresh = self._rows(texts, media), [], []
        for conv, row, last in zip(convs, rows, keep, strict=True):
            found, cut = self._start(conv, row, len(row.ids) - last, first_turn)
            starts.append((row.ids, found, cut))
            fresh.append([m for m, (start, _) in zip(row.media, row.spans, strict=True) if start >= cut])
            self.counts["tokens"] += len(row.ids)  # what the old path runs: the whole input
            self.counts["tokens_reused"] += cut
            self.counts["tokens_run"] += len(row.ids) - cut
            self.counts["media"] += len(row.media)  # what the old path's tower sees
        lay = kv.layout(starts, self.processor.tokenizer.pad_token_id, self.config, self._device)
        return Batch(lay, self._positions(lay, [r.media for r in rows]), self._encoder_outputs(fresh), rows)

    def _rows(self, texts, media: Sequence[Sequence[tuple]]) -> list[Row]:
        items = self._media(media)
        out = []
        for (ids, spans), row, given in zip(tokens(self.processor, texts, items), items, media, strict=True):
            marks = tuple((start, key) for (start, _), (_, key, _) in zip(spans, given, strict=True))
            out.append(Row(ids, row, spans, marks))
        return out

    def _media(self, media: Sequence[Sequence[tuple]]) -> list[list[Media]]:
        """Each conversation's (kind, key, item) list resolved through the store, one call per kind."""
        out: list[list[Media | None]] = [[None] * len(row) for row in media]
        for kind in (VIDEO, IMAGE):
            where = [(b, i) for b, row in enumerate(media) for i, (k, _, _) in enumerate(row) if k == kind]
            if where:
                got = self.media.get(kind, [media[b][i][1:] for b, i in where])
                for (b, i), m in zip(where, got, strict=True):
                    out[b][i] = m
        return out

    def _start(self, conv, row: Row, limit: int, first_turn: bool) -> tuple[kv.Prefix | None, int]:
        """What the row continues from, and how many of its tokens: its own keys and values, else its
        prompt's canonical chunks (`kv.PrefixStore`), taken from the store or computed now, alone."""
        if not self.kv:
            return None, 0
        ids = torch.tensor(row.ids)
        if conv.prefix is not None:
            return conv.prefix, kv.cut_at(kv.shared(conv.prefix, ids, row.marks), row.spans, limit)
        first = row.spans[0][0] if row.spans else 0
        bounds = [b for b in ((first, len(row.ids) - 1) if first_turn else (first,)) if 0 < b <= limit]
        found, cut = self.prefixes.best(ids, row.marks, bounds)
        for end in bounds:
            if end > cut:
                found, cut = self._chunk(row, found, cut, end), end
                self.prefixes.add(found)
        return found, cut

    def _chunk(self, row: Row, start: kv.Prefix | None, cut: int, end: int) -> kv.Prefix:
        """`start`'s first `cut` tokens extended to the row's first `end`, the rest run alone (batch 1)."""
        ids = row.ids[:end]
        media = [m for m, (_, stop) in zip(row.media, row.spans, strict=True) if stop <= end]
        lay = kv.layout([(ids, start, cut)], self.processor.tokenizer.pad_token_id, self.config, self._device)
        fresh = [
            m for m, (begin, stop) in zip(row.media, row.spans, strict=True) if begin >= cut and stop <= end
        ]
        out = self.model.base_vlm.model(input_ids=lay.new_ids, attention_mask=lay.mask,
                                        position_ids=self._positions(lay, [media])[..., cut:],
                                        past_key_values=lay.cache, use_cache=True,
                                        mm_encoder_outputs=self._encoder_outputs([fresh]))  # fmt: skip
        self.counts["tokens_run"] += end - cut
        (made,) = kv.rows_of(
            out.past_key_values, lay.ids, lay.mask, [tuple(m for m in row.marks if m[0] < end)]
        )
        before = tuple(b for b in (start.bounds if start is not None else ()) if b <= cut)
        return dataclasses.replace(made, bounds=(*before, end))

    @property
    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _positions(self, lay: kv.Layout, media: list[list[Media]]) -> torch.Tensor:
        """[4, B, P + S]: the text positions generation keeps (row 0), then the model's 3-D positions."""
        videos = [m for row in media for m in row if m.kind == VIDEO]
        images = [m for row in media for m in row if m.kind == IMAGE]
        device = lay.ids.device
        grid = lambda ms: torch.tensor([m.grid for m in ms], device=device) if ms else None  # noqa: E731
        seconds = [m.seconds for m in videos]
        vision, _ = self.inner.get_rope_index(
            lay.ids,
            mm_token_type_ids=mm_token_type_ids(self.processor, lay.ids),
            image_grid_thw=grid(images),
            video_grid_thw=grid(videos),
            second_per_grid_ts=torch.tensor(seconds) if videos and None not in seconds else None,
            attention_mask=lay.mask,
        )
        text = (lay.mask.cumsum(-1) - 1).masked_fill(lay.mask == 0, 0)
        return torch.cat([text[None], vision], 0)

    def _encoder_outputs(self, fresh: list[list[Media]]) -> dict | None:
        """`mm_encoder_outputs` for the media in the new part, in the order the model fills them."""
        out = {}
        for kind in (VIDEO, IMAGE):
            ms = [m for row in fresh for m in row if m.kind == kind]
            if ms:
                out[kind] = self.media.encoder_outputs(kind, ms)
        return out or None


def _stacked(parts, rows: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The (row indices, (hidden, ids, mask)) of several passes as one left-padded batch in row order."""
    width = max(ids.shape[1] for _, (_, ids, _) in parts)
    hidden_of = parts[0][1][0]
    hidden = hidden_of.new_zeros(rows, width, hidden_of.shape[-1])
    ids = torch.full((rows, width), pad_id, dtype=torch.long, device=hidden.device)
    mask = torch.zeros_like(ids)
    for where, (h, i, m) in parts:
        for k, row in enumerate(where):
            hidden[row, width - h.shape[1] :] = h[k]
            ids[row, width - i.shape[1] :] = i[k]
            mask[row, width - m.shape[1] :] = m[k]
    return hidden, ids, mask
