"""The rollout server's vLLM: vLLM's OpenAI server, with sparse placeholders on the tokens-in route.

Runs in the vLLM interpreter (its own venv: no cot-rm packages there), as a file, never imported by
cot-rm; `cot_rm.train.grpo.vllm_server.command` starts it as

    python -c "$LAUNCH" cot_rm/train/grpo/vllm_api_server.py [vLLM server arguments]

(`LAUNCH` runs the file with `runpy`: `python FILE` would put this folder, which holds `vllm.py`, first
on sys.path, and that file would shadow vLLM itself).

Why it exists. vLLM 0.32's `/inference/v1/generate` rebuilds each media item's placeholder from its
offset and length alone (vllm/entrypoints/scale_out/token_in_token_out/serving.py:
`PlaceholderRange(offset=p.offset, length=p.length)`; protocol.py's `PlaceholderRangeInfo` says in a
TODO that the `is_embed` mask is missing), so every token of the range is given an embedding. A
Qwen3-VL video's range interleaves text, each frame's `<t seconds><|vision_start|>` and
`<|vision_end|>`, with its `<|video_pad|>` runs: the engine dies on the first such request
("Attempted to assign 30 = 30 multimodal tokens to 46 placeholders"). Here a range whose tokens are
not all its modality's placeholder token gets the mask vLLM's own processor gives it when it renders
the media itself (`PromptUpdateDetails.select_token_id`: the positions of that token). Dense ranges
(Qwen2.5-VL, every image) are passed on unchanged. `GET /cot_rm/sparse_placeholders` answers, so the
turn generator can refuse a plain vLLM server for Qwen3-VL instead of killing its engine.

The patch lives in this process, vLLM's one API server (its default): the engine core gets the masks
inside the requests. With `--api-server-count` above 1, vLLM spawns its frontends afresh, without it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from vllm.entrypoints.launchers.api_server import entry
from vllm.entrypoints.scale_out.token_in_token_out import serving
from vllm.multimodal.inputs import PlaceholderRange

ROUTE = "/cot_rm/sparse_placeholders"  # cot_rm.train.grpo.vllm.SPARSE_ROUTE
CONFIG_KEYS = {"image": "image_token_id", "video": "video_token_id"}


def placeholder_tokens(argv: list[str]) -> dict[str, int]:
    """{modality: its placeholder token id} from the served model's config.json (--model, a folder)."""
    if "--model" not in argv:
        return {}
    config_path = Path(argv[argv.index("--model") + 1]) / "config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    return {m: int(config[k]) for m, k in CONFIG_KEYS.items() if k in config}


def with_embed_masks(ids: list[int], ranges: dict, tokens: dict[str, int]) -> dict:
    """`ranges` ({modality: [PlaceholderRange]}) with an `is_embed` mask on each sparse range."""
    out = {}
    for modality, items in ranges.items():
        token, masked = tokens.get(modality), []
        for r in items:
            mask = torch.tensor([t == token for t in ids[r.offset : r.offset + r.length]])
            dense = token is None or r.is_embed is not None or bool(mask.all())
            masked.append(r if dense else PlaceholderRange(offset=r.offset, length=r.length, is_embed=mask))
        out[modality] = masked
    return out


def patch(tokens: dict[str, int]) -> None:
    """Masks on the features route's placeholders; the route that says this server has them."""
    plain_input, plain_app = serving.mm_input, entry.build_app

    def mm_input(prompt_token_ids, mm_kwargs, mm_hashes, mm_placeholders, **kwargs):
        masked = with_embed_masks(list(prompt_token_ids), mm_placeholders, tokens)
        return plain_input(prompt_token_ids, mm_kwargs, mm_hashes, masked, **kwargs)

    def build_app(*args, **kwargs):
        app = plain_app(*args, **kwargs)
        app.add_api_route(ROUTE, lambda: {"sparse_placeholders": True, "tokens": tokens}, methods=["GET"])
        return app

    serving.mm_input, entry.build_app = mm_input, build_app


if __name__ == "__main__":
    patch(placeholder_tokens(sys.argv))
    sys.exit(entry.main())
