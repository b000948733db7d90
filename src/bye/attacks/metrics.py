"""Image similarity measures for judging how visible a trigger is."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

_EIGHT_BIT_MODES = {"L", "LA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}


def psnr(a: Image.Image, b: Image.Image) -> float:
    """Peak signal-to-noise ratio in dB between two 8-bit images (peak 255), over all channels.

    ``a`` and ``b`` must have the same size and mode; ``ValueError`` otherwise. Returns
    ``math.inf`` for identical images. Higher is more similar; ~30 dB and above is usually
    hard to see.
    """
    if a.size != b.size:
        raise ValueError(f"psnr needs images of the same size, got {a.size} and {b.size}")
    if a.mode != b.mode:
        raise ValueError(f"psnr needs images of the same mode, got {a.mode} and {b.mode}")
    if a.mode not in _EIGHT_BIT_MODES:
        raise ValueError(f"psnr needs 8-bit-per-channel images, got mode {a.mode}")
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    mse = float(np.mean(diff * diff))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(255.0 ** 2 / mse)
