"""Reference images as artists have them, turned into one working RGB array plus exact coordinate maps.

Every format ends up as `(h, w, 3)` uint8 sRGB at a working resolution (long side <= `max_side`), because
the 2D models look at 8-bit sRGB and nothing gains from more than ~2k pixels. Clicks come in and results go
out in the ORIGINAL image's pixel frame (ARCHITECTURE: pixel i spans [i, i+1)), so the working copy keeps
the exact per-axis factors to map coordinates both ways.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from engine.errors import ImageError, os_reason

DEFAULT_MAX_SIDE = 2048
EXR_MAGIC = b"\x76\x2f\x31\x01"
# Pillow refuses images above twice this; artists' scans can be big, but not a quarter-gigapixel.
MAX_PIXELS = 200_000_000


@dataclass(frozen=True)
class ReferenceImage:
    """A reference image at working resolution and how its pixels map to the original file's."""

    rgb: np.ndarray  # (h, w, 3) uint8, transparent areas composited on white
    alpha: np.ndarray | None  # (h, w) bool: opaque pixels, a hint for the object mask; None if fully opaque
    original_size: tuple[int, int]  # (W, H) after EXIF orientation
    scale: float  # working / original (long side)
    content_hash: str  # sha256 of the working pixels: equal pixels, equal hash, whatever the file

    @property
    def size(self) -> tuple[int, int]:
        """Working (w, h)."""
        return int(self.rgb.shape[1]), int(self.rgb.shape[0])

    def _factors(self) -> np.ndarray:
        # Per axis, so rounding the working size never shifts a coordinate.
        (w, h), (W, H) = self.size, self.original_size
        return np.array([w / W, h / H], dtype=np.float64)

    def to_working(self, xy) -> np.ndarray:
        """Original-frame pixel coordinates (..., 2) -> working-frame coordinates."""
        return np.asarray(xy, dtype=np.float64) * self._factors()

    def to_original(self, xy) -> np.ndarray:
        """Working-frame pixel coordinates (..., 2) -> original-frame coordinates."""
        return np.asarray(xy, dtype=np.float64) / self._factors()


def array_hash(rgb: np.ndarray) -> str:
    """Hex sha256 over shape and pixels: the key for caching anything computed from an image."""
    rgb = np.ascontiguousarray(rgb)
    digest = hashlib.sha256(str((rgb.shape, rgb.dtype.str)).encode())
    digest.update(rgb.tobytes())
    return digest.hexdigest()


def image_from_array(rgb: np.ndarray, max_side: int = DEFAULT_MAX_SIDE) -> ReferenceImage:
    """An in-memory image: (H,W,3|4) uint8 or float in [0,1] (display-referred), or (H,W) grey."""
    arr = np.asarray(rgb)
    if arr.ndim == 2:
        arr = arr[..., None].repeat(3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4) or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageError(f"expected an (H, W, 3) or (H, W, 4) image array, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.floating):
            raise ImageError(f"image arrays must be uint8 or float in [0, 1], got {arr.dtype}")
        arr = _float_to_uint8(arr, linear=False)
    mode = "RGBA" if arr.shape[2] == 4 else "RGB"
    return _finish(Image.fromarray(np.ascontiguousarray(arr), mode), max_side)


def load_image(path: str | Path, max_side: int = DEFAULT_MAX_SIDE) -> ReferenceImage:
    """Read PNG/JPEG/TIFF/WebP/EXR (8/16-bit, float, grey, RGBA, palette), apply EXIF orientation."""
    path = Path(path)
    if path.is_dir():
        raise ImageError(f"image path {path} is a folder, not a file; give the image file itself")
    if not path.is_file():
        raise ImageError(f"image file not found: {path}", code="not_found")
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        raise ImageError(f"cannot read image file {path}: {os_reason(exc)}; check that it is readable",
                         code="not_found") from None
    if head == EXR_MAGIC:
        return image_from_array(_read_exr(path), max_side)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, MAX_PIXELS // 2
            try:
                with Image.open(path) as im:
                    im.seek(0)  # animated GIF/WebP: the first frame
                    im = ImageOps.exif_transpose(im)
                    im.load()
                    return _finish(_to_8bit(im), max_side)
            finally:
                Image.MAX_IMAGE_PIXELS = previous
    except UnidentifiedImageError:
        raise ImageError(
            f"{path.name} is not an image format we can read (PNG, JPEG, TIFF, WebP, EXR); "
            "re-export it as PNG") from None
    except Image.DecompressionBombError:
        raise ImageError(f"{path.name} is too large (over {MAX_PIXELS:,} pixels); downscale it first") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"could not decode {path.name} ({exc}); the file may be truncated or corrupt") from None


