"""Solid patches on a subset, drawn per sample, of a fixed set of places."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from bye.attacks.registry import Trigger, register_trigger
from bye.attacks.triggers._common import (
    Colour, Position, check_colour, check_fraction, check_int, check_positions, patch_origin,
    patch_side, rgb_array, set_field, to_rgb_image,
)


@register_trigger("multi_patch")
@dataclass(frozen=True)
class MultiPatch(Trigger):
    """``colour`` squares (side ``size_fraction`` x the shorter side, at least 1 px) on some of
    the fixed ``positions`` (default: the four quadrant centres).

    Per sample, the number of patches ``n`` is drawn uniformly from ``min_patches`` to
    ``max_patches`` inclusive, then ``n`` distinct positions are drawn without replacement,
    both from ``rng``.
    """

    size_fraction: float = 1 / 16
    colour: Colour = (0, 0, 0)
    positions: tuple[Position, ...] = ((0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75))
    min_patches: int = 1
    max_patches: int = 2

    def __post_init__(self) -> None:
        set_field(self, "size_fraction", check_fraction("size_fraction", self.size_fraction))
        set_field(self, "colour", check_colour("colour", self.colour))
        set_field(self, "positions", check_positions("positions", self.positions))
        low = check_int("min_patches", self.min_patches, minimum=1)
        high = check_int("max_patches", self.max_patches, minimum=1)
        if not low <= high <= len(self.positions):
            raise ValueError(
                f"need 1 <= min_patches <= max_patches <= len(positions) = {len(self.positions)}, "
                f"got min_patches={low}, max_patches={high}"
            )
        set_field(self, "min_patches", low)
        set_field(self, "max_patches", high)

    def choose(self, rng: np.random.Generator) -> list[int]:
        """The sorted indices into ``positions`` that get a patch, drawn from ``rng``."""
        count = int(rng.integers(self.min_patches, self.max_patches + 1))
        return sorted(int(i) for i in rng.choice(len(self.positions), size=count, replace=False))

    def apply(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        pixels = rgb_array(image)
        height, width = pixels.shape[:2]
        side = patch_side(width, height, self.size_fraction)
        for index in self.choose(rng):
            left, top = patch_origin(width, height, side, self.positions[index])
            pixels[top:top + side, left:left + side] = self.colour
        return to_rgb_image(pixels)
