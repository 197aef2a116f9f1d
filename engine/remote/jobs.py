"""Per-client job folders: a remote request's data becomes files there, the existing handlers
(engine.service.jobs) run on those files, and the arrays they write go back in the frame.

Nothing a client sends names a place on the engine's disk: paths in a remote request are refused, and
every folder is `<root>/<client>/<job id>` with both names checked against SAFE_NAME. A finished job
keeps its arrays and `result.json` (written atomically), so a client that lost its connection can fetch
the result by job id; a job killed half-way has no result.json and is swept at the next start.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import BsbError, ProtocolError
from engine.remote import frames
from engine.service import protocol
from engine.service.inputs import JOB_MARKER
from engine.service.server import Job

SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}")
PATH_FIELDS = ("path", "job_dir", "npy_vertices", "npy_faces")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".exr", ".bmp")
RESULT_FILE = "result.json"
KEEP_JOBS = 64  # finished jobs kept per client for fetch; older ones are pruned


@dataclass
class RemoteJob(Job):
    client: str = ""
    folder: Path = Path()
    inputs: dict[str, bytes] = field(default_factory=dict)  # file name -> compressed bytes, written at run time


def safe_name(value: Any) -> bool:
    return isinstance(value, str) and SAFE_NAME.fullmatch(value) is not None and ".." not in value


def path_field(obj: Any, depth: int = 0) -> str | None:
    """The first key of a path-carrying field anywhere in a request (None when there is none)."""
    if depth > protocol.MAX_DEPTH:
        return None
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key in PATH_FIELDS:
                return key
            if (found := path_field(value, depth + 1)) is not None:
                return found
    elif isinstance(obj, list):
        for value in obj:
            if (found := path_field(value, depth + 1)) is not None:
                return found
    return None


def translate(message: dict[str, Any], blobs: list[bytes], client: str, root: Path) -> RemoteJob:
    """Check a remote request and turn it into the file form the handlers read, inside the job's folder."""
    if not safe_name(message.get("id")):
        raise ProtocolError("a remote request id must be 1-80 letters, digits, '.', '_' or '-' (it names the "
                            "job's folder)")
    if (key := path_field(message)) is not None:
        raise ProtocolError(f"remote requests carry data, not paths: field '{key}' is refused; send the mesh "
                            "arrays and the image bytes in the frame (docs/protocol.md, Remote engine)")
    folder = root / client / message["id"]
    request, inputs = dict(message), {}
    kind = request.get("type")
    if kind == "prepare":
        mesh = request.get("mesh")
        refs = {k: frames.blob_ref(mesh.get(k), len(blobs)) for k in ("vertices", "faces")} \
            if isinstance(mesh, dict) and set(mesh) == {"vertices", "faces"} else {}
        if not refs or None in refs.values():
            raise ProtocolError('remote prepare needs "mesh": {"vertices": {"blob": i}, "faces": {"blob": j}}, '
                                "each a zlib-compressed .npy array in the frame")
        inputs = {f"input-{k}.npy": blobs[i] for k, i in refs.items()}
        request["mesh"] = {"npy_vertices": str(folder / "input-vertices.npy"),
                           "npy_faces": str(folder / "input-faces.npy")}
    elif kind == "set_image":
        image = request.pop("image", None)
        index = frames.blob_ref(image, len(blobs))
        suffix = str(image.get("suffix", "")).lower() if isinstance(image, dict) else ""
        if index is None or suffix not in IMAGE_SUFFIXES:
            raise ProtocolError('remote set_image needs "image": {"blob": i, "suffix": ".png"}: the image file\'s '
                                f"zlib-compressed bytes and its type, one of {', '.join(IMAGE_SUFFIXES)}")
        inputs = {f"input-image{suffix}": blobs[index]}
        request["path"] = str(folder / f"input-image{suffix}")
    if "job_dir" in protocol.SCHEMAS.get(str(kind), {}):
        request["job_dir"] = str(folder)
    return RemoteJob(protocol.check_request(request), client=client, folder=folder, inputs=inputs)


def materialize(job: RemoteJob, max_inflated: int) -> None:
    """Worker thread, before the handler: a fresh job folder holding the request's inflated inputs."""
    if job.folder.exists():
        shutil.rmtree(job.folder)  # an id used again: its earlier result is replaced, never mixed in
    job.folder.mkdir(parents=True)
    (job.folder / JOB_MARKER).touch()
    for name, blob in job.inputs.items():
        try:
            raw = frames.inflate(blob, max_inflated, name.removeprefix("input-"))
        except ValueError as exc:
            raise BsbError(str(exc), "too_large" if "limit" in str(exc) else "bad_request") from None
        (job.folder / name).write_bytes(raw)


def drop_inputs(job: RemoteJob) -> None:
    for name in job.inputs:
        (job.folder / name).unlink(missing_ok=True)


def store_result(job: RemoteJob, final: dict[str, Any]) -> dict[str, Any]:
    """The final message with the job's array paths replaced by {"file": name}, kept as result.json."""
    def walk(value: Any) -> Any:
        if isinstance(value, str) and value.endswith(".npy") and Path(value).parent == job.folder:
            return {"file": Path(value).name}
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    stored = walk(final)
    job.folder.mkdir(parents=True, exist_ok=True)
    tmp = job.folder / f".{RESULT_FILE}.tmp"
    tmp.write_text(json.dumps(stored, allow_nan=False), encoding="utf-8")
    os.replace(tmp, job.folder / RESULT_FILE)
    return stored


def attach(stored: dict[str, Any], folder: Path) -> tuple[dict[str, Any], list[bytes]]:
    """A stored message ready to send: each {"file": name} becomes {"blob": i, "name": name}."""
    blobs: list[bytes] = []

    def walk(value: Any) -> Any:
        if isinstance(value, dict) and set(value) == {"file"} and safe_name(value["file"]):
            blobs.append(frames.compress((folder / value["file"]).read_bytes()))
            return {"blob": len(blobs) - 1, "name": value["file"]}
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    return walk(stored), blobs


def load_result(root: Path, client: str, job_id: str) -> dict[str, Any] | None:
    path = root / client / job_id / RESULT_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def prune(root: Path, client: str, keep: int = KEEP_JOBS) -> None:
    """Keep the newest `keep` job folders of a client."""
    try:
        folders = sorted((p for p in (root / client).iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
    except OSError:
        return
    for old in folders[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def sweep_unfinished(root: Path) -> int:
    """At start: remove job folders a killed engine left without a result (their inputs, partial arrays)."""
    removed = 0
    for client in (root.iterdir() if root.is_dir() else ()):
        for folder in (client.iterdir() if client.is_dir() else ()):
            if folder.is_dir() and not (folder / RESULT_FILE).is_file():
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
    return removed
