"""Drawing for the toy world: anti-aliased shapes on plain backgrounds, motion tracks and defects.

The planner (`plan.py`) decides WHAT goes wrong and WHERE (types, severities, frame spans); this
module draws it and turns severities into magnitudes. For defects whose visibility depends on geometry
(wall_pass, morphing) it measures the frames where they actually show on the drawn pixels, and a
defect that ends up invisible is dropped, so every annotation is true of the pixels.

Shapes come from signed distance functions with one pixel of anti-aliasing: objects move by sub-pixel
amounts every frame, so slow motion never stair-steps into runs of identical frames (which would look
like a freeze).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Colours in hue order: wrong_colour's severity is the distance on this ring (plan.py).
COLOURS = {
    "red": (220, 40, 40),
    "yellow": (235, 205, 30),
    "green": (40, 170, 60),
    "cyan": (30, 195, 210),
    "blue": (40, 70, 225),
    "purple": (150, 60, 200),
}
BACKGROUNDS = {"white": (255, 255, 255), "black": (0, 0, 0), "grey": (128, 128, 128)}
WALL_COLOURS = {"white": (70, 70, 70), "black": (190, 190, 190), "grey": (35, 35, 35)}
SHAPES = ("circle", "square", "triangle", "diamond")

RADIUS = 0.11  # object "radius" as a fraction of the short side: ~14 px objects in a 64 px frame
SPEED_FRACTION = {"slow": 0.35, "fast": 0.8}  # of the free travel length, covered over the clip
REVERSAL_SPEED = 1.5  # backwards faster than forwards, so a slow reversal still moves visibly
TELEPORT = (0.12, 0.2, 0.3)  # jump, fraction of the short side, by severity
WALL = (0.04, 0.08, 0.13)  # wall thickness, fraction of the short side, by severity
FLICKER = (0.25, 0.45, 0.65)  # blend towards black/white
NOISE = (10.0, 20.0, 35.0)  # gaussian sigma, 0-255 scale
BLUR = (1, 2, 3)  # box radius, applied twice (close to a gaussian)
BLOCK = (0.06, 0.1, 0.14)  # block size, fraction of the short side
BANDING = ((3, 45.0), (4, 70.0), (5, 100.0))  # (bands, amplitude)
MORPH_VISIBLE = 4  # pixels whose coverage a morph must change for its frame to count as showing it


@dataclass
class Scene:
    """What is drawn: the prompt's spec after alignment defects changed it, plus the planned defects.

    Each planned defect is {"type", "dimension", "severity", "params", "frames"}, with "span" (start,
    stop) for span defects; `render` fills in the frames and pixel magnitudes."""

    height: int
    width: int
    num_frames: int
    shape: str
    colour: str
    count: int
    direction: str
    speed: str
    background: str
    defects: list[dict] = field(default_factory=list)
    distractor_wall: bool = False  # a wall off the objects' path, so a wall alone never means wall_pass


@dataclass
class _Layout:
    centres: np.ndarray  # (frames, objects, 2) as (x, y)
    radius: float
    axis: int  # 0: motion along x, 1: along y
    extent: float  # farthest drawn pixel from a centre


def render(scene: Scene, rng: np.random.Generator) -> tuple[list[np.ndarray], list[dict]]:
    """Draw the scene; return uint8 RGB frames and the final defects (frames and params filled in)."""
    by_type = {d["type"]: d for d in scene.defects}
    layout = _layout(scene, by_type, rng)
    wall = _wall(scene, layout, by_type.get("wall_pass"), rng)
    frames, hits, changed = _draw(scene, layout, wall, by_type)
    if "wall_pass" in by_type:
        by_type["wall_pass"]["frames"] = np.flatnonzero(hits).tolist()
    if "morphing" in by_type:
        by_type["morphing"]["frames"] = np.flatnonzero(changed).tolist()
    for d in scene.defects:
        if d["dimension"] == "visual_quality":
            _visual(frames, d, scene.background, rng)
    out = [np.clip(np.rint(f), 0, 255).astype(np.uint8) for f in frames]
    return out, [d for d in scene.defects if d["frames"]]


# ---- motion -------------------------------------------------------------------------------------------


def layout_centres(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """(frames, objects, 2): the centres `render` draws, given the rng as `render` receives it."""
    return _layout(scene, {d["type"]: d for d in scene.defects}, rng).centres


def _layout(scene: Scene, by_type: dict, rng: np.random.Generator) -> _Layout:
    short = min(scene.height, scene.width)
    r = RADIUS * short
    ext = 1.35 * r + 1.0  # triangle apex / diamond tip plus the anti-aliased pixel
    axis = 0 if scene.direction in ("left", "right") else 1
    sign = -1.0 if scene.direction in ("left", "up") else 1.0
    along_len, perp_len = (scene.width, scene.height) if axis == 0 else (scene.height, scene.width)
    lo, hi = ext + 1.0, along_len - ext - 1.0
    offs = rng.uniform(-r / 2, r / 2, scene.count) if scene.count > 1 else np.zeros(1)
    steps, jumps = _steps(scene, by_type, short)
    base = SPEED_FRACTION[scene.speed] * (hi - lo) / max(scene.num_frames - 1, 1)
    track = _fit(steps * base, jumps, offs, hi - lo)
    if "teleport" in by_type:
        t = by_type["teleport"]["params"]["to_frame"]
        by_type["teleport"]["params"]["jump_px"] = round(float(abs(track[t] - track[t - 1])), 1)
    along = sign * track[:, None] + offs[None, :]
    along += rng.uniform(lo - along.min(), max(lo - along.min(), hi - along.max()))
    perp = _lanes(scene.count, ext, perp_len, rng)
    perp = np.broadcast_to(perp, along.shape)
    xy = np.stack([along, perp], -1) if axis == 0 else np.stack([perp, along], -1)
    return _Layout(xy, r, axis, ext)


def _steps(scene: Scene, by_type: dict, short: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame multipliers of the base velocity (step into frame i) and one-off jumps."""
    n = scene.num_frames
    steps = np.ones(n)
    steps[0] = 0.0
    jumps = np.zeros(n)
    for kind, mult in (("freeze", 0.0), ("reversal", -REVERSAL_SPEED)):
        if kind in by_type:
            steps[slice(*by_type[kind]["span"])] = mult
    if "freeze" in by_type:  # the span's first frame is the held one: it still moves in
        steps[by_type["freeze"]["span"][0]] = 1.0
    if "speed_change" in by_type:
        d = by_type["speed_change"]
        steps[slice(*d["span"])] = d["params"]["factor"]
    if "teleport" in by_type:
        d = by_type["teleport"]
        sign = 1.0 if d["params"]["direction"] == "forward" else -1.0
        jumps[d["params"]["to_frame"]] = sign * TELEPORT[d["severity"] - 1] * short
    return steps, jumps


