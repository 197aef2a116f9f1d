"""Reference image loading: formats, modes, orientation, downscaling with exact coordinate maps, errors."""

from __future__ import annotations

import struct
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

from engine.errors import ImageError
from engine.images import array_hash, image_from_array, load_image


def _pattern(h: int = 24, w: int = 32) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x + y) % 256], -1).astype(np.uint8)


@pytest.mark.parametrize("ext,kwargs", [(".png", {}), (".tif", {}), (".webp", {"lossless": True}), (".bmp", {})])
def test_lossless_formats_round_trip_exactly(tmp_path, ext, kwargs):
    rgb = _pattern()
    path = tmp_path / f"a{ext}"
    Image.fromarray(rgb).save(path, **kwargs)
    img = load_image(path)
    assert img.rgb.dtype == np.uint8 and img.rgb.shape == rgb.shape
    np.testing.assert_array_equal(img.rgb, rgb)
    assert img.alpha is None and img.original_size == (32, 24) and img.scale == 1.0
    assert img.content_hash == array_hash(rgb) == image_from_array(rgb).content_hash


def test_jpeg_close_to_source(tmp_path):
    rgb = np.zeros((32, 48, 3), np.uint8)
    rgb[:, :24] = (200, 30, 30)
    rgb[:, 24:] = (30, 30, 200)
    Image.fromarray(rgb).save(tmp_path / "a.jpg", quality=95)
    img = load_image(tmp_path / "a.jpg")
    assert img.rgb.shape == rgb.shape
    assert np.abs(img.rgb[4:-4, 4:20].astype(int) - (200, 30, 30)).max() < 12


def test_greyscale_and_palette(tmp_path):
    grey = np.arange(0, 240, 10, dtype=np.uint8).reshape(4, 6)
    Image.fromarray(grey, "L").save(tmp_path / "g.png")
    img = load_image(tmp_path / "g.png")
    np.testing.assert_array_equal(img.rgb, np.repeat(grey[..., None], 3, -1))

    rgb = _pattern(8, 8) // 64 * 64  # few colours: the palette is exact
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=64).save(tmp_path / "p.png")
    np.testing.assert_array_equal(load_image(tmp_path / "p.png").rgb, rgb)


def test_palette_transparency_gives_alpha(tmp_path):
    idx = np.zeros((4, 4), np.uint8)
    idx[1:3, 1:3] = 1
    im = Image.fromarray(idx, "P")
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    im.info["transparency"] = 0
    im.save(tmp_path / "t.png", transparency=0)
    img = load_image(tmp_path / "t.png")
    np.testing.assert_array_equal(img.alpha, idx == 1)
    assert (img.rgb[0, 0] == 255).all() and tuple(img.rgb[1, 1]) == (255, 0, 0)


