"""BadNets (Gu et al., 2017): a solid square patch stamped at a fixed place."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from bye.attacks.registry import Trigger, register_trigger
from bye.attacks.triggers._common import (
    Colour, Position, check_colour, check_fraction, check_position, patch_origin, patch_side,
    rgb_array, set_field, to_rgb_image,
)


@register_trigger("badnets")
@dataclass(frozen=True)
class BadNets(Trigger):
    """A ``colour`` square of side ``size_fraction`` x the shorter image side (at least 1 px).

    ``position`` is a named place ("centre", "bottom_right", "top_left", ...) or an ``(x, y)``
    pair of fractions for the patch centre; the patch is kept fully inside the image.
    Uses no randomness: every poisoned sample gets the identical patch.
    """

    size_fraction: float = 1 / 16
    colour: Colour = (0, 0, 0)
    position: Position = "centre"

    def __post_init__(self) -> None:
        set_field(self, "size_fraction", check_fraction("size_fraction", self.size_fraction))
        set_field(self, "colour", check_colour("colour", self.colour))
        set_field(self, "position", check_position("position", self.position))

    def apply(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        pixels = rgb_array(image)
        height, width = pixels.shape[:2]
        side = patch_side(width, height, self.size_fraction)
        left, top = patch_origin(width, height, side, self.position)
        pixels[top:top + side, left:left + side] = self.colour
        return to_rgb_image(pixels)