def _fit(steps: np.ndarray, jumps: np.ndarray, offs: np.ndarray, room: float) -> np.ndarray:
    """Displacement track that fits the frame: slow the base motion down (never the jumps) until it does."""
    spread = offs.max() - offs.min()
    for k in np.linspace(1.0, 0.1, 46):
        track = np.cumsum(steps * k + jumps)
        if track.max() - track.min() + spread <= room:
            return track
    track = np.cumsum(steps * 0.1 + jumps)  # a jump too big for the frame (tiny sizes): shrink it all
    return track * room / max(track.max() - track.min() + spread, 1e-9)


def _lanes(count: int, ext: float, perp_len: int, rng: np.random.Generator) -> np.ndarray:
    """Objects side by side across the motion, spaced so that they never overlap."""
    lo, hi = ext + 1.0, perp_len - ext - 1.0
    if count == 1:
        return np.array([rng.uniform(lo, hi)])
    squeeze = rng.uniform(0.85 if count >= 3 else 0.5, 1.0)
    mid = (lo + hi) / 2
    return mid + (np.linspace(lo, hi, count) - mid) * squeeze


def _wall(scene: Scene, layout: _Layout, planned: dict | None, rng: np.random.Generator):
    """A wall across the motion axis as (start, stop) pixels along it, or None.

    For wall_pass it stands where object 0's centre is at a mid-clip frame, so the objects run into and
    through it; a distractor wall stands beyond the swept range, so nothing touches it."""
    along = layout.centres[..., layout.axis]
    along_len = scene.width if layout.axis == 0 else scene.height
    if planned is not None:
        th = max(2, round(WALL[planned["severity"] - 1] * min(scene.height, scene.width)))
        t = int(rng.integers(int(0.35 * scene.num_frames), int(0.65 * scene.num_frames) + 1))
        start = int(np.clip(round(along[t, 0] - th / 2), 0, along_len - th))
        planned["params"] |= {"wall_px": th, "wall_at": start, "wall": _wall_orientation(layout.axis)}
        return start, start + th
    if not scene.distractor_wall:
        return None
    th = max(2, round(WALL[int(rng.integers(3))] * min(scene.height, scene.width)))
    before = int(np.floor(along.min() - layout.extent)) - 2  # free pixels [0, before)
    after = int(np.ceil(along.max() + layout.extent)) + 2  # free pixels [after, along_len)
    sides = [s for s, ok in ((0, before >= th + 1), (1, along_len - after >= th + 1)) if ok]
    if not sides:
        return None
    if sides[int(rng.integers(len(sides)))] == 0:
        start = int(rng.integers(0, before - th + 1))
    else:
        start = int(rng.integers(after, along_len - th + 1))
    return start, start + th


