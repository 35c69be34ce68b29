"""The think-then-score reward model: a Qwen-VL judge plus a decoupled regression head.

The VLM writes its critique; the scorer appends the query token `<|reward|>` after the judgment and the
head reads the last-layer hidden state at that token (DeScore's `<Reward>` query token; VideoAlign's
bias-free linear head) to give one score per dimension:

    model = ThinkThenScore.from_base("Qwen/Qwen2.5-VL-7B-Instruct", lora=LoraSettings(r=64))
    out = model(**batch)                 # out.rewards [B, D], out.logits [B, T, V]
    scores = model.score(**batch)        # rewards only: no vocabulary projection
    model.save_pretrained("ckpt")        # adapter or VLM + head.safetensors + processor + cot_rm.json
    model = ThinkThenScore.from_pretrained("ckpt")

One forward pass serves both the LM loss and the head: the inner model's `last_hidden_state` (the
output of the final norm) feeds `lm_head` only when logits are wanted, and the head at one position per
sequence, so no per-layer hidden states are kept.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from tokenizers import AddedToken
from torch import nn
from transformers import AutoModelForImageTextToText, AutoProcessor
from transformers.utils import ModelOutput

from cot_rm.media.video import Sampling
from cot_rm.model import calibration
from cot_rm.model.config import CONFIG_NAME, HEAD_KINDS, REWARD_TOKEN, CotRmConfig  # noqa: F401 (re-exported)
from cot_rm.model.losses import fit_calibration, fit_tie_margin  # noqa: F401 (re-exported: fitted into CotRmConfig)
from cot_rm.model.rope import use_qwen_positions
from cot_rm.protocol import DEFAULT_DIMENSIONS, FAMILIES, JudgeSpec

HEAD_NAME = "head.safetensors"
# LoRA targets as PEFT regexes (full match on module names). The language model's attention + MLP
# projections only: the Qwen2.5-VL vision blocks also have `mlp.gate_proj` & co., so a plain name list
# would silently adapt the vision tower too.
LM_TARGETS = r".*language_model\.layers\.\d+\.(?:self_attn\.[qkvo]_proj|mlp\.(?:gate|up|down)_proj)"
VISION_TARGETS = r".*visual\.blocks\.\d+\.(?:attn\.(?:qkv|proj)|mlp\.(?:gate_proj|up_proj|down_proj|linear_fc1|linear_fc2))"


# -------------------------------------------------------------------------------------------- head


class RewardHead(nn.Module):
    """hidden state at `<|reward|>` [B, H] -> scores [B, D].

    `linear`: one bias-free projection (VideoAlign); `mlp`: Linear-GELU-Linear. With `uncertainty`, a
    second projection predicts a per-sample log-variance for `losses.gaussian_nll_loss`.
    """

    def __init__(self, hidden_size: int, num_dims: int, kind: str = "linear", uncertainty: bool = False):
        super().__init__()
        if kind not in HEAD_KINDS:
            raise ValueError(f"head kind {kind!r}: choose one of {HEAD_KINDS}")
        self.hidden_size, self.num_dims, self.kind = hidden_size, num_dims, kind
        if kind == "linear":
            self.net = nn.Sequential(nn.Linear(hidden_size, num_dims, bias=False))
        else:
            self.net = nn.Sequential(
                nn.Linear(hidden_size, hidden_size), nn.GELU(), nn.Linear(hidden_size, num_dims, bias=False)
            )
        self.log_var = nn.Linear(hidden_size, num_dims) if uncertainty else None
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        # Inner layers: std 1/sqrt(H) keeps activations O(1). Output layer: std 1/(H+1) (OpenRLHF's value
        # head), so a score is ~ |h| / sqrt(H): near 0 even though Qwen's final-norm states are large.
        for layer in self.net:
            if isinstance(layer, nn.Linear):
                nn.init.normal_(layer.weight, std=self.hidden_size**-0.5)
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)
        nn.init.normal_(self.net[-1].weight, std=1.0 / (self.hidden_size + 1))
        if self.log_var is not None:  # start at variance 1 for every sample
            nn.init.zeros_(self.log_var.weight)
            nn.init.zeros_(self.log_var.bias)

    def forward_dist(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(mean [B, D], log-variance [B, D] or None). The head runs in its own dtype (float32 by default)."""
        hidden = hidden.to(self.net[-1].weight.dtype)
        return self.net(hidden), (self.log_var(hidden) if self.log_var is not None else None)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.forward_dist(hidden)[0]


