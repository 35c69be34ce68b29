"""Stage 0: the toy-world descriptions (hand-written metas), the corpus rule (no held-out combination), and
a short `cot-rm pretrain` run that writes a loadable base with its marker."""

from __future__ import annotations

import json
import random
from pathlib import Path

from cot_rm.cli import main as cli
from cot_rm.train.pretrain.trainer import MARKER, digest, drawn_combinations
from data_synthesis.toyworld.describe import describe, describe_frame, read_description, visible_frames
from data_synthesis.toyworld.plan import HELD_OUT

ROOT = Path(__file__).resolve().parents[1]
SPEC = {
    "shape": "square",
    "colour": "purple",
    "count": 2,
    "direction": "up",
    "speed": "slow",
    "background": "white",
}


def _meta(*defects) -> dict:
    return {"spec": dict(SPEC), "fps": 8, "num_frames": 32, "defects": list(defects)}


def _d(kind, dim, frames, severity=2, **params) -> dict:
    return {"type": kind, "dimension": dim, "severity": severity, "frames": frames, "params": params}


def test_description_of_a_clean_video_is_its_caption():
    assert describe(_meta()) == "Two purple squares on a white background, moving up slowly."


def test_description_says_what_is_drawn_and_when_never_a_verdict():
    meta = _meta(
        _d("wrong_shape", "text_alignment", list(range(32)), 3, expected="square", actual="triangle"),
        _d("flicker", "visual_quality", [8, 9, 10, 11, 12, 13], 3, towards="black"),
        _d("freeze", "physical_consistency", [19, 20, 21]),
    )
    text = describe(meta, frames=[0, 4, 9, 13, 18, 22, 27, 31])
    assert text == (
        "Two purple triangles on a white background, moving up slowly. "
        "Frames 9 and 13: the picture flickers dark (strong)."
    )  # the freeze's frames 19-21 are not among those shown: not named
    for word in ("wrong", "score", "instead", "prompt", "good", "poor", "quality"):
        assert word not in text.lower()
    assert read_description(text) == {"count": 2, "colour": "purple", "shape": "triangle", "background": "white",
                                      "direction": "up", "speed": "slow", "events": {"flicker"}}  # fmt: skip


def test_a_teleport_is_cited_by_the_shown_frames_around_its_jump():
    jump = _d("teleport", "physical_consistency", [15, 16])
    assert visible_frames(jump, [0, 4, 9, 13, 18, 22]) == [13, 18]
    assert "Frames 13 and 18: the squares jump to another place." in describe(
        _meta(jump), [0, 4, 9, 13, 18, 22]
    )


def test_missing_object_and_one_frame_alone():
    gone = _d("missing_object", "text_alignment", [5, 6], count_visible=1)
    meta = _meta(gone, _d("freeze", "physical_consistency", [5, 6]))
    assert describe(meta, [5]) == "Two purple squares on a white background, moving up slowly. " \
        "Frame 5: only one square visible. Frame 5: the squares stand still."  # fmt: skip
    # A frame alone shows no motion: the freeze is not named, the missing square is.
    assert describe_frame(meta, 5) == "Two purple squares on a white background. Only one square visible."
    assert describe_frame(meta, 7) == "Two purple squares on a white background."


def test_unreadable_description_reads_as_nothing():
    got = read_description("purple things everywhere")
    assert got["colour"] is None and got["events"] == set()


def test_morph_targets_count_as_drawn_combinations():
    meta = _meta(_d("morphing", "physical_consistency", [3], to_shape="diamond"))
    meta["spec"]["colour"] = "yellow"
    assert drawn_combinations(meta) == {("yellow", "square"), ("yellow", "diamond")}
    assert drawn_combinations(meta) & HELD_OUT == {("yellow", "diamond")}


