"""BadNets-style solid patch at a position drawn per sample."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from bye.attacks.registry import Trigger, register_trigger
from bye.attacks.triggers._common import (
    Colour, check_colour, check_fraction, patch_side, rgb_array, set_field, to_rgb_image,
)


@register_trigger("random_patch")
@dataclass(frozen=True)
class RandomPatch(Trigger):
    """A ``colour`` square (side ``size_fraction`` x the shorter side, at least 1 px) whose
    top-left corner is drawn uniformly from ``rng`` among all places where it fits fully inside
    the image (left first, then top).
    """

    size_fraction: float = 1 / 16
    colour: Colour = (0, 0, 0)

    def __post_init__(self) -> None:
        set_field(self, "size_fraction", check_fraction("size_fraction", self.size_fraction))
        set_field(self, "colour", check_colour("colour", self.colour))

    def apply(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        pixels = rgb_array(image)
        height, width = pixels.shape[:2]
        side = patch_side(width, height, self.size_fraction)
        left = int(rng.integers(0, width - side + 1))
        top = int(rng.integers(0, height - side + 1))
        pixels[top:top + side, left:left + side] = self.colour
        return to_rgb_image(pixels)
