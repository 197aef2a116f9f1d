"""Protocol requests `segment_all` and `find_part` (docs in the module's SCHEMAS and the report).

Registration (two lines, in engine/service/jobs.py / protocol.py):
    protocol.SCHEMAS.update(parts_jobs.SCHEMAS)
    handlers.update(parts_jobs.make_handlers(state))
A mesh's part tree is kept per mesh_id, so moving the granularity re-cuts it without a decoder pass.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from engine.errors import BsbError, NotFoundError


def _str(v: Any) -> bool:
    return isinstance(v, str) and v != ""


def _fraction(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0.0 <= v <= 1.0


# type -> field -> (check, what it must be, required): the format of engine.service.protocol.SCHEMAS
SCHEMAS: dict[str, dict[str, tuple[Callable[[Any], bool], str, bool]]] = {
    "segment_all": {"mesh_id": (_str, "a mesh id from prepare", True),
                    "granularity": (_fraction, "a number from 0 (coarse) to 1 (fine)", False),
                    "job_dir": (_str, "a folder path for the result arrays", True)},
    "find_part": {"mesh_id": (_str, "a mesh id from prepare", True),
                  "text": (lambda v: _str(v) and len(v) <= 200 and bool(v.strip()), "a part name such as \"handle\"", True),
                  "image_id": (_str, "an image id from set_image (find the text in that image, then BSB)", False),
                  "job_dir": (_str, "a folder path for the result arrays", True)},
}


def _folder(request: dict[str, Any]) -> Path:
    folder = Path(request["job_dir"]).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BsbError(f"cannot create job folder {folder}: {exc.strerror}; pick a writable folder",
                       "bad_request") from None
    return folder


def _save(folder: Path, name: str, array: np.ndarray) -> str:
    path = folder / f"{name}.npy"
    np.save(path, np.ascontiguousarray(array), allow_pickle=False)
    return str(path)


def make_handlers(state: Any) -> dict[str, Callable]:
    """Handlers over an engine.service.jobs.EngineState (its session, meshes and images)."""
    from engine.parts.cli import part_colors
    from engine.parts.segment_all import SegmentAllSettings, cut, segment_all

    trees: dict[str, Any] = {}
    settings = SegmentAllSettings()

    def lookup(table: dict, key: str, what: str, hint: str):
        if key not in table:
            raise NotFoundError(f"unknown {what} {key!r}; send a {hint} request first")
        return table[key]

    def segment_all_request(request: dict[str, Any], progress: Callable, cancel: Callable) -> dict[str, Any]:
        mesh_id = request["mesh_id"]
        prepared = lookup(state.meshes, mesh_id, "mesh_id", "prepare")
        folder = _folder(request)
        granularity = float(request.get("granularity", settings.granularity))
        start = time.monotonic()
        cached = trees.get(mesh_id)
        reused = cached is not None and cached[0] is prepared
        if reused:
            tree = cached[1]
        else:
            _, tree = segment_all(prepared, settings, progress, cancel)
            trees[mesh_id] = (prepared, tree)
        parts = cut(tree, granularity)
        colors = part_colors(parts.n_parts)
        listing = [{"index": i, "name": f"part {i + 1}", "n_vertices": int((parts.labels == i).sum()),
                    "area": round(float(parts.area[i]), 6), "score": round(float(parts.score[i]), 6),
                    "seed": int(parts.seed[i]), "color": [int(c) for c in colors[i]]} for i in range(parts.n_parts)]
        return {"labels": _save(folder, "part_labels", parts.labels.astype(np.int32)), "n_parts": parts.n_parts,
                "granularity": granularity, "parts": listing, "reused": reused,
                "seconds": round(time.monotonic() - start, 3)}

    def find_part_request(request: dict[str, Any], progress: Callable, cancel: Callable) -> dict[str, Any]:
        from engine.parts.text import find_in_image, find_part_in_session

        prepared = lookup(state.meshes, request["mesh_id"], "mesh_id", "prepare")
        folder = _folder(request)
        text = request["text"].strip()
        if "image_id" in request:
            from engine.results import match_arrays

            image = lookup(state.images, request["image_id"], "image_id", "set_image")
            found = find_in_image(state.session, prepared, image, text, progress=progress, cancel=cancel)
            data: dict[str, Any] = {"found": found.found, "reason": found.reason, "box": found.box,
                                    "box_score": round(found.score, 6), "mask": None, "weights": None}
            if found.found:
                arrays = match_arrays(found.match, prepared.mesh.num_vertices, image.image.original_size)
                data["mask"] = _save(folder, "vertex_mask", arrays["mask"])
                data["weights"] = _save(folder, "weights", arrays["weights"])
                data["confidence"] = round(float(found.match.confidence), 6)
            return data
        found = find_part_in_session(state.session, prepared, text, progress=progress, cancel=cancel)
        return {"found": found.found, "reason": found.reason,
                "mask": _save(folder, "vertex_mask", found.mask) if found.found else None,
                "weights": _save(folder, "weights", found.weights) if found.found else None,
                "votes": _save(folder, "votes", found.votes.astype(np.float32)),
                "clicks": [[int(v), bool(p)] for v, p in found.clicks], "support": int(found.support),
                "boxes": int(found.boxes), "source": found.source, "seconds": round(found.seconds, 3)}

    return {"segment_all": segment_all_request, "find_part": find_part_request}
