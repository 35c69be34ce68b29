"""GRPO trainer on the tiny random Qwen2.5-VL: end-to-end steps, head co-training, detached head, vision
cache equivalence, dynamic sampling, tool frames in the loss pass, the KL reference."""

import json
from argparse import Namespace

import pytest
import torch
from trl import GRPOConfig

from cot_rm.config import config_from_dict
from cot_rm.media.video import Sampling
from cot_rm.model.modeling import ThinkThenScore
from cot_rm.protocol import format_tool_call
from cot_rm.train.grpo import trainer as grpo
from cot_rm.train.grpo.config import GRPORunConfig

FAMILY = "qwen2_5_vl"
SAMPLING = Sampling(fps=None, num_frames=4, max_pixels=56 * 56, family=FAMILY)
FINAL = '<think>ok</think>\n<answer>{"visual_quality": 4, "text_alignment": 3, "physical_consistency": 5, "overall": 3}</answer>'


@pytest.fixture(scope="module")
def ckpt(tiny_qwen25vl_dir, tmp_path_factory):
    torch.manual_seed(0)
    model = ThinkThenScore.from_base(tiny_qwen25vl_dir, freeze_vision=True, sampling=SAMPLING)
    return model.save_pretrained(tmp_path_factory.mktemp("grpo") / "sft")


@pytest.fixture(scope="module")
def data(make_mp4, tmp_path_factory):
    root = tmp_path_factory.mktemp("grpo_data")
    videos = [make_mp4(f"g{i}.mp4", num_frames=16, height=64, width=64, fps=8) for i in range(2)]
    scores = [{"visual_quality": 5, "text_alignment": 4, "physical_consistency": 5, "overall": 4},
              {"visual_quality": 2, "text_alignment": 4, "physical_consistency": 3, "overall": 2}]  # fmt: skip
    with open(root / "pointwise.jsonl", "w") as f:
        for i, (v, s) in enumerate(zip(videos, scores, strict=True)):
            f.write(json.dumps({"id": str(i), "video": str(v), "prompt": "a red square", "scores": s}) + "\n")
    pair = {"id": "p0", "prompt": "a red square", "video_a": str(videos[0]), "video_b": str(videos[1]),
            "preference": "A", "dims": {"visual_quality": "A", "text_alignment": "tie", "overall": "A"}}  # fmt: skip
    (root / "pairs.jsonl").write_text(json.dumps(pair) + "\n")
    return root


def run_config(ckpt, data, out, **train):
    return config_from_dict(
        GRPORunConfig,
        {
            "model": {"checkpoint": str(ckpt)},
            "data": {"train": str(data / "pointwise.jsonl"), "pairs": str(data / "pairs.jsonl"), "frame_cache": "off"},
            "rewards": {"format": 0.5, "calibration": 0.5},
            "rollout": {"max_turn_tokens": 48},
            "head": {"weight": 1.0},
            "train": {"output_dir": str(out), "use_cpu": True, "bf16": False, "max_steps": 2, "per_device_train_batch_size": 4,
                      "num_generations": 2, "max_completion_length": 160, "learning_rate": 1e-2,
                      "logging_steps": 1, "save_strategy": "no", "report_to": "none", "seed": 0,
                      "gradient_checkpointing": False, "dataloader_num_workers": 0, **train},
        },
    )  # fmt: skip


@pytest.fixture(scope="module")
def trainer(ckpt, data, tmp_path_factory):
    cfg = run_config(ckpt, data, tmp_path_factory.mktemp("grpo_out"))
    trainer = grpo.build(cfg)[1]
    trainer.current_gradient_accumulation_steps = 1  # set by train(); the loss pass reads it
    return trainer


def scripted(trainer, scripts):
    """Scripted turns per rollout (scripts[rollout % len][turn]) instead of sampling from the model."""
    tok = trainer.processing_class.tokenizer
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    turns = {}

    def generate(batch):
        out = []
        for rid, cap in zip(batch.rollout_ids, batch.max_new_tokens, strict=True):
            n = turns.get(rid, 0)
            turns[rid] = n + 1
            ids = tok(scripts[rid % len(scripts)][n], add_special_tokens=False)["input_ids"] + [im_end]
            out.append((ids[:cap], None))
        return out

    return generate


def rows(trainer, g=2):
    ds = trainer.train_dataset
    return [dict(ds[i]) for i in range(2) for _ in range(g)]  # the pair: A x G, then B x G


