"""`answer_probs`: how sure the model was of each score its `<answer>` states.

The final turn writes `<answer>{"visual_quality": 4, ...}</answer>` (`cot_rm.protocol`). Each score is
one digit token (Qwen's tokenizers split digits one by one), so the logits that predicted that token, in
the scoring pass that already runs the conversation teacher-forced for the head, hold the model's
distribution over the scores it could have written there. For each dimension:

    probs[k]  = softmax over the tokens "1".."5" (the scale's integer scores) of those logits
    expected  = sum_k k * probs[k]

so `probs` sums to 1 (the model's choice among the scale's scores at that point), and its argmax is the
digit the greedy turn wrote, which is the parsed score (the scoring pass re-reads the same tokens the
generation produced; float noise between the two passes could only flip a near-tie).

A dimension whose score is not written as one digit of the scale (`3.5`, `10`) gets `null`, and so does
every dimension when a score of the scale is not a single token, or the answer did not parse.
"""

from __future__ import annotations

import math
import re

import torch

from cot_rm.protocol import JudgeSpec

_ONE_DIGIT = re.compile(r"\d(?:\.0+)?")  # a score written as one digit: 4 or 4.0 (argmax == parsed score)


def score_tokens(tokenizer, spec: JudgeSpec) -> dict[int, int] | None:
    """{score: token id} for the scale's integer scores, or None when one is not a single token."""
    scores = range(math.ceil(spec.score_min), math.floor(spec.score_max) + 1)
    out = {}
    for k in scores:
        ids = tokenizer.encode(str(k), add_special_tokens=False)
        if not 0 <= k <= 9 or len(ids) != 1:
            return None
        out[k] = ids[0]
    return out if len(out) >= 2 else None


def digit_offsets(text: str, spec: JudgeSpec) -> dict[str, int]:
    """Character offset in `text` of each dimension's score digit in the last `<answer>` block, for the
    dimensions written as one digit (the others are left out)."""
    start, end = text.rfind("<answer>"), text.rfind("</answer>")
    if start < 0 or end < start:
        return {}
    body_at = start + len("<answer>")
    body = text[body_at:end]
    out = {}
    for dim in spec.dimensions:
        hits = list(re.finditer(rf'"{re.escape(dim)}"\s*:\s*(-?[\d.eE+-]+)', body))
        if len(hits) == 1 and _ONE_DIGIT.fullmatch(hits[0].group(1)):
            out[dim] = body_at + hits[0].start(1)
    return out


def positions_from_end(tokenizer, text: str, offsets: dict[str, int]) -> dict[str, tuple[int, int]]:
    """{dimension: (position counted back from the end of `text`'s tokens, token id)} of each digit.

    Counted from the end because the encoded row differs from `text`'s own tokens only before the
    answer (each `<|video_pad|>` / `<|image_pad|>` grows into many tokens) and by left padding.
    """
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except NotImplementedError:  # a slow (Python) tokenizer has no offsets: nothing is read, never guessed
        return {}
    ids, spans = enc["input_ids"], enc["offset_mapping"]
    at = {start: k for k, (start, stop) in enumerate(spans) if stop == start + 1}
    return {dim: (len(ids) - at[off], ids[at[off]]) for dim, off in offsets.items() if off in at}


def read(
    hidden: torch.Tensor,
    input_ids: torch.Tensor,
    lm_head,
    wanted: dict[str, tuple[int, int]],
    tokens: dict[int, int],
    spec: JudgeSpec,
) -> dict[str, dict | None]:
    """One row's answer_probs from its final hidden states [T, H]: the logits at the position before
    each digit (the one that predicted it), restricted to the scale's score tokens. A digit the row
    does not hold where it is expected (the two tokenisations disagree) gets None rather than a guess."""
    out: dict[str, dict | None] = dict.fromkeys(spec.dimensions)
    length = input_ids.shape[0]
    for dim, (back, token) in wanted.items():
        pos = length - back
        if pos < 1 or int(input_ids[pos]) != token:
            continue
        logits = lm_head(hidden[pos - 1]).double()[list(tokens.values())]
        probs = torch.softmax(logits, dim=-1).tolist()
        out[dim] = {
            "probs": {str(k): p for k, p in zip(tokens, probs, strict=True)},
            "expected": sum(k * p for k, p in zip(tokens, probs, strict=True)),
        }
    return out
