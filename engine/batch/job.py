"""The job file: one JSON object per line, each naming a mesh, what to do with it and an id.

    {"id": "cup22-handle", "mesh": "cups/22.off", "task": "match", "image": "cup.png", "pixels": [[120, 88]]}
    {"id": "cup22-parts", "mesh": "cups/22.off", "task": "match_all", "image": "cup.png", "max_regions": 8}
    {"id": "cup22-rim", "mesh": "cups/22.off", "task": "segment", "clicks": [12], "negatives": [40]}
    {"id": "cup22", "mesh": "cups/22.off", "task": "prepare"}

Optional on every line: "up" ("y" default, or "z"), "preview" (write a PNG), "group" (the vertex-group
name in --blend output; default: the id). `match` also takes "negatives" (pixels), "box" [x0, y0, x1, y1]
and "min_confidence"; pixels are in the original image's frame. Relative paths are relative to the job file.
A bad line is reported as a failed asset (code `bad_request`); it never stops the other lines.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import BsbError

KINDS = ("match", "match_all", "segment", "prepare")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_KEYS = {"id", "mesh", "task", "up", "image", "pixels", "negatives", "box", "clicks", "min_confidence",
         "max_regions", "preview", "group"}


@dataclass(frozen=True)
class Task:
    """One checked line of the job. `negatives` are pixels for `match`, vertex indices for `segment`."""

    id: str
    kind: str
    mesh: Path
    up: str = "y"
    image: Path | None = None
    pixels: tuple[tuple[float, float], ...] = ()
    negatives: tuple = ()
    box: tuple[float, float, float, float] | None = None
    clicks: tuple[int, ...] = ()
    min_confidence: float | None = None
    max_regions: int | None = None
    preview: bool = False
    group: str = ""
    line: int = 0

    def request(self) -> dict[str, Any]:
        """What determines the result (paths as given), JSON-safe: part of the request hash and the ledger."""
        return {"kind": self.kind, "mesh": str(self.mesh), "up": self.up,
                "image": None if self.image is None else str(self.image), "pixels": [list(p) for p in self.pixels],
                "negatives": [list(n) if isinstance(n, tuple) else n for n in self.negatives],
                "box": None if self.box is None else list(self.box), "clicks": list(self.clicks),
                "min_confidence": self.min_confidence, "max_regions": self.max_regions, "preview": self.preview,
                "group": self.group}


@dataclass(frozen=True)
class BadLine:
    """A line that could not become a Task: it is reported as a failed asset."""

    id: str
    line: int
    message: str
    code: str = "bad_request"


@dataclass
class Job:
    path: Path
    tasks: list[Task] = field(default_factory=list)
    bad: list[BadLine] = field(default_factory=list)


def load_job(path: str | Path) -> Job:
    """Parse and check every line; only an unreadable file or a repeated id stops the whole job."""
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BsbError(f"job file {path} does not exist; check the path", "not_found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BsbError(f"cannot read job file {path}: {exc}", "bad_request") from None
    job = Job(path)
    seen: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        fallback = f"line-{number}"
        try:
            entry = json.loads(raw)
        except json.JSONDecodeError as exc:
            job.bad.append(BadLine(fallback, number, f"line {number} is not JSON ({exc.msg})"))
            continue
        asset_id = entry.get("id") if isinstance(entry, dict) else None
        if isinstance(asset_id, str) and asset_id in seen:
            raise BsbError(f"{path}: id {asset_id!r} is used on lines {seen[asset_id]} and {number}; "
                           "ids name the output folders and must be unique", "bad_request")
        try:
            task = parse_task(entry, number, path.parent)
        except BsbError as exc:
            name = asset_id if isinstance(asset_id, str) and _ID.match(asset_id) else fallback
            job.bad.append(BadLine(name, number, f"line {number}: {exc.message}"))
            if isinstance(asset_id, str):
                seen[asset_id] = number
            continue
        seen[task.id] = number
        job.tasks.append(task)
    if not job.tasks and not job.bad:
        raise BsbError(f"job file {path} has no tasks; see `python -m engine batch --help` for the format",
                       "bad_request")
    return job


def parse_task(entry: Any, line: int, base: Path) -> Task:
    """One JSON object -> Task, or a BsbError that says what is wrong with it."""
    if not isinstance(entry, dict):
        raise BsbError("each line must be a JSON object")
    unknown = sorted(set(entry) - _KEYS)
    if unknown:
        raise BsbError(f"unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(_KEYS))}")
    asset_id = entry.get("id")
    if not isinstance(asset_id, str) or not _ID.match(asset_id):
        raise BsbError("'id' must be 1-128 letters, digits, '.', '_' or '-' (it names the output folder)")
    kind = entry.get("task")
    if kind not in KINDS:
        raise BsbError(f"'task' must be one of {', '.join(KINDS)}")
    up = entry.get("up", "y")
    if up not in ("y", "z"):
        raise BsbError("'up' must be 'y' or 'z'")
    task = dict(id=asset_id, kind=kind, mesh=_path(entry, "mesh", base), up=up, line=line,
                preview=_bool(entry, "preview"), group=_group(entry.get("group", asset_id)))
    if kind in ("match", "match_all"):
        task["image"] = _path(entry, "image", base)
    elif "image" in entry:
        raise BsbError(f"'{kind}' takes no image")
    if kind == "match":
        task["pixels"] = _points(entry.get("pixels", []), "pixels")
        task["negatives"] = _points(entry.get("negatives", []), "negatives")
        box = entry.get("box")
        if box is not None:
            if not (isinstance(box, list) and len(box) == 4 and all(_number(v) for v in box)):
                raise BsbError("'box' must be [x0, y0, x1, y1] in image pixels")
            task["box"] = tuple(float(v) for v in box)
        if not task["pixels"] and box is None:
            raise BsbError("'match' needs at least one positive pixel in 'pixels' (or a 'box')")
        if entry.get("min_confidence") is not None:
            if not _number(entry["min_confidence"]):
                raise BsbError("'min_confidence' must be a number")
            task["min_confidence"] = float(entry["min_confidence"])
    if kind == "match_all" and entry.get("max_regions") is not None:
        if not (isinstance(entry["max_regions"], int) and entry["max_regions"] > 0):
            raise BsbError("'max_regions' must be a positive integer")
        task["max_regions"] = entry["max_regions"]
    if kind == "segment":
        task["clicks"] = _vertices(entry.get("clicks", []), "clicks")
        task["negatives"] = _vertices(entry.get("negatives", []), "negatives")
        if not task["clicks"]:
            raise BsbError("'segment' needs at least one vertex index in 'clicks'")
    for name in ("pixels", "negatives", "box", "clicks", "min_confidence", "max_regions"):
        if name in entry and name not in task:
            raise BsbError(f"'{kind}' takes no '{name}'")
    return Task(**task)


def _path(entry: dict, name: str, base: Path) -> Path:
    value = entry.get(name)
    if not isinstance(value, str) or not value:
        raise BsbError(f"'{name}' must be a file path")
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _bool(entry: dict, name: str) -> bool:
    value = entry.get(name, False)
    if not isinstance(value, bool):
        raise BsbError(f"'{name}' must be true or false")
    return value


def _group(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 63:
        raise BsbError("'group' must be a name of 1-63 characters")
    return value


def _points(value: Any, name: str) -> tuple[tuple[float, float], ...]:
    if not isinstance(value, list) or not all(isinstance(p, list) and len(p) == 2 and all(_number(c) for c in p)
                                              for p in value):
        raise BsbError(f"'{name}' must be a list of [x, y] pixel coordinates")
    return tuple((float(x), float(y)) for x, y in value)


def _vertices(value: Any, name: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                              for v in value):
        raise BsbError(f"'{name}' must be a list of vertex indices (integers >= 0)")
    return tuple(value)


def file_digest(path: Path | None) -> str | None:
    """sha256 of a file's bytes (None when absent: the task will fail and report it)."""
    if path is None or not path.is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def request_hash(task: Task, profile: str, settings: dict[str, Any], outputs: dict[str, Any]) -> str:
    """What a result depends on: the request, the input files' bytes, the profile, its preparation
    settings, the engine version and the requested outputs. Equal hash + files present = nothing to do."""
    from engine import __version__

    text = json.dumps({"request": task.request(), "mesh_sha256": file_digest(task.mesh),
                       "image_sha256": file_digest(task.image), "profile": profile, "settings": settings,
                       "outputs": outputs, "engine": __version__}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]
