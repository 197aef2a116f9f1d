"""Image-space conversions between Blender and the engine (no bpy).

Blender's Image Editor view space is the normalised image: (0, 0) bottom-left, (1, 1) top-right, and
`Image.pixels` rows run bottom-up. The engine wants pixels of the original image with a top-left origin:
x = u * W, y = (1 - v) * H (pixel (i, j) covers [i, i+1) x [j, j+1)). This module is the only place
that flips rows.
"""

from __future__ import annotations

import numpy as np


class OutsideImage(ValueError):
    """A click that does not land on the image."""


def inside(u: float, v: float) -> bool:
    return 0.0 <= u <= 1.0 and 0.0 <= v <= 1.0


def view_to_pixel(u: float, v: float, width: int, height: int) -> tuple[float, float]:
    """Normalised view coordinates (bottom-left origin) -> engine pixel (top-left origin)."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if not inside(u, v):
        raise OutsideImage(f"The click at ({u:.3f}, {v:.3f}) is outside the image; click on the image itself.")
    return u * width, (1.0 - v) * height


def pixel_to_view(x: float, y: float, width: int, height: int) -> tuple[float, float]:
    """Engine pixel -> normalised view coordinates (for drawing markers over the image)."""
    return x / width, 1.0 - y / height


def box_to_pixels(u0: float, v0: float, u1: float, v1: float, width: int, height: int) -> list[float]:
    """A dragged rectangle (any corner order, may spill past the image) -> [x0, y0, x1, y1] in engine pixels."""
    lo_u, hi_u = sorted((min(max(u0, 0.0), 1.0), min(max(u1, 0.0), 1.0)))
    lo_v, hi_v = sorted((min(max(v0, 0.0), 1.0), min(max(v1, 0.0), 1.0)))
    if hi_u - lo_u <= 0.0 or hi_v - lo_v <= 0.0:
        raise OutsideImage("The box does not cover any of the image; drag across the part you want.")
    return [lo_u * width, (1.0 - hi_v) * height, hi_u * width, (1.0 - lo_v) * height]


def blender_rgba_to_rgb8(flat: np.ndarray, width: int, height: int) -> np.ndarray:
    """`Image.pixels` (bottom-up, float RGBA) -> (H, W, 3) uint8 with row 0 at the top."""
    rgba = np.asarray(flat, dtype=np.float32).reshape(height, width, -1)
    rgb = np.clip(rgba[::-1, :, :3], 0.0, 1.0)
    return np.round(rgb * 255.0).astype(np.uint8)


def resize_mask(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    """Nearest-neighbour resize of a top-down (h, w) mask to (height, width), sampling pixel centres."""
    h, w = mask.shape
    if (h, w) == (height, width):
        return mask.astype(bool)
    rows = np.minimum(((np.arange(height) + 0.5) * h / height).astype(int), h - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * w / width).astype(int), w - 1)
    return mask.astype(bool)[rows][:, cols]


def median_color(rgb: np.ndarray, mask: np.ndarray) -> tuple[float, float, float] | None:
    """Median colour (0..1) of a top-down (H, W, 3) image under a top-down mask of any resolution."""
    height, width = rgb.shape[:2]
    sel = resize_mask(np.asarray(mask), width, height)
    if not sel.any():
        return None
    med = np.median(rgb[sel].astype(np.float32), axis=0) / 255.0
    return float(med[0]), float(med[1]), float(med[2])


def mask_to_rgba(mask: np.ndarray, color: tuple[float, float, float, float]) -> np.ndarray:
    """Top-down bool mask -> bottom-up float RGBA (h, w, 4), the layout GPU textures and images expect."""
    out = np.zeros(mask.shape + (4,), dtype=np.float32)
    out[mask.astype(bool)] = color
    return np.ascontiguousarray(out[::-1])


def pack_mask(mask: np.ndarray) -> str:
    """An (H, W) bool mask as text for a string property: packed bits, zlib, base64 (a few KB per megapixel)."""
    import base64
    import zlib

    return base64.b64encode(zlib.compress(np.packbits(np.asarray(mask, bool).ravel()).tobytes(), 6)).decode("ascii")


def unpack_mask(text: str, width: int, height: int) -> np.ndarray | None:
    """The inverse of pack_mask; None when the text is empty or does not fit the size."""
    import base64
    import binascii
    import zlib

    if not text or width <= 0 or height <= 0:
        return None
    try:
        bits = np.frombuffer(zlib.decompress(base64.b64decode(text)), np.uint8)
    except (binascii.Error, zlib.error, ValueError):
        return None
    if bits.size != (width * height + 7) // 8:
        return None
    return np.unpackbits(bits)[: width * height].reshape(height, width).astype(bool)
