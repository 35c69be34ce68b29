"""Test-video content: frames that spell their own index, and simple moving gradients.

`index_frame` / `read_index` draw a frame whose binary block pattern spells its own index, so a test can
check *which* source frame a decoder returned, even after lossy coding and resizing.
"""

from __future__ import annotations

import numpy as np


def index_frame(i: int, height: int = 32, width: int = 32, bits: int = 12) -> np.ndarray:
    """An RGB frame whose grid of black/white blocks spells `i` in binary (robust to lossy coding)."""
    cols = int(np.ceil(np.sqrt(bits)))
    rows = int(np.ceil(bits / cols))
    img = np.zeros((height, width, 3), np.uint8)
    for b in range(bits):
        if (i >> b) & 1:
            r, c = divmod(b, cols)
            img[
                r * height // rows : (r + 1) * height // rows, c * width // cols : (c + 1) * width // cols
            ] = 255
    return img


def read_index(img: np.ndarray, bits: int = 12) -> int:
    """Inverse of `index_frame` for an HxWx3 or 3xHxW image of any size: sample each block's centre."""
    if img.ndim == 3 and img.shape[0] == 3 and img.shape[-1] != 3:
        img = img.transpose(1, 2, 0)
    height, width = img.shape[:2]
    cols = int(np.ceil(np.sqrt(bits)))
    rows = int(np.ceil(bits / cols))
    value = 0
    for b in range(bits):
        r, c = divmod(b, cols)
        y, x = int((r + 0.5) * height / rows), int((c + 0.5) * width / cols)
        if img[y, x].mean() > 127:
            value |= 1 << b
    return value


def gradient_frames(n: int, height: int = 48, width: int = 64) -> list[np.ndarray]:
    """`n` distinct smooth frames (a moving gradient): cheap content that every codec handles."""
    ys, xs = np.mgrid[0:height, 0:width]
    return [
        np.stack([(xs * 4 + i * 8) % 256, (ys * 4) % 256, np.full_like(xs, (i * 16) % 256)], -1).astype(
            np.uint8
        )
        for i in range(n)
    ]
