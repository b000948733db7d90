"""Blended injection (Chen et al., 2017): alpha-blend a fixed random-noise image over the input."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from bye.attacks.registry import Trigger, register_trigger
from bye.attacks.triggers._common import (
    check_fraction, check_int, rgb_array, set_field, to_rgb_image,
)


@lru_cache(maxsize=16)
def noise_pattern(pattern_seed: int, height: int, width: int) -> np.ndarray:
    """The read-only ``(height, width, 3)`` uint8 uniform-noise pattern for a seed and size.

    Drawn from ``np.random.default_rng(pattern_seed)``, so it depends only on the seed and the
    size: every poisoned image of a given size gets the same pattern.
    """
    pattern = np.random.default_rng(pattern_seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    pattern.flags.writeable = False
    return pattern


@register_trigger("blended")
@dataclass(frozen=True)
class Blended(Trigger):
    """``x' = (1 - alpha) * x + alpha * pattern``, rounded to the nearest integer.

    ``pattern`` is a full-size uniform-noise RGB image from :func:`noise_pattern`, generated at
    the input's size from ``pattern_seed``. Uses no per-sample randomness.
    """

    alpha: float = 0.2
    pattern_seed: int = 0

    def __post_init__(self) -> None:
        set_field(self, "alpha", check_fraction("alpha", self.alpha))
        set_field(self, "pattern_seed", check_int("pattern_seed", self.pattern_seed, minimum=0))

    def apply(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        pixels = rgb_array(image).astype(np.float64)
        pattern = noise_pattern(self.pattern_seed, *pixels.shape[:2])
        return to_rgb_image((1.0 - self.alpha) * pixels + self.alpha * pattern)