def test_train_end_to_end_writes_state_and_moves_the_head(ckpt, data, tmp_path, capsys):
    out = tmp_path / "run"
    before = ThinkThenScore.from_pretrained(ckpt).head.state_dict()
    cfg_path = tmp_path / "grpo.yaml"
    import yaml

    from cot_rm.config import dump_config

    cfg_path.write_text(yaml.safe_dump(dump_config(run_config(ckpt, data, out))))
    saving = ["train.save_strategy=steps", "train.save_steps=1"]
    assert grpo.main(Namespace(config=str(cfg_path), overrides=["train.max_steps=1", *saving])) == 0
    assert (out / "checkpoint-1" / "head.safetensors").is_file()
    # a second launch resumes from checkpoint-1 and runs the one step left
    assert grpo.main(Namespace(config=str(cfg_path), overrides=["train.max_steps=2", *saving])) == 0
    err = capsys.readouterr().err
    assert (
        f"resuming from {out / 'checkpoint-1'}" in err
        and "pointwise data: the head's calibration is SFT's" in err
    )
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and (out / "checkpoint-2").is_dir()
    assert any("reward" in e for e in state["log_history"])
    assert any("dynamic_sampling/dropped_groups" in e for e in state["log_history"])
    after = ThinkThenScore.from_pretrained(out).head.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    # the same launch again: the run is finished, nothing is trained (it used to take a third step)
    assert grpo.main(Namespace(config=str(cfg_path), overrides=["train.max_steps=2", *saving])) == 0
    assert "nothing to do" in capsys.readouterr().err and not (out / "checkpoint-3").exists()


def test_the_moved_head_is_calibrated_again_on_val_traces(ckpt, tmp_path):
    from types import SimpleNamespace

    from cot_rm.schema import read_jsonl
    from cot_rm.train.data import load_traces
    from data_synthesis.pipeline import SynthConfig, synthesize
    from data_synthesis.teachers.oracle import OracleTeacher
    from data_synthesis.toyworld.world import ToyConfig, build

    build(tmp_path / "toy", ToyConfig(n=24, seed=3), progress=False)
    synthesize(read_jsonl(tmp_path / "toy" / "pointwise.jsonl"), OracleTeacher(), tmp_path / "sft.jsonl",
               SynthConfig(first_turn=SAMPLING), progress=False)  # fmt: skip
    assert sum(t.get("split") == "val" for t in load_traces(tmp_path / "sft.jsonl")) >= 2
    model = ThinkThenScore.from_pretrained(ckpt)
    model.config.calibration = {d: {"mean": 9.0, "std": 9.0} for d in model.config.dimensions}  # stale
    trainer = SimpleNamespace(accelerator=SimpleNamespace(state=SimpleNamespace()))
    cfg = SimpleNamespace(data=SimpleNamespace(train=str(tmp_path / "sft.jsonl"), pairs=None))
    grpo.recalibrate(model, trainer, cfg, tmp_path)
    saved = json.loads((tmp_path / "cot_rm.json").read_text())["calibration"]
    assert set(saved) == set(model.config.dimensions) and all(c["mean"] != 9.0 for c in saved.values())


def test_kl_reference_is_the_frozen_starting_checkpoint(ckpt, data, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="beta must be >= 0"):
        run_config(ckpt, data, tmp_path, beta=-0.1)
    cfg = run_config(ckpt, data, tmp_path / "kl", beta=1.0)
    cfg.dynamic_sampling = False  # identical scripted rollouts: zero advantages, only the KL term is left
    model, trainer, _ = grpo.build(cfg)
    trainer.current_gradient_accumulation_steps = 1
    ref = trainer.ref_model
    assert ref is not model and trainer.beta == 1.0 and trainer.ref_cache is not None
    assert not any(p.requires_grad for p in ref.parameters()) and not ref.training
    start = {k: v.clone() for k, v in ref.state_dict().items()}
    lm = [p for n, p in model.vlm.named_parameters() if p.requires_grad and ".visual." not in f".{n}"]
    torch.manual_seed(0)
    with torch.no_grad():  # move the policy's language model away from the reference
        for p in lm:
            p.add_(torch.randn_like(p) * 0.02)
    monkeypatch.setattr(trainer, "_turn_generator", lambda _m: scripted(trainer, [[FINAL]]))
    batch = trainer._generate_and_score_completions(rows(trainer))
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    k = batch["completion_ids"].shape[1]

    def kl() -> float:  # TRL's estimator against the reference's log-probs, over the completion tokens
        with torch.no_grad():
            logps, _, _ = trainer._get_per_token_logps_and_entropies(model, ids, mask, k)
        d = batch["ref_per_token_logps"] - logps
        return float(((d.exp() - d - 1) * batch["completion_mask"]).sum() / batch["completion_mask"].sum())

    with torch.no_grad():  # the reference's log-probs are the starting checkpoint's
        fresh = ThinkThenScore.from_pretrained(ckpt)
        grpo.add_fused_lm_head(
            fresh.base_vlm, temperature=trainer.temperature, outputs=("log_probs", "entropy")
        )
        want, _, _ = trainer._get_per_token_logps_and_entropies(fresh, ids, mask, k)
    torch.testing.assert_close(batch["ref_per_token_logps"], want, atol=1e-5, rtol=0)
    before = kl()
    assert before > 1e-3
    model.train()
    model.zero_grad()
    trainer._compute_loss(model, batch).backward()
    with torch.no_grad():
        for p in lm:
            p.sub_(0.05 * p.grad)
    assert kl() < before  # the KL term's gradient points back toward the reference
    assert all(torch.equal(start[k], v) for k, v in ref.state_dict().items())
    assert trainer.ref_cache.stats()["misses"] > 0
    args = GRPOConfig(output_dir=str(tmp_path / "x"), beta=0.04, use_cpu=True, report_to="none")
    with pytest.raises(ValueError, match="pass ref_model"):
        grpo.CotRmGRPOTrainer(model, [], args, None, None, None)


