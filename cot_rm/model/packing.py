"""Padding-free (packed) Qwen-VL batches: every sequence of a padded batch laid end to end in one row.

A padded SFT batch spends compute on pad tokens: with rationale dropout a head-only sample (video +
prompt) sits beside a full critique with tool images, and the short rows are padded to the long one.
Packing drops the pads:

    packed = pack_batch(batch, model)             # the collator's padded batch -> one row of N real tokens
    out = packed_forward(model, packed)           # out.rewards [B, D] (one per sequence), out.logits [1, N, V]
    lm = cot_rm.train.common.lm_loss(out.logits, packed["labels"])

How the sequences stay apart, with no attention mask:
- `position_ids` is [4, 1, N]: row 0 the text positions, restarting at 0 at each sequence; rows 1-3 each
  sequence's own 3-D mrope positions (the model's `get_rope_index` on the padded batch, pads dropped).
  transformers' Qwen2.5-VL / Qwen3-VL text models read row 0 as the packed-sequence layout: with
  `attention_mask=None`, `create_causal_mask` finds the boundaries where the text position does not step
  by 1 and builds a block-diagonal causal mask (sdpa, eager), or flash-attention's varlen kernel uses them
  (`flash_attention_2`, on a GPU).
- labels: the first token of each sequence is set to -100, so no sequence's last token is trained to
  predict the next sequence's first one (it is never an assistant token anyway).
- the head: `reward_index` [B] holds each sequence's `<|reward|>` position in the packed row.
- vision tensors are untouched: the processor already lists the videos / images in row order, which is
  the order of their placeholders in the packed row (and the vision-feature cache's key hints stay valid).

With sdpa the block-diagonal mask is dense ([N, N] booleans, attention over all N keys with the others
masked): packing saves the pads in every linear layer but attention scales as N^2 instead of sum(L_i^2).
`varlen_sdpa` ("cot_rm_varlen_sdpa", `use_varlen_sdpa(model)`) runs sdpa per sequence instead, so the
attention cost is the padded batch's without its pads; a GPU would use `flash_attention_2` the same way.
bench/sft_packing.py measures the three (bench/RESULTS.md): only the varlen attention makes packing pay.

In a trainer: `use_varlen_sdpa(model)` once (sdpa models), then per step
`out, labels = sft_forward(model, inputs, labels, packing=True, unwrapped=...)` and the usual losses on
`out.logits` / `labels` and `out.rewards` (one row per sequence, in batch order: the pair indices hold).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

from cot_rm.model.modeling import RewardOutput, ThinkThenScore, reward_positions

IGNORE = -100
# Keys the packer reshapes ([B, T] -> [1, N]); every other key (vision tensors, head targets, key hints)
# passes through unchanged.
TOKEN_KEYS = ("input_ids", "labels", "mm_token_type_ids")
VARLEN_SDPA = "cot_rm_varlen_sdpa"


def pack_batch(batch: dict[str, Any], model, rope_index=None) -> dict[str, Any]:
    """A padded batch (`SFTCollator` output) -> the same sequences packed into one row.

    Adds `position_ids` [4, 1, N], `reward_index` [B] (when `model` is a ThinkThenScore: pass the unwrapped
    model, not a DDP / DeepSpeed wrapper), `seq_lengths` [B]; drops `attention_mask`.
    `rope_index`: the inner model's `get_rope_index` (taken from `model`, a ThinkThenScore or HF model).
    """
    ids, mask = batch["input_ids"], batch["attention_mask"].bool()
    rope_index = rope_index or _inner(model).get_rope_index
    vision = {k: batch[k] for k in ("image_grid_thw", "video_grid_thw", "second_per_grid_ts") if k in batch}
    if "second_per_grid_ts" in vision and "video_grid_thw" not in vision:
        vision.pop("second_per_grid_ts")
    if vision.get("image_grid_thw") is None and vision.get("video_grid_thw") is None:
        mrope = (mask.long().cumsum(-1) - 1).clamp(min=0).unsqueeze(0).expand(3, -1, -1)  # text only: 1-D
    else:
        mrope, _ = rope_index(ids, mm_token_type_ids=batch["mm_token_type_ids"], attention_mask=mask.long(),
                              **vision)  # fmt: skip
    lengths = mask.sum(-1)  # [B]
    starts = torch.cumsum(lengths, 0) - lengths  # [B] each sequence's offset in the packed row
    text = torch.cat([torch.arange(n) for n in lengths.tolist()]).to(ids.device)  # [N], one host sync
    packed = {k: v for k, v in batch.items() if k not in (*TOKEN_KEYS, "attention_mask")}
    for key in TOKEN_KEYS:
        if key in batch:
            packed[key] = batch[key][mask].unsqueeze(0)  # row-major: sequence after sequence
    if "labels" in packed:
        packed["labels"][0, starts] = IGNORE
    packed["position_ids"] = torch.cat([text.unsqueeze(0), mrope[:, mask].to(text)], 0).unsqueeze(1)
    token_id = model.reward_token_id if isinstance(model, ThinkThenScore) else None
    if token_id is not None:
        pos = reward_positions(ids, token_id, mask)  # column of the last reward token per row
        before = mask.long().cumsum(-1).gather(1, pos.unsqueeze(1)).squeeze(1) - 1  # real tokens before it
        packed["reward_index"] = starts + before
    packed["seq_lengths"] = lengths
    return packed


def model_inputs(packed: dict[str, Any]) -> dict[str, Any]:
    """The forward kwargs of a packed batch for `ThinkThenScore` (or a DDP / DeepSpeed wrapper of it):
    no attention mask (the text positions carry the boundaries), `reward_index` for the head."""
    inputs = {k: packed[k] for k in MODEL_KEYS if k in packed}
    return {**inputs, "attention_mask": None, "reward_index": packed["reward_index"]}


def packed_forward(model, packed: dict[str, Any], **kwargs: Any) -> RewardOutput:
    """`ThinkThenScore.forward` on a packed batch: rewards [B, D] at each sequence's `<|reward|>`, logits
    [1, N, V] over the row (LM loss: `cot_rm.train.common.lm_loss(out.logits, packed["labels"])`). `kwargs`: the
    forward's own (return_logits, detach_head_input, ...)."""
    return model(**model_inputs(packed), **kwargs)


