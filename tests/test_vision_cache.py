"""VisionFeatureCache on the tiny checkpoints of both families: same outputs and training losses with
and without reuse, the tower really skipped on hits, only missing items computed, frozen towers only,
exact removal, LoRA, and the transformers output formats (5.17 / 5.19) kept."""

from __future__ import annotations

import pytest
import torch

from cot_rm.media.video import Sampling, read_frames_at, read_video
from cot_rm.model.modeling import LoraSettings, ThinkThenScore
from cot_rm.model.processing import encode
from cot_rm.model.tiny import REWARD_TOKEN
from cot_rm.model.vision_cache import VisionFeatureCache, inner_vision_model

SMALL = 64 * 96  # max pixels: the vision path runs for real, in milliseconds


@pytest.fixture(scope="module")
def video(family, sample_mp4):
    return read_video(sample_mp4, Sampling(family=family, num_frames=4, max_pixels=SMALL))


@pytest.fixture(scope="module")
def other_video(family, make_mp4):
    path = make_mp4("other.mp4", num_frames=16, height=96, width=128, fps=8)
    return read_video(path, Sampling(family=family, num_frames=6, max_pixels=SMALL))


@pytest.fixture(scope="module")
def tool_images(family, sample_mp4):
    return read_frames_at(sample_mp4, [12, 13], max_pixels=SMALL, family=family)


@pytest.fixture(scope="module")
def model(ckpt):
    return ThinkThenScore.from_base(ckpt, freeze_vision=True).eval()


def render(processor, n_images: int = 0, answer: str = "<think>The square jumps.</think>") -> str:
    """A judgment over one video, optionally after a select_frames tool turn with `n_images` frames."""
    messages = [
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Rate this video."}]}
    ]
    if n_images:
        call = '<tool_call>{"name": "select_frames", "arguments": {"frames": [12, 13]}}</tool_call>'
        images = [{"type": "image"}] * n_images
        messages += [
            {"role": "assistant", "content": f"<think>Frame 12 looks odd.</think>{call}"},
            {"role": "tool", "content": [*images, {"type": "text", "text": "12, 13"}]},
        ]
    messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return processor.apply_chat_template(messages, tokenize=False) + REWARD_TOKEN


def make_batch(processor, videos, images=None) -> dict:
    """One sample per video; the tool images (if any) go with the first sample."""
    n = len(images or [])
    texts = [render(processor, n if i == 0 else 0) for i in range(len(videos))]
    batch = dict(encode(processor, texts, list(videos), images=images))
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    return batch | {"labels": labels}


class TowerCalls:
    """Counts the vision module's forward calls and the patch rows each one saw."""

    def __init__(self, model):
        self.rows: list[int] = []
        self.handle = inner_vision_model(model).visual.register_forward_pre_hook(
            lambda _m, args: self.rows.append(int(args[0].shape[0]))
        )

    def __len__(self) -> int:
        return len(self.rows)


def forward(model, batch):
    with torch.no_grad():
        out = model(**batch)
    return out.logits, out.loss, out.rewards


def flat(features) -> torch.Tensor:
    return torch.cat(list(features)) if isinstance(features, tuple | list) else features


def assert_same(a, b, atol=1e-6):
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=atol)


# ------------------------------------------------------------------------------------------ outputs


def test_identical_outputs_and_tower_skipped_on_hit(model, video, tool_images):
    batch = make_batch(model.processor, [video], tool_images)
    reference = forward(model, batch)
    calls = TowerCalls(model)
    with VisionFeatureCache(model) as cache:
        first = forward(model, batch)
        assert len(calls) == 2  # one batched call per modality (video; both tool images together)
        second = forward(model, batch)
        assert len(calls) == 2  # all hits: the tower did not run
    assert_same(first, reference)
    assert_same(second, reference)
    stats = cache.stats()
    assert (stats["hits"], stats["misses"], stats["tower_calls"], stats["items"]) == (3, 3, 2, 3)


def test_only_missing_item_is_computed(model, video, other_video):
    pair = make_batch(model.processor, [video, other_video])
    reference = forward(model, pair)
    patches = [int(g.prod()) for g in pair["video_grid_thw"]]
    with VisionFeatureCache(model) as cache:
        forward(model, make_batch(model.processor, [video]))  # caches the first video only
        calls = TowerCalls(model)
        got = forward(model, pair)
    assert calls.rows == [patches[1]]  # one tower call, on the second video's patches alone
    assert_same(got, reference)
    assert (cache.stats()["hits"], cache.stats()["misses"]) == (1, 2)