def _wall_orientation(axis: int) -> str:
    return "vertical" if axis == 0 else "horizontal"


# ---- drawing ------------------------------------------------------------------------------------------


def _draw(scene: Scene, layout: _Layout, wall, by_type: dict):
    """Frames as float arrays, plus per frame: an object overlaps the wall / the morph is visible."""
    n = scene.num_frames
    bg = np.array(BACKGROUNDS[scene.background], np.float32)
    colour = np.array(COLOURS[scene.colour], np.float32)
    weights = _morph_weights(n, by_type.get("morphing"))
    morph_to = by_type["morphing"]["params"]["to_shape"] if "morphing" in by_type else None
    missing = _missing_mask(n, scene.count, by_type.get("missing_object"))
    hits, changed = np.zeros(n, bool), np.zeros(n, bool)
    frames = []
    for i in range(n):
        img = np.empty((scene.height, scene.width, 3), np.float32)
        img[:] = bg
        wall_mask = _paint_wall(img, wall, layout.axis, scene.background)
        for j in range(scene.count):
            if missing[i, j]:
                continue
            cov, box = _coverage(
                scene.shape, layout.centres[i, j], layout.radius, img.shape, morph_to, weights[i]
            )
            if weights[i] > 0:
                plain, _ = _coverage(scene.shape, layout.centres[i, j], layout.radius, img.shape)
                changed[i] |= int((np.abs(cov - plain) > 0.5).sum()) >= MORPH_VISIBLE
            region = img[box]
            region += (colour - region) * cov[..., None]
            if wall_mask is not None:
                hits[i] |= bool((wall_mask[box] & (cov >= 0.5)).any())
        frames.append(img)
    return frames, hits, changed


def _paint_wall(img: np.ndarray, wall, axis: int, background: str) -> np.ndarray | None:
    if wall is None:
        return None
    mask = np.zeros(img.shape[:2], bool)
    if axis == 0:
        mask[:, wall[0] : wall[1]] = True
    else:
        mask[wall[0] : wall[1], :] = True
    img[mask] = WALL_COLOURS[background]
    return mask


def _morph_weights(n: int, planned: dict | None) -> np.ndarray:
    """0 outside the span; inside, 3/4 of the way to the other shape at its ends and all the way between
    (a half-way blend of two similar shapes can differ by too few pixels to see)."""
    w = np.zeros(n)
    if planned is not None:
        start, stop = planned["span"]
        w[start:stop] = 1.0
        w[[start, stop - 1]] = 0.75
    return w


def _missing_mask(n: int, count: int, planned: dict | None) -> np.ndarray:
    mask = np.zeros((n, count), bool)
    if planned is not None:
        mask[slice(*planned["span"]), planned["params"]["object"]] = True
    return mask


def _coverage(shape, centre, r, img_shape, morph_to=None, w=0.0):
    """Anti-aliased coverage (0..1) of one object over its bounding box, and that box as slices."""
    half = int(np.ceil(1.6 * r)) + 2
    cx, cy = float(centre[0]), float(centre[1])
    x0, x1 = max(0, int(cx) - half), min(img_shape[1], int(cx) + half + 1)
    y0, y1 = max(0, int(cy) - half), min(img_shape[0], int(cy) + half + 1)
    dy, dx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dx -= cx
    dy -= cy
    dist = sdf(shape, dx, dy, r)
    if morph_to is not None and w > 0:
        dist = (1 - w) * dist + w * sdf(morph_to, dx, dy, r)
    return np.clip(0.5 - dist, 0.0, 1.0), (slice(y0, y1), slice(x0, x1))


