"""The local judge's fast path: each round and the scoring pass run only what is new.

`cot_rm.judge.local.Judge` renders each conversation as it always does; this module turns the rendered
texts into the model's input without redoing what an earlier round, draw or video already did:

- the tokens come from the text and each item's stored expansion (`cot_rm.judge.media`), so a video is
  processed, and seen by the vision tower, once for all the rounds, draws and requests that show it;
- the keys and values of the longest prefix already encoded (the conversation's previous round and the
  turn it generated, else a stored prompt: the system prompt every video shares, the first turn an
  earlier draw of this video had) are reused, and only the rest of the input is run
  (`cot_rm.judge.prefix`, where the layout and why it is exact are explained);
- the 3-D positions are the model's own `get_rope_index` on the whole conversation, passed in.

Generation goes through the model's own `generate` (the same sampling, logits processors and stopping
as the old path), continuing from the reused cache. The old path stays (`Judge(reuse=False)`): the
reference the tests and `bench/judge_speed.py` compare this one with.
"""

from __future__ import annotations

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
class Batch:
    """The model's input for one batched step: the layout, its 3-D positions [4, B, P + S], the new part's
    pre-encoded media, and each row's token count (the prompt's length)."""

    layout: kv.Layout
    positions: torch.Tensor
    encoder_outputs: dict | None
    lengths: list[int]
    marks: list[kv.Marks]  # each row's media items: (first token, content key)


class Reuse:
    """What the fast path keeps for one model: the media store, the shared prefixes, and counters."""

    def __init__(self, model, media_bytes: int = 512 << 20, prefix_bytes: int = 512 << 20):
        self.model, self.processor = model, model.processor
        self.inner = inner_vision_model(model)
        self.media = MediaStore(model, media_bytes)
        self.prefixes = kv.PrefixStore(prefix_bytes)
        self.kv = kv.supported(model.base_vlm.config)  # else: media reuse only, every token run
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
            batch = self._batch(convs, texts, media, keep=[1] * len(convs))
            lay = batch.layout
            out = self.model.vlm.generate(input_ids=lay.ids, attention_mask=lay.mask, position_ids=batch.positions,
                                          past_key_values=lay.cache, mm_encoder_outputs=batch.encoder_outputs,
                                          return_dict_in_generate=True, **how)  # fmt: skip
            new = out.sequences[:, lay.ids.shape[1] :]
            if self.kv:
                self._keep(convs, out, batch)
            return new

    @torch.inference_mode()
    def hidden(self, convs: Sequence, texts: Sequence[str], media: Sequence[Sequence[tuple]],
               keep: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
        """The final norm's output [B, S, H] on each conversation's new part, with its ids and mask [B, S];
        the last `keep[b]` tokens of row b are always in it (the positions the caller reads)."""
        with self._lock:
            batch = self._batch(convs, texts, media, keep)
            lay = batch.layout
            out = self.model.base_vlm.model(input_ids=lay.new_ids, attention_mask=lay.mask,
                                            position_ids=batch.positions[..., lay.reused :],
                                            past_key_values=lay.cache, use_cache=lay.cache is not None,
                                            mm_encoder_outputs=batch.encoder_outputs)  # fmt: skip
            for conv in convs:
                conv.prefix = None  # the judgment is over: its keys and values are not needed again
            return out.last_hidden_state, lay.new_ids, lay.mask[:, lay.reused :]

    # ------------------------------------------------------------------------------------------ batch

    def _batch(self, convs, texts, media, keep: Sequence[int]) -> Batch:
        items = self._media(media)
        rows, fresh, marks = [], [], []
        for conv, (ids, spans), row, given, last in zip(convs, tokens(self.processor, texts, items), items, media, keep, strict=True):  # fmt: skip
            marks.append(tuple((start, key) for (start, _), (_, key, _) in zip(spans, given, strict=True)))
            found, n = self._prefix(conv, torch.tensor(ids), marks[-1])
            cut = kv.cut_at(n, spans, len(ids) - last) if found is not None else 0
            rows.append((ids, found, cut))
            fresh.append([m for m, (start, _) in zip(row, spans, strict=True) if start >= cut])
            self.counts["tokens_reused"] += cut
            self.counts["tokens_run"] += len(ids) - cut
        pad = self.processor.tokenizer.pad_token_id
        lay = kv.layout(rows, pad, self.model.base_vlm.config, next(self.model.parameters()).device)
        lengths = [len(r[0]) for r in rows]
        return Batch(lay, self._positions(lay, items), self._encoder_outputs(fresh), lengths, marks)

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

    def _prefix(self, conv, ids: torch.Tensor, marks: kv.Marks) -> tuple[kv.Prefix | None, int]:
        """The conversation's own keys and values when it has some, else the best stored prompt."""
        if not self.kv:
            return None, 0
        if conv.prefix is not None:
            return conv.prefix, kv.shared(conv.prefix, ids, marks)
        return self.prefixes.best(ids, marks)

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

    def _keep(self, convs, out, batch: Batch) -> None:
        """Each row's keys and values to continue from; a first turn's prompt goes to the shared store."""
        lay = batch.layout
        generated = out.sequences.shape[1] - lay.ids.shape[1]
        mask = torch.cat([lay.mask, lay.mask.new_ones(lay.mask.shape[0], generated)], 1)
        rows = kv.rows_of(out.past_key_values, out.sequences, mask, batch.marks)
        for conv, row, length in zip(convs, rows, batch.lengths, strict=True):
            if conv.prefix is None:
                self.prefixes.add(row.head(length))
            conv.prefix = row