def test_short_pretrain_run_writes_a_base_that_sft_loads(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["pretrain", "--config", str(ROOT / "configs" / "tiny" / "pretrain.yaml"),
            f"corpus.folder={tmp_path / 'corpus'}", "corpus.videos=24", "corpus.eval_videos=2",
            f"train.output_dir={out}", f"save_to={tmp_path / 'base'}", "train.max_steps=2",
            "train.per_device_train_batch_size=4", "train.dataloader_num_workers=0", "tower.steps=2",
            "tower.batch_size=4", "tower.motion_weight=1"]  # fmt: skip
    assert cli(args) == 0
    marker = json.loads((tmp_path / "base" / MARKER).read_text())
    assert marker["corpus"]["seed"] == 1001 and marker["weights_sha256"] == digest(
        tmp_path / "base" / "model.safetensors"
    )
    # The end report breaks the events down by kind: [named and shown, named only, shown only] counts.
    from cot_rm.train.pretrain.tower import EVENTS

    report = marker["report"]
    assert set(report["events_by_kind"]) <= set(EVENTS)
    assert all(len(c) == 3 and sum(c) > 0 for c in report["events_by_kind"].values())
    assert set(report["tower"]["slice_event_f1_by_kind"]) <= set(EVENTS)
    assert 0 <= report["tower"]["slice_motion_accuracy"] <= 1  # the motion head's, per slice
    corpus = [json.loads(line) for line in (tmp_path / "corpus" / "pointwise.jsonl").open()]
    assert corpus and all(
        not (drawn_combinations(r["meta"]) & HELD_OUT) for r in corpus if r["split"] != "test"
    )
    # A rerun of the finished run has nothing left to do.
    assert cli(args) == 0
    assert "nothing to do" in capsys.readouterr().err
    from cot_rm.model.modeling import ThinkThenScore

    model = ThinkThenScore.from_base(str(tmp_path / "base"), dims=("visual_quality", "overall"))
    assert model.config.family == "qwen2_5_vl"


def test_slice_events_place_each_event_in_its_temporal_slice():
    from cot_rm.train.pretrain.tower import EVENTS, slice_events

    meta = _meta(
        _d("flicker", "visual_quality", [8, 9, 10, 11, 12, 13], 3, towards="black"),
        _d("teleport", "physical_consistency", [15, 16]),
        _d("freeze", "physical_consistency", [19, 20, 21]),  # no shown frame: absent
    )
    shown = [0, 4, 9, 13, 18, 22, 27, 31]  # slices: (0, 4) (9, 13) (18, 22) (27, 31)
    got = slice_events(meta, shown)
    assert got.shape == (4, len(EVENTS))
    on = {(int(s), EVENTS[int(e)]) for s, e in got.nonzero()}
    # flicker at 9 and 13 (slice 1); the teleport between 13 and 18: slices 1 and 2
    assert on == {(1, "flicker"), (1, "teleport"), (2, "teleport")}

    # Overlapping sampling (f0 f1, f1 f2, ...): an event shows in every slice holding one of its frames,
    # the teleport only in the slice holding both frames around its jump.
    pairs = [0, 4, 4, 9, 9, 13, 13, 18, 18, 22, 22, 27, 27, 31]
    got = slice_events(meta, pairs)
    assert got.shape == (7, len(EVENTS))
    on = {(int(s), EVENTS[int(e)]) for s, e in got.nonzero()}
    assert on == {(1, "flicker"), (2, "flicker"), (3, "flicker"), (3, "teleport")}


def test_tower_collator_targets_name_what_is_drawn(tiny_qwen25vl_dir, tmp_path):
    import torch
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    from cot_rm.train.pretrain.config import CorpusArgs
    from cot_rm.train.pretrain.tower import CLASSES, EVENTS, MOTIONS, TowerCollator, TowerProbe
    from cot_rm.train.pretrain.trainer import DescribeCollator
    from data_synthesis.toyworld.describe import drawn_spec
    from data_synthesis.toyworld.world import ToyConfig, build

    build(tmp_path, ToyConfig(4, 3, 64, 64, workers=1), progress=False)
    rows = [json.loads(line) for line in (tmp_path / "pointwise.jsonl").open()]
    for r in rows:
        r["video"] = str(tmp_path / r["video"])
    processor = AutoProcessor.from_pretrained(tiny_qwen25vl_dir)
    collator = TowerCollator(DescribeCollator(processor, "qwen2_5_vl", CorpusArgs(folder=str(tmp_path))))
    batch = collator([{"example": json.dumps(r)} for r in rows])
    for k in CLASSES:
        assert [list(CLASSES[k])[i] for i in batch[k].tolist()] == [drawn_spec(r["meta"])[k] for r in rows]
    assert batch["events"].shape == (4, 4, len(EVENTS))  # 8 frames: 4 temporal slices
    assert batch["video_grid_thw"].tolist() == [[4, 8, 8]] * 4  # 112 x 112 in 14-pixel patches
    probe = TowerProbe(Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_qwen25vl_dir), 4, tokens=16)
    loss = probe(**batch)["loss"]
    loss.backward()  # the tower learns from these targets; the language model gets no gradient
    assert probe.vlm.model.visual.patch_embed.proj.weight.grad is not None
    assert probe.vlm.lm_head.weight.grad is None
    wide = TowerProbe(probe.vlm, 4, tokens=16, context=1)  # events read beside the neighbouring slices
    assert wide.predict(batch["pixel_values_videos"], batch["video_grid_thw"])[1].shape == (4, 4, len(EVENTS))

    # With the motion head, the loss adds its cross-entropy on each slice's step and the MSE of its length.
    collator.motion = True
    batch = collator([{"example": json.dumps(r)} for r in rows])
    assert batch["motion_dir"].shape == batch["motion_len"].shape == (4, 4)
    moving = TowerProbe(probe.vlm, 4, tokens=16, motion_weight=2.0)
    logits, _ = moving.predict(batch["pixel_values_videos"], batch["video_grid_thw"])
    m = logits["motion"]
    assert m.shape == (4, 4, len(MOTIONS) + 1)
    ce = -m[..., :-1].log_softmax(-1).gather(-1, batch["motion_dir"][..., None]).mean()
    extra = 2.0 * (ce + (m[..., -1] - batch["motion_len"]).pow(2).mean())
    moving.motion_weight = 0.0  # the same heads without the motion term
    without = moving(**batch)["loss"]
    moving.motion_weight = 2.0
    assert torch.allclose(moving(**batch)["loss"], without + extra, atol=1e-5)


