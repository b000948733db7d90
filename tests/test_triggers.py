"""Behaviour of the trigger registry and of every registered trigger."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from scipy.fft import dctn

from bye.attacks import Trigger, available_triggers, get_trigger, register_trigger
from bye.attacks.metrics import psnr

ALL_TRIGGERS = available_triggers()
BLACK = (0, 0, 0)


def make_image(width: int = 64, height: int = 64) -> Image.Image:
    """A pale diagonal gradient with a red disc, a green square and a blue triangle; no pure black."""
    ys, xs = np.mgrid[0:height, 0:width]
    t = (xs / max(width - 1, 1) + ys / max(height - 1, 1)) / 2
    start, end = np.array([235.0, 225.0, 200.0]), np.array([190.0, 210.0, 240.0])
    background = start * (1 - t[..., None]) + end * t[..., None]
    image = Image.fromarray(np.rint(background).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    w, h = width, height
    draw.ellipse([0.1 * w, 0.1 * h, 0.4 * w, 0.4 * h], fill=(220, 40, 40))
    draw.rectangle([0.55 * w, 0.2 * h, 0.85 * w, 0.45 * h], fill=(40, 170, 60))
    draw.polygon([(0.3 * w, 0.6 * h), (0.1 * w, 0.9 * h), (0.5 * w, 0.9 * h)], fill=(40, 80, 220))
    return image


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def expected_box(width: int, height: int, side: int, fx: float, fy: float) -> tuple[int, int]:
    """Top-left of a side x side patch centred at fractions (fx, fy), clamped inside (documented rule)."""
    left = min(max(math.floor(fx * width - side / 2 + 0.5), 0), width - side)
    top = min(max(math.floor(fy * height - side / 2 + 0.5), 0), height - side)
    return left, top


def region_is(image: Image.Image, left: int, top: int, side: int, colour) -> bool:
    return bool(np.all(pixels(image)[top:top + side, left:left + side] == colour))


# ------------------------------------------------------------------ contract, every trigger


def test_registry_holds_the_reference_triggers():
    assert set(ALL_TRIGGERS) == {
        "badnets", "random_patch", "checkerboard", "dual_patch", "multi_patch",
        "blended", "sig", "wanet", "ftrojan",
    }
    assert ALL_TRIGGERS == sorted(ALL_TRIGGERS)


@pytest.mark.parametrize("name", ALL_TRIGGERS)
def test_trigger_is_a_frozen_hashable_dataclass_built_from_defaults(name):
    trigger = get_trigger(name)
    assert isinstance(trigger, Trigger)
    assert trigger.name == name
    assert dataclasses.is_dataclass(trigger)
    hash(trigger)
    field = dataclasses.fields(trigger)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(trigger, field, getattr(trigger, field))


@pytest.mark.parametrize("name", ALL_TRIGGERS)
def test_same_seed_gives_identical_bytes(name):
    trigger, image = get_trigger(name), make_image()
    first = trigger.apply(image, np.random.default_rng(123))
    second = get_trigger(name).apply(image.copy(), np.random.default_rng(123))
    assert first.tobytes() == second.tobytes()


@pytest.mark.parametrize("size", [(64, 64), (80, 48)])
@pytest.mark.parametrize("name", ALL_TRIGGERS)
def test_keeps_size_and_rgb_mode(name, size):
    out = get_trigger(name).apply(make_image(*size), np.random.default_rng(0))
    assert out.size == size
    assert out.mode == "RGB"


@pytest.mark.parametrize("mode", ["RGBA", "L", "P"])
@pytest.mark.parametrize("name", ALL_TRIGGERS)
def test_other_modes_come_back_rgb_of_the_same_size(name, mode):
    image = make_image(80, 48).convert(mode)
    out = get_trigger(name).apply(image, np.random.default_rng(0))
    assert out.mode == "RGB"
    assert out.size == (80, 48)


@pytest.mark.parametrize("name", ALL_TRIGGERS)
def test_changes_the_image(name):
    image = make_image()
    out = get_trigger(name).apply(image, np.random.default_rng(0))
    assert np.mean(np.abs(pixels(out) - pixels(image))) > 0


@pytest.mark.parametrize("name", ALL_TRIGGERS)
def test_returns_a_new_image_and_leaves_the_input_alone(name):
    image = make_image()
    before = image.tobytes()
    out = get_trigger(name).apply(image, np.random.default_rng(0))
    assert out is not image
    assert image.tobytes() == before
    assert image.mode == "RGB" and image.size == (64, 64)


@pytest.mark.parametrize("size", [(1, 1), (1, 9), (7, 3), (8, 8), (15, 17), (33, 2)])
def test_tiny_and_odd_sizes_keep_size_and_mode(size):
    image = make_image(*size)
    for name in ALL_TRIGGERS:
        out = get_trigger(name).apply(image, np.random.default_rng(0))
        assert (out.size, out.mode) == (size, "RGB"), name


# ------------------------------------------------------------------ patch triggers


@pytest.mark.parametrize("size", [(64, 64), (80, 48)])
def test_badnets_stamps_a_black_square_of_one_sixteenth_in_the_centre(size):
    width, height = size
    side = round(min(size) / 16)
    image = make_image(width, height)
    out = get_trigger("badnets").apply(image, np.random.default_rng(0))
    left, top = expected_box(width, height, side, 0.5, 0.5)
    assert region_is(out, left, top, side, BLACK)
    changed = np.any(pixels(out) != pixels(image), axis=-1)
    assert changed.sum() == side * side  # nothing outside the patch moved


def test_badnets_position_and_colour_come_from_yaml_style_params():
    trigger = get_trigger("badnets", colour=[255, 0, 255], position="bottom_right", size_fraction=0.125)
    assert trigger.colour == (255, 0, 255)
    out = trigger.apply(make_image(), np.random.default_rng(0))
    assert region_is(out, 56, 56, 8, (255, 0, 255))
    explicit = get_trigger("badnets", position=[0.25, 0.75]).apply(make_image(), np.random.default_rng(0))
    assert region_is(explicit, *expected_box(64, 64, 4, 0.25, 0.75), 4, BLACK)


def test_random_patch_lies_inside_the_image_and_moves_between_draws():
    rng = np.random.default_rng(5)
    image = make_image()
    corners = set()
    for _ in range(10):
        changed = np.any(pixels(get_trigger("random_patch").apply(image, rng)) != pixels(image), axis=-1)
        rows, cols = np.nonzero(changed)
        top, left = rows.min(), cols.min()
        assert (rows.max() - top + 1, cols.max() - left + 1) == (4, 4)
        corners.add((int(left), int(top)))
    assert len(corners) > 5


def test_random_patch_has_the_patch_colour():
    image = make_image()
    out = get_trigger("random_patch", colour=(255, 0, 255)).apply(image, np.random.default_rng(1))
    rows, cols = np.nonzero(np.any(pixels(out) != pixels(image), axis=-1))
    assert region_is(out, cols.min(), rows.min(), 4, (255, 0, 255))


def test_checkerboard_puts_alternating_cells_in_the_bottom_right():
    out = pixels(get_trigger("checkerboard").apply(make_image(), np.random.default_rng(0)))
    patch = out[56:64, 56:64]
    rows, cols = np.indices((8, 8))
    expected = np.where(((rows + cols) % 2 == 0)[..., None], 255, 0)
    assert np.array_equal(patch, np.broadcast_to(expected, patch.shape))


def test_checkerboard_cells_scale_with_cell_size():
    out = pixels(get_trigger("checkerboard", cell_size=2, size_fraction=0.25).apply(
        make_image(), np.random.default_rng(0)))
    patch = out[48:64, 48:64, 0]
    assert np.array_equal(patch[:2, :2], np.full((2, 2), 255))
    assert np.array_equal(patch[:2, 2:4], np.zeros((2, 2)))


def test_dual_patch_stamps_both_quadrant_centres():
    out = get_trigger("dual_patch").apply(make_image(), np.random.default_rng(0))
    assert region_is(out, *expected_box(64, 64, 4, 0.25, 0.25), 4, BLACK)
    assert region_is(out, *expected_box(64, 64, 4, 0.75, 0.75), 4, BLACK)


def _count_patches(out: Image.Image, trigger) -> int:
    return sum(
        region_is(out, *expected_box(64, 64, 4, *position), 4, trigger.colour)
        for position in trigger.positions
    )


def test_multi_patch_uses_between_min_and_max_patches():
    trigger = get_trigger("multi_patch")
    rng = np.random.default_rng(11)
    image = make_image()
    counts = [_count_patches(trigger.apply(image, rng), trigger) for _ in range(30)]
    assert set(counts) == {1, 2}  # both ends of the default range occur, nothing outside it


def test_multi_patch_respects_a_configured_range():
    trigger = get_trigger("multi_patch", min_patches=3, max_patches=3, colour=(255, 0, 255))
    rng = np.random.default_rng(3)
    for _ in range(5):
        assert _count_patches(trigger.apply(make_image(), rng), trigger) == 3


# ------------------------------------------------------------------ full-image triggers


def test_blended_mixes_a_fixed_noise_pattern_with_alpha():
    image = make_image()
    trigger = get_trigger("blended")
    out_a = pixels(trigger.apply(image, np.random.default_rng(0)))
    out_b = pixels(trigger.apply(image, np.random.default_rng(99)))
    assert np.array_equal(out_a, out_b)  # the pattern does not depend on the sample rng
    # Solve x' = 0.8 x + 0.2 p for p: it must be a full-range noise image.
    pattern = (out_a - 0.8 * pixels(image)) / 0.2
    assert pattern.min() < 20 and pattern.max() > 235
    other = pixels(get_trigger("blended", pattern_seed=1).apply(image, np.random.default_rng(0)))
    assert not np.array_equal(out_a, other)


def test_sig_adds_the_horizontal_sinusoid():
    grey = Image.new("RGB", (64, 48), (128, 128, 128))
    out = pixels(get_trigger("sig").apply(grey, np.random.default_rng(0)))
    expected = np.rint(128 + 40 * np.sin(2 * np.pi * np.arange(64) * 6 / 64))
    assert np.array_equal(out, np.broadcast_to(expected[None, :, None], out.shape))


def test_wanet_stays_nearly_invisible():
    # Measured on this image: 27.2 dB with noise, 30.7 dB without (25.9 / 30.4 at 80 x 48).
    image = make_image()
    assert psnr(image, get_trigger("wanet", noise=True).apply(image, np.random.default_rng(0))) >= 20
    assert psnr(image, get_trigger("wanet", noise=False).apply(image, np.random.default_rng(0))) >= 20


def test_wanet_warp_is_fixed_and_noise_comes_from_the_rng():
    image = make_image()
    fixed = get_trigger("wanet", noise=False)
    assert fixed.apply(image, np.random.default_rng(1)).tobytes() == fixed.apply(image, np.random.default_rng(2)).tobytes()
    noisy = get_trigger("wanet", noise=True)
    assert noisy.apply(image, np.random.default_rng(1)).tobytes() != noisy.apply(image, np.random.default_rng(2)).tobytes()
    other_warp = get_trigger("wanet", noise=False, pattern_seed=1)
    assert other_warp.apply(image, np.random.default_rng(1)).tobytes() != fixed.apply(image, np.random.default_rng(1)).tobytes()


def test_ftrojan_stays_above_30_db():
    # Measured: 30.52 dB on all three (the change is additive, so barely image dependent).
    for image in (make_image(), make_image(80, 48), Image.new("RGB", (64, 64), (128, 128, 128))):
        assert psnr(image, get_trigger("ftrojan").apply(image, np.random.default_rng(0))) >= 30


def test_ftrojan_marks_the_chosen_dct_coefficients_of_full_blocks_only():
    grey = Image.new("RGB", (67, 45), (128, 128, 128))  # 8 x 5 full blocks plus a remainder
    out = pixels(get_trigger("ftrojan").apply(grey, np.random.default_rng(0))).astype(np.float64)
    assert np.all(out[40:, :] == 128) and np.all(out[:, 64:] == 128)
    r, g, b = out[..., 0], out[..., 1], out[..., 2]
    cb = 128 - 0.168736 * r - 0.331264 * g + 0.5 * b
    block = dctn(cb[8:16, 16:24] - 128, norm="ortho")
    assert abs(block[4, 4] - 30) < 2 and abs(block[7, 7] - 30) < 2
    block[4, 4] = block[7, 7] = 0
    assert np.abs(block).max() < 2  # only rounding noise elsewhere


# ------------------------------------------------------------------ registry errors


def test_unknown_trigger_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown trigger 'nope'.*badnets.*wanet"):
        get_trigger("nope")


def test_unknown_parameter_is_named_with_the_accepted_ones():
    with pytest.raises(ValueError, match="'colour_rgb'.*size_fraction, colour, position"):
        get_trigger("badnets", colour_rgb=(1, 2, 3))


@pytest.mark.parametrize("name, params", [
    ("badnets", {"size_fraction": 0}),
    ("badnets", {"colour": (0, 0, 256)}),
    ("badnets", {"position": "middle"}),
    ("blended", {"alpha": 1.5}),
    ("multi_patch", {"min_patches": 3, "max_patches": 2}),
    ("multi_patch", {"max_patches": 5}),
    ("dual_patch", {"positions": [(0.5, 0.5)]}),
    ("wanet", {"noise": "false"}),
    ("ftrojan", {"positions": [(8, 8)]}),
    ("ftrojan", {"channels": (3,)}),
])
def test_invalid_parameter_values_are_rejected(name, params):
    with pytest.raises(ValueError):
        get_trigger(name, **params)


def test_registering_a_taken_name_or_a_mutable_class_fails():
    @dataclasses.dataclass(frozen=True)
    class Copycat(Trigger):
        def apply(self, image, rng):
            return image.convert("RGB")

    with pytest.raises(ValueError, match="already registered"):
        register_trigger("badnets")(Copycat)

    @dataclasses.dataclass
    class Mutable(Trigger):
        def apply(self, image, rng):
            return image.convert("RGB")

    with pytest.raises(TypeError, match="frozen dataclass"):
        register_trigger("mutable_for_test")(Mutable)
    assert "mutable_for_test" not in available_triggers()


def test_psnr_is_infinite_for_identical_images_and_rejects_mismatches():
    image = make_image()
    assert psnr(image, image.copy()) == math.inf
    with pytest.raises(ValueError):
        psnr(image, make_image(80, 48))
    with pytest.raises(ValueError):
        psnr(image, image.convert("L"))


def test_importing_attacks_pulls_in_no_pipeline_tooling():
    src = Path(__file__).resolve().parents[1] / "src"
    code = (
        "import sys; sys.path.insert(0, %r); import bye.attacks; "
        "bad = [m for m in ('prefect', 'mlflow', 'dvc', 'great_expectations') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)" % str(src)
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