def test_rgba_composited_on_white_with_alpha_hint(tmp_path):
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[0, :, 3] = (0, 128, 255)
    rgba[1, :, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    img = load_image(tmp_path / "a.png")
    assert tuple(img.rgb[0, 0]) == (255, 255, 255)  # fully transparent -> white
    assert tuple(img.rgb[0, 2]) == (200, 0, 0)
    half = 128 / 255
    assert tuple(img.rgb[0, 1]) == (round(200 * half + 255 * (1 - half)), round(255 * (1 - half)), round(255 * (1 - half)))
    np.testing.assert_array_equal(img.alpha, [[False, True, True], [True, True, True]])
    rgba[..., 3] = 255  # opaque RGBA: no alpha hint
    Image.fromarray(rgba, "RGBA").save(tmp_path / "b.png")
    assert load_image(tmp_path / "b.png").alpha is None


def test_sixteen_bit_grey_and_float_tiff(tmp_path):
    g16 = np.array([[0, 65535, 32896, 257 * 10]], np.uint16)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    np.testing.assert_array_equal(load_image(tmp_path / "g16.png").rgb[..., 0], [[0, 255, 128, 10]])
    f = np.array([[-1.0, 0.0, 0.5, 2.0]], np.float32)
    Image.fromarray(f, "F").save(tmp_path / "f.tif")
    np.testing.assert_array_equal(load_image(tmp_path / "f.tif").rgb[..., 1], [[0, 0, 128, 255]])


def _png16_rgb(path, arr: np.ndarray) -> None:
    """A 48-bit RGB PNG written by hand (Pillow cannot write one)."""
    h, w, _ = arr.shape
    raw = b"".join(b"\x00" + arr[r].astype(">u2").tobytes() for r in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    path.write_bytes(png)


def test_sixteen_bit_rgb_png(tmp_path):
    arr = np.zeros((2, 2, 3), np.uint16)
    arr[0, 0] = (65535, 0, 257 * 100)
    _png16_rgb(tmp_path / "c.png", arr)
    img = load_image(tmp_path / "c.png")
    assert tuple(img.rgb[0, 0]) == (255, 0, 100) and tuple(img.rgb[1, 1]) == (0, 0, 0)


def test_exif_orientation_applied(tmp_path):
    rgb = np.full((2, 4, 3), 255, np.uint8)  # stored 4 wide, 2 high
    rgb[0, 0] = (255, 0, 0)  # stored top-left
    im = Image.fromarray(rgb)
    exif = Image.Exif()
    exif[0x0112] = 6  # display = stored rotated 90 degrees clockwise
    im.save(tmp_path / "r.jpg", exif=exif, quality=100)
    img = load_image(tmp_path / "r.jpg")
    assert img.original_size == (2, 4) and img.rgb.shape == (4, 2, 3)
    red = img.rgb[..., 0].astype(int) - img.rgb[..., 1]
    assert np.unravel_index(red.argmax(), red.shape) == (0, 1)  # top-left went to top-right


def test_huge_image_downscaled_and_coordinates_map_back(tmp_path):
    W, H = 2999, 1501
    rgb = np.full((H, W, 3), 255, np.uint8)
    x0, x1, y0, y1 = 1200, 1530, 600, 930
    rgb[y0:y1, x0:x1] = 0  # a planted black square
    Image.fromarray(rgb).save(tmp_path / "big.png")
    img = load_image(tmp_path / "big.png", max_side=1000)
    w, h = img.size
    assert max(w, h) == 1000 and img.original_size == (W, H) and img.scale == pytest.approx(1000 / W)
    np.testing.assert_allclose(img.to_working([W, H]), [w, h])  # image corners map exactly
    xy = np.array([[0.0, 0.0], [1234.5, 777.25], [W, H]])
    np.testing.assert_allclose(img.to_original(img.to_working(xy)), xy, atol=1e-9)
    dark = img.rgb[..., 0] < 128
    ys, xs = np.nonzero(dark)
    centre = img.to_original([[xs.mean() + 0.5, ys.mean() + 0.5]])[0]  # pixel centres, per the convention
    np.testing.assert_allclose(centre, [(x0 + x1) / 2, (y0 + y1) / 2], atol=1.5)
    lo = img.to_working([[x0, y0]])[0]
    hi = img.to_working([[x1, y1]])[0]
    assert abs(xs.min() - lo[0]) <= 1 and abs(xs.max() + 1 - hi[0]) <= 1 and abs(ys.min() - lo[1]) <= 1


@pytest.mark.parametrize("content", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00"])
def test_corrupt_files_raise_image_error(tmp_path, content):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(ImageError):
        load_image(path)


def test_truncated_png_and_missing_file(tmp_path):
    Image.fromarray(_pattern(64, 64)).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="corrupt"):
        load_image(tmp_path / "cut.png")
    with pytest.raises(ImageError, match="not found"):
        load_image(tmp_path / "nope.png")


def test_image_from_array_modes():
    grey = np.full((3, 5), 7, np.uint8)
    assert image_from_array(grey).rgb.shape == (3, 5, 3)
    f = image_from_array(np.full((2, 2, 3), 0.5, np.float32))
    assert (f.rgb == 128).all()
    with pytest.raises(ImageError):
        image_from_array(np.zeros((2, 2, 5), np.uint8))
    with pytest.raises(ImageError):
        image_from_array(np.zeros((2, 2, 3), np.int64))


def _write_exr(path, channels: dict) -> None:
    import OpenEXR

    OpenEXR.File({"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}, channels).write(str(path))


def test_exr_linear_is_srgb_encoded_and_alpha_unpremultiplied(tmp_path):
    pytest.importorskip("OpenEXR")
    rgb = np.zeros((2, 3, 3), np.float32)
    rgb[0, 0] = (0.5, 0.0, 4.0)  # linear 0.5 -> sRGB 188; 4.0 clips to 255
    _write_exr(tmp_path / "a.exr", {"RGB": rgb})
    img = load_image(tmp_path / "a.exr")
    assert tuple(img.rgb[0, 0]) == (188, 0, 255) and img.alpha is None

    a = np.ones((2, 3), np.float32)
    a[0, 1] = 0.0
    rgba = np.concatenate([rgb * a[..., None], a[..., None]], -1)
    _write_exr(tmp_path / "b.exr", {"RGBA": rgba})
    img = load_image(tmp_path / "b.exr")
    assert tuple(img.rgb[0, 1]) == (255, 255, 255) and not img.alpha[0, 1] and img.alpha[1, 1]

    linear = ((128 / 255 + 0.055) / 1.055) ** 2.4  # the linear value whose sRGB code is 128
    _write_exr(tmp_path / "y.exr", {"Y": np.full((2, 2), linear, np.float32)})
    assert (load_image(tmp_path / "y.exr").rgb == 128).all()


def test_exr_without_reader_names_the_package(tmp_path, monkeypatch):
    (tmp_path / "a.exr").write_bytes(b"\x76\x2f\x31\x01" + b"\x00" * 64)
    monkeypatch.setitem(sys.modules, "OpenEXR", None)  # import now fails
    with pytest.raises(ImageError, match="pip install OpenEXR"):
        load_image(tmp_path / "a.exr")


def test_corrupt_exr(tmp_path):
    pytest.importorskip("OpenEXR")
    (tmp_path / "a.exr").write_bytes(b"\x76\x2f\x31\x01" + b"\x02\x00\x00\x00garbage")
    with pytest.raises(ImageError, match="EXR"):
        load_image(tmp_path / "a.exr")