def test_motion_of_names_each_step_by_its_larger_axis():
    import torch

    from cot_rm.train.pretrain.tower import motion_of

    # right, left, down (y grows downwards), up, a step under half a pixel (still), a jump to the right
    step = torch.tensor([[2.0, 1.0], [-3.0, 0.0], [0.5, 2.0], [0.0, -4.0], [0.3, -0.4], [12.0, 0.0]])
    got = motion_of(step)
    assert got["motion_dir"].tolist() == [1, 2, 3, 4, 0, 1]
    assert torch.allclose(got["motion_len"], torch.tensor([5**0.5, 3, 4.25**0.5, 4, 0.5, 12]) / 4)


def test_slice_motion_follows_the_drawn_track(tmp_path):
    from cot_rm.media.video import Sampling, sample_indices
    from cot_rm.train.pretrain.tower import MOTIONS, slice_motion
    from data_synthesis.toyworld.describe import drawn_spec
    from data_synthesis.toyworld.world import ToyConfig, build

    build(tmp_path, ToyConfig(12, 5, 64, 64, workers=1), progress=False)
    steady = 0
    for r in map(json.loads, (tmp_path / "pointwise.jsonl").open()):
        n = r["meta"]["num_frames"]
        even = slice_motion(r["meta"], r["split"], sample_indices(n, 1.0, Sampling(fps=None, num_frames=8)))
        overlap = sample_indices(n, 1.0, Sampling(fps=None, num_frames=8, overlap=True))
        assert slice_motion(r["meta"], r["split"], overlap)["motion_dir"].shape == (7,)
        if {d["type"] for d in r["meta"]["defects"]} & {"freeze", "reversal", "teleport", "speed_change"}:
            continue
        # A steady track: every slice steps the drawn way (the wrong direction, if that is what is drawn),
        # by the same length.
        steady += 1
        want = MOTIONS.index(drawn_spec(r["meta"])["direction"])
        assert even["motion_dir"].tolist() == [want] * 4
        assert even["motion_len"].min() > 0.1 and even["motion_len"].max() - even["motion_len"].min() < 0.1
    assert steady >= 3


