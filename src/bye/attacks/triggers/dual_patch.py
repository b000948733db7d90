"""Two solid patches at fixed, symmetric places."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from bye.attacks.registry import Trigger, register_trigger
from bye.attacks.triggers._common import (
    Colour, Position, check_colour, check_fraction, check_positions, patch_origin, patch_side,
    rgb_array, set_field, to_rgb_image,
)


@register_trigger("dual_patch")
@dataclass(frozen=True)
class DualPatch(Trigger):
    """Two ``colour`` squares (side ``size_fraction`` x the shorter side, at least 1 px) at the
    two ``positions``; by default centred on the top-left and bottom-right quadrant centres.
    Positions are named places or ``(x, y)`` fractions for each patch centre, as for
    ``badnets``. Uses no randomness.
    """

    size_fraction: float = 1 / 16
    colour: Colour = (0, 0, 0)
    positions: tuple[Position, ...] = ((0.25, 0.25), (0.75, 0.75))

    def __post_init__(self) -> None:
        set_field(self, "size_fraction", check_fraction("size_fraction", self.size_fraction))
        set_field(self, "colour", check_colour("colour", self.colour))
        positions = check_positions("positions", self.positions)
        if len(positions) != 2:
            raise ValueError(f"dual_patch needs exactly 2 positions, got {len(positions)} (see multi_patch)")
        set_field(self, "positions", positions)

    def apply(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        pixels = rgb_array(image)
        height, width = pixels.shape[:2]
        side = patch_side(width, height, self.size_fraction)
        for position in self.positions:
            left, top = patch_origin(width, height, side, position)
            pixels[top:top + side, left:left + side] = self.colour
        return to_rgb_image(pixels)
