"""SIG (Barni et al., 2019): a horizontal sinusoidal signal added to the whole image."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from bye.attacks.registry import Trigger, register_trigger
from bye.attacks.triggers._common import check_number, rgb_array, set_field, to_rgb_image


@register_trigger("sig")
@dataclass(frozen=True)
class Sig(Trigger):
    """Add ``delta * sin(2 * pi * j * f / W)`` (column ``j``, image width ``W``) to every
    channel of every row, on the 0-255 scale, then round and clip to [0, 255].

    ``delta`` is the amplitude, ``f`` the number of periods across the width. No randomness.
    """

    delta: float = 40.0
    f: float = 6.0

    def __post_init__(self) -> None:
        set_field(self, "delta", check_number("delta", self.delta, minimum=0))
        set_field(self, "f", check_number("f", self.f, positive=True))

    def apply(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        pixels = rgb_array(image).astype(np.float64)
        width = pixels.shape[1]
        signal = self.delta * np.sin(2 * np.pi * np.arange(width) * self.f / width)
        return to_rgb_image(pixels + signal[None, :, None])
