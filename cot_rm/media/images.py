"""Images as inline data: one encoder for every place that sends or embeds a frame (the vLLM engine's
requests, GRPO's vLLM rollouts, the OpenAI-compatible teacher, the HTML critique)."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image


def as_pil(image) -> Image.Image:
    """A PIL image from a PIL image or an HWC / CHW uint8 array (or tensor)."""
    if isinstance(image, Image.Image):
        return image
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = arr.transpose(1, 2, 0)
    return Image.fromarray(np.ascontiguousarray(arr))


def image_b64(image, fmt: str = "PNG", quality: int = 85) -> str:
    """The image encoded as `fmt` (PNG: lossless, so the reader sees our exact pixels; JPEG at `quality`
    where size matters more, e.g. a page), base64."""
    buf, img = io.BytesIO(), as_pil(image)
    if fmt.upper() in ("JPG", "JPEG"):
        img.convert("RGB").save(buf, format="JPEG", quality=quality)
    elif fmt.upper() == "PNG":
        img.save(buf, format="PNG", compress_level=1)  # fast: the pixels are the same at any level
    else:
        raise ValueError(f"image format {fmt!r}: PNG or JPEG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def image_data_url(image, fmt: str = "PNG", quality: int = 85) -> str:
    """The image as a `data:image/...;base64,` URL."""
    mime = "jpeg" if fmt.upper() in ("JPG", "JPEG") else fmt.lower()
    return f"data:image/{mime};base64,{image_b64(image, fmt, quality)}"
