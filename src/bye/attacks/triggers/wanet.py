"""WaNet (Nguyen & Tran, ICLR 2021): a fixed, smooth, nearly invisible image warp."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from bye.attacks.registry import Trigger, register_trigger
from bye.attacks.triggers._common import (
    check_bool, check_int, check_number, rgb_array, set_field, to_rgb_image,
)


@lru_cache(maxsize=16)
def warp_grid(pattern_seed: int, k: int, s: float, grid_rescale: float, height: int, width: int) -> np.ndarray:
    """The fixed WaNet sampling grid for one image size, as a read-only ``(H, W, 2)`` float64
    array of (x, y) coordinates in [-1, 1] (``grid_sample`` convention, ``align_corners=True``).

    As in the reference implementation: a ``2 x k x k`` control field uniform in [-1, 1] (here
    drawn from ``np.random.default_rng(pattern_seed)``), divided by its mean absolute value,
    upsampled bicubically to ``H x W`` (``align_corners=True``); then
    ``grid = clamp((identity + s * field / size) * grid_rescale, -1, 1)``.
    The reference code only handles square images and divides by the height; here the x
    displacement is divided by the width and the y displacement by the height, which is the
    same for square images and keeps the displacement in pixels isotropic otherwise.
    """
    import torch  # Deferred so that importing bye.attacks stays light.
    import torch.nn.functional as F

    control = np.random.default_rng(pattern_seed).random((1, 2, k, k)) * 2 - 1
    control /= np.mean(np.abs(control))
    field = F.interpolate(torch.from_numpy(control), size=(height, width), mode="bicubic", align_corners=True)
    field = field[0].permute(1, 2, 0).numpy()  # (H, W, 2): x then y displacement
    ys, xs = np.meshgrid(np.linspace(-1, 1, height), np.linspace(-1, 1, width), indexing="ij")
    identity = np.stack([xs, ys], axis=-1)
    grid = (identity + s * field / np.array([width, height])) * grid_rescale
    grid = np.clip(grid, -1, 1)
    grid.flags.writeable = False
    return grid


@register_trigger("wanet")
@dataclass(frozen=True)
class WaNet(Trigger):
    """Resample the image through the fixed warp :func:`warp_grid` (bilinear
    ``torch.nn.functional.grid_sample``, ``align_corners=True``), round to uint8.

    Parameters as in the paper: ``k`` control points per side, strength ``s``, ``grid_rescale``;
    the warp field comes from ``pattern_seed`` and is the same for every sample of a size.

    ``noise=True`` adds the paper's "noise mode" jitter per sample: a uniform [-1, 1] field
    drawn from ``rng`` (shape ``H x W x 2``), divided by the width (x) and height (y), i.e. up
    to about half a pixel, added to the warp grid, which is clamped to [-1, 1] again.
    Note that in the WaNet paper this noisy warp is applied to the *cross* samples, which keep
    their true labels so the model learns the exact warp; the poisoned samples use the fixed
    warp (``noise=False``), which is therefore the default here.
    """

    k: int = 4
    s: float = 0.5
    grid_rescale: float = 1.0
    noise: bool = False
    pattern_seed: int = 0

    def __post_init__(self) -> None:
        set_field(self, "k", check_int("k", self.k, minimum=2))
        set_field(self, "s", check_number("s", self.s, minimum=0))
        set_field(self, "grid_rescale", check_number("grid_rescale", self.grid_rescale, positive=True))
        set_field(self, "noise", check_bool("noise", self.noise))
        set_field(self, "pattern_seed", check_int("pattern_seed", self.pattern_seed, minimum=0))

    def apply(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        import torch
        import torch.nn.functional as F

        pixels = rgb_array(image).astype(np.float64)
        height, width = pixels.shape[:2]
        grid = warp_grid(self.pattern_seed, self.k, self.s, self.grid_rescale, height, width)
        if self.noise:
            jitter = rng.random((height, width, 2)) * 2 - 1
            grid = np.clip(grid + jitter / np.array([width, height]), -1, 1)
        warped = F.grid_sample(
            torch.from_numpy(pixels).permute(2, 0, 1)[None],
            torch.from_numpy(np.array(grid))[None],  # copy: the cached grid is read-only
            mode="bilinear", padding_mode="zeros", align_corners=True,
        )
        return to_rgb_image(warped[0].permute(1, 2, 0).numpy())