# ------------------------------------------------------------------------------------------ config


@dataclass
class LoraSettings:
    """LoRA on the language model (optionally the vision blocks); None targets mean the defaults."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] | str | None = None
    lora_vision: bool = False

    def targets(self) -> list[str] | str:
        if self.target_modules is not None:
            return self.target_modules
        return f"(?:{LM_TARGETS})|(?:{VISION_TARGETS})" if self.lora_vision else LM_TARGETS

    def to_peft(self, reward_token_id: int):
        # trainable_token_indices: PEFT keeps a trainable copy of just these embedding rows (saved in the
        # adapter, written back by index_copy in forward); the rest of the matrix stays frozen.
        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=self.targets(),
            trainable_token_indices=[reward_token_id],
            bias="none",
        )


def family_of(hf_config) -> str:
    """The project's family name from a HF config's model_type (MoE variants share the family code)."""
    model_type = getattr(hf_config, "model_type", "")
    for family in FAMILIES:
        if model_type == family or model_type.startswith(family + "_"):
            return family
    raise ValueError(f"unsupported model_type {model_type!r}: expected one of {FAMILIES}")


# ------------------------------------------------------------------------------------ token / rows


def reward_positions(
    input_ids: torch.Tensor, token_id: int, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Index [B] of the LAST `token_id` in each sequence; padding-side agnostic (pads are masked out)."""
    hit = input_ids == token_id
    if attention_mask is not None:
        hit = hit & attention_mask.bool()
    index = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
    pos = torch.where(hit, index, -1).amax(dim=1)
    if (missing := (pos < 0).nonzero().flatten()).numel():
        raise ValueError(f"sequences {missing.tolist()} hold no reward token (id {token_id}): append it")
    return pos


def _add_reward_token(tokenizer, token: str) -> bool:
    """Add `token` as a special token if missing; True when added."""
    if token in tokenizer.get_vocab():
        return False
    tokenizer.add_tokens([AddedToken(token, special=True, normalized=False)], special_tokens=True)
    return True


@torch.no_grad()
def _init_reward_rows(vlm, token_id: int, vocab_len: int) -> None:
    """Make room for `token_id` and set its input (and untied output) row to the mean real row.

    Deterministic on purpose (no `mean_resizing` noise): a LoRA checkpoint recreates the output row
    on a fresh base; the input row is saved in the adapter anyway. Released Qwen checkpoints pad the
    vocabulary (151936 rows > len(tokenizer)), so often no resize happens, but the row they already
    have is an untrained padding row and is replaced too.
    """
    if token_id >= vlm.get_input_embeddings().weight.shape[0]:
        vlm.resize_token_embeddings(vocab_len, mean_resizing=False)
    layers = {id(m.weight): m.weight for m in (vlm.get_input_embeddings(), vlm.get_output_embeddings())}
    for weight in layers.values():
        real = torch.ones(weight.shape[0], dtype=torch.bool, device=weight.device)
        real[token_id] = False
        real[vocab_len:] = False  # padding rows are not real tokens
        weight[token_id] = weight[real].float().mean(0).to(weight.dtype)


def _load_vlm(path: str | Path, torch_dtype=None, attn_implementation: str | None = None):
    kwargs = {"dtype": torch_dtype, "attn_implementation": attn_implementation}
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    return AutoModelForImageTextToText.from_pretrained(str(path), **kwargs)


def _unwrap(vlm):
    """The HF model under a PEFT wrapper (LoRA layers stay injected in it). Asks for `get_base_model`:
    PEFT sets `peft_config` on the wrapped HF model too."""
    return vlm.get_base_model() if hasattr(vlm, "get_base_model") else vlm


