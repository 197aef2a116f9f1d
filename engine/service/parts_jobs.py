"""Handlers of the protocol requests `segment_all` and `find_part` (fields in engine.service.protocol.SCHEMAS
and docs/protocol.md); engine.service.jobs.make_handlers adds them to the others.

A mesh's part tree is kept per mesh_id, so moving the granularity re-cuts it without a decoder pass.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

from engine.errors import NotFoundError
from engine.service.inputs import job_folder
from engine.service.jobs import EngineState, save_array


def make_handlers(state: EngineState) -> dict[str, Callable]:
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
        folder = job_folder(request["job_dir"])
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
        return {"labels": save_array(folder, "part_labels", parts.labels.astype(np.int32)), "n_parts": parts.n_parts,
                "granularity": granularity, "parts": listing, "reused": reused,
                "seconds": round(time.monotonic() - start, 3)}

    def find_part_request(request: dict[str, Any], progress: Callable, cancel: Callable) -> dict[str, Any]:
        from engine.parts.text import find_in_image, find_part_in_session

        prepared = lookup(state.meshes, request["mesh_id"], "mesh_id", "prepare")
        folder = job_folder(request["job_dir"])
        text = request["text"].strip()
        if "image_id" in request:
            from engine.results import match_arrays

            image = lookup(state.images, request["image_id"], "image_id", "set_image")
            found = find_in_image(state.session, prepared, image, text, progress=progress, cancel=cancel)
            data: dict[str, Any] = {"found": found.found, "reason": found.reason, "box": found.box,
                                    "box_score": round(found.score, 6), "mask": None, "weights": None}
            if found.found:
                arrays = match_arrays(found.match, prepared.mesh.num_vertices, image.image.original_size)
                data["mask"] = save_array(folder, "vertex_mask", arrays["mask"])
                data["weights"] = save_array(folder, "weights", arrays["weights"])
                data["confidence"] = round(float(found.match.confidence), 6)
            return data
        found = find_part_in_session(state.session, prepared, text, progress=progress, cancel=cancel)
        return {"found": found.found, "reason": found.reason,
                "mask": save_array(folder, "vertex_mask", found.mask) if found.found else None,
                "weights": save_array(folder, "weights", found.weights) if found.found else None,
                "votes": save_array(folder, "votes", found.votes.astype(np.float32)),
                "clicks": [[int(v), bool(p)] for v, p in found.clicks], "support": int(found.support),
                "boxes": int(found.boxes), "source": found.source, "seconds": round(found.seconds, 3)}

    return {"segment_all": segment_all_request, "find_part": find_part_request}