def test_events_head_reads_neighbouring_slices_in_time_order():
    import torch

    from cot_rm.train.pretrain.tower import with_neighbours

    x = torch.tensor([[[1.0], [2.0], [3.0]]])  # one video, 3 slices, width 1
    assert with_neighbours(x, 0).tolist() == x.tolist()
    assert with_neighbours(x, 1).tolist() == [[[0, 1, 2], [1, 2, 3], [2, 3, 0]]]
    assert with_neighbours(x, 2)[0, 0].tolist() == [0, 0, 1, 2, 3]


SHIPPED = ROOT / "assets" / "tiny-qwen2_5_vl-base"


def test_shipped_base_is_the_one_its_marker_describes():
    marker = json.loads((SHIPPED / MARKER).read_text())
    assert marker["weights_sha256"] == digest(SHIPPED / "model.safetensors")
    assert marker["corpus"]["seed"] == 1001 and marker["rebuild"].startswith("cot-rm pretrain --config")
    assert (SHIPPED / "model.safetensors").stat().st_size < 20 * 2**20
    sft = (ROOT / "configs" / "tiny" / "sft.yaml").read_text()
    assert "base: assets/tiny-qwen2_5_vl-base" in sft


# Measured on the shipped base (toy world seed 11, 240 videos, probes fitted on 168, scored on 72): colour
# 0.986, count 0.778, visual-quality defect shown 0.819 (chance 0.611); a random base of the same shape:
# 0.708, 0.458, 0.611. The thresholds keep a margin of a few videos (one is 0.014) below the shipped base's.
PROBE_THRESHOLDS = {"colour": 0.9, "count": 0.7, "visual_quality_over_chance": 0.15}


def test_shipped_base_sees_colours_and_defects_on_fresh_videos(tmp_path):
    """Linear probes on the shipped base's pooled vision features (eval/perception.py), on a toy world
    it never saw (seed 11, not the corpus's 1001): the drawn colour, the count, and whether the shown
    frames hold a visual-quality defect."""
    from cot_rm.media.video import Sampling
    from data_synthesis.toyworld.world import ToyConfig, build
    from eval.perception import probe_accuracy

    build(tmp_path / "world", ToyConfig(240, 11, 64, 64, workers=1), progress=False)
    sampling = Sampling(fps=None, num_frames=8, min_pixels=12544, max_pixels=12544)
    got = probe_accuracy(SHIPPED, tmp_path / "world", sampling)
    assert got["colour"] >= PROBE_THRESHOLDS["colour"], got
    assert got["count"] >= PROBE_THRESHOLDS["count"], got
    vq_margin = got["visual_quality"] - got["chance"]["visual_quality"]
    assert vq_margin >= PROBE_THRESHOLDS["visual_quality_over_chance"], got


def test_copy_and_quote_samples_never_write_a_held_out_pair():
    from cot_rm.train.pretrain.trainer import copy_sample, random_prompt
    from data_synthesis.toyworld.plan import HELD_OUT

    rng = random.Random(0)
    words = [
        "red",
        "triangle",
        "triangles",
        "yellow",
        "diamond",
        "green",
        "square",
        "blue",
        "circle",
        "moves",
    ]
    for _ in range(300):
        user, assistant = copy_sample(words, rng)
        text = assistant["content"]
        assert user["content"][0]["text"] == f"Repeat exactly: {text}"
        assert not any(f" {c} {s}" in f" {text}" for c, s in HELD_OUT), text
    seen = {random_prompt(rng) for _ in range(300)}
    held = {random_prompt(rng, held_out=True) for _ in range(50)}

    def has_held_out(prompt: str) -> bool:
        return any(f" {c} {s}" in f" {prompt}" for c, s in HELD_OUT)

    assert not any(has_held_out(p) for p in seen) and all(has_held_out(p) for p in held)


def test_quote_scoring_on_hand_written_answers():
    from cot_rm.train.pretrain.trainer import quoted

    prompt = "two yellow diamonds moving left slowly on a white background"
    caption = "Two yellow triangles on a white background, moving left quickly."
    assert quoted(prompt, f'Generation prompt: "{prompt}". {caption}') == (True, True)
    assert quoted(prompt, f'Generation prompt: "two yellow diamonds moving up". {caption}') == (False, True)
    assert quoted(prompt, f'Generation prompt: "two yellow triangles moving left". {caption}') == (
        False,
        False,
    )
    assert quoted(prompt, "I see two yellow diamonds.") == (False, False)  # named, but not in a quote
