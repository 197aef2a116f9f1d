"""Pixel and array rules of the add-on on cases known by construction (no bpy)."""

from __future__ import annotations

import numpy as np
import pytest

from bsb_addon import meshmath, pixels


@pytest.mark.parametrize(
    "uv, expect",
    [
        ((0.0, 1.0), (0.0, 0.0)),  # Blender's top-left corner is the engine's origin
        ((1.0, 0.0), (200.0, 100.0)),  # bottom-right corner
        ((0.5, 0.5), (100.0, 50.0)),
        ((0.25, 0.9), (50.0, 10.0)),  # near the top in Blender = small row index
    ],
)
def test_view_to_pixel_known_corners(uv, expect):
    assert pixels.view_to_pixel(*uv, 200, 100) == pytest.approx(expect)


def test_view_to_pixel_round_trips_and_hits_the_right_pixel():
    rng = np.random.default_rng(0)
    for u, v in rng.random((50, 2)):
        x, y = pixels.view_to_pixel(u, v, 37, 23)
        assert pixels.pixel_to_view(x, y, 37, 23) == pytest.approx((u, v))
    # The centre of Blender's bottom-up row r is engine row H-1-r.
    H, W = 8, 5
    for r in range(H):
        _, y = pixels.view_to_pixel(0.5, (r + 0.5) / H, W, H)
        assert int(y) == H - 1 - r


def test_outside_clicks_are_refused():
    for u, v in [(-0.01, 0.5), (0.5, 1.01), (2.0, 2.0)]:
        with pytest.raises(pixels.OutsideImage):
            pixels.view_to_pixel(u, v, 10, 10)


def test_box_is_ordered_flipped_and_clipped():
    assert pixels.box_to_pixels(0.75, 0.25, 0.25, 0.75, 100, 40) == pytest.approx([25, 10, 75, 30])
    assert pixels.box_to_pixels(-0.5, -0.5, 0.5, 0.5, 100, 40) == pytest.approx([0, 20, 50, 40])
    with pytest.raises(pixels.OutsideImage):
        pixels.box_to_pixels(1.2, 0.2, 1.5, 0.8, 100, 40)


def test_blender_pixels_flip_to_top_down_rows():
    W, H = 3, 2
    rgba = np.zeros((H, W, 4), np.float32)
    rgba[0, :, 0] = 1.0  # Blender row 0 = bottom row: red
    rgba[1, :, 2] = 1.0  # top row: blue
    rgb = pixels.blender_rgba_to_rgb8(rgba.ravel(), W, H)
    assert rgb.shape == (H, W, 3)
    assert (rgb[0] == [0, 0, 255]).all() and (rgb[1] == [255, 0, 0]).all()


def test_mask_to_rgba_flips_back():
    mask = np.zeros((4, 3), bool)
    mask[0] = True  # top row in engine frame
    rgba = pixels.mask_to_rgba(mask, (1, 0, 0, 0.5))
    assert rgba.shape == (4, 3, 4) and rgba[3, :, 3].tolist() == [0.5] * 3 and rgba[:3, :, 3].sum() == 0


def test_median_color_uses_mask_of_another_resolution():
    rgb = np.zeros((10, 20, 3), np.uint8)
    rgb[:5] = (255, 0, 0)
    rgb[5:] = (0, 0, 255)
    top = np.zeros((2, 4), bool)
    top[0] = True
    assert pixels.median_color(rgb, top) == pytest.approx((1.0, 0.0, 0.0))
    assert pixels.median_color(rgb, ~top) == pytest.approx((0.0, 0.0, 1.0))
    assert pixels.median_color(rgb, np.zeros((2, 4), bool)) is None


def test_faces_in_part_majority_rule():
    # quad 0: all in; quad 1: 2 of 4 in (tie -> out); triangle 2: 2 of 3 in; triangle 3: none.
    mask = np.array([1, 1, 1, 1, 0, 0, 0], bool)
    loops = np.array([0, 1, 2, 3, 2, 3, 4, 5, 0, 1, 6, 4, 5, 6])
    starts = np.array([0, 4, 8, 11])
    assert meshmath.faces_in_part(mask, loops, starts).tolist() == [True, False, True, False]


def test_weight_levels_binary_and_soft():
    mask = np.array([True, True, False, True])
    w = np.array([1.0, 0.5, 0.9, 0.0], np.float32)
    assert {k: v.tolist() for k, v in meshmath.weight_levels(w, mask, soft=False).items()} == {1.0: [0, 1, 3]}
    soft = meshmath.weight_levels(w, mask, soft=True)
    assert soft[1.0].tolist() == [0] and soft[128 / 255].tolist() == [1] and sum(len(v) for v in soft.values()) == 2


def test_srgb_to_linear_anchors():
    assert meshmath.srgb_to_linear([0.0, 1.0]).tolist() == pytest.approx([0.0, 1.0])
    assert float(meshmath.srgb_to_linear(0.5)) == pytest.approx(0.2140, abs=1e-3)