def test_duplicates_in_one_batch_run_once(model, video):
    """A GRPO group: the same video in every row costs one tower pass."""
    group = make_batch(model.processor, [video] * 3)
    reference = forward(model, group)
    calls = TowerCalls(model)
    with VisionFeatureCache(model) as cache:
        got = forward(model, group)
    assert calls.rows == [int(group["video_grid_thw"][0].prod())]
    assert_same(got, reference)
    assert (cache.stats()["hits"], cache.stats()["misses"]) == (2, 1)


def test_same_output_structure_as_original(model, video, tool_images):
    """get_*_features called directly returns what the running transformers version returns."""
    batch = make_batch(model.processor, [video], tool_images)
    inner = inner_vision_model(model)
    args = {
        "video": (batch["pixel_values_videos"], batch["video_grid_thw"]),
        "image": (batch["pixel_values"], batch["image_grid_thw"]),
    }
    with torch.no_grad():
        plain = {m: getattr(inner, f"get_{m}_features")(*a, return_dict=True) for m, a in args.items()}
        with VisionFeatureCache(model):
            for _ in range(2):  # miss, then hit
                for m, a in args.items():
                    got = getattr(inner, f"get_{m}_features")(*a, return_dict=True)
                    assert type(got) is type(plain[m])
                    assert_same(got.pooler_output, plain[m].pooler_output)
                    want = getattr(plain[m], "deepstack_features", None)
                    if want is not None:  # Qwen3-VL: per-item tuples (5.19) or tensors (5.17)
                        assert [type(f) for f in got.deepstack_features] == [type(f) for f in want]
                        assert_same(map(flat, got.deepstack_features), map(flat, want))
            tuples = inner.get_video_features(*args["video"], return_dict=False)  # bypassed: as original
            assert [type(t) for t in tuples] == [type(t) for t in plain["video"].to_tuple()]
            assert_same(tuples[1], plain["video"].pooler_output)


# ------------------------------------------------------------------------------------------ training


def train_losses(ckpt, batch, steps: int, cached: bool, **kwargs) -> tuple[list[float], dict]:
    torch.manual_seed(0)  # the head's init
    model = ThinkThenScore.from_base(ckpt, freeze_vision=True, **kwargs)
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    cache = VisionFeatureCache(model)
    losses = []
    if cached:
        cache.install()
    try:
        for _ in range(steps):
            out = model(**batch)
            loss = out.loss + out.rewards.square().mean()  # LM loss + a head term: both train
            optim.zero_grad()
            loss.backward()
            optim.step()
            losses.append(loss.item())
    finally:
        cache.remove()
    return losses, cache.stats()


def test_frozen_tower_run_same_loss_with_and_without_reuse(ckpt, model, video, tool_images):
    """The issue's acceptance test: a frozen-tower run gives the same loss with and without the reuse."""
    batch = make_batch(model.processor, [video], tool_images)
    plain, _ = train_losses(ckpt, batch, steps=4, cached=False)
    reused, stats = train_losses(ckpt, batch, steps=4, cached=True)
    assert plain[-1] < plain[0]  # it does learn
    torch.testing.assert_close(torch.tensor(reused), torch.tensor(plain), rtol=0, atol=1e-6)
    assert (stats["tower_calls"], stats["misses"], stats["hits"]) == (2, 3, 9)


def test_lora_model(ckpt, model, video, tool_images):
    batch = make_batch(model.processor, [video], tool_images)
    lora = LoraSettings(r=4)  # LoRA dropout draws the same numbers: the tower uses no RNG
    plain, _ = train_losses(ckpt, batch, steps=3, cached=False, lora=lora)
    reused, stats = train_losses(ckpt, batch, steps=3, cached=True, lora=lora)
    torch.testing.assert_close(torch.tensor(reused), torch.tensor(plain), rtol=0, atol=1e-6)
    assert stats["tower_calls"] == 2 and stats["hits"] == 6
    vision_lora = ThinkThenScore.from_base(ckpt, lora=LoraSettings(r=4, lora_vision=True))
    with pytest.raises(RuntimeError, match="frozen vision tower"):
        VisionFeatureCache(vision_lora).install()


def test_features_from_inference_mode_serve_a_training_forward(ckpt, model, video):
    """Log-prob passes often run under inference_mode; their cached features must still train."""
    torch.manual_seed(0)
    trained = ThinkThenScore.from_base(ckpt, freeze_vision=True)
    batch = make_batch(model.processor, [video])
    with VisionFeatureCache(trained) as cache:
        with torch.inference_mode():
            trained(**batch)
        trained(**batch).loss.backward()
    assert cache.stats()["hits"] == 1
    assert trained.base_vlm.lm_head.weight.grad is not None


