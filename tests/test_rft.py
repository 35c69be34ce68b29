"""`cot-rm rft`: the keep and selection rules on hand-written judgments, the sample log, every count of the
summary on a scripted run over a small toy world (draws kept and rejected for each reason, pairs ordered,
misordered, one-sided and skipped), resuming a killed run without duplicate or lost draws, and the command
end to end on a tiny checkpoint (HF sampling, training, a checkpoint `cot-rm judge` loads)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import torch

from cot_rm.media.video import Sampling
from cot_rm.protocol import format_tool_call
from cot_rm.train.rft import trainer as rft
from cot_rm.train.rft.keep import KeepRule, Pair, choose, own_verdict, rank, summarize
from cot_rm.train.rft.samples import SampleLog

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "configs/tiny/rft.yaml"
SAMPLING = Sampling(fps=None, num_frames=4, max_pixels=56 * 56, family="qwen2_5_vl")
DIMS = ("visual_quality", "text_alignment", "physical_consistency", "overall")


def draw(n, answer=None, error=None, tokens=10, frames=(), invalid=0):
    return {"draw": n, "answer": answer, "parse_error": error, "tokens": tokens, "frames_cited": list(frames),
            "invalid_calls": invalid}  # fmt: skip


# ------------------------------------------------------------------------------ the keep rule


def test_pointwise_tolerance_unparseable_and_invalid_calls():
    label = {"visual_quality": 4, "text_alignment": 2, "physical_consistency": None, "overall": 2}
    exact = {"visual_quality": 4, "text_alignment": 2, "physical_consistency": 1, "overall": 2}
    one_off = {**exact, "text_alignment": 3}
    strict, loose = KeepRule(tolerance=0), KeepRule(tolerance=1)
    assert own_verdict(draw(0, exact), label, strict) is None
    assert own_verdict(draw(0, {**exact, "physical_consistency": 5}), label, strict) is None  # unlabelled
    assert own_verdict(draw(0, one_off), label, strict) == "tolerance"
    assert own_verdict(draw(0, one_off), label, loose) is None
    assert own_verdict(draw(0, {**exact, "overall": 4}), label, loose) == "tolerance"  # off by 2
    assert own_verdict(draw(0, {**exact, "overall": 2.5}), label, KeepRule(tolerance=0.5)) is None
    assert own_verdict(draw(0, error="missing_answer"), label, loose) == "unparsed"
    assert own_verdict(draw(0, error="truncated"), label, loose) == "unparsed"
    assert own_verdict(draw(0, exact, invalid=1), label, loose) == "invalid_tool_call"
    assert own_verdict(draw(0, exact, invalid=1), label, KeepRule(allow_invalid_calls=True)) is None


def test_pairs_keep_only_draws_ordered_as_labelled():
    a_label = {"visual_quality": 4, "overall": 3}
    b_label = {"visual_quality": 2, "overall": 3}
    labels = {"a": a_label, "b": b_label}
    rule = KeepRule(tolerance=1)
    draws = {
        "a": [draw(0, {"visual_quality": 3, "overall": 3}), draw(1, {"visual_quality": 5, "overall": 3})],
        "b": [draw(0, {"visual_quality": 3, "overall": 3}), draw(1, {"visual_quality": 2, "overall": 4})],
    }
    # visual quality: A > B; overall: tie (not checked)
    out = choose(labels, draws, [Pair("a", "b", {"visual_quality": "A", "overall": "tie"})], rule)
    # a0 (3) beats no b draw (3, 2 -> only b1); a1 (5) beats both; b0 (3) is beaten by a1 only
    assert all(out.verdicts[k] == "kept" for k in [("a", 0), ("a", 1), ("b", 0), ("b", 1)])
    assert out.pairs == {"used": 1, "ordered": 1}
    # the label says B is better: a1 (5) beats every b draw, a0 (3) loses only to nothing
    out = choose(labels, draws, [Pair("a", "b", {"visual_quality": "B"})], rule)
    assert out.pairs == {"used": 1, "not_ordered": 1} and out.chosen == {}
    assert all(v == "pair_order" for v in out.verdicts.values())
    # the partner has no draw that passes: the pair cannot be checked, each side stands alone
    draws["b"] = [draw(0, error="bad_json")]
    out = choose(labels, draws, [Pair("a", "b", {"visual_quality": "B"})], rule)
    assert out.pairs == {"used": 1, "one_side_only": 1} and set(out.chosen) == {"a"}
    assert out.verdicts[("b", 0)] == "unparsed"
    # without the pair rule a misordering draw is kept
    off = choose(labels, {"a": draws["a"], "b": [draw(0, {"visual_quality": 3, "overall": 3})]},
                 [Pair("a", "b", {"visual_quality": "B"})], KeepRule(tolerance=1, pair_order=False))  # fmt: skip
    assert set(off.chosen) == {"a", "b"} and off.pairs == {}


def test_selection_rules():
    kept = [draw(0, {}, tokens=50, frames=[1]), draw(1, {}, tokens=20), draw(2, {}, tokens=20, frames=[3, 4]),
            draw(3, {}, tokens=80, frames=[1, 2, 3])]  # fmt: skip
    pick = {s: min(kept, key=lambda d, s=s: rank(d, s))["draw"] for s in ("shortest", "most_frames", "first")}
    assert pick == {"shortest": 1, "most_frames": 3, "first": 0}  # shortest: a tie on tokens -> lower draw
    labels = {"a": {"overall": 3}, "b": {"overall": 2}}
    draws = {"a": [draw(0, {"overall": 3}, tokens=90), draw(1, {"overall": 3}, tokens=10)],
             "b": [draw(0, {"overall": 2}, tokens=30), draw(1, {"overall": 3}, tokens=5)]}  # fmt: skip
    out = choose(labels, draws, [Pair("a", "b", {"overall": "A"})], KeepRule(tolerance=1))
    # b1 (3) does not lose to a's 3s: the only ordered couples hold b0; the shortest is (a1, b0)
    assert (out.chosen["a"]["draw"], out.chosen["b"]["draw"]) == (1, 0)
    assert out.verdicts[("b", 1)] == "pair_order"
    summary = summarize(out, labels, draws, KeepRule(tolerance=1), "drop")
    assert summary["kept"] == 3 and summary["rejected"]["pair_order"] == 1 and summary["dropped"] == 0


# ------------------------------------------------------------------------------ the sample log


def test_sample_log_cuts_a_half_written_line_and_refuses_other_settings(tmp_path):
    path = tmp_path / "samples.jsonl"
    log = SampleLog(path, {"temperature": 0.7})
    assert log.load() == {}
    log.append([{"video_id": "v", "draw": 0, "x": 1}, {"video_id": "v", "draw": 1, "x": 2}])
    with open(path, "ab") as fh:  # a kill mid-write
        fh.write(b'{"video_id": "v", "dr')
    again = SampleLog(path, {"temperature": 0.7})
    assert set(again.load()) == {("v", 0), ("v", 1)} and again.cut_bytes > 0
    assert path.read_bytes().endswith(b"\n")
    again.append([{"video_id": "v", "draw": 0, "x": 3}])  # a duplicate key keeps the first
    third = SampleLog(path, {"temperature": 0.7})
    assert third.load()[("v", 0)]["x"] == 1 and third.duplicates == 1
    with pytest.raises(ValueError, match=r"other settings \(temperature 0.7 -> 1.0\)"):
        SampleLog(path, {"temperature": 1.0}).load()
    (tmp_path / "bad.jsonl").write_text('{"cot_rm_rft_samples": 1, "settings": {}}\n[1]\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not a draw"):
        SampleLog(tmp_path / "bad.jsonl", {}).load()


# ----------------------------------------------------------------------- a scripted run's counts


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_qwen25vl_dir):
    """A 24-video toy world, oracle traces of its train and val videos (4 frames of 56x56), and an untrained
    checkpoint with that sampling (the SFT checkpoint RFT starts from)."""
    from cot_rm.model.modeling import ThinkThenScore
    from cot_rm.schema import read_jsonl
    from data_synthesis.pipeline import SynthConfig, synthesize
    from data_synthesis.teachers.oracle import OracleTeacher
    from data_synthesis.toyworld.world import ToyConfig, build

    root = tmp_path_factory.mktemp("rft")
    build(root / "toy", ToyConfig(n=24, seed=0), progress=False)
    recs = [r for r in read_jsonl(root / "toy" / "pointwise.jsonl") if r.split in ("train", "val")]
    synthesize(recs, OracleTeacher(), root / "sft.jsonl", SynthConfig(first_turn=SAMPLING, rationale_free_p=0),
               progress=False)  # fmt: skip
    torch.manual_seed(0)
    ckpt = ThinkThenScore.from_base(tiny_qwen25vl_dir, freeze_vision=True, sampling=SAMPLING)
    ckpt.save_pretrained(root / "sft")
    traces = [json.loads(line) for line in (root / "sft.jsonl").read_text().splitlines()]
    return {"root": root, "ckpt": root / "sft", "train": [t for t in traces if t.get("split") == "train"]}


def overrides(world, out: Path, *extra: str) -> list[str]:
    r = world["root"]
    return [f"model.checkpoint={world['ckpt']}", f"data.train={r / 'sft.jsonl'}", f"data.frame_cache={r / 'frames'}",
            f"data.pairs={r / 'toy' / 'pairs.jsonl'}", "data.eval_pairs=null", f"train.output_dir={out}", "train.logging_steps=1",
            "train.dataloader_num_workers=0", *extra]  # fmt: skip


def scripted(processor, scripts: dict, stop_after: int | None = None):
    """A turn generator that writes scripts[(video path, draw)][turn] (each call holds one video's K draws:
    sampling.batch_size = k). Raises Stop after `stop_after` calls that began new rollouts."""
    tok = processor.tokenizer
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    turns, starts = {}, [0]

    def generate(batch):
        out = []
        if stop_after is not None and all(turns.get((v.path, r), 0) == 0
                                          for v, r in zip(batch.videos, batch.rollout_ids, strict=True)):  # fmt: skip
            if starts[0] == stop_after:
                raise Stop
            starts[0] += 1
        for video, rid, cap in zip(batch.videos, batch.rollout_ids, batch.max_new_tokens, strict=True):
            n = turns.get((video.path, rid), 0)
            turns[(video.path, rid)] = n + 1
            script = scripts.get((video.path, rid), ["hello"])
            ids = tok(script[min(n, len(script) - 1)], add_special_tokens=False)["input_ids"] + [im_end]
            out.append((ids[:cap], None))
        return out

    return generate


class Stop(Exception):
    """The scripted generator's kill."""


