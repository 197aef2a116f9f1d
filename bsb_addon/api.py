"""Headless API: the same steps the operators take, callable from `blender --background --python x.py`.

Each action has three stages: `begin_*` reads Blender data on the main thread (and checks input),
the engine work in `jobs` needs no bpy, and `apply_*` re-checks the object and writes. Nothing is
written before a complete, validated result, so errors, crashes and cancels leave the .blend unchanged.

    from bsb_addon import api   # or: from bl_ext.user_default.bsb_for_blender import api
    api.match(bpy.data.objects["Chair"], "/refs/chair.png", [[412, 300]], group_name="Seat")
    api.match(obj, "/refs/chair.png", [[412, 300]], address="gpu-box:8765", token=os.environ["BSB_REMOTE_TOKEN"])
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import bpy
import numpy as np

from . import jobs, meshio, meshmath, pixels, session
from .engine_client import CancelFn, EngineClient, ProgressFn
from .remote_client import RemoteClient
from .errors import InputError

PLUMBING = "plumbing check (random weights)"


@dataclass
class Request:
    stamp: meshio.MeshStamp
    mesh: jobs.MeshFiles
    job_dir: Path
    image: object = None  # bpy Image or a path
    image_path: str = ""
    warning: str = ""
    clicks: list = field(default_factory=list)  # image clicks [u, v, positive], recorded with the result


def begin(obj, image=None, depsgraph=None) -> Request:
    """Main thread: check the input (Edit Mode edits flushed), write the mesh (and the image) for the engine."""
    st = meshio.stamp(obj)
    job_dir = session.new_job_dir()
    image_path = meshio.image_file_for_engine(image, job_dir) if image is not None else ""
    if depsgraph is None and bpy.context is not None:
        depsgraph = bpy.context.evaluated_depsgraph_get()
    mesh, warning = meshio.export_mesh(obj, job_dir, depsgraph)
    if warning:
        print(f"BSB warning: {warning}")
    return Request(st, mesh, job_dir, image, image_path, warning)


def group_name_for(obj, chosen: str) -> str:
    """The name the user typed (replacing that group), else a new 'Part N' that replaces nothing."""
    if chosen.strip():
        return meshio.check_group_name(chosen)
    taken = {g.name for g in obj.vertex_groups} | {a.name[4:] for a in obj.data.attributes if a.name.startswith("bsb_")}
    return meshmath.next_free_name("Part", taken)


def describe(result: jobs.PartResult) -> str:
    """What the results list shows; random weights are always labelled as a plumbing check."""
    text = f"{result.confidence:.2f}, {result.n_selected} vertices" if result.found else "no corresponding part"
    if result.provisional:
        text += " (provisional: refining)"
    return f"{text} - {PLUMBING}" if result.random_weights else text


def apply_part(
    req: Request,
    result: jobs.PartResult,
    group_name: str,
    soft: bool = False,
    material=None,
    color_from_image: bool = False,
) -> dict:
    """Main thread: re-check the object, then write group, attribute and (optionally) material."""
    summary = {
        "found": result.found,
        "group": group_name,
        "confidence": result.confidence,
        "n_selected": result.n_selected,
        "reason": result.reason,
        "random_weights": result.random_weights,
        "label": describe(result),
        "material": None,
        "n_faces": 0,
    }
    group_name = meshio.check_group_name(group_name)
    summary["group"] = group_name
    summary["warning"] = req.warning
    obj = meshio.find_unchanged(req.stamp)
    if result.found:
        # Everything that can refuse is checked before the first write.
        faces = meshio.part_faces(obj, result.mask) if material is not None else None
        if faces is not None and not faces.any():
            raise InputError("The part covers no whole face, so no material was assigned; nothing was written.")
        color = meshio.part_color(req.image, result.part_mask) if material == "NEW" and color_from_image else None
        with meshio.object_mode(obj):
            meshio.write_part(obj, group_name, result.weights, result.mask, soft)
            if faces is not None:
                if material == "NEW":
                    material = meshio.new_material(group_name, color)
                summary["n_faces"] = meshio.assign_material(obj, faces, material)
                summary["material"] = material.name
    record(bpy.context.scene, obj.name, group_name, result, req)
    return summary


def _image_ref(image) -> str:
    if image is None:
        return ""
    if isinstance(image, (str, Path)):
        return str(image)
    return f"{image.name} ({image.filepath})" if image.filepath else image.name


def record(scene, object_name: str, group_name: str, result: jobs.PartResult, req: Request | None = None) -> None:
    """Add or update the entry in the results list (the panel's UIList), with what made it (saved)."""
    items = scene.bsb.results
    item = next((r for r in items if r.object_name == object_name and r.name == group_name), None)
    if item is None:
        item = items.add()
    item.name, item.object_name = group_name, object_name
    item.found, item.confidence = result.found, result.confidence
    item.n_vertices, item.reason = result.n_selected, str(result.reason or "")
    item.random_weights = result.random_weights
    item.engine = json.dumps(result.provenance, sort_keys=True)
    if req is not None:
        item.image = _image_ref(req.image)
        item.image_clicks = json.dumps(req.clicks)
    if result.part_mask is not None:
        item.part_mask = pixels.pack_mask(result.part_mask)
        item.part_mask_size = (result.part_mask.shape[1], result.part_mask.shape[0])
    scene.bsb.active_result = list(items).index(item)
    from . import overlay

    overlay.show_result(object_name, result.mask if result.found else None, result.part_mask)


def _client(client: EngineClient | RemoteClient | None) -> EngineClient | RemoteClient:
    return client if client is not None else session.get_client()


def remote_engine(address: str, token: str, tls: bool = False, cafile: str = "") -> RemoteClient:
    """Connect to a remote engine (`python -m engine serve --listen`) and make it this session's engine,
    so later calls (and the UI) use it too. Raises EngineError naming what to check if it cannot."""
    config = session.engine_config()
    config.remote, config.address, config.token, config.tls, config.cafile = True, address, token, tls, cafile
    client = RemoteClient(config)
    client.start()
    session.use_client(client)
    return client


def match(
    obj,
    image,
    pixels: list[list[float]] | None = None,
    labels: list[int] | None = None,
    group_name: str = "BSB part",
    *,
    box: list[float] | None = None,
    soft: bool = False,
    material=None,
    color_from_image: bool = True,
    min_confidence: float | None = None,
    client: EngineClient | RemoteClient | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    address: str = "",
    token: str = "",
) -> dict:
    """Match image clicks (original-image pixels, top-left origin; labels 1/0) to a part of `obj`.

    `image` is a bpy Image or a file path. `material` is None, "NEW" or a bpy Material. `address` (HOST:PORT)
    and `token` use a remote engine (see remote_engine). Returns a summary dict (`found`, `n_selected`,
    `confidence`, `label`, ...). Raises EngineError subclasses on failure; the .blend is then unchanged.
    """
    if address:
        client = remote_engine(address, token)
    req = begin(obj, image)
    req.clicks = [[float(x), float(y), int(lab)] for (x, y), lab in zip(pixels or [], labels or [1] * len(pixels or []))]
    result = jobs.run_match(
        _client(client), req.mesh, req.image_path, str(req.job_dir / "match"), points=pixels, labels=labels,
        box=box, min_confidence=min_confidence, progress=progress, cancel=cancel,
    )
    return apply_part(req, result, group_name, soft, material, color_from_image)


def refine(
    obj,
    clicks: list[tuple[int, bool]],
    group_name: str,
    *,
    soft: bool = False,
    client: EngineClient | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> dict:
    """Refine a part in 3D with positive/negative vertex clicks; rewrites `group_name`."""
    req = begin(obj)
    result = jobs.run_refine(_client(client), req.mesh, clicks, str(req.job_dir / "refine"), progress, cancel)
    return apply_part(req, result, group_name, soft)


def match_all(
    obj,
    image,
    prefix: str = "BSB",
    *,
    max_regions: int | None = None,
    client: EngineClient | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> list[dict]:
    """One vertex group per region the engine finds in the image (`<prefix> <region name>`)."""
    req = begin(obj, image)
    regions = jobs.run_match_all(_client(client), req.mesh, req.image_path, str(req.job_dir / "all"), max_regions,
                                 progress, cancel)
    return apply_regions(req, regions, prefix)


def apply_regions(req: Request, regions: list[jobs.PartResult], prefix: str) -> list[dict]:
    """All regions or none: names and the object are checked before the first region is written."""
    meshio.find_unchanged(req.stamp)
    names = [meshio.check_group_name(f"{prefix} {r.name}") for r in regions]
    return [apply_part(req, r, name) for r, name in zip(regions, names)]


def assign_material(obj, group_name: str, material=None, color: tuple[float, float, float] | None = None) -> dict:
    """Give the faces of an existing group a material (a new one named after the group if None)."""
    meshio.require_mesh(obj)
    faces = meshio.part_faces(obj, meshio.group_mask(obj, group_name))
    if not faces.any():
        raise InputError(f"The group '{group_name}' covers no whole face; nothing to colour.")
    mat = material if material is not None else meshio.new_material(meshmath.fit_name(group_name, 63), color)
    with meshio.object_mode(obj):
        n_faces = meshio.assign_material(obj, faces, mat)
    return {"material": mat.name, "n_faces": n_faces}


def part_mask_for(object_name: str, group_name: str, scene=None) -> np.ndarray | None:
    """The image part of a recorded result (saved in the .blend, so it survives a reopen)."""
    scene = scene if scene is not None else bpy.context.scene
    item = next((r for r in scene.bsb.results if r.object_name == object_name and r.name == group_name), None)
    if item is None:
        return None
    return pixels.unpack_mask(item.part_mask, *item.part_mask_size)


def selected_vertices(obj) -> np.ndarray:
    """Indices of selected vertices (Edit Mode selection is flushed to the mesh first)."""
    meshio.flush_edits(obj)
    sel = np.empty(len(obj.data.vertices), bool)
    obj.data.vertices.foreach_get("select", sel)
    return np.flatnonzero(sel)
