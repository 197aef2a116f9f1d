"""Request handlers of the protocol: turn checked requests into pipeline calls and results into plain JSON
plus .npy files in the client's job folder.

Every problem a client can cause (a missing file, an unknown mesh id, an array of the wrong shape) becomes
a BsbError with a code from docs/protocol.md, so the server answers with an `error` and keeps running.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from engine.errors import BsbError, NotFoundError, io_error
from engine.pipeline import PreparedImage, PreparedMesh, Session
from engine.provisional import is_provisional, prepare_early
from engine.service import protocol
from engine.service.inputs import check_clicks, check_query, job_folder, require_file
from engine.service.server import Handler


@dataclass
class EngineState:
    """What a serve process remembers between requests: its session and the meshes/images it prepared."""

    session: Session
    meshes: dict[str, PreparedMesh] = field(default_factory=dict)
    images: dict[str, PreparedImage] = field(default_factory=dict)


def hello(state: EngineState) -> dict[str, Any]:
    d = state.session.describe()
    return protocol.hello(d["engine"], d["device"], d["device_name"], d["torch"], d["profile"], d["random_weights"])


def status(state: EngineState) -> dict[str, Any]:
    return {"meshes": len(state.meshes), "images": len(state.images), "device": str(state.session.device),
            "profile": state.session.profile, "random_weights": state.session.random_weights}


def load_npy(path: str, what: str, ndim_cols: int, kinds: str) -> np.ndarray:
    """A (N, ndim_cols) array of dtype kind in `kinds` ('f', 'iu') from a client's .npy file."""
    file = require_file(path, what)
    try:
        array = np.load(file, allow_pickle=False)
    except OSError as exc:
        raise io_error(exc, "read", what, file, "check that it is readable") from None
    except (ValueError, EOFError) as exc:
        raise BsbError(f"{what} {file} is not a readable .npy array ({exc}); save it with numpy.save",
                       "bad_array") from None
    if array.ndim != 2 or array.shape[1] != ndim_cols or array.dtype.kind not in kinds:
        raise BsbError(f"{what} {file} must be an (N, {ndim_cols}) {'float' if kinds == 'f' else 'integer'} array; "
                       f"got shape {array.shape} dtype {array.dtype}", "bad_array")
    return array


def save_array(folder: Path, name: str, array: np.ndarray | None) -> str | None:
    """`folder/name.npy` (its path), or None for no array; a failed write is a bad_request naming the path."""
    if array is None:
        return None
    path = folder / f"{name}.npy"
    try:
        np.save(path, np.ascontiguousarray(array), allow_pickle=False)
    except OSError as exc:
        raise io_error(exc, "write", "result file", path, "pick a writable job_dir with free space",
                       "bad_request") from None
    return str(path)


def _with_warnings(session: Session, data: dict[str, Any]) -> dict[str, Any]:
    """A result plus the cache's warnings of this job (a result that could not be stored is still a result)."""
    if session.cache is not None and (warnings := session.cache.take_warnings()):
        data["warning"] = "; ".join(warnings)
    return data


def _mesh(state: EngineState, request: dict[str, Any]) -> PreparedMesh:
    mesh_id = request["mesh_id"]
    if mesh_id not in state.meshes:
        raise NotFoundError(f"unknown mesh_id {mesh_id!r}; send a prepare request first")
    return state.meshes[mesh_id]


def _image(state: EngineState, request: dict[str, Any]) -> PreparedImage:
    image_id = request["image_id"]
    if image_id not in state.images:
        raise NotFoundError(f"unknown image_id {image_id!r}; send a set_image request first")
    return state.images[image_id]


def _match_data(match, folder: Path, prefix: str, n_vertices: int, original_size: tuple[int, int]) -> dict[str, Any]:
    from engine.results import match_arrays

    arrays = match_arrays(match, n_vertices, original_size)
    data = match.summary()
    found = match.found and match.weights is not None
    data.update({
        "weights": save_array(folder, f"{prefix}weights", arrays["weights"]) if found else None,
        "mask": save_array(folder, f"{prefix}vertex_mask", arrays["mask"]) if found else None,
        "part_mask": (save_array(folder, f"{prefix}part_mask", arrays["part_mask"])
                      if match.part_mask is not None else None),
        "object_mask": (save_array(folder, f"{prefix}object_mask", arrays["object_mask"])
                        if match.object_mask is not None else None),
    })
    return data