def answer(scores: dict, think: str = "ok") -> str:
    return f"<think>{think}</think>\n<answer>{json.dumps({d: scores[d] for d in DIMS})}</answer>"


def plan(world) -> tuple[list[dict], dict, list[dict]]:
    """Six training videos r0..r5 and what each of their 4 draws writes (see test_summary_counts), and
    the pairs file: (r0, r1) as labelled, (r2, r3) against the labels, (r4, r5), one over a video taken
    by another pair, one over a video not judged."""
    by_video = {}
    for t in world["train"]:
        by_video.setdefault(t["video"], t)
    rows = list(by_video.values())
    a, b = next((x, y) for x in rows[2:] for y in rows[2:] if x["scores"]["visual_quality"] > y["scores"]["visual_quality"])  # fmt: skip
    chosen = rows[:2] + [a, b] + [r for r in rows[2:] if r not in (a, b)][:2]
    root = world["root"].resolve()  # as the traces' loader resolves their videos
    path = {i: os.path.normpath(root / t["video"]) for i, t in enumerate(chosen)}
    scripts = {}
    for i, t in enumerate(chosen):
        s = t["scores"]
        off = {**s, "visual_quality": s["visual_quality"] + (1 if s["visual_quality"] < 5 else -1)}
        tool = [
            "<think>Let me look.</think>\n" + format_tool_call([0, 1]),
            answer(s, "frames 0 and 1 look fine"),
        ]
        bad_tool = ["<think>Let me look.</think>\n" + format_tool_call([999]), answer(s)]
        scripts[(path[i], 0)] = [answer(s)]
        scripts[(path[i], 1)] = ["hello"]
        scripts[(path[i], 2)] = bad_tool if i == 5 else [answer(off)]
        scripts[(path[i], 3)] = ["<think>" + "long " * 400] if i == 5 else tool
    for d in range(4):
        scripts[(path[4], d)] = ["hello"]

    def pair(x, y, label):
        return {"id": f"{x['id']}-{y['id']}", "prompt": x["prompt"], "prompt_b": y["prompt"],
                "video_a": x["video"], "video_b": y["video"], "preference": label["overall"], "dims": label,
                "split": "train"}  # fmt: skip

    def as_labelled(x, y):
        return {d: "A" if x["scores"][d] > y["scores"][d] else "B" if x["scores"][d] < y["scores"][d] else "tie"
                for d in DIMS}  # fmt: skip

    flipped = {**as_labelled(a, b), "visual_quality": "B"}
    outsider = next(t for t in world["train"] if t["video"] not in {c["video"] for c in chosen})
    pairs = [pair(chosen[0], chosen[1], as_labelled(chosen[0], chosen[1])), pair(a, b, flipped),
             pair(chosen[4], chosen[5], as_labelled(chosen[4], chosen[5])),
             pair(chosen[0], chosen[4], as_labelled(chosen[0], chosen[4])),
             pair(chosen[1], outsider, as_labelled(chosen[1], outsider))]  # fmt: skip
    return chosen, scripts, pairs