def test_vllm_backends_are_refused_where_they_cannot_run(ckpt, data, tmp_path):
    cfg = run_config(ckpt, data, tmp_path)
    cfg.rollout.backend = "vllm_colocate"  # GPU only: vLLM is not importable in the trainer env here
    with pytest.raises(ImportError, match="vLLM is not importable"):
        grpo.build(cfg)
    cfg.rollout.backend = "vllm_server"  # the URL is required (tests/test_grpo_vllm.py runs a server)
    with pytest.raises(ValueError, match="vllm_url"):
        cfg.rollout.__post_init__()


def test_tool_frames_reach_the_loss_pass_and_head_is_detached(trainer, monkeypatch):
    call = "<think>look</think>\n" + format_tool_call([1, 5])
    monkeypatch.setattr(trainer, "_turn_generator", lambda _m: scripted(trainer, [[call, FINAL], [FINAL]]))
    trainer.model.train()
    batch = trainer._generate_and_score_completions(rows(trainer))
    assert trainer._batch.tool_calls == [1, 0, 1, 0]
    seen = []
    inner = trainer.model.base_vlm.model
    hook = inner.register_forward_pre_hook(lambda _m, _a, kw: seen.append(dict(kw)), with_kwargs=True)
    try:
        trainer.model.zero_grad()
        trainer._compute_loss(trainer.model, batch)
        rewards, _ = trainer._head_out
    finally:
        hook.remove()
    assert trainer._metrics["train"]["head/pair_loss"][-1] > 0  # A and B rollouts of the pair: Bradley-Terry
    kw = seen[-1]
    pad = trainer.processing_class.image_token_id
    merge = trainer.processing_class.image_processor.merge_size
    rows_px = int(kw["image_grid_thw"].prod(-1).sum())
    assert kw["pixel_values"].shape[0] == rows_px > 0
    assert int((kw["input_ids"] == pad).sum()) == rows_px // merge**2  # 2 rollouts x 2 frames
    # head.grad_to_policy false: the head loss alone leaves every VLM parameter without gradient
    trainer.model.zero_grad()
    rewards.sum().backward()
    assert all(p.grad is None or not p.grad.any() for p in trainer.model.vlm.parameters())
    assert trainer.model.head.net[-1].weight.grad.abs().sum() > 0


def test_vision_cache_gives_identical_log_probs(trainer, monkeypatch):
    monkeypatch.setattr(trainer, "_turn_generator", lambda _m: scripted(trainer, [[FINAL]]))
    trainer.model.eval()
    batch = trainer._generate_and_score_completions(rows(trainer))
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    k = batch["completion_ids"].shape[1]
    trainer._mm = (batch["mm_rows"], batch["key_hints"])
    with torch.no_grad():
        cached, ent, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, k, 2, True)
        head_cached = trainer._head_out[0]
        cache, trainer.vision_cache = trainer.vision_cache, None
        cache.remove()
        try:
            plain, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, k, 2, True)
            head_plain = trainer._head_out[0]
        finally:
            trainer.vision_cache = cache.install()
    assert cache.stats()["hits"] > 0
    torch.testing.assert_close(cached, plain, atol=1e-6, rtol=0)
    torch.testing.assert_close(head_cached, head_plain, atol=1e-6, rtol=0)
    assert ent.shape == cached.shape and (cached <= 0).all()
    trainer.model.train()