def make_handlers(state: EngineState) -> dict[str, Handler]:
    session = state.session

    def prepare(request: dict[str, Any], progress: Callable, cancel: Callable) -> dict[str, Any]:
        from engine.mesh import load_mesh, mesh_from_arrays

        spec = request["mesh"]
        if "path" in spec:
            mesh = load_mesh(require_file(spec["path"], "mesh"), up=request.get("up", "y"))
        else:
            vertices = load_npy(spec["npy_vertices"], "npy_vertices", 3, "f")
            faces = load_npy(spec["npy_faces"], "npy_faces", 3, "iu")
            mesh = mesh_from_arrays(vertices, faces, up=request.get("up", "z"))
        start = time.monotonic()
        if request.get("early"):
            prepared = _prepare_early(mesh, progress, cancel)
        else:
            prepared = session.prepare(mesh, progress, cancel)
        mesh_id = f"mesh-{prepared.key[:16]}"
        state.meshes[mesh_id] = prepared
        return _with_warnings(session, {
            "mesh_id": mesh_id, "cached": prepared.cached, "n_vertices": mesh.num_vertices,
            "n_faces": mesh.num_faces, "seconds": round(time.monotonic() - start, 3),
            "name": request.get("name", "")})

    def _prepare_early(mesh, progress: Callable, cancel: Callable) -> PreparedMesh:
        """Announce a provisional mesh (a progress event with `mesh_id`, `provisional: true`) as soon as the
        DINO field exists; the server then lets set_image/match/refine through between the next steps."""
        announced: list[str] = []

        def announce(early: PreparedMesh) -> None:
            mesh_id = f"mesh-{early.key[:16]}"
            state.meshes.setdefault(mesh_id, early)  # a final mesh already here stays
            announced.append(mesh_id)
            progress(0.4, "the DINO field is ready: clicks get provisional answers", mesh_id=mesh_id,
                     provisional=True)

        try:
            return prepare_early(session, mesh, announce, progress, cancel)
        except BaseException:
            for mesh_id in announced:  # no final mesh will replace it: keep no half-prepared mesh
                if mesh_id in state.meshes and is_provisional(state.meshes[mesh_id]):
                    del state.meshes[mesh_id]
            raise

    def set_image(request: dict[str, Any], progress: Callable, cancel: Callable) -> dict[str, Any]:
        from engine.images import load_image

        image = load_image(require_file(request["path"], "image"))
        prepared = session.set_image(image, progress, cancel)
        image_id = f"image-{prepared.key[:16]}"
        state.images[image_id] = prepared
        W, H = image.original_size
        return _with_warnings(session, {"image_id": image_id, "width": W, "height": H, "cached": prepared.cached})

    def match(request: dict[str, Any], progress: Callable, cancel: Callable) -> dict[str, Any]:
        mesh, image = _mesh(state, request), _image(state, request)
        points, labels, box, min_confidence = check_query(
            request["points"], request["labels"], request.get("box"), request.get("min_confidence"),
            image.image.original_size)
        folder = job_folder(request["job_dir"])
        result = session.match(mesh, image, points, labels, box, min_confidence, progress, cancel)
        data = _match_data(result, folder, "", mesh.mesh.num_vertices, image.image.original_size)
        data["provisional"] = is_provisional(mesh)
        return data

    def refine(request: dict[str, Any], progress: Callable, cancel: Callable) -> dict[str, Any]:
        mesh = _mesh(state, request)
        clicks = check_clicks(request["clicks"])
        folder = job_folder(request["job_dir"])
        weights, mask = session.refine(mesh, clicks)
        return {"weights": save_array(folder, "weights", weights), "mask": save_array(folder, "vertex_mask", mask),
                "n_selected": int(mask.sum()), "provisional": is_provisional(mesh)}

    def match_all(request: dict[str, Any], progress: Callable, cancel: Callable) -> dict[str, Any]:
        mesh, image = _mesh(state, request), _image(state, request)
        folder = job_folder(request["job_dir"])
        results = session.match_all(mesh, image, request.get("max_regions"), progress, cancel)
        regions = []
        for i, result in enumerate(results):
            data = _match_data(result, folder, f"region{i:03d}_", mesh.mesh.num_vertices, image.image.original_size)
            data["name"] = result.name or f"region {i + 1}"
            regions.append(data)
        return {"regions": regions, "provisional": is_provisional(mesh)}

    def shape_to_image(request: dict[str, Any], progress: Callable, cancel: Callable) -> dict[str, Any]:
        mesh, image = _mesh(state, request), _image(state, request)
        folder = job_folder(request["job_dir"])
        region = session.shape_to_image(mesh, image, request["vertices"], progress, cancel)
        return {"found": region.found, "pixel": None if region.pixel is None else [float(c) for c in region.pixel],
                "mask": save_array(folder, "image_mask", region.mask), "confidence": round(region.confidence, 6),
                "reason": region.match.reason, "provisional": is_provisional(mesh)}

    from engine.service import parts_jobs

    handlers: dict[str, Handler] = {"prepare": prepare, "set_image": set_image, "match": match, "refine": refine,
                                    "match_all": match_all, "shape_to_image": shape_to_image}
    handlers.update(parts_jobs.make_handlers(state))  # segment_all, find_part
    return handlers