def write_subset(world, chosen, pairs) -> tuple[Path, Path]:
    """The traces file with the six videos first (data.limit=6 judges them) and the pairs file."""
    root = world["root"]
    ids = [c["id"] for c in chosen]
    lines = [json.loads(x) for x in (root / "sft.jsonl").read_text().splitlines()]
    order = sorted(lines, key=lambda t: ids.index(t["id"]) if t["id"] in ids else len(ids))
    (root / "subset.jsonl").write_text("".join(json.dumps(t) + "\n" for t in order))
    (root / "subset_pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    return root / "subset.jsonl", root / "subset_pairs.jsonl"


def run_scripted(world, out, monkeypatch, stop_after=None, extra=()):
    chosen, scripts, pairs = plan(world)
    traces, pairs_path = write_subset(world, chosen, pairs)

    def fake(s, model, processor, family, gen_cfg, out_dir):
        return scripted(processor, scripts, stop_after), None

    monkeypatch.setattr(rft, "turn_generator", fake)
    keys = overrides(world, out, f"data.train={traces}", f"data.pairs={pairs_path}", "data.limit=6",
                     "sampling.k=4", "sampling.batch_size=4", "sampling.max_turn_tokens=200",
                     "keep.selection=most_frames", "train.max_steps=3", *extra)  # fmt: skip
    return rft.main(Namespace(config=CONFIG, overrides=keys, sample_only=False, no_report=True)), chosen


def test_summary_counts_of_a_scripted_run(world, tmp_path, monkeypatch, capsys):
    """Per video, draw 0 gives the label, 1 does not parse, 2 is one off on visual quality, 3 calls the tool
    on frames 0-1 then gives the label. r2/r3's pair is labelled against their scores on visual quality;
    r4 never parses; r5's draw 2 calls the tool on frame 999, its draw 3 runs out of tokens."""
    out = tmp_path / "run"
    status, chosen = run_scripted(world, out, monkeypatch)
    assert status == 0
    summary = json.loads((out / "rft_summary.json").read_text())
    printed = capsys.readouterr()
    start = printed.out.index('{\n  "model"')
    assert json.loads(printed.out[start : printed.out.index("\n}\n", start) + 2]) == summary  # printed whole
    assert "cot-rm rft: 24 judgments of 6 videos: 5 kept; rejected 10 unparsed" in printed.err
    assert summary["model"] == str(world["ckpt"].resolve()) and len(summary["checkpoint_digest"]) == 16
    assert {k: summary[k] for k in ("k", "tolerance", "pair_order", "selection", "fallback")} == {
        "k": 4,
        "tolerance": 0.0,
        "pair_order": True,
        "selection": "most_frames",
        "fallback": "synthesized",
    }
    counts = {k: v for k, v in summary.items() if k not in ("model", "checkpoint_digest", "k", "tolerance",
                                                             "pair_order", "selection", "fallback", "samples",
                                                             "traces")}  # fmt: skip
    assert counts == {
        "videos": 6, "draws": 24, "kept": 5, "keep_rate": round(5 / 24, 4),
        "rejected": {"unparsed": 10, "invalid_tool_call": 1, "tolerance": 4, "pair_order": 4},
        "unparsed_by_reason": {"missing_think": 9, "truncated": 1},
        "off_by_dimension": {"visual_quality": 4},
        "videos_with_kept": 3, "videos_without_kept": 3, "fallback_synthesized": 3, "dropped": 0,
        "pairs": {"used": 3, "ordered": 1, "not_ordered": 1, "one_side_only": 1, "skipped": 2},
        "draws_in_log_before": 0, "draws_made": 24, "cut_lines": 0, "duplicate_lines": 0, "traces_written": 6,
    }  # fmt: skip
    traces = [json.loads(x) for x in (out / "rft_data.jsonl").read_text().splitlines()]
    kept = {t["id"]: t for t in traces if not t.get("rft_fallback")}
    assert set(kept) == {chosen[i]["id"] for i in (0, 1, 5)}
    first = kept[chosen[0]["id"]]  # most_frames: the draw that called the tool and cites frames 0 and 1
    assert first["provenance"]["draw"] == 3 and first["provenance"]["model"] == summary["model"]
    assert first["provenance"]["checkpoint_digest"] == summary["checkpoint_digest"]
    assert first["tool_frames"] == [[0, 1]] and first["frames_cited"] == [0, 1]
    assert [m["role"] for m in first["messages"]] == ["system", "user", "assistant", "tool", "assistant"]
    assert first["scores"] == {d: chosen[0]["scores"][d] for d in DIMS}
    assert kept[chosen[5]["id"]]["provenance"]["draw"] == 0
    state = json.loads((out / "trainer_state.json").read_text())
    lm = [h["lm_loss"] for h in state["log_history"] if "lm_loss" in h]
    assert len(lm) == 3 and all(math.isfinite(v) for v in lm)
    assert (out / "cot_rm.json").is_file() and (out / "report.json").is_file()


def test_a_killed_run_resumes_without_duplicate_or_lost_draws(world, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    with pytest.raises(Stop):  # killed after 2 videos' draws were written
        run_scripted(world, out, monkeypatch, stop_after=2)
    log = out / "samples.jsonl"
    assert len(log.read_text().splitlines()) == 1 + 8
    with open(log, "ab") as fh:  # and in the middle of writing the third's first draw
        fh.write(b'{"video_id": "x", "draw": 0, "ans')
    status, chosen = run_scripted(world, out, monkeypatch)
    assert status == 0
    lines = log.read_text().splitlines()[1:]
    keys = [(json.loads(x)["video_id"], json.loads(x)["draw"]) for x in lines]
    assert len(keys) == len(set(keys)) == 24  # nothing twice
    assert set(keys) == {(c["id"], d) for c in chosen for d in range(4)}  # nothing lost
    summary = json.loads((out / "rft_summary.json").read_text())
    assert (summary["draws_in_log_before"], summary["draws_made"], summary["cut_lines"]) == (8, 16, 1)
    assert summary["kept"] == 5 and summary["rejected"]["unparsed"] == 10  # the same draws as one run
    # a rerun of the finished run draws nothing and trains nothing more
    status, _ = run_scripted(world, out, monkeypatch, stop_after=0)
    assert status == 0 and json.loads((out / "rft_summary.json").read_text())["draws_made"] == 0
    # nor with another keep rule: the checkpoint trained on the traces the old one chose
    status, _ = run_scripted(world, out, monkeypatch, extra=["keep.tolerance=1"])
    assert status == 2 and "trained on traces chosen with other keep.tolerance" in capsys.readouterr().err
    # other sampling settings cannot continue the log
    with pytest.raises(Stop):
        run_scripted(world, tmp_path / "other", monkeypatch, stop_after=1)
    status, _ = run_scripted(world, tmp_path / "other", monkeypatch, extra=["sampling.temperature=0.9"])
    assert status == 2 and "holds draws sampled with other settings (temperature" in capsys.readouterr().err


def test_a_kept_trace_renders_to_the_tokens_its_rollout_drew(world):
    """SFT trains on exactly what was sampled: the kept trace (a tool round, then the answer), rendered and
    encoded by SFT's collator, is the rollout's prompt and completion ids, token for token."""
    from types import SimpleNamespace

    from cot_rm.model.modeling import ThinkThenScore
    from cot_rm.model.processing import encode
    from cot_rm.protocol import JudgeSpec
    from cot_rm.train.data import SFTCollator, load_traces
    from cot_rm.train.rft import data as rft_data
    from cot_rm.train.rft.sampler import make_rollouts, record

    model = ThinkThenScore.from_pretrained(world["ckpt"])
    processor, config = model.processor, model.config
    spec = JudgeSpec.from_dict(config.judge_spec)
    trace = next(t for t in load_traces(world["root"] / "sft.jsonl") if t.get("split") == "train")
    path = trace["video"]
    script = {(path, 0): ["<think>Let me look.</think>\n" + format_tool_call([0, 1]),
                          answer(trace["scores"], "frames 0 and 1 look fine")]}  # fmt: skip
    sizes = SimpleNamespace(max_completion_length=1024, max_turn_tokens=200)
    rollouts = make_rollouts(processor, config, sizes, scripted(processor, script), "off")
    row = {"id": trace["id"], "video": path, "prompt": trace["prompt"], "sampling": trace["sampling"],
           "tool_max_pixels": trace.get("tool_max_pixels"), "trace": trace}  # fmt: skip
    batch = rollouts.run([row])
    drawn = record(batch, 0, row, 0, 0, spec)
    assert drawn["answer"] is not None and drawn["tool_frames"] == [[0, 1]]
    labels = {d: trace["scores"].get(d) for d in spec.dimensions}
    kept = rft_data.kept_trace(row, drawn, labels, spec, path, {"model": "m"})
    collator = SFTCollator(processor, config.family, spec, config.reward_token, cache_dir="off")
    seq = collator.sequence(kept)
    ids = encode(processor, [seq.text], videos=[seq.video], images=seq.images or None)["input_ids"][
        0
    ].tolist()
    assert ids == batch.prompt_ids[0] + batch.completion_ids[0]


# ---------------------------------------------------------------------------------- end to end


def test_cot_rm_rft_end_to_end_then_judge(world, tmp_path):
    """HF sampling from the (untrained) checkpoint, in two steps as on several GPUs (--sample-only, then the
    training, which reads the draws back): its draws run out of tokens, so every video falls back to its
    synthesized trace; the fine-tune trains and the checkpoint judges."""
    out = tmp_path / "rft"
    cmd = [sys.executable, "-m", "cot_rm.cli", "rft", "--config", CONFIG, "--no-report",
           *overrides(world, out, "data.limit=4", "sampling.k=2", "sampling.batch_size=8",
                      "sampling.max_turn_tokens=8", "train.max_steps=4")]  # fmt: skip
    drawn = subprocess.run([*cmd, "--sample-only"], cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert drawn.returncode == 0, drawn.stderr[-4000:]
    assert (out / "rft_data.jsonl").is_file() and not (out / "cot_rm.json").exists()
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stderr[-4000:]
    summary = json.loads((out / "rft_summary.json").read_text())
    assert (summary["videos"], summary["draws"], summary["kept"]) == (4, 8, 0)
    assert (summary["draws_in_log_before"], summary["draws_made"]) == (8, 0)
    assert summary["rejected"]["unparsed"] == 8 and summary["unparsed_by_reason"] == {"truncated": 8}
    assert summary["fallback_synthesized"] == 4 and summary["traces_written"] == 4
    state = json.loads((out / "trainer_state.json").read_text())
    lm = [h["lm_loss"] for h in state["log_history"] if "lm_loss" in h]
    assert len(lm) == 4 and all(math.isfinite(v) for v in lm)
    video = world["root"] / world["train"][0]["video"]
    judged = subprocess.run([sys.executable, "-m", "cot_rm.cli", "judge", "--model", str(out), str(video),
                             "--prompt", "a red circle", "--max-new-tokens", "8"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert judged.returncode == 0, judged.stderr[-3000:]
    assert json.loads(judged.stdout.splitlines()[-1])["scores"] is not None


def test_vllm_backends_are_grpos_and_a_server_run_loads_no_weights(world, tmp_path, monkeypatch, capsys):
    """`vllm_server`: GRPO's server generator, sampling as configured; with --sample-only the weights are
    never loaded (the server holds them). `vllm_colocate` needs vLLM here: refused in one line."""
    from cot_rm.model.modeling import ThinkThenScore
    from cot_rm.train.grpo.vllm import sampling_from_generation_config
    from cot_rm.train.rft import sampler

    seen = {}
    chosen, scripts, _ = plan(world)

    class Server:
        @classmethod
        def from_generation_config(cls, url, processor, family, gen_cfg, **kwargs):
            seen.update(
                url=url, family=family, sampling=sampling_from_generation_config(gen_cfg, processor), **kwargs
            )
            return scripted(processor, scripts)

    def no_weights(*args, **kwargs):
        raise AssertionError("a server run loaded the weights")

    monkeypatch.setattr(sampler, "VLLMServerTurnGenerator", Server)
    monkeypatch.setattr(ThinkThenScore, "from_pretrained", no_weights)
    out = tmp_path / "server"
    keys = overrides(world, out, "data.limit=3", "sampling.k=2", "sampling.backend=vllm_server",
                     "sampling.vllm_url=http://127.0.0.1:9", "sampling.seed=5")  # fmt: skip
    assert rft.main(Namespace(config=CONFIG, overrides=keys, sample_only=True, no_report=True)) == 0
    assert seen["url"] == "http://127.0.0.1:9" and seen["family"] == "qwen2_5_vl" and seen["seed"] == 5
    assert (
        seen["sampling"]["temperature"] == 0.7 and len(seen["sampling"]["logit_bias"]) == 3
    )  # media, reward
    summary = json.loads((out / "rft_summary.json").read_text())
    assert (summary["draws"], summary["draws_made"]) == (6, 6) and not (out / "cot_rm.json").exists()
    monkeypatch.undo()
    keys = overrides(world, tmp_path / "colocate", "data.limit=1", "sampling.backend=vllm_colocate")
    assert rft.main(Namespace(config=CONFIG, overrides=keys, sample_only=False, no_report=True)) == 2
    assert "vLLM is not importable" in capsys.readouterr().err
