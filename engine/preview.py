"""Contact sheets and PNG files, for the demo, `--preview` and eyeballing renders."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.errors import ImageError


def contact_sheet(images, columns: int = 4, gap: int = 2) -> np.ndarray:
    """Tile equally sized (H, W, 3) uint8 images row-major into one image, white gaps between them."""
    tiles = [np.asarray(img) for img in images]
    if not tiles:
        raise ImageError("contact_sheet needs at least one image")
    shape = tiles[0].shape
    if len(shape) != 3 or shape[2] != 3 or any(t.shape != shape for t in tiles):
        raise ImageError(f"contact_sheet needs (H, W, 3) images of one size; got {sorted({t.shape for t in tiles})}")
    if columns < 1:
        raise ImageError(f"columns must be at least 1, got {columns}")
    columns = min(columns, len(tiles))
    rows = -(-len(tiles) // columns)
    h, w = shape[:2]
    sheet = np.full((rows * h + (rows - 1) * gap, columns * w + (columns - 1) * gap, 3), 255, dtype=np.uint8)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, columns)
        sheet[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = tile
    return sheet


def save_png(path: str | Path, rgb: np.ndarray) -> Path:
    """Write an (H, W, 3) uint8 image; parent folders are created."""
    from PIL import Image

    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ImageError(f"save_png needs an (H, W, 3) uint8 image, got {rgb.dtype} {rgb.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(rgb)).save(path)
    return path