def _freeze_vision(vlm) -> None:
    # The patch merger (projector) and Qwen3-VL's deepstack mergers live inside `model.visual` too.
    _unwrap(vlm).model.visual.requires_grad_(False)


# ------------------------------------------------------------------------------------------- model


@dataclass
class RewardOutput(ModelOutput):
    """rewards [B, D] (raw), log_var [B, D] (uncertainty head), LM logits [B, T, V] and loss (with
    labels), hidden [B, H] at the reward token, last_hidden [B, T, H] (the final norm's output)."""

    loss: torch.Tensor | None = None
    rewards: torch.Tensor | None = None
    log_var: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden: torch.Tensor | None = None
    log_probs: torch.Tensor | None = None  # token_logps=True: [B, T-1] log p(token t+1), 0 where unlabelled
    entropy: torch.Tensor | None = None  # token_logps=True: [B, T-1] (when the fused head computes it)
    last_hidden: torch.Tensor | None = None  # return_last_hidden=True: every position's, for the LM head


class ThinkThenScore(nn.Module):
    """A Qwen-VL model (optionally PEFT-wrapped), a `RewardHead`, the `CotRmConfig`, the processor."""

    def __init__(self, vlm: nn.Module, head: RewardHead, config: CotRmConfig, processor, reward_token_id):
        super().__init__()
        use_qwen_positions(_unwrap(vlm))  # Qwen2.5-VL: the positions it was pretrained with (as vLLM)
        self.vlm = vlm
        self.head = head
        self.config = config
        self.processor = processor
        self.reward_token_id = int(reward_token_id)

    @classmethod
    def from_base(
        cls,
        path: str | Path,
        dims: Sequence[str] = DEFAULT_DIMENSIONS,
        head: str = "linear",
        lora: LoraSettings | None = None,
        *,
        freeze_vision: bool = False,
        uncertainty: bool = False,
        torch_dtype=None,
        attn_implementation: str | None = None,
        sampling: Sampling | None = None,
        judge_spec: JudgeSpec | None = None,
        reward_token: str = REWARD_TOKEN,
    ) -> ThinkThenScore:
        """A fresh reward model on a released (or tiny) Qwen-VL checkpoint.

        Full fine-tuning when `lora` is None (`freeze_vision` then freezes tower + merger). With LoRA
        the base is frozen; trainable are the LoRA matrices, the reward token's embedding row and the head.
        Returned in train mode (HF loads in eval mode); call `.eval()` to judge with it.
        """
        if lora is not None and lora.lora_vision and freeze_vision:
            raise ValueError("freeze_vision=True contradicts LoraSettings(lora_vision=True)")
        if (Path(path) / CONFIG_NAME).is_file():  # its head and calibration would be silently dropped
            raise ValueError(
                f"{path} is a cot-rm checkpoint, not a base model: start SFT from its base "
                f"({CotRmConfig.load(path).base_model}), or train it further with `cot-rm grpo` (model.checkpoint)"
            )
        _check_local(path)
        processor = AutoProcessor.from_pretrained(str(path))
        vlm = _load_vlm(path, torch_dtype, attn_implementation)
        tokenizer = processor.tokenizer
        added = _add_reward_token(tokenizer, reward_token)
        token_id = tokenizer.convert_tokens_to_ids(reward_token)
        if added or token_id >= vlm.get_input_embeddings().weight.shape[0]:
            _init_reward_rows(vlm, token_id, len(tokenizer))
        family = family_of(vlm.config)
        config = CotRmConfig(
            dimensions=list(dims),
            family=family,
            base_model=str(Path(path).resolve()) if Path(path).is_dir() else str(path),
            hidden_size=vlm.config.get_text_config().hidden_size,
            head=head,
            uncertainty=uncertainty,
            reward_token=reward_token,
            reward_token_added=added,
            sampling=(sampling or Sampling(family=family)).to_dict(),
            judge_spec=(judge_spec or JudgeSpec(dimensions=tuple(dims))).to_dict(),
            lora=asdict(lora) if lora is not None else None,
            freeze_vision=freeze_vision,
        )
        if lora is not None:
            vlm = get_peft_model(vlm, lora.to_peft(token_id))
        elif freeze_vision:
            _freeze_vision(vlm)
        return cls(vlm, cls._new_head(config, vlm), config, processor, token_id).train()

    @staticmethod
    def _new_head(config: CotRmConfig, vlm) -> RewardHead:
        head = RewardHead(config.hidden_size, len(config.dimensions), config.head, config.uncertainty)
        return head.to(_unwrap(vlm).get_input_embeddings().weight.device)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        base_model: str | Path | None = None,
        torch_dtype=None,
        attn_implementation: str | None = None,
        is_trainable: bool = False,
    ) -> ThinkThenScore:
        """Load a `save_pretrained` folder. LoRA checkpoints load their base from `cot_rm.json`'s
        `base_model` unless `base_model` overrides it (a moved or mirrored base). `is_trainable=False`
        gives an eval-mode model with no trainable parameters; True continues training (stage 2)."""
        path = Path(path)
        config = CotRmConfig.load(path)
        processor = AutoProcessor.from_pretrained(str(path))
        token_id = processor.tokenizer.convert_tokens_to_ids(config.reward_token)
        if config.lora is None:
            vlm = _load_vlm(path, torch_dtype, attn_implementation)
        else:
            vlm = _load_vlm(base_model or config.base_model, torch_dtype, attn_implementation)
            if config.reward_token_added:
                _init_reward_rows(vlm, token_id, len(processor.tokenizer))
            vlm = PeftModel.from_pretrained(vlm, str(path), is_trainable=is_trainable)
        head = cls._new_head(config, vlm)
        head.load_state_dict(load_file(str(path / HEAD_NAME), device=str(head.net[-1].weight.device)))
        model = cls(vlm, head, config, processor, token_id)
        if not is_trainable:
            model.requires_grad_(False)
            return model.eval()
        if config.lora is None and config.freeze_vision:
            _freeze_vision(vlm)
        return model.train()

    def save_pretrained(self, directory: str | Path, state_dict: dict | None = None) -> Path:
        """VLM weights (or only the LoRA adapter), `head.safetensors`, processor, `cot_rm.json`.

        safetensors only. The image/video processor settings are also written as standalone files,
        as the released checkpoints have them (vLLM and AutoImageProcessor read those). `state_dict`:
        this module's full state gathered elsewhere (DeepSpeed ZeRO-3 shards the parameters, so the
        Trainer gathers them and passes them in); by default the module's own.
        """
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        vlm_state = head_state = None
        if state_dict is not None:
            vlm_state = {k.removeprefix("vlm."): v for k, v in state_dict.items() if k.startswith("vlm.")}
            head_state = {k.removeprefix("head."): v for k, v in state_dict.items() if k.startswith("head.")}
        if self.is_lora:
            # save_embedding_layers=False: the reward row travels as a trainable token, not a full matrix.
            self.vlm.save_pretrained(str(out), state_dict=vlm_state, save_embedding_layers=False)
        else:
            self.vlm.save_pretrained(str(out), state_dict=vlm_state)
        state = {k: v.detach().contiguous().cpu() for k, v in (head_state or self.head.state_dict()).items()}
        save_file(state, str(out / HEAD_NAME))
        self.processor.save_pretrained(str(out))
        for sub in ("image_processor", "video_processor"):
            if getattr(self.processor, sub, None) is not None:
                getattr(self.processor, sub).save_pretrained(str(out))
        self.config.save(out)
        return out

    def merge_lora(self) -> ThinkThenScore:
        """Fold the adapter (and the trained reward row) into the base weights: a plain VLM that vLLM
        can serve; the next `save_pretrained` writes full weights."""
        if self.is_lora:
            self.vlm = self.vlm.merge_and_unload()
            self.config = replace(self.config, lora=None, reward_token_added=False)
        return self

    @property
    def is_lora(self) -> bool:
        return self.config.lora is not None

    @property
    def base_vlm(self) -> nn.Module:
        """The HF `...ForConditionalGeneration` (under PEFT, with the LoRA layers injected)."""
        return _unwrap(self.vlm)

    # What TRL's GRPOTrainer reads from the model it trains (see docs/grpo_design.md section 1).
    @property
    def generation_config(self):
        return self.base_vlm.generation_config

    @property
    def name_or_path(self) -> str:
        return str(getattr(self.base_vlm, "name_or_path", "") or self.config.base_model)

    @property
    def is_gradient_checkpointing(self) -> bool:
        return bool(getattr(self.base_vlm, "is_gradient_checkpointing", False))

    def gradient_checkpointing_disable(self) -> None:
        self.base_vlm.gradient_checkpointing_disable()

    def add_model_tags(self, tags) -> None:  # TRL tags the model card of the VLM it trains
        self.base_vlm.add_model_tags(tags)

    def gradient_checkpointing_enable(
        self,
        gradient_checkpointing_kwargs: dict | None = None,
        every_n_layers: int = 1,
        offload: bool = False,
    ) -> None:
        """Checkpoint the language model only. Non-reentrant by default: works with a frozen embedding
        (LoRA) without forcing input grads. The vision tower is never checkpointed: frozen, it builds no
        graph (and its features are reused); trainable, recomputing it costs about 3x its forward."""
        kwargs = {"use_reentrant": False, **(gradient_checkpointing_kwargs or {})}
        self.base_vlm.gradient_checkpointing_enable(kwargs, every_n_layers=every_n_layers, offload=offload)
        visual = self.base_vlm.model.visual
        for module in visual.modules():
            if hasattr(module, "gradient_checkpointing"):
                module.gradient_checkpointing = False
        if not any(p.requires_grad for p in visual.parameters()):
            # transformers makes EVERY sub-model's input embeddings output require grad, the tower's
            # patch embedding too: a frozen tower would keep its activations and run backward for nothing.
            hooked = {key for m in visual.modules() for key in m._forward_hooks}
            for hook in getattr(self.base_vlm, "_require_grads_hooks", []):
                if hook.id in hooked:
                    hook.remove()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        *,
        return_logits: bool = True,
        return_hidden: bool = False,
        return_last_hidden: bool = False,
        token_logps: bool = False,
        detach_head_input: bool = False,
        reward_index: torch.Tensor | None = None,  # [B] in a packed batch's one row (cot_rm.model.packing)
        **inputs: Any,
    ) -> RewardOutput:
        """One pass: rewards at the last `<|reward|>` of each row; LM logits (and loss with `labels`).

        `inputs`: the processor's vision tensors (`pixel_values_videos`, `video_grid_thw`,
        `second_per_grid_ts`, `mm_token_type_ids`, `pixel_values`, `image_grid_thw`, ...).
        `token_logps=True` (GRPO): per-token log-probs (and entropies) of the tokens labelled in `labels`
        through TRL's fused LM head (`trl.trainer.utils.add_fused_lm_head(model.base_vlm, ...)` first, which
        sets the temperature), no logits. `detach_head_input`: the head's loss does not reach the VLM.
        `return_last_hidden`: also every position's final hidden state (the judge reads the LM head at a few
        positions from it, without the full [B, T, V] logits).
        """
        num_items = inputs.pop("num_items_in_batch", None)
        if token_logps:
            if labels is None:
                raise ValueError("token_logps=True needs labels (-100 where no log-prob is wanted)")
            with self.capture_hidden() as box:
                out = self.base_vlm(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    labels=labels,
                    fused_lm_head=True,
                    **inputs,
                )
            at_reward = self._at_reward(box["hidden"], input_ids, attention_mask, reward_index)
            with torch.autocast(at_reward.device.type, enabled=False):  # the head keeps its own dtype (fp32)
                rewards, log_var = self.head.forward_dist(
                    at_reward.detach() if detach_head_input else at_reward
                )
            return RewardOutput(
                rewards=rewards, log_var=log_var, log_probs=out.log_probs, entropy=out.entropy
            )
        hidden = self.base_vlm.model(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **inputs
        ).last_hidden_state  # [B, T, H], after the final norm
        at_reward = self._at_reward(hidden, input_ids, attention_mask, reward_index)  # [B, H]
        rewards, log_var = self.head.forward_dist(at_reward.detach() if detach_head_input else at_reward)
        logits = loss = None
        if return_logits or labels is not None:
            logits = self.base_vlm.lm_head(hidden)  # [B, T, V]
        if labels is not None:
            loss = self.base_vlm.loss_function(
                logits=logits, labels=labels, vocab_size=logits.shape[-1], num_items_in_batch=num_items
            )
        at = at_reward if return_hidden else None
        return RewardOutput(
            loss, rewards, log_var, logits, at, last_hidden=hidden if return_last_hidden else None
        )

    def score(self, input_ids: torch.Tensor, **inputs: Any) -> torch.Tensor:
        """Raw rewards [B, D] only: the vocabulary projection is skipped (wrap in inference_mode to judge)."""
        return self.forward(input_ids, return_logits=False, **inputs).rewards

    def _at_reward(self, hidden: torch.Tensor, input_ids: torch.Tensor, attention_mask, reward_index=None):
        pos = reward_positions(input_ids, self.reward_token_id, attention_mask) if reward_index is None else reward_index  # fmt: skip
        rows = torch.arange(len(hidden), device=hidden.device) if reward_index is None else 0  # packed: row 0
        return hidden[rows, pos.to(hidden.device)]  # [B, H]

    def rewards_from_hidden(self, hidden: torch.Tensor, input_ids: torch.Tensor, attention_mask=None):
        """Head scores [B, D] from final hidden states [B, T, H] computed elsewhere (e.g. `capture_hidden`)."""
        return self.head(self._at_reward(hidden, input_ids, attention_mask))

    @contextmanager
    def capture_hidden(self) -> Iterator[dict[str, torch.Tensor]]:
        """Record the final norm's output during any forward of the VLM (e.g. a TRL trainer's own,
        which returns only log-probs): `with model.capture_hidden() as box: ...; box["hidden"]`."""
        box: dict[str, torch.Tensor] = {}
        norm = self.base_vlm.model.language_model.norm
        handle = norm.register_forward_hook(lambda _m, _i, out: box.__setitem__("hidden", out))
        try:
            yield box
        finally:
            handle.remove()

    def _calibration_tensors(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, std = zip(*calibration.stats(self.config.dimensions, self.config.calibration), strict=True)
        return like.new_tensor(mean), like.new_tensor(std)  # [D] each

    def calibrate(self, rewards: torch.Tensor) -> torch.Tensor:
        """Raw rewards [..., D] -> z-scores (r - mean) / std with the stored validation statistics, as
        VideoAlign normalises before comparing. Dimensions without statistics pass through unchanged.
        The Judgment's `scores` are these z-scores on the judge's scale (`cot_rm.model.calibration`)."""
        mean, std = self._calibration_tensors(rewards)
        return (rewards - mean) / std

    def uncalibrate(self, z: torch.Tensor) -> torch.Tensor:
        """z-scores [..., D] -> the raw head scale (z * std + mean): the inverse of `calibrate`."""
        mean, std = self._calibration_tensors(z)
        return z * std + mean

    def as_dicts(self, rewards: torch.Tensor) -> list[dict[str, float]]:
        """[B, D] -> one {dimension: score} per row (for Judgment JSON)."""
        return [dict(zip(self.config.dimensions, map(float, row))) for row in rewards.detach().cpu()]


def _check_local(path: str | Path) -> None:
    """Neither a folder here nor a hub name (org/name): a typo, said in one line (not a repo-id error)."""
    text = str(path)
    if not Path(text).is_dir() and (text.startswith(("/", ".", "~")) or text.count("/") != 1):
        raise FileNotFoundError(f"{text}: no such model folder; give a local checkpoint folder or a hub name")