def test_tower_never_runs_checkpointed(ckpt, model, video):
    """Under model-wide gradient checkpointing, the cache's tower call is a plain no_grad forward."""
    torch.manual_seed(0)
    trained = ThinkThenScore.from_base(ckpt, freeze_vision=True)
    trained.base_vlm.gradient_checkpointing_enable()  # model-wide, vision blocks included
    vision_blocks = [
        m for m in inner_vision_model(trained).visual.modules() if hasattr(m, "_gradient_checkpointing_func")
    ]
    text_blocks = [m for m in trained.base_vlm.model.language_model.layers]
    used: list[str] = []
    for kind, blocks in (("vision", vision_blocks), ("text", text_blocks)):
        for block in blocks:
            func = block._gradient_checkpointing_func
            block._gradient_checkpointing_func = lambda *a, _f=func, _k=kind, **k: (
                used.append(_k) or _f(*a, **k)
            )
    batch = make_batch(model.processor, [video])
    with VisionFeatureCache(trained):
        trained(**batch).loss.backward()
    assert vision_blocks and "vision" not in used and "text" in used  # the language model still is
    assert all(block.gradient_checkpointing for block in vision_blocks)  # restored afterwards


def test_model_checkpointing_leaves_the_tower_alone(ckpt):
    """ThinkThenScore checkpoints the language model only (a trainable tower would cost ~3x)."""
    trained = ThinkThenScore.from_base(ckpt)
    trained.gradient_checkpointing_enable()
    visual = [m for m in trained.base_vlm.model.visual.modules() if hasattr(m, "gradient_checkpointing")]
    text = trained.base_vlm.model.language_model.layers
    assert visual and not any(m.gradient_checkpointing for m in visual)
    assert all(layer.gradient_checkpointing for layer in text)


# ------------------------------------------------------------------------------- install / remove


def test_install_refuses_a_trainable_tower(ckpt, model, video):
    trainable = ThinkThenScore.from_base(ckpt)  # full fine-tuning: the tower trains
    with pytest.raises(RuntimeError, match="frozen vision tower"):
        VisionFeatureCache(trainable).install()
    assert "get_video_features" not in inner_vision_model(trainable).__dict__
    frozen = ThinkThenScore.from_base(ckpt, freeze_vision=True)
    batch = make_batch(model.processor, [video])
    with VisionFeatureCache(frozen):
        inner_vision_model(frozen).visual.merger.requires_grad_(True)  # unfrozen after install
        with pytest.raises(RuntimeError, match="frozen vision tower"):
            frozen(**batch)


def test_remove_restores_original_behaviour(model, video):
    inner = inner_vision_model(model)
    before = {n: inner.__dict__.get(n) for n in ("get_video_features", "get_image_features")}
    batch = make_batch(model.processor, [video])
    reference = forward(model, batch)
    cache = VisionFeatureCache(model).install()
    with pytest.raises(RuntimeError, match="already installed"):
        VisionFeatureCache(model).install()
    forward(model, batch)
    cache.remove()
    assert {n: inner.__dict__.get(n) for n in before} == before == {n: None for n in before}
    assert not hasattr(inner, "_cot_rm_vision_cache")
    calls = TowerCalls(model)
    assert_same(forward(model, batch), reference)
    assert len(calls) == 1 and cache.stats()["tower_calls"] == 1  # the tower runs again, uncached
    with pytest.raises(ValueError), VisionFeatureCache(model):  # the context manager restores on errors
        raise ValueError
    assert "get_video_features" not in inner.__dict__
    with pytest.warns(UserWarning, match="re-patched"), VisionFeatureCache(model):
        inner.get_image_features = lambda *a, **k: None  # someone patches over the cache's wrapper
    assert "get_image_features" not in inner.__dict__


# --------------------------------------------------------------------------------- keys and bounds


def test_key_hints_skip_hashing(model, video, other_video):
    batch = make_batch(model.processor, [video])
    with VisionFeatureCache(model) as cache:
        with cache.key_hints(videos=["clip-a"]):
            reference = forward(model, batch)
            forward(model, batch)
        assert cache.stats()["hash_s"] == 0.0 and cache.stats()["hits"] == 1
        with cache.key_hints(videos=["clip-a", "clip-b"]), pytest.raises(ValueError, match="key_hints"):
            forward(model, batch)
    assert_same(forward(model, batch), reference)


def test_lru_bounds_and_cpu_store(model, video, other_video):
    one, two = make_batch(model.processor, [video]), make_batch(model.processor, [other_video])
    with VisionFeatureCache(model, max_items=1, device="cpu") as cache:
        forward(model, one)
        forward(model, two)  # evicts the first video
        forward(model, one)
    assert cache.stats()["evictions"] == 2 and cache.stats()["misses"] == 3 and len(cache) == 1
    with VisionFeatureCache(model, max_items=None, max_bytes=1) as tiny_budget:
        reference = forward(model, one)
        assert_same(forward(model, one), reference)
    assert len(tiny_budget) == 0 and tiny_budget.stats()["misses"] == 2  # too big to keep: served, not stored