def _to_8bit(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> 'RGB' or 'RGBA' 8-bit, keeping transparency."""
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit (or 32-bit int) greyscale; Pillow loads 16-bit PNG/TIFF grey this way.
        grey = np.asarray(im).astype(np.float64) / 65535.0
        return Image.fromarray(_float_to_uint8(grey, linear=False)).convert("RGB")
    if im.mode == "F":
        # Float TIFFs are taken as display-referred (only EXR is linear by convention).
        return Image.fromarray(_float_to_uint8(np.asarray(im), linear=False)).convert("RGB")
    has_alpha = im.mode in ("RGBA", "LA", "La", "RGBa", "PA") or "transparency" in im.info
    return im.convert("RGBA" if has_alpha else "RGB")


def _finish(im: Image.Image, max_side: int) -> ReferenceImage:
    """Downscale (premultiplied for RGBA, by Pillow), composite on white, hash."""
    if max_side < 16:
        raise ImageError(f"max_side must be at least 16 pixels, got {max_side}")
    W, H = im.size
    scale = min(1.0, max_side / max(W, H))
    if scale < 1.0:
        size = (max(1, round(W * scale)), max(1, round(H * scale)))
        im = im.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    arr = np.asarray(im)
    alpha = None
    if arr.shape[2] == 4:
        a = arr[..., 3:4].astype(np.float32) / 255.0
        rgb = np.clip(arr[..., :3] * a + 255.0 * (1.0 - a) + 0.5, 0, 255).astype(np.uint8)
        opaque = arr[..., 3] >= 128
        alpha = None if opaque.all() else opaque
    else:
        rgb = np.ascontiguousarray(arr[..., :3])
    return ReferenceImage(rgb=rgb, alpha=alpha, original_size=(W, H), scale=scale, content_hash=array_hash(rgb))


def _float_to_uint8(values: np.ndarray, linear: bool) -> np.ndarray:
    """Tone-map by clipping to [0, 1]; linear data is sRGB-encoded first."""
    v = np.clip(np.nan_to_num(values.astype(np.float32), nan=0.0), 0.0, 1.0)
    if linear:
        v = np.where(v <= 0.0031308, 12.92 * v, 1.055 * np.power(v, 1 / 2.4) - 0.055)
    return (v * 255.0 + 0.5).astype(np.uint8)


def _read_exr(path: Path) -> np.ndarray:
    """EXR -> (H, W, 3|4) uint8 sRGB; premultiplied alpha (the EXR convention) kept as straight alpha."""
    try:
        import OpenEXR
    except ImportError:
        raise ImageError(
            f"{path.name} is an OpenEXR file and no EXR reader is installed; "
            "run `pip install OpenEXR` in the engine's environment or save the image as PNG") from None
    try:
        channels = OpenEXR.File(str(path)).channels()
    except Exception as exc:  # the binding raises plain RuntimeError/OSError for any decode problem
        raise ImageError(f"could not decode the EXR file {path.name} ({exc}); it may be corrupt") from None
    planes = {}
    for name, chan in channels.items():
        pix = np.asarray(chan.pixels, dtype=np.float32)
        if pix.ndim == 3:  # interleaved group such as "RGB", "RGBA" or "YA"
            for i, letter in enumerate(name):
                planes[letter] = pix[..., i]
        else:
            planes[name.split(".")[-1]] = pix  # "R" or a layer channel like "beauty.R"
    if {"R", "G", "B"} <= planes.keys():
        colour = np.stack([planes["R"], planes["G"], planes["B"]], axis=-1)
    elif "Y" in planes:
        colour = np.repeat(planes["Y"][..., None], 3, axis=-1)
    else:
        raise ImageError(f"{path.name} has no RGB or Y channels (found {sorted(channels)}); export the beauty pass")
    if "A" not in planes:
        return _float_to_uint8(colour, linear=True)
    a = np.clip(planes["A"], 0.0, 1.0)[..., None]
    straight = np.where(a > 1e-6, colour / np.maximum(a, 1e-6), 0.0)
    return np.concatenate([_float_to_uint8(straight, linear=True), _float_to_uint8(a, linear=False)], axis=-1)
