"""ThinkThenScore on the tiny checkpoints of both families: where rewards are read, what trains under
LoRA / frozen vision, that learning happens, and that save/load round trips are exact."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoTokenizer

from cot_rm.media.video import Sampling, read_video
from cot_rm.model.modeling import (
    CONFIG_NAME,
    HEAD_NAME,
    CotRmConfig,
    LoraSettings,
    RewardHead,
    ThinkThenScore,
    family_of,
    fit_calibration,
    fit_tie_margin,
    reward_positions,
)
from cot_rm.model.processing import encode
from cot_rm.model.tiny import REWARD_TOKEN
from cot_rm.protocol import JudgeSpec

ANSWERS = [
    '<think>Sharp frames.</think><answer>{"overall": 4}</answer>',
    "<think>The square jumps at frame 12 and the colour is wrong for the whole clip.</think>"
    '<answer>{"overall": 2}</answer>',
]


@pytest.fixture(scope="module")
def video(family, sample_mp4):
    # few small frames: the vision path runs for real, in milliseconds
    return read_video(sample_mp4, Sampling(family=family, num_frames=4, max_pixels=64 * 96))


@pytest.fixture(scope="module")
def model(ckpt):
    """A shared eval model (full weights); tests that train build their own."""
    return ThinkThenScore.from_base(ckpt).eval()


def judgment_text(processor, answer: str) -> str:
    messages = [
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Rate this video."}]},
        {"role": "assistant", "content": [{"type": "text", "text": answer}]},
    ]
    return processor.apply_chat_template(messages, tokenize=False) + REWARD_TOKEN


def video_batch(model, video, answers=ANSWERS, padding_side="right"):
    texts = [judgment_text(model.processor, a) for a in answers]
    return dict(encode(model.processor, texts, [video] * len(texts), padding_side=padding_side))


def text_batch(model, answers):
    texts = [f"<|im_start|>assistant\n{a}<|im_end|>\n{REWARD_TOKEN}" for a in answers]
    return dict(model.processor.tokenizer(texts, return_tensors="pt", padding=True))


def trainable_names(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


# ---------------------------------------------------------------------------------- reading rewards


def test_reward_positions_last_token_any_padding():
    r, p = 9, 0
    ids = torch.tensor([[p, p, 5, r, 6, r], [5, r, 7, p, p, p], [r, 4, 4, 4, 4, r]])
    mask = (ids != p).long()
    assert reward_positions(ids, r, mask).tolist() == [5, 1, 5]
    with pytest.raises(ValueError, match=r"sequences \[0\] hold no reward token"):
        reward_positions(torch.tensor([[1, 2], [r, 1]]), r)
    # a reward id sitting on a padded position (pad id == reward id) is not read
    assert reward_positions(torch.tensor([[r, 5, r]]), r, torch.tensor([[1, 1, 0]])).tolist() == [0]


@pytest.mark.parametrize("side", ["left", "right"])
def test_rewards_under_padding_match_unpadded_singles(model, video, side):
    batch = video_batch(model, video, padding_side=side)
    assert (batch["attention_mask"] == 0).any(), "the two samples must differ in length"
    with torch.no_grad():
        out = model(**batch)
        singles = [model(**video_batch(model, video, [a])) for a in ANSWERS]
    for i, single in enumerate(singles):
        torch.testing.assert_close(out.rewards[i], single.rewards[0], atol=1e-4, rtol=1e-4)
        pos = reward_positions(batch["input_ids"], model.reward_token_id, batch["attention_mask"])[i]
        torch.testing.assert_close(out.logits[i, pos], single.logits[0, -1], atol=1e-4, rtol=1e-4)


def test_forward_matches_hf_model_and_score_skips_logits(model, video):
    batch = video_batch(model, video)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    with torch.no_grad():
        ours = model(**batch, labels=labels, return_hidden=True)
        ref = model.vlm(**batch, labels=labels)
        scores = model.score(**batch)
    torch.testing.assert_close(ours.logits, ref.logits)
    torch.testing.assert_close(ours.loss, ref.loss)
    torch.testing.assert_close(scores, ours.rewards)
    assert ours.rewards.shape == (2, 4) and ours.hidden.shape == (2, model.config.hidden_size)
    assert model(**batch, return_logits=False).logits is None
    assert ours.rewards.abs().max() < 1.0  # small init: scores start near 0


def test_capture_hidden_feeds_the_head_like_forward(model, video):
    batch = video_batch(model, video)
    with torch.no_grad(), model.capture_hidden() as box:
        logits = model.vlm(**batch).logits  # any forward of the VLM (a trainer's own)
        out = model(**batch)
    assert logits.shape == out.logits.shape
    rewards = model.rewards_from_hidden(box["hidden"], batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(rewards, out.rewards)


# --------------------------------------------------------------------------------------- training


def test_lora_trains_only_adapter_head_and_reward_row(ckpt):
    model = ThinkThenScore.from_base(ckpt, lora=LoraSettings(r=4, alpha=8, dropout=0.0))
    rid = model.reward_token_id
    names = trainable_names(model)
    assert names and all(
        "lora_" in n or "trainable_tokens_delta" in n or n.startswith("head.") for n in names
    )
    assert any("trainable_tokens_delta" in n for n in names) and any(n.startswith("head.") for n in names)
    assert not any("visual" in n for n in names), "default LoRA targets the language model only"
    embed = model.base_vlm.get_input_embeddings()
    rows_before = embed(torch.tensor([rid, 5])).detach().clone()
    q_proj = model.base_vlm.model.language_model.layers[0].self_attn.q_proj.base_layer.weight
    q_before, lm_head_before = q_proj.detach().clone(), model.base_vlm.lm_head.weight.detach().clone()

    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(**text_batch(model, ANSWERS), return_logits=False).rewards.sum().backward()
    for n, p in model.named_parameters():
        assert (p.grad is not None) == (n in names), n
    assert any(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "trainable_tokens" in n)
    opt.step()

    rows_after = embed(torch.tensor([rid, 5])).detach()
    assert not torch.equal(rows_after[0], rows_before[0]), "the reward row trains"
    assert torch.equal(rows_after[1], rows_before[1]), "other rows stay"
    assert torch.equal(q_proj, q_before) and torch.equal(model.base_vlm.lm_head.weight, lm_head_before)


def test_lora_vision_option_targets_vision_blocks_not_merger(ckpt):
    model = ThinkThenScore.from_base(ckpt, lora=LoraSettings(r=2, lora_vision=True))
    names = trainable_names(model)
    assert any("visual.blocks" in n for n in names)
    assert not any("merger" in n for n in names)
    with pytest.raises(ValueError, match="contradicts"):
        ThinkThenScore.from_base(ckpt, lora=LoraSettings(lora_vision=True), freeze_vision=True)


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointing"])
def test_frozen_vision_gets_no_grads(ckpt, video, checkpointing):
    model = ThinkThenScore.from_base(ckpt, freeze_vision=True)
    if checkpointing:  # as the Trainer calls it: must not make the frozen tower build a graph
        model.gradient_checkpointing_enable({"use_reentrant": False}, every_n_layers=1, offload=False)
    batch = video_batch(model, video)
    tower = model.base_vlm.model.get_video_features(batch["pixel_values_videos"], batch["video_grid_thw"])
    assert not tower.pooler_output[0].requires_grad  # no activations kept, no backward through it
    out = model(**batch)
    (out.rewards.sum() + out.logits.mean()).backward()
    for n, p in model.named_parameters():
        if ".visual." in n:
            assert not p.requires_grad and p.grad is None, n
    assert model.base_vlm.model.language_model.layers[0].mlp.up_proj.weight.grad is not None
    assert model.head.net[-1].weight.grad is not None


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_head_mse_falls_on_a_toy_regression_target(ckpt, lora):
    torch.manual_seed(0)
    model = ThinkThenScore.from_base(ckpt, lora=LoraSettings(r=4, dropout=0.0) if lora else None)
    if lora:
        model.gradient_checkpointing_enable()  # the path a 7B LoRA run takes
    batch = text_batch(model, ["good video", "bad video, flicker at frame 3", "ok", "frozen frames"])
    target = torch.tensor(
        [[4.0, 5.0, 4.0, 4.5], [1.0, 2.0, 1.0, 1.5], [3.0, 3.0, 3.0, 3.0], [2.0, 1.0, 1.0, 1.0]]
    )
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(40):
        loss = torch.nn.functional.mse_loss(model.score(**batch), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0], losses[::8]


# ------------------------------------------------------------------------------------ save / load


def _train_a_little(model, batch, steps=3):
    """Move every trainable part off its init, so a round trip that dropped one would show."""
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        out = model(**batch)
        loss = out.rewards.pow(2).sum() - out.rewards.sum() + out.logits.float().logsumexp(-1).mean() * 1e-2
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _assert_round_trip(model, path, batch, **load_kwargs):
    with torch.no_grad():
        before = model(**batch)
    model.save_pretrained(path)
    files = {p.name for p in path.iterdir()}
    assert {HEAD_NAME, CONFIG_NAME, "tokenizer.json", "preprocessor_config.json"} <= files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))], files
    loaded = ThinkThenScore.from_pretrained(path, **load_kwargs)
    assert loaded.config == model.config and loaded.reward_token_id == model.reward_token_id
    assert not trainable_names(loaded) and not loaded.training
    with torch.no_grad():
        after = loaded(**batch)
    torch.testing.assert_close(after.rewards, before.rewards, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(after.logits, before.logits, atol=1e-5, rtol=1e-5)
    return loaded, files


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_save_load_round_trip(ckpt, video, tmp_path, lora):
    settings = LoraSettings(r=4, dropout=0.0) if lora else None
    model = ThinkThenScore.from_base(ckpt, head="mlp", lora=settings, freeze_vision=not lora)
    batch = video_batch(model, video)
    _train_a_little(model, batch)
    model.config.calibration = fit_calibration({"overall": [1.0, 2.0, 3.0]})
    model.config.tie_margin = 0.25
    loaded, files = _assert_round_trip(model, tmp_path / "ckpt", batch, base_model=ckpt if lora else None)
    assert ("adapter_model.safetensors" in files) == lora and ("model.safetensors" in files) != lora
    assert loaded.is_lora == lora and loaded.config.head == "mlp"
    resumed = ThinkThenScore.from_pretrained(tmp_path / "ckpt", is_trainable=True)
    assert trainable_names(resumed) == trainable_names(model)


@pytest.fixture(scope="module")
def base_without_reward_token(tiny_qwen25vl_dir, tmp_path_factory):
    """The tiny Qwen2.5-VL with `<|reward|>` stripped from the tokenizer and its rows cut off, like a
    released checkpoint before cot-rm touches it."""
    out = tmp_path_factory.mktemp("stripped") / "qwen2_5_vl"
    shutil.copytree(tiny_qwen25vl_dir, out)
    tok_json = json.loads((out / "tokenizer.json").read_text())
    (rid,) = [t["id"] for t in tok_json["added_tokens"] if t["content"] == REWARD_TOKEN]
    tok_json["added_tokens"] = [t for t in tok_json["added_tokens"] if t["content"] != REWARD_TOKEN]
    (out / "tokenizer.json").write_text(json.dumps(tok_json))
    tok_cfg = json.loads((out / "tokenizer_config.json").read_text())
    tok_cfg["extra_special_tokens"] = [t for t in tok_cfg["extra_special_tokens"] if t != REWARD_TOKEN]
    (out / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    vlm = AutoModelForImageTextToText.from_pretrained(tiny_qwen25vl_dir)
    vlm.resize_token_embeddings(rid)  # the reward token was the last id
    vlm.save_pretrained(out)
    assert REWARD_TOKEN not in AutoTokenizer.from_pretrained(out).get_vocab()
    return out


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_reward_token_added_with_mean_rows_and_round_trips(
    base_without_reward_token, sample_mp4, tmp_path, lora
):
    base = base_without_reward_token
    n_before = AutoTokenizer.from_pretrained(base).__len__()
    model = ThinkThenScore.from_base(base, lora=LoraSettings(r=4, dropout=0.0) if lora else None)
    assert model.config.reward_token_added and model.reward_token_id == n_before
    assert model.processor.tokenizer.tokenize(f"a{REWARD_TOKEN}b")[1] == REWARD_TOKEN
    vlm = model.base_vlm
    for weight in (vlm.get_input_embeddings().weight, vlm.get_output_embeddings().weight):
        assert weight.shape[0] == n_before + 1
        torch.testing.assert_close(weight[n_before], weight[:n_before].mean(0))
    video = read_video(sample_mp4, Sampling(num_frames=4, max_pixels=64 * 96))
    batch = video_batch(model, video)
    _train_a_little(model, batch)
    # the LoRA checkpoint rebuilds the new rows on a fresh base that lacks the token
    _assert_round_trip(model, tmp_path / "ckpt", batch)


def test_merge_lora_keeps_outputs(ckpt, video):
    model = ThinkThenScore.from_base(ckpt, lora=LoraSettings(r=4, dropout=0.0))
    batch = video_batch(model, video)
    _train_a_little(model, batch)
    with torch.no_grad():
        before = model(**batch)
        after = model.merge_lora()(**batch)
    assert not model.is_lora and not hasattr(model.vlm, "peft_config")
    torch.testing.assert_close(after.rewards, before.rewards, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(after.logits, before.logits, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------- head and config


def test_reward_head_kinds():
    torch.manual_seed(0)
    linear, mlp = RewardHead(64, 3), RewardHead(64, 3, "mlp", uncertainty=True)
    assert [n for n, _ in linear.named_parameters()] == ["net.0.weight"]  # bias-free, as VideoAlign
    hidden = torch.randn(5, 64)
    assert linear(hidden).shape == (5, 3)
    mean, log_var = mlp.forward_dist(hidden)
    assert mean.shape == (5, 3) and torch.equal(log_var, torch.zeros(5, 3))
    with pytest.raises(ValueError, match="head kind"):
        RewardHead(64, 3, "transformer")


def test_config_json_round_trip_and_validation(tmp_path, ckpt, model):
    assert family_of(model.base_vlm.config) == model.config.family
    assert model.config.judge_spec["dimensions"] == model.config.dimensions
    config = CotRmConfig(
        dimensions=["visual_quality", "overall"],
        family="qwen3_vl",
        sampling=Sampling(family="qwen3_vl", fps=1.0).to_dict(),
        judge_spec=JudgeSpec(dimensions=("visual_quality", "overall"), score_max=10).to_dict(),
        calibration={"overall": {"mean": 1.0, "std": 2.0}},
        lora={"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": None, "lora_vision": False},
    )
    config.save(tmp_path)
    assert CotRmConfig.load(tmp_path) == config
    assert LoraSettings(**config.lora) == LoraSettings(r=8, alpha=16, dropout=0.0)
    with pytest.raises(ValueError, match="judge_spec dimensions"):
        CotRmConfig(dimensions=["overall"], judge_spec=JudgeSpec().to_dict())
    with pytest.raises(ValueError, match="sampling family"):
        CotRmConfig(family="qwen3_vl", sampling=Sampling().to_dict())
    with pytest.raises(ValueError, match="unknown dimensions"):
        CotRmConfig(calibration={"speed": {"mean": 0.0, "std": 1.0}})
    with pytest.warns(UserWarning, match="unknown keys"):
        CotRmConfig.from_dict({**config.to_dict(), "future_field": 1})


def test_fit_calibration_hand_computed_and_calibrate_inverts(model):
    # [1, 2, 3, 4]: mean 2.5, population variance (2.25 + 0.25 + 0.25 + 2.25) / 4 = 1.25
    cal = fit_calibration({"overall": [1, 2, 3, 4], "visual_quality": [2.0, 2.0]})
    assert cal["overall"] == pytest.approx({"mean": 2.5, "std": 1.25**0.5})
    assert cal["visual_quality"] == {"mean": 2.0, "std": 1.0}  # constant: shift only
    model.config.calibration = cal
    try:
        dims = model.config.dimensions  # visual_quality, text_alignment, physical_consistency, overall
        raw = torch.tensor([[3.0, 7.0, -1.0, 2.5 + 2 * 1.25**0.5]])
        z = model.calibrate(raw)
        torch.testing.assert_close(z, torch.tensor([[1.0, 7.0, -1.0, 2.0]]))
        torch.testing.assert_close(model.uncalibrate(z), raw)
        assert model.as_dicts(z) == [dict(zip(dims, [1.0, 7.0, -1.0, pytest.approx(2.0)]))]
    finally:
        model.config.calibration = {}


def test_fit_tie_margin_hand_computed():
    # |d| sorted 0.05 0.1 0.3 0.5 1.0 -> candidates 0, 0.075, 0.2, 0.4, 0.75, 2.0 with 3-way
    # accuracy 2/5, 3/5, 4/5, 5/5, 4/5, 3/5 (tie when |d| <= m): the best margin is 0.4.
    diffs, labels = [0.1, -0.5, 0.05, 1.0, 0.3], [0, -1, 0, 1, 0]
    assert fit_tie_margin(diffs, labels) == pytest.approx(0.4)
    assert fit_tie_margin([0.3, -0.2], [1, -1]) == 0.0  # no ties: never predict one
    assert fit_tie_margin([0.1, 0.2], [0, 0]) == pytest.approx(0.4)  # all ties: 2 max|d|
    with pytest.raises(ValueError):
        fit_tie_margin([0.1], [0, 1])
