"""The toy world: labels follow the documented rule, defects are visible in the DECODED video exactly
where annotated, splits hold out colour x shape pairs, and the same seed gives the same bytes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from cot_rm.media.video import probe
from cot_rm.schema import PairRecord, PointwiseRecord, read_jsonl
from data_synthesis.toyworld.plan import DEFECT_TYPES, HELD_OUT, SPLIT_CYCLE, VISIBLE_TYPES, plan_video
from data_synthesis.toyworld.render import BACKGROUNDS, COLOURS, RADIUS, SHAPES, WALL_COLOURS, render, sdf
from data_synthesis.toyworld.world import (
    ToyConfig,
    build,
    encode,
    object_centres,
    overall_score,
    scores_from_defects,
)

META_KEYS = {"spec", "fps", "num_frames", "height", "width", "seed", "prompt_id", "defects", "frame_defects"}
SPEC_KEYS = {"shape", "colour", "count", "direction", "speed", "background"}
DIMS = ("visual_quality", "text_alignment", "physical_consistency")


def decode(path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)]).astype(np.float32)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """48 videos built with two worker processes (the pool path); returns (dir, records, pairs)."""
    out = tmp_path_factory.mktemp("toy")
    build(out, ToyConfig(n=48, seed=3, workers=2), progress=False)
    return out, read_jsonl(out / "pointwise.jsonl"), read_jsonl(out / "pairs.jsonl")


# ---- the rule --------------------------------------------------------------------------------------------


def _d(dim: str, severity: int) -> dict:
    return {"type": DEFECT_TYPES[dim][0], "dimension": dim, "severity": severity, "frames": [0], "params": {}}


@pytest.mark.parametrize(
    "defects, expected",
    [
        ([], (5, 5, 5, 5)),
        ([_d("visual_quality", 1)], (4, 5, 5, 4)),
        ([_d("text_alignment", 3)], (5, 2, 5, 2)),
        ([_d("physical_consistency", 2), _d("physical_consistency", 3)], (5, 5, 1, 1)),  # floored at 1
        ([_d("visual_quality", 1), _d("text_alignment", 2), _d("physical_consistency", 1)], (4, 3, 4, 3)),
    ],
)
def test_scoring_rule_by_hand(defects, expected):
    assert tuple(scores_from_defects(defects)[k] for k in (*DIMS, "overall")) == expected
    assert overall_score({"visual_quality": 4, "text_alignment": 2, "overall": 5}) == 2


def test_records_follow_the_rule(toy):
    out, records, _ = toy
    assert len(records) == 48 and all(isinstance(r, PointwiseRecord) for r in records)
    lines = [json.loads(line) for line in (out / "pointwise.jsonl").read_text().splitlines()]
    assert all(not Path(obj["video"]).is_absolute() and obj["video"].startswith("videos/") for obj in lines)
    for r in records:
        meta = r.meta
        assert set(meta) == META_KEYS and set(meta["spec"]) == SPEC_KEYS, r.id
        n = meta["num_frames"]
        by_frame: dict[str, list[str]] = {}
        for d in meta["defects"]:
            assert set(d) == {"type", "dimension", "severity", "frames", "params"}
            assert d["type"] in DEFECT_TYPES[d["dimension"]] and d["severity"] in (1, 2, 3)
            assert d["frames"] == sorted(set(d["frames"])) and 0 <= d["frames"][0] and d["frames"][-1] < n
            for f in d["frames"]:
                by_frame.setdefault(str(f), []).append(d["type"])
        assert meta["frame_defects"] == {k: by_frame[k] for k in sorted(by_frame, key=int)}
        # The rule, written out independently of the module.
        dims = {
            k: max(1, 5 - sum(d["severity"] for d in meta["defects"] if d["dimension"] == k)) for k in DIMS
        }
        assert r.scores == {**dims, "overall": min(dims.values())}, r.id
    spread = {k: {r.scores[k] for r in records} for k in (*DIMS, "overall")}
    assert {2, 3, 4, 5} <= spread["overall"]  # 5: clean videos are there too


def test_videos_decode_as_annotated(toy):
    _, records, _ = toy
    frozen = 0
    for r in records:
        info, frames = probe(r.video), decode(r.video)
        assert len(frames) == info["total_frames"] == r.meta["num_frames"] and info["fps"] == r.meta["fps"], (
            r.id
        )
        assert frames.shape[1:] == (r.meta["height"], r.meta["width"], 3) == (64, 64, 3)
        assert 1.5 <= info["duration_s"] <= 4 and 8 <= info["fps"] <= 16
        for d in r.meta["defects"]:  # whatever else is going on, a freeze repeats its held frame
            if d["type"] == "freeze":
                held = frames[d["params"]["held_frame"]]
                assert max(np.abs(frames[i] - held).mean() for i in d["frames"]) < 1.0, (
                    r.id
                )  # codec refines a little
                frozen += 1
    assert frozen


def test_object_centres_replay_where_objects_were_drawn(toy):
    """Each replayed centre lies on its object: its pixel differs from the background, in frames no
    defect touches; the centres of the video's last frame, put on its first, mostly do not (a moving
    object has left them), so the check can fail."""
    _, records, _ = toy
    on, off, total = 0, 0, 0
    for r in records:
        centres, frames = object_centres(r.meta, r.split), decode(r.video)
        assert (
            centres.shape[0] == r.meta["num_frames"] and centres.shape[2] == 2 and 1 <= centres.shape[1] <= 3
        )
        for i in (0, len(frames) - 1):
            if str(i) in r.meta["frame_defects"]:
                continue
            background = frames[i, 0, 0]
            for x, y in centres[i]:
                total += 1
                on += np.abs(frames[i, round(y), round(x)] - background).sum() > 60
            for x, y in centres[-1 - i] if abs(centres[-1] - centres[0]).max() > 14 else []:
                off += np.abs(frames[i, round(y), round(x)] - background).sum() <= 60
    assert on == total > 40 and off > 10, (on, total, off)


def test_splits_hold_out_colour_shape_pairs(toy):
    _, records, pairs = toy
    combos = {
        s: {(r.meta["spec"]["colour"], r.meta["spec"]["shape"]) for r in records if r.split == s}
        for s in SPLIT_CYCLE
    }
    assert all(combos.values()), "all three splits present"
    assert combos["test"] <= HELD_OUT and not (combos["train"] | combos["val"]) & HELD_OUT
    for r in records:  # a defect never draws a held-out pair outside test either
        drawn = {d["type"]: d["params"] for d in r.meta["defects"]}
        colour = drawn.get("wrong_colour", {}).get("actual", r.meta["spec"]["colour"])
        shape = drawn.get("wrong_shape", {}).get("actual", r.meta["spec"]["shape"])
        if r.split != "test":
            assert (colour, shape) not in HELD_OUT
    split_of = {r.id: r.split for r in records}
    assert all(split_of[p.meta["id_a"]] == split_of[p.meta["id_b"]] == p.split for p in pairs)


def test_pairs_are_labelled_from_scores(toy):
    _, records, pairs = toy
    by_id = {r.id: r for r in records}
    kinds = {p.meta["kind"] for p in pairs}
    assert kinds == {"same_prompt", "cross_prompt"} and all(isinstance(p, PairRecord) for p in pairs)
    for p in pairs:
        a, b = by_id[p.meta["id_a"]], by_id[p.meta["id_b"]]
        assert (p.video_a, p.video_b, p.meta["scores_a"], p.meta["scores_b"]) == (
            a.video,
            b.video,
            a.scores,
            b.scores,
        )
        for dim in (*DIMS, "overall"):
            want = "A" if a.scores[dim] > b.scores[dim] else "B" if a.scores[dim] < b.scores[dim] else "tie"
            assert p.dims[dim] == want
        assert p.preference == p.dims["overall"]
        same = a.meta["prompt_id"] == b.meta["prompt_id"]
        assert same == (p.meta["kind"] == "same_prompt") and (p.prompt_b is None) == (a.prompt == b.prompt)
        assert p.prompt == a.prompt


# ---- determinism and the CLI ------------------------------------------------------------------------------


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_different_seed_differs(tmp_path):
    build(tmp_path / "a", ToyConfig(n=6, seed=11, workers=1), progress=False)
    build(tmp_path / "b", ToyConfig(n=6, seed=11, workers=2), progress=False)  # worker count must not matter
    build(tmp_path / "c", ToyConfig(n=6, seed=12, workers=1), progress=False)
    a, b, c = (_files(tmp_path / x) for x in "abc")
    assert len(a) == 8 and a == b
    assert a["pointwise.jsonl"] != c["pointwise.jsonl"]
    assert any(a[k] != c[k] for k in a if k.endswith(".mp4"))


def test_cli_writes_the_three_outputs(tmp_path):
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "cot_rm.cli", "toyworld", "--out", str(out), "--n", "8", "--seed", "1"]
    proc = subprocess.run(
        [*cmd, "--workers", "1", "--size", "48x64"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["videos"] == 8 and "toyworld" in proc.stderr  # the progress bar
    records = read_jsonl(out / "pointwise.jsonl")
    assert len(records) == 8 and len(list((out / "videos").glob("*.mp4"))) == 8
    assert read_jsonl(out / "pairs.jsonl") and probe(records[0].video)["height"] == 48
    assert "no test videos; --n 12 or more covers every split" in proc.stderr  # 8 videos: 2 prompts
    bad = subprocess.run([*cmd, "--size", "63"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "even" in bad.stderr
    # A rerun with fewer videos leaves no stale ones behind; unusable --out and --workers are one line.
    again = subprocess.run(
        [*cmd[:-4], "--n", "3", "--workers", "1"], capture_output=True, text=True, timeout=60
    )
    assert again.returncode == 0 and sorted(p.name for p in (out / "videos").iterdir()) == [
        f"00000{i}.mp4" for i in range(3)
    ]
    for extra, says in [(("--workers", "0"), "workers must be >= 1"), (("--size", "4096"), "32 to 1024 px")]:
        bad = subprocess.run([*cmd, *extra], capture_output=True, text=True, timeout=60)
        assert bad.returncode == 2 and says in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
    cmd[cmd.index("--out") + 1] = str(out / "pairs.jsonl")
    bad = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "is a file; give a folder" in bad.stderr


def test_defect_types_limit_the_random_defects(tmp_path):
    types = ("flicker", "wrong_colour", "freeze")
    out = build(tmp_path / "few", ToyConfig(n=24, seed=3, defect_types=types), progress=False)
    drawn = {d["type"] for r in read_jsonl(tmp_path / "few" / "pointwise.jsonl") for d in r.meta["defects"]}
    assert out["videos"] == 24 and drawn and drawn <= set(types)
    # Without a subset the same seed draws from every type.
    every = [r.meta["defects"] for r in _records(tmp_path / "all", 24, 3)]
    assert {d["type"] for ds in every for d in ds} - set(types)
    with pytest.raises(ValueError, match="unknown defect types"):
        ToyConfig(defect_types=("flicker", "sparkle"))
    cmd = [sys.executable, "-m", "cot_rm.cli", "toyworld", "--out", str(tmp_path / "vis"), "--n", "12"]
    proc = subprocess.run([*cmd, "--workers", "1", "--defect-types", "visible"], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    drawn = {d["type"] for r in read_jsonl(tmp_path / "vis" / "pointwise.jsonl") for d in r.meta["defects"]}
    assert drawn and drawn <= set(VISIBLE_TYPES)


def _records(out: Path, n: int, seed: int) -> list[PointwiseRecord]:
    build(out, ToyConfig(n=n, seed=seed), progress=False)
    return read_jsonl(out / "pointwise.jsonl")


# ---- each defect, visible where annotated and nowhere else --------------------------------------------------

BASE = {
    "shape": "circle",
    "colour": "purple",
    "count": 1,
    "direction": "right",
    "speed": "fast",
    "background": "white",
}


def one_defect(tmp_path, kind, severity=1, n=32, seed=11, **spec):
    """Render a 64x64, 8 fps clip with exactly one defect; return decoded frames, the defect, the scene."""
    rng = np.random.default_rng(seed)
    scene, fps = plan_video(rng, BASE | spec, "test", 64, 64, forced=[(kind, severity)], fps=8, num_frames=n)
    scene.distractor_wall = False
    frames, defects = render(scene, rng)
    assert len(defects) == 1 and defects[0]["frames"], kind
    encode(tmp_path / f"{kind}.mp4", frames, fps)
    return decode(tmp_path / f"{kind}.mp4"), defects[0], scene


def split_frames(d, n):
    inside = np.zeros(n, bool)
    inside[d["frames"]] = True
    return inside


def object_mask(frames, background="white"):
    return np.abs(frames - np.array(BACKGROUNDS[background], np.float32)).sum(-1) > 150


def centroids(frames, background="white"):
    m = object_mask(frames, background)
    ys, xs = np.mgrid[: frames.shape[1], : frames.shape[2]]
    area = m.sum((1, 2))
    return np.stack([(m * xs).sum((1, 2)) / area, (m * ys).sum((1, 2)) / area], -1)


def test_flicker(tmp_path):
    frames, d, _ = one_defect(tmp_path, "flicker")
    lum, inside = frames.mean((1, 2, 3)), split_frames(d, len(frames))
    normal = np.median(lum[~inside])
    assert np.abs(lum[inside] - normal).min() > 10 and np.abs(lum[~inside] - normal).max() < 2


def _laplacian(frames):
    f = frames.mean(-1)
    return np.abs(
        4 * f[:, 1:-1, 1:-1] - f[:, :-2, 1:-1] - f[:, 2:, 1:-1] - f[:, 1:-1, :-2] - f[:, 1:-1, 2:]
    ).mean((1, 2))


def test_noise(tmp_path):
    frames, d, _ = one_defect(tmp_path, "noise")
    energy, inside = _laplacian(frames), split_frames(d, len(frames))
    assert energy[inside].min() > 2 * energy[~inside].max()


def test_blur(tmp_path):
    frames, d, _ = one_defect(tmp_path, "blur")
    grad = np.abs(np.diff(frames.mean(-1), axis=2)).max((1, 2))  # the steepest edge
    inside = split_frames(d, len(frames))
    assert grad[inside].max() < 0.75 * grad[~inside].min()


def test_blockiness(tmp_path):
    frames, d, _ = one_defect(tmp_path, "blockiness", severity=2)
    b = d["params"]["block_px"]
    h = frames.shape[1] // b * b
    tiles = frames[:, :h, :h].reshape(len(frames), h // b, b, h // b, b, 3)
    spread = (tiles.max((2, 4)) - tiles.min((2, 4))).max((1, 2, 3))  # inside one block: flat
    inside = split_frames(d, len(frames))
    assert spread[inside].max() < 40 < spread[~inside].min()


def test_banding(tmp_path):
    frames, d, _ = one_defect(tmp_path, "banding")
    axis = 1 if d["params"]["orientation"] == "vertical" else 2  # medians down columns / along rows
    profile = np.median(frames.mean(-1), axis=axis)
    steps = profile.max(1) - profile.min(1)
    inside = split_frames(d, len(frames))
    assert steps[inside].min() > 0.6 * d["params"]["amplitude"] and steps[~inside].max() < 6


def nearest_colour(rgb) -> str:
    return min(COLOURS, key=lambda c: np.abs(np.array(COLOURS[c]) - rgb).sum())


def test_wrong_colour(tmp_path):
    frames, d, _ = one_defect(tmp_path, "wrong_colour", severity=3)
    mask = object_mask(frames)
    assert d["params"] == {"expected": "purple", "actual": "green"} and d["frames"] == list(range(32))
    assert nearest_colour(frames[mask].mean(0)) == "green"


def best_shape(frame, background="white"):
    mask = object_mask(frame[None], background)[0]
    ys, xs = np.nonzero(mask)
    dy, dx = np.mgrid[:64, :64].astype(np.float32)
    dx, dy = dx - xs.mean(), dy - ys.mean()

    def iou(shape):
        t = sdf(shape, dx, dy, RADIUS * 64) < 0
        return (t & mask).sum() / (t | mask).sum()

    return max(SHAPES, key=iou), {s: iou(s) for s in SHAPES}


def test_wrong_shape(tmp_path):
    frames, d, _ = one_defect(tmp_path, "wrong_shape", severity=3, shape="square")
    assert d["params"] == {"expected": "square", "actual": "triangle"}
    assert all(best_shape(f)[0] == "triangle" for f in frames[::5])


def test_wrong_count(tmp_path):
    frames, d, _ = one_defect(tmp_path, "wrong_count", severity=2)
    rows = object_mask(frames).any(2)  # motion is horizontal: objects sit in separate rows
    runs = (np.diff(rows.astype(int), axis=1) == 1).sum(1) + rows[:, 0]
    assert d["params"] == {"expected": 1, "actual": 3} and (runs == 3).all()


def test_wrong_direction(tmp_path):
    frames, d, _ = one_defect(tmp_path, "wrong_direction", severity=3)
    c = centroids(frames)
    assert d["params"]["actual"] == "left" and c[-1, 0] < c[0, 0] - 10 and abs(c[-1, 1] - c[0, 1]) < 1


def test_missing_object(tmp_path):
    frames, d, _ = one_defect(tmp_path, "missing_object", severity=2, count=2)
    area, inside = object_mask(frames).sum((1, 2)), split_frames(d, len(frames))
    normal = np.median(area[~inside])
    assert np.abs(area[inside] / normal - 0.5).max() < 0.15 and np.abs(area[~inside] / normal - 1).max() < 0.1


def along_steps(frames):
    return np.diff(centroids(frames)[:, 0])  # motion is to the right


def test_teleport(tmp_path):
    frames, d, _ = one_defect(tmp_path, "teleport", severity=1)
    steps = np.abs(along_steps(frames))
    t = d["params"]["to_frame"]
    assert d["frames"] == [t - 1, t] and d["params"]["from_frame"] == t - 1
    assert abs(steps[t - 1] - d["params"]["jump_px"]) < 1.5
    assert steps[t - 1] > 4 * np.delete(steps, t - 1).max()


def test_freeze(tmp_path):
    frames, d, _ = one_defect(tmp_path, "freeze", severity=2)
    change = np.abs(np.diff(frames, axis=0)).mean((1, 2, 3))  # change[i]: frame i -> i + 1
    held, frozen = d["params"]["held_frame"], d["frames"]
    assert frozen == list(range(held + 1, d["params"]["to_frame"] + 1))
    still = np.zeros(len(change), bool)
    still[[f - 1 for f in frozen]] = True
    assert change[still].max() < 0.2 and change[~still].min() > 0.5


def test_reversal(tmp_path):
    frames, d, _ = one_defect(tmp_path, "reversal", severity=1)
    steps, inside = along_steps(frames), split_frames(d, len(frames))[1:]
    assert (steps[inside] < -0.5).all() and (steps[~inside] > 0.5).all()


def test_morphing(tmp_path):
    frames, d, _ = one_defect(tmp_path, "morphing", severity=3)
    to = d["params"]["to_shape"]
    inside = split_frames(d, len(frames))
    fits = [best_shape(f) for f in frames]
    own = np.array([iou["circle"] for _, iou in fits])
    assert own[inside].max() < own[~inside].min()  # every annotated frame departs from the circle
    assert sum(fits[i][0] == to for i in d["frames"]) > len(d["frames"]) / 2


def test_wall_pass(tmp_path):
    frames, d, _ = one_defect(tmp_path, "wall_pass", severity=2, background="grey")
    p = d["params"]
    assert p["wall"] == "vertical" and p["wall_px"] == 5
    band = frames[:, :, p["wall_at"] + 1 : p["wall_at"] + p["wall_px"] - 1]  # inner columns: no edge bleed
    off_wall = (np.abs(band - np.array(WALL_COLOURS["grey"])).sum(-1) > 100).sum((1, 2))
    inside = split_frames(d, len(frames))
    assert (off_wall[inside] > 0).sum() >= inside.sum() - 2 and off_wall[~inside].max() == 0
    near = np.abs(frames - np.array(COLOURS["purple"], np.float32)).sum(-1) < 100  # the object, not the wall
    xs = np.arange(64)[None, None, :]
    x = (near * xs).sum((1, 2)) / near.sum((1, 2))  # through, not into: on one side before, the other after
    assert x[0] < p["wall_at"] < p["wall_at"] + p["wall_px"] < x[-1] and not inside[0] and not inside[-1]


def test_speed_change(tmp_path):
    frames, d, _ = one_defect(tmp_path, "speed_change", severity=2)
    steps, inside = along_steps(frames), split_frames(d, len(frames))[1:]
    ratio = np.median(steps[inside]) / np.median(steps[~inside])
    assert d["params"]["factor"] == 3.0 and abs(ratio - 3.0) < 0.5