def test_zero_variance_group_is_dropped_and_counted(trainer, monkeypatch):
    monkeypatch.setattr(trainer, "_turn_generator", lambda _m: scripted(trainer, [[FINAL], ["no answer"]]))
    trainer.model.train()
    before = len(trainer._metrics["train"]["dynamic_sampling/dropped_groups"])
    batch = trainer._generate_and_score_completions(rows(trainer))
    # rollouts alternate a judgment and no answer: both groups vary, nothing is dropped
    assert trainer._metrics["train"]["dynamic_sampling/dropped_groups"][before:] == [0.0]
    monkeypatch.setattr(
        trainer, "_turn_generator", lambda _m: scripted(trainer, [[FINAL], [FINAL], ["x"], ["y"]])
    )
    batch = trainer._generate_and_score_completions(rows(trainer))
    assert trainer._metrics["train"]["dynamic_sampling/dropped_groups"][-1] == 2.0
    assert batch["tool_mask"].sum() == 0 and batch["num_items_in_batch"] == 0
    monkeypatch.setattr(
        trainer, "_turn_generator", lambda _m: scripted(trainer, [[FINAL], [FINAL], [FINAL], ["y"]])
    )
    batch = trainer._generate_and_score_completions(rows(trainer))
    assert trainer._metrics["train"]["dynamic_sampling/dropped_groups"][-1] == 1.0
    kept = batch["completion_mask"] * batch["tool_mask"]
    assert kept[:2].sum() == 0 and kept[2:].sum() > 0 and batch["num_items_in_batch"] == kept.sum()


def test_head_loss_is_scaled_for_gradient_accumulation(trainer, monkeypatch):
    from trl.trainer.utils import split_tensor_dict

    monkeypatch.setattr(trainer, "_turn_generator", lambda _m: scripted(trainer, [[FINAL]]))
    trainer.model.train()
    batch = trainer._generate_and_score_completions(rows(trainer))
    batch["pair_id"] = [None] * 4  # pointwise only, so that each half holds complete targets
    weight = trainer.model.head.net[-1].weight

    def head_grad(chunks, ga):
        trainer.model.zero_grad()
        trainer.current_gradient_accumulation_steps = ga
        for chunk in chunks:
            trainer._compute_loss(trainer.model, chunk).backward()
        return weight.grad.clone()

    try:
        full = head_grad([batch], 1)  # GA=1 x B=4
        halves = head_grad(split_tensor_dict(batch, 2), 2)  # GA=2 x B=2
    finally:
        trainer.current_gradient_accumulation_steps = 1
    assert full.abs().sum() > 0
    torch.testing.assert_close(full, halves, atol=1e-5, rtol=1e-4)


def test_rows_are_checked_against_the_checkpoint_up_front(data, tmp_path, capsys):
    """Labels the checkpoint does not score, labels off its scale, missing videos and a bad first line
    are one-line errors before any rollout; pairs that cannot be used are counted aloud."""
    from types import SimpleNamespace

    from cot_rm.protocol import JudgeSpec
    from cot_rm.train.grpo.trainer import load_rows

    rows = [json.loads(line) for line in (data / "pointwise.jsonl").read_text().splitlines()]
    for r in rows:
        r["video"] = str((data / r["video"]).resolve())

    def load(lines, pairs=None, spec=JudgeSpec()):
        path = tmp_path / "rows.jsonl"
        path.write_text("".join(x if isinstance(x, str) else json.dumps(x) + "\n" for x in lines))
        return load_rows(
            SimpleNamespace(train=str(path), splits=["train"], limit=None, pairs=pairs), {}, spec
        )

    assert len(load(rows)[0]) == 2
    with pytest.raises(ValueError, match=r"labelled on \['sharpness'\], which the checkpoint does not score"):
        load([{**rows[0], "scores": {"sharpness": 3}}])
    with pytest.raises(
        ValueError, match=r"g0.mp4: scores\['visual_quality'\] = 5 is off the judge's 1-3 scale"
    ):
        load(rows, spec=JudgeSpec(score_max=3))
    with pytest.raises(ValueError, match=r"1 videos not found \(e\.g\. .*gone\.mp4\)"):
        load([rows[0], {**rows[1], "video": str(tmp_path / "gone.mp4")}])
    with pytest.raises(ValueError, match=r"rows\.jsonl:2: expected a JSON object, got NoneType"):
        load(["\n", "null\n", rows[0]])
    with pytest.raises(ValueError, match=r"rows\.jsonl:1: invalid JSON"):
        load(["{bad\n"])
    pairs = tmp_path / "pairs.jsonl"
    pair = {
        "prompt": rows[0]["prompt"],
        "video_a": rows[0]["video"],
        "video_b": rows[1]["video"],
        "preference": "A",
    }
    pairs.write_text("".join(json.dumps({"id": f"p{i}", **pair, "prompt": p}) + "\n"
                             for i, p in enumerate([rows[0]["prompt"], "another prompt"])))  # fmt: skip
    capsys.readouterr()
    _, units = load(rows, pairs=str(pairs))
    assert units[0] == (0, 1) and "1 pairs used, 1 not (1: no row for both videos" in capsys.readouterr().err