def sdf(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Signed distance (pixels, negative inside) to a shape of about radius r; areas are roughly equal."""
    if shape == "circle":
        return np.hypot(dx, dy) - r
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) - 0.85 * r
    if shape == "diamond":
        return (np.abs(dx) + np.abs(dy) - 1.2 * r) / np.sqrt(2.0)
    if shape == "triangle":  # pointing up, centroid at the centre, circumradius 1.3 r (y grows downwards)
        edges = np.maximum(np.maximum(dy, 0.866 * dx - 0.5 * dy), -0.866 * dx - 0.5 * dy)
        return edges - 0.65 * r
    raise ValueError(f"unknown shape {shape!r}; choose one of {SHAPES}")


# ---- visual-quality defects -------------------------------------------------------------------------


def _visual(frames: list[np.ndarray], d: dict, background: str, rng: np.random.Generator) -> None:
    sev = d["severity"] - 1
    short = min(frames[0].shape[:2])
    light = np.mean(BACKGROUNDS[background]) > 100  # flashes and bands head away from the background
    if d["type"] == "banding":
        bands, amp = BANDING[sev]
        d["params"] |= {
            "bands": bands,
            "amplitude": amp,
            "orientation": ["vertical", "horizontal"][rng.integers(2)],
        }
    params = {
        "flicker": {"strength": FLICKER[sev], "towards": "black" if light else "white"},
        "noise": {"sigma": NOISE[sev]},
        "blur": {"radius": BLUR[sev]},
        "blockiness": {"block_px": max(2, round(BLOCK[sev] * short))},
    }
    d["params"] |= params.get(d["type"], {})
    for k, i in enumerate(d["frames"]):
        frames[i] = _effect(frames[i], d, k, light, rng)


def _effect(img: np.ndarray, d: dict, k: int, light: bool, rng: np.random.Generator) -> np.ndarray:
    p, kind = d["params"], d["type"]
    if kind == "flicker":  # alternating strong/weak flashes: every frame of the span is off, unevenly
        alpha = p["strength"] * (1.0 if k % 2 == 0 else 0.5)
        return img * (1 - alpha) + (0.0 if light else 255.0) * alpha
    if kind == "noise":
        return img + rng.normal(0.0, p["sigma"], img.shape).astype(np.float32)
    if kind == "blur":
        for axis in (0, 1, 0, 1):
            img = _box(img, p["radius"], axis)
        return img
    if kind == "blockiness":
        return _blocks(img, p["block_px"])
    if kind == "banding":
        return img + _bands(img.shape, p, light)
    raise ValueError(f"unknown visual defect {kind!r}")


def _box(img: np.ndarray, r: int, axis: int) -> np.ndarray:
    pad = [(0, 0)] * img.ndim
    pad[axis] = (r, r)
    padded = np.pad(img, pad, mode="edge")
    n = img.shape[axis]
    return sum(np.take(padded, range(k, k + n), axis=axis) for k in range(2 * r + 1)) / (2 * r + 1)


def _blocks(img: np.ndarray, b: int) -> np.ndarray:
    h, w, c = img.shape
    hp, wp = -(-h // b) * b, -(-w // b) * b
    padded = np.pad(img, ((0, hp - h), (0, wp - w), (0, 0)), mode="edge")
    means = padded.reshape(hp // b, b, wp // b, b, c).mean(axis=(1, 3))
    return np.repeat(np.repeat(means, b, 0), b, 1)[:h, :w]


def _bands(shape, p: dict, light: bool) -> np.ndarray:
    """A stepped brightness ramp (a smooth gradient quantised to a few levels) over the whole frame."""
    h, w, _ = shape
    length = w if p["orientation"] == "vertical" else h
    level = np.floor(np.arange(length) * p["bands"] / length) / (p["bands"] - 1)
    ramp = p["amplitude"] * (-level if light else level)
    ramp = ramp[None, :] if p["orientation"] == "vertical" else ramp[:, None]
    return np.broadcast_to(ramp, (h, w))[..., None].astype(np.float32)
