"""A black-and-white checkerboard texture patch at a fixed place."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from bye.attacks.registry import Trigger, register_trigger
from bye.attacks.triggers._common import (
    Colour, Position, check_colour, check_fraction, check_int, check_position, patch_origin,
    patch_side, rgb_array, set_field, to_rgb_image,
)


@register_trigger("checkerboard")
@dataclass(frozen=True)
class Checkerboard(Trigger):
    """A square checkerboard of side ``size_fraction`` x the shorter image side (at least 1 px).

    Cells are ``cell_size`` x ``cell_size`` pixels, alternating ``light`` and ``dark``; the
    patch's top-left cell is ``light``. ``position`` as for ``badnets`` (default bottom right,
    flush with the corner). Uses no randomness.
    """

    size_fraction: float = 1 / 8
    cell_size: int = 1
    position: Position = "bottom_right"
    light: Colour = (255, 255, 255)
    dark: Colour = (0, 0, 0)

    def __post_init__(self) -> None:
        set_field(self, "size_fraction", check_fraction("size_fraction", self.size_fraction))
        set_field(self, "cell_size", check_int("cell_size", self.cell_size, minimum=1))
        set_field(self, "position", check_position("position", self.position))
        set_field(self, "light", check_colour("light", self.light))
        set_field(self, "dark", check_colour("dark", self.dark))

    def pattern(self, side: int) -> np.ndarray:
        """The ``(side, side, 3)`` uint8 checkerboard texture."""
        cells = np.arange(side) // self.cell_size
        is_light = (cells[:, None] + cells[None, :]) % 2 == 0
        return np.where(is_light[..., None], np.array(self.light, np.uint8), np.array(self.dark, np.uint8))

    def apply(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        pixels = rgb_array(image)
        height, width = pixels.shape[:2]
        side = patch_side(width, height, self.size_fraction)
        left, top = patch_origin(width, height, side, self.position)
        pixels[top:top + side, left:left + side] = self.pattern(side)
        return to_rgb_image(pixels)
