"""Deliberate negatives: decoded frame order, rule labels, pairs, determinism, and loud failures."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from videogen import index_frame, read_index

from cot_rm.media.video import VideoError, probe
from cot_rm.media.writer import write_video
from cot_rm.schema import PointwiseRecord, read_jsonl
from data_synthesis.negatives import (
    KINDS,
    decode_all,
    labelable,
    main,
    make_negatives,
    rescore,
    write_negatives,
)
from data_synthesis.toyworld.world import ToyConfig, build, dimension_scores

DIMS = ("visual_quality", "text_alignment", "physical_consistency")
REAL_SCORES = {"visual_quality": 4, "text_alignment": 5, "physical_consistency": 4, "overall": 3}


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy")
    build(out, ToyConfig(n=16, seed=5, videos_per_prompt=2), progress=False)
    return read_jsonl(out / "pointwise.jsonl")


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """Two 'real' records (no toy meta) whose frames spell their own index: order is checked exactly."""
    root = tmp_path_factory.mktemp("real")
    path = write_video(root / "count.mp4", [index_frame(i, 64, 64) for i in range(20)], 10)
    return [
        PointwiseRecord("real/1", str(path), "a grid of blinking squares", dict(REAL_SCORES), {}, "train"),
        PointwiseRecord("real/2", str(path), "a cat on a sofa", {"visual_quality": 5, "text_alignment": 5}, {}, "train"),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def made(toy, real, tmp_path_factory):
    out = tmp_path_factory.mktemp("neg")
    variants, pairs = make_negatives(toy + real, out, seed=1)
    return out, toy + real, variants, pairs


def _by_kind(variants, kind):
    return [v for v in variants if v.meta["negative"] == kind]


def test_every_kind_is_made(made):
    out, sources, variants, pairs = made
    assert {v.meta["negative"] for v in variants} == set(KINDS)
    assert len(pairs) == len(variants) and len({v.id for v in variants}) == len(variants)
    for v in variants:
        n = v.meta["num_frames"]
        assert {"negative", "source_id", "defects", "frame_defects", "fps", "num_frames"} <= set(v.meta)
        # A reversed toy clip carries a wrong_direction instead (or none, if it now matches its prompt).
        toy_reverse = v.meta["negative"] == "reverse" and "spec" in v.meta
        assert toy_reverse or v.meta["negative"] in {d["type"] for d in v.meta["defects"]}
        for d in v.meta["defects"]:
            assert d["frames"] == sorted(d["frames"]) and 0 <= d["frames"][0] and d["frames"][-1] < n
        if v.meta["negative"] != "prompt_swap":
            info = probe(out / v.video)
            assert info["total_frames"] == n == len(v.meta["order"]) and info["fps"] == v.meta["fps"]


def test_real_video_frame_order_decoded(made, real):
    out, _, variants, _ = made
    for v in variants:
        if v.meta["source_id"] != "real/1" or v.meta["negative"] == "prompt_swap":
            continue
        frames, fps = decode_all(out / v.video)
        assert fps == 10 and [read_index(f) for f in frames] == v.meta["order"]
        order, kind = v.meta["order"], v.meta["negative"]
        if kind == "reverse":
            assert order == list(range(19, -1, -1))
        elif kind == "shuffle":
            assert sorted(order) == list(range(20)) and order != list(range(20))
        else:  # drop: one contiguous chunk of 30% cut out, cited at the cut
            assert len(order) == 14 and order == sorted(order)
            s = v.meta["defects"][0]["params"]["to_frame"]
            assert order[s] - order[s - 1] == 7 and v.meta["defects"][0]["frames"] == [s - 1, s]


def test_toy_reversed_frames_match_source(made):
    out, sources, variants, _ = made
    by_id = {s.id: s for s in sources}
    rev = [v for v in _by_kind(variants, "reverse") if "spec" in v.meta][:3]
    assert rev
    for v in rev:
        src, _ = decode_all(by_id[v.meta["source_id"]].video)
        new, _ = decode_all(out / v.video)
        n = len(src)
        diffs = [np.abs(new[i].astype(float) - src[n - 1 - i]).mean() for i in range(n)]
        assert len(new) == n and max(diffs) < 3.0  # within codec tolerance


def test_real_labels_follow_the_rules(made):
    _, sources, variants, _ = made
    got = {v.meta["negative"]: v.scores for v in variants if v.meta["source_id"] == "real/1"}
    assert got["shuffle"] == {**REAL_SCORES, "physical_consistency": 1, "overall": 1}
    assert got["reverse"] == {**REAL_SCORES, "physical_consistency": 2, "overall": 2}
    assert got["drop"] == {**REAL_SCORES, "physical_consistency": 2, "overall": 2}
    assert got["prompt_swap"] == {**REAL_SCORES, "text_alignment": 1, "overall": 1}
    swap = next(v for v in variants if v.id == "real/1.prompt_swap")
    partner = next(r for r in sources if r.id == swap.meta["prompt_source_id"])
    assert swap.prompt == partner.prompt != "a grid of blinking squares" and partner.split == "train"
    # A record without an overall score gets none; a missing dimension is set to its cap.
    other = {v.meta["negative"]: v.scores for v in variants if v.meta["source_id"] == "real/2"}
    assert other["shuffle"] == {"visual_quality": 5, "text_alignment": 5, "physical_consistency": 1}


def test_rescore_by_hand():
    src = PointwiseRecord("x", "x.mp4", "p", {"visual_quality": 2, "physical_consistency": 5, "overall": 4})
    assert rescore(src, [], {"physical_consistency": 2}) == {
        "visual_quality": 2,
        "physical_consistency": 2,
        "overall": 2,
    }
    assert rescore(src, [], {"text_alignment": 1})["overall"] == 1
    # Own dimension names: the broken dimension is not invented; the cap bounds overall.
    own = PointwiseRecord("y", "y.mp4", "p", {"sharpness": 4, "motion": 3, "overall": 3})
    assert rescore(own, [], {"physical_consistency": 1}) == {"sharpness": 4, "motion": 3, "overall": 1}
    assert labelable(own, "shuffle")
    bare = PointwiseRecord("z", "z.mp4", "p", {"sharpness": 4, "motion": 3})
    assert not labelable(bare, "shuffle") and labelable(
        PointwiseRecord("w", "w.mp4", "p", {"visual_quality": 3}), "drop"
    )


def test_toy_labels_follow_the_toy_rule(made):
    _, sources, variants, _ = made
    by_id = {s.id: s for s in sources}
    caps = {"shuffle": {"physical_consistency": 1}, "drop": {"physical_consistency": 2},
            "prompt_swap": {"text_alignment": 1}, "reverse": {}}  # fmt: skip
    toy = [v for v in variants if "spec" in by_id[v.meta["source_id"]].meta]
    assert {v.meta["negative"] for v in toy} == set(KINDS)
    for v in toy:
        kind = v.meta["negative"]
        dims = dimension_scores([d for d in v.meta["defects"] if d["type"] not in KINDS])
        dims = {k: min(s, caps[kind].get(k, s)) for k, s in dims.items()}
        assert v.scores == {**dims, "overall": min(dims.values())}, v.id
        src = by_id[v.meta["source_id"]]
        if kind == "reverse":  # the drawn direction flips
            wrong = {d["type"]: d["params"] for d in src.meta["defects"]}.get("wrong_direction")
            drawn = wrong["actual"] if wrong else src.meta["spec"]["direction"]
            now = {d["type"]: d["params"] for d in v.meta["defects"]}.get("wrong_direction")
            flipped = {"left": "right", "right": "left", "up": "down", "down": "up"}[drawn]
            assert (now["actual"] if now else src.meta["spec"]["direction"]) == flipped
            assert v.scores["physical_consistency"] == src.scores["physical_consistency"]
        if kind == "prompt_swap":
            assert v.meta.get("spec") != src.meta["spec"] and v.video == os.path.relpath(src.video, made[0])


def test_pairs_are_labelled_from_scores(made):
    out, sources, variants, pairs = made
    by_id = {r.id: r for r in sources + variants}
    for p in pairs:
        a, b = by_id[p.meta["id_a"]], by_id[p.meta["id_b"]]
        assert {a.id, b.id} & {v.id for v in variants} and p.split == a.split == b.split
        for dim in set(a.scores) & set(b.scores):
            want = "A" if a.scores[dim] > b.scores[dim] else "B" if a.scores[dim] < b.scores[dim] else "tie"
            assert p.dims[dim] == want
        decided = {v for v in p.dims.values() if v != "tie"}
        want = p.dims["overall"] if "overall" in p.dims else decided.pop() if len(decided) == 1 else "tie"
        assert p.preference == want and (p.prompt, p.prompt_b or p.prompt) == (a.prompt, b.prompt)
        for video, rec in ((p.video_a, a), (p.video_b, b)):
            assert os.path.samefile(out / video, rec.video if os.path.isabs(rec.video) else out / rec.video)


def test_same_seed_same_output(toy, real, tmp_path):
    sources = toy[:4] + real
    a = make_negatives(sources, tmp_path / "a", kinds=("shuffle", "drop"), seed=3)
    b = make_negatives(sources, tmp_path / "b", kinds=("shuffle", "drop"), seed=3)
    c = make_negatives(sources, tmp_path / "c", kinds=("shuffle", "drop"), seed=4)
    assert a == b and a != c
    files = sorted(p.name for p in (tmp_path / "a" / "videos").iterdir())
    assert files and all(
        (tmp_path / "a/videos" / f).read_bytes() == (tmp_path / "b/videos" / f).read_bytes() for f in files
    )


def test_bad_videos_raise_naming_the_file(tmp_path, real):
    missing = PointwiseRecord("m", str(tmp_path / "nope.mp4"), "p", {"overall": 3})
    with pytest.raises(VideoError, match="nope.mp4"):
        make_negatives([missing], tmp_path / "out", kinds=("shuffle",))
    (tmp_path / "junk.mp4").write_text("not a video")
    junk = PointwiseRecord("j", "junk.mp4", "p", {"overall": 3})
    with pytest.raises(VideoError, match="junk.mp4"):
        make_negatives([junk, real[0]], tmp_path / "out", base_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown negative kind"):
        make_negatives([real[0]], tmp_path / "out", kinds=("mirror",))


def test_static_video_gets_no_temporal_variant(tmp_path, real):
    path = write_video(tmp_path / "still.mp4", [index_frame(5, 64, 64)] * 12, 8)
    still = PointwiseRecord("still", str(path), "a still grid", dict(REAL_SCORES), {}, "train")
    variants, _ = make_negatives([still, real[1]], tmp_path / "out")
    assert {v.meta["negative"] for v in variants if v.meta["source_id"] == "still"} == {"prompt_swap"}


def test_cli_writes_jsonl(toy, tmp_path):
    from cot_rm.schema import write_jsonl

    write_jsonl(
        tmp_path / "in.jsonl",
        [PointwiseRecord(r.id, r.video, r.prompt, r.scores, r.meta, r.split) for r in toy[:3]],
    )
    assert (
        main(["--input", str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "neg"), "--kinds", "reverse"])
        == 0
    )
    variants = read_jsonl(tmp_path / "neg" / "pointwise.jsonl")
    assert len(variants) == 3 and all(Path(v.video).is_file() for v in variants)
    assert len(read_jsonl(tmp_path / "neg" / "pairs.jsonl")) == 3
    assert write_negatives(toy[:1], tmp_path / "neg2", kinds=("drop",)) == {"variants": 1, "pairs": 1}