def sft_forward(model, inputs: dict[str, Any], labels: torch.Tensor, *, packing: bool, unwrapped=None):
    """The SFT step's forward, padded or packed: (outputs with rewards [B, D] and logits, the labels aligned with
    those logits) for `cot_rm.train.common.lm_loss`. `inputs`: the collator's batch without labels, head targets and key
    hints; `unwrapped`: the ThinkThenScore under `model` when `model` is a DDP / DeepSpeed wrapper."""
    if not packing:
        return model(**inputs, return_logits=True), labels
    packed = pack_batch({**inputs, "labels": labels}, unwrapped if unwrapped is not None else model)
    return packed_forward(model, packed, return_logits=True), packed["labels"]


MODEL_KEYS = ("input_ids", "position_ids", "mm_token_type_ids", "pixel_values", "pixel_values_videos",
              "image_grid_thw", "video_grid_thw", "second_per_grid_ts")  # fmt: skip


def _inner(model):
    """The HF `...Model` (owner of `get_rope_index`) under ThinkThenScore / PEFT / ...ForConditionalGeneration."""
    m = model.base_vlm if isinstance(model, ThinkThenScore) else model
    m = m.get_base_model() if hasattr(m, "get_base_model") else m  # a PeftModel, not the HF model inside
    return getattr(m, "model", m)


# ----------------------------------------------------------------------------- per-sequence sdpa


def varlen_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """An attention function for packed rows: causal sdpa on each sequence's block alone.

    query/key/value [1, heads, N, d]; the sequence boundaries come from the text positions (restarts at
    0) that the text model passes as `position_ids`. Unpacked inputs (padding mask, KV cache, batch > 1)
    go to transformers' own sdpa, so the same model still generates.
    """
    position_ids = kwargs.get("position_ids")
    if (
        attention_mask is not None
        or position_ids is None
        or query.shape[0] != 1
        or key.shape[2] != query.shape[2]
    ):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)  # fmt: skip
    starts = (position_ids[0] == 0).nonzero().flatten().tolist()
    if not starts or starts[0] != 0:
        raise ValueError("varlen_sdpa: a packed row must start at text position 0")
    lengths = [b - a for a, b in zip(starts, starts[1:] + [query.shape[2]])]
    groups = query.shape[1] // key.shape[1]  # grouped-query attention: repeat the kv heads
    key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    # split, not slices: a slice's backward writes into a zero tensor of the whole row, once per sequence
    # (quadratic in the number of sequences); split's backward is one cat.
    outs = [
        F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout if module.training else 0.0,
                                       scale=scaling)
        for q, k, v in zip(*(t.split(lengths, 2) for t in (query, key, value)), strict=True)
    ]  # fmt: skip
    return torch.cat(outs, 2).transpose(1, 2).contiguous(), None  # [1, N, heads, d], as sdpa returns


def _varlen_mask(batch_size, q_length, kv_length, *args, attention_mask=None, **kwargs):
    """No mask for one unpadded row without a cache (varlen_sdpa cuts it at the sequence starts
    itself); transformers' sdpa mask otherwise."""
    if attention_mask is None and batch_size == 1 and q_length == kv_length and not kwargs.get("q_offset"):
        return None
    return sdpa_mask(batch_size, q_length, kv_length, *args, attention_mask=attention_mask, **kwargs)


AttentionInterface.register(VARLEN_SDPA, varlen_sdpa)
AttentionMaskInterface.register(VARLEN_SDPA, _varlen_mask)


def use_varlen_sdpa(model, enable: bool = True) -> None:
    """Switch the language model's attention to `varlen_sdpa` (or back to sdpa); the tower keeps its own."""
    text = _inner(model).language_model
    text.config._attn_implementation = VARLEN_SDPA if enable else "sdpa"
