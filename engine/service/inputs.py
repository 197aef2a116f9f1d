"""Checks of user input shared by the command line and the protocol, so both accept and refuse the same
things with the same words: input files, output paths, job folders, and the clicks/box of a match."""

from __future__ import annotations

import math
import uuid
from pathlib import Path
from typing import Any, Sequence

from engine.errors import BsbError, NotFoundError, io_error

JOB_MARKER = ".bsb-job"  # written in every job folder the engine uses: proof that it may write there


def require_file(path: str | Path, what: str) -> Path:
    """An existing, readable regular file; otherwise a message that says which of those it is not."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise BsbError(f"{what} path {path} is a folder, not a file; give the {what} file itself", "bad_request")
    if not path.exists():
        raise NotFoundError(f"{what} file {path} does not exist; check the path")
    if not path.is_file():
        raise BsbError(f"{what} path {path} is not a regular file (a device or a pipe?); give a {what} file",
                       "bad_request")
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise io_error(exc, "read", f"{what} file", path, "check that it is readable") from None
    return path


def require_writable(path: str | Path, what: str) -> Path:
    """An output file path whose folder exists (or can be made) and takes new files, checked before any work
    so a long run never ends in a result that cannot be written."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise BsbError(f"{what} {path} is a folder; give a file name", "bad_request")
    probe = path.parent / f".bsb-write-test-{uuid.uuid4().hex[:8]}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise io_error(exc, "write", what, path, "pick a writable folder", "bad_request") from None
    return path


def job_folder(value: str) -> Path:
    """The folder a client named for a job's arrays: absolute, and either new, empty or one the engine used
    before (it holds JOB_MARKER), so a request can never make the engine write among someone else's files."""
    folder = Path(value).expanduser()
    if not folder.is_absolute():
        raise BsbError(f"job_dir {value!r} must be an absolute folder path", "bad_request")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        ours = (folder / JOB_MARKER).exists()
        foreign = [] if ours else [p.name for p in folder.iterdir()]
        if foreign:
            raise BsbError(f"job_dir {folder} already holds files the engine did not write ({foreign[0]}, ...); "
                           "give a new or empty folder", "bad_request")
        (folder / JOB_MARKER).touch()
    except OSError as exc:
        raise io_error(exc, "use", "job folder", folder, "pick a writable folder", "bad_request") from None
    return folder


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_query(points: Sequence[Sequence[float]], labels: Sequence[int], box: Sequence[float] | None,
                min_confidence: float | None, size: tuple[int, int]) -> tuple[list[list[float]], list[int],
                                                                          list[float] | None, float | None]:
    """The clicks, box and threshold of a match against an image of `size` (W, H), in original pixels.

    Returns them cleaned: the box clipped to the image. A NaN anywhere, a click outside the image, a box that
    misses the image or a negative threshold is refused: each would silently give a meaningless answer."""
    W, H = size
    if len(points) != len(labels):
        raise BsbError(f"{len(points)} points but {len(labels)} labels; give one label per point", "bad_request")
    if not points and box is None:
        raise BsbError("give at least one click (point) or a box", "bad_request")
    clean = []
    for point, label in zip(points, labels):
        if len(point) != 2 or not all(_finite(c) for c in point):
            raise BsbError(f"point {list(point)} must be two finite numbers (x, y)", "bad_request")
        x, y = point
        if not (0 <= x <= W and 0 <= y <= H):
            raise BsbError(f"point ({x}, {y}) lies outside the {W}x{H} image; send original-image pixels",
                           "bad_request")
        if label not in (0, 1) or isinstance(label, bool | float):
            raise BsbError(f"label {label!r} must be 1 (positive) or 0 (negative)", "bad_request")
        clean.append([float(x), float(y)])
    clipped = None
    if box is not None:
        if len(box) != 4 or not all(_finite(c) for c in box) or not (box[0] < box[2] and box[1] < box[3]):
            raise BsbError(f"box {list(box)} must be four finite numbers x0 < x1, y0 < y1", "bad_request")
        x0, y0, x1, y1 = (float(c) for c in box)
        clipped = [max(x0, 0.0), max(y0, 0.0), min(x1, float(W)), min(y1, float(H))]
        if clipped[0] >= clipped[2] or clipped[1] >= clipped[3]:
            raise BsbError(f"box {list(box)} lies entirely outside the {W}x{H} image; draw it on the image",
                           "bad_request")
    if min_confidence is not None and not (_finite(min_confidence) and min_confidence >= 0):
        raise BsbError(f"min_confidence must be a finite number >= 0, got {min_confidence!r}", "bad_request")
    return clean, [int(v) for v in labels], clipped, None if min_confidence is None else float(min_confidence)


def check_clicks(clicks: Sequence[tuple[int, bool]]) -> list[tuple[int, bool]]:
    """Vertex clicks of iSeg: at least one positive, indices non-negative (their range is the mesh's)."""
    out = [(int(v), bool(p)) for v, p in clicks]
    if any(v < 0 for v, _ in out):
        raise BsbError("vertex indices must be >= 0", "bad_request")
    if not any(p for _, p in out):
        raise BsbError("give at least one positive click (a vertex index)", "bad_request")
    return out
