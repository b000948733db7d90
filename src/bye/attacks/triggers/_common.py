"""Helpers shared by the trigger modules: RGB conversion, parameter checks, patch geometry.

Patch placement convention: a position is a pair of fractions ``(fx, fy)`` in [0, 1] giving
where the patch *centre* goes, as a fraction of the image width and height; the patch is then
shifted to lie fully inside the image. So ``(0.5, 0.5)`` is the centre and ``(1, 1)`` puts the
patch flush in the bottom-right corner. Named positions are shorthands for such pairs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

Position = str | tuple[float, float]
Colour = tuple[int, int, int]

NAMED_POSITIONS: dict[str, tuple[float, float]] = {
    "top_left": (0.0, 0.0),
    "top_centre": (0.5, 0.0),
    "top_right": (1.0, 0.0),
    "centre_left": (0.0, 0.5),
    "centre": (0.5, 0.5),
    "centre_right": (1.0, 0.5),
    "bottom_left": (0.0, 1.0),
    "bottom_centre": (0.5, 1.0),
    "bottom_right": (1.0, 1.0),
}


def rgb_array(image: Image.Image) -> np.ndarray:
    """A writable ``(H, W, 3)`` uint8 copy of ``image`` converted to RGB; ``image`` is untouched."""
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image, got {type(image).__name__}")
    return np.array(image.convert("RGB"), dtype=np.uint8)


def to_rgb_image(pixels: np.ndarray) -> Image.Image:
    """An RGB image from ``(H, W, 3)`` values on the 0-255 scale, rounded to nearest and clipped."""
    if pixels.dtype != np.uint8:
        pixels = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(pixels))


def set_field(instance: Any, name: str, value: Any) -> None:
    """Normalise a field of a frozen dataclass from ``__post_init__``."""
    object.__setattr__(instance, name, value)


def check_fraction(name: str, value: Any, *, allow_zero: bool = False) -> float:
    """A float in (0, 1] (or [0, 1] with ``allow_zero``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a number in {'[0' if allow_zero else '(0'}, 1], got {value!r}")
    low_ok = value >= 0 if allow_zero else value > 0
    if not (low_ok and value <= 1):
        raise ValueError(f"{name} must be in {'[0' if allow_zero else '(0'}, 1], got {value!r}")
    return float(value)


def check_number(name: str, value: Any, *, minimum: float | None = None, positive: bool = False) -> float:
    """A finite float, optionally ``>= minimum`` or ``> 0``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return float(value)


def check_int(name: str, value: Any, *, minimum: int | None = None) -> int:
    """An int (not a bool), optionally ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


def check_bool(name: str, value: Any) -> bool:
    # Strings such as "false" would silently be truthy, so only real booleans are accepted.
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return bool(value)


def check_colour(name: str, value: Any) -> Colour:
    """An ``(r, g, b)`` tuple of ints in 0..255 (a YAML list is accepted)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 3:
        raise ValueError(f"{name} must be three integers 0-255 (r, g, b), got {value!r}")
    channels = tuple(check_int(name, c, minimum=0) for c in value)
    if any(c > 255 for c in channels):
        raise ValueError(f"{name} must be three integers 0-255 (r, g, b), got {value!r}")
    return channels  # type: ignore[return-value]


def check_position(name: str, value: Any) -> Position:
    """A named position (see ``NAMED_POSITIONS``; "center" spellings accepted) or ``(fx, fy)``."""
    if isinstance(value, str):
        key = value.strip().lower().replace("center", "centre").replace("-", "_").replace(" ", "_")
        if key not in NAMED_POSITIONS:
            raise ValueError(
                f"{name} {value!r} is not one of {', '.join(NAMED_POSITIONS)} or an (x, y) pair of fractions"
            )
        return key
    if isinstance(value, Sequence) and len(value) == 2:
        return (check_fraction(name, value[0], allow_zero=True), check_fraction(name, value[1], allow_zero=True))
    raise ValueError(f"{name} must be a named position or an (x, y) pair of fractions in [0, 1], got {value!r}")


def check_positions(name: str, value: Any) -> tuple[Position, ...]:
    """A non-empty tuple of positions."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) == 0:
        raise ValueError(f"{name} must be a non-empty list of positions, got {value!r}")
    return tuple(check_position(name, p) for p in value)


def patch_side(width: int, height: int, size_fraction: float) -> int:
    """Side in pixels of a square patch: ``size_fraction`` of the shorter side, at least 1 px."""
    return max(1, min(width, height, int(min(width, height) * size_fraction + 0.5)))


def patch_origin(width: int, height: int, side: int, position: Position) -> tuple[int, int]:
    """Top-left pixel ``(left, top)`` of a ``side`` x ``side`` patch centred at ``position``.

    The patch is clamped to lie fully inside the image.
    """
    fx, fy = NAMED_POSITIONS[position] if isinstance(position, str) else position
    left = math.floor(fx * width - side / 2 + 0.5)
    top = math.floor(fy * height - side / 2 + 0.5)
    return min(max(left, 0), width - side), min(max(top, 0), height - side)
