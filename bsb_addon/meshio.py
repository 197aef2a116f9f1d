"""Blender data in and out: mesh to .npy, results to vertex groups, attributes and materials.

Bulk access goes through foreach_get/foreach_set (milliseconds at 100k+ vertices). Writers assume a
validated result and an object that `find_unchanged` has just re-checked; each is called from one
operator (one undo step) so Ctrl-Z removes the whole assignment.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import bpy
import numpy as np

from . import meshmath, pixels
from .errors import InputError, ObjectChanged
from .jobs import MeshFiles


@dataclass(frozen=True)
class MeshStamp:
    """What must still hold when a result arrives (undo and file loads invalidate ID references)."""

    name: str
    n_vertices: int
    n_polygons: int


def require_mesh(obj) -> None:
    if obj is None:
        raise InputError("No active object: select the mesh to segment.")
    if obj.type != "MESH":
        raise InputError(f"'{obj.name}' is a {obj.type.lower()}, not a mesh: select a mesh object.")
    if len(obj.data.vertices) == 0 or len(obj.data.polygons) == 0:
        raise InputError(f"'{obj.name}' has no faces: the engine needs a surface to render.")


def stamp(obj) -> MeshStamp:
    require_mesh(obj)
    return MeshStamp(obj.name, len(obj.data.vertices), len(obj.data.polygons))


def find_unchanged(st: MeshStamp):
    """Re-find the object by name and refuse if it changed since the request left."""
    obj = bpy.data.objects.get(st.name)
    if obj is None or obj.type != "MESH":
        raise ObjectChanged(f"'{st.name}' no longer exists (deleted, renamed or undone); nothing was written.")
    if len(obj.data.vertices) != st.n_vertices or len(obj.data.polygons) != st.n_polygons:
        raise ObjectChanged(
            f"'{st.name}' was edited while the engine worked ({st.n_vertices} -> {len(obj.data.vertices)} vertices); "
            "nothing was written. Run it again."
        )
    return obj


@contextmanager
def object_mode(obj):
    """Vertex groups and mesh data cannot be written in Edit Mode: leave it for the write, then return."""
    if obj.mode != "EDIT":
        yield
        return
    with bpy.context.temp_override(active_object=obj, object=obj, selected_objects=[obj]):
        bpy.ops.object.mode_set(mode="OBJECT")
    try:
        yield
    finally:
        with bpy.context.temp_override(active_object=obj, object=obj, selected_objects=[obj]):
            bpy.ops.object.mode_set(mode="EDIT")


def read_mesh(obj, depsgraph=None) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (V, 3) float32 oriented as in the scene (Z up) and triangles (T, 3) int32.

    The evaluated mesh (modifiers, shape keys) is used only when it keeps the vertex count, so results
    still index the original vertices; otherwise the original mesh is sent.
    """
    require_mesh(obj)
    me = obj.data
    n = len(me.vertices)
    source, evaluated = me, None
    if depsgraph is not None:
        evaluated = obj.evaluated_get(depsgraph)
        candidate = evaluated.to_mesh()
        if len(candidate.vertices) == n:
            source = candidate
    try:
        co = np.empty(n * 3, np.float32)
        source.vertices.foreach_get("co", co)
        source.calc_loop_triangles()
        tris = np.empty(len(source.loop_triangles) * 3, np.int32)
        source.loop_triangles.foreach_get("vertices", tris)
    finally:
        if evaluated is not None:
            evaluated.to_mesh_clear()
    # Rotation and scale of the object, not its location: what looks upright in the viewport is upright.
    basis = np.array(obj.matrix_world.to_3x3(), dtype=np.float64)
    co = (co.reshape(-1, 3).astype(np.float64) @ basis.T).astype(np.float32)
    return co, tris.reshape(-1, 3)


def export_mesh(obj, job_dir: Path, depsgraph=None) -> MeshFiles:
    vertices, faces = read_mesh(obj, depsgraph)
    vpath, fpath = Path(job_dir) / "vertices.npy", Path(job_dir) / "faces.npy"
    np.save(vpath, vertices)
    np.save(fpath, faces)
    return MeshFiles(str(vpath), str(fpath), len(vertices), obj.name, up="z")


def image_file_for_engine(image, job_dir: Path) -> str:
    """A path the engine can read: the image's own file when it is on disk and unmodified, else a PNG copy."""
    if image is None:
        raise InputError("No reference image: choose one in the BSB panel (or open it in the Image Editor).")
    if isinstance(image, (str, Path)):
        path = Path(bpy.path.abspath(str(image)))
        if not path.is_file():
            raise InputError(f"The reference image '{path}' does not exist; check the path.")
        return str(path)
    if image.size[0] == 0 or image.size[1] == 0:
        raise InputError(f"The image '{image.name}' has no pixels (missing file?); reload or choose another image.")
    path = Path(bpy.path.abspath(image.filepath_raw)) if image.filepath_raw else None
    if path is not None and path.is_file() and not image.is_dirty and image.packed_file is None and image.source == "FILE":
        return str(path)
    copy = Path(job_dir) / "reference.png"
    rgb = image_rgb8(image)
    tmp = bpy.data.images.new("bsb_export_tmp", rgb.shape[1], rgb.shape[0], alpha=False)
    try:
        flat = np.ones((rgb.shape[0], rgb.shape[1], 4), np.float32)
        flat[..., :3] = rgb[::-1] / 255.0
        tmp.pixels.foreach_set(flat.ravel())
        tmp.filepath_raw = str(copy)
        tmp.file_format = "PNG"
        tmp.save()
    finally:
        bpy.data.images.remove(tmp)
    return str(copy)


def image_rgb8(image) -> np.ndarray:
    """(H, W, 3) uint8, row 0 at the top, from any 1-4 channel image datablock."""
    width, height, channels = image.size[0], image.size[1], image.channels
    flat = np.empty(width * height * channels, np.float32)
    image.pixels.foreach_get(flat)
    per_pixel = flat.reshape(-1, channels)
    rgb = per_pixel[:, :3] if channels >= 3 else np.repeat(per_pixel[:, :1], 3, axis=1)
    return pixels.blender_rgba_to_rgb8(rgb, width, height)


def attribute_name(group_name: str) -> str:
    """Vertex groups and attributes share one namespace, so the attribute gets a prefix."""
    return f"bsb_{group_name}"


def write_part(obj, group_name: str, weights: np.ndarray, mask: np.ndarray, soft: bool = False) -> int:
    """Replace (or create) the vertex group and its float point attribute `bsb_<group>`."""
    if not group_name:
        raise InputError("The group name is empty; type a name for the part.")
    group = obj.vertex_groups.get(group_name)
    if group is not None:
        obj.vertex_groups.remove(group)
    group = obj.vertex_groups.new(name=group_name)
    for weight, idx in meshmath.weight_levels(weights, mask, soft).items():
        group.add(idx.tolist(), weight, "REPLACE")
    me = obj.data
    name = attribute_name(group_name)
    attr = me.attributes.get(name)
    if attr is not None and (attr.domain != "POINT" or attr.data_type != "FLOAT"):
        me.attributes.remove(attr)
        attr = None
    if attr is None:
        attr = me.attributes.new(name, "FLOAT", "POINT")
    values = np.where(mask, np.clip(weights, 0.0, 1.0), 0.0).astype(np.float32) if soft else mask.astype(np.float32)
    attr.data.foreach_set("value", values)
    me.update()
    return int(mask.sum())


def group_mask(obj, group_name: str) -> np.ndarray:
    """Membership of a vertex group (weight > 0), read once per vertex (vertex groups are not attributes)."""
    group = obj.vertex_groups.get(group_name)
    if group is None:
        raise InputError(f"'{obj.name}' has no vertex group '{group_name}'; match a part first.")
    if obj.mode == "EDIT":
        obj.update_from_editmode()
    gi = group.index
    return np.array([any(g.group == gi and g.weight > 0.0 for g in v.groups) for v in obj.data.vertices], bool)


def part_faces(obj, mask: np.ndarray) -> np.ndarray:
    me = obj.data
    loop_vertices = np.empty(len(me.loops), np.int32)
    me.loops.foreach_get("vertex_index", loop_vertices)
    starts = np.empty(len(me.polygons), np.int32)
    me.polygons.foreach_get("loop_start", starts)
    return meshmath.faces_in_part(mask, loop_vertices, starts)


def new_material(name: str, color: tuple[float, float, float] | None):
    mat = bpy.data.materials.new(name)
    if color is not None:
        rgba = (*color, 1.0)
        mat.diffuse_color = rgba
        if getattr(mat, "node_tree", None) is None and hasattr(mat, "use_nodes"):
            mat.use_nodes = True
        bsdf = next((n for n in mat.node_tree.nodes if n.type == "BSDF_PRINCIPLED"), None) if mat.node_tree else None
        if bsdf is not None:
            bsdf.inputs["Base Color"].default_value = rgba
    return mat


def assign_material(obj, faces: np.ndarray, material) -> int:
    """Put `material` on the chosen polygons (adding a slot if needed) without edit mode or bpy.ops."""
    me = obj.data
    if not faces.any():
        raise InputError("The part covers no whole face, so there is nothing to colour.")
    slot = next((i for i, m in enumerate(me.materials) if m == material), None)
    if slot is None:
        if len(me.materials) == 0:
            me.materials.append(None)  # keep the untouched faces on their (empty) first slot
        me.materials.append(material)
        slot = len(me.materials) - 1
    index = np.empty(len(me.polygons), np.int32)
    me.polygons.foreach_get("material_index", index)
    index[faces] = slot
    me.polygons.foreach_set("material_index", index)
    me.update()
    return int(faces.sum())


def part_color(image, part_mask: np.ndarray | None) -> tuple[float, float, float] | None:
    """Median colour of the image part, converted to scene-linear for a material's base colour."""
    if image is None or part_mask is None:
        return None
    if isinstance(image, (str, Path)):
        image = bpy.data.images.load(bpy.path.abspath(str(image)), check_existing=True)
    if image.size[0] == 0:
        return None
    med = pixels.median_color(image_rgb8(image), part_mask)
    if med is None:
        return None
    if not image.is_float:  # byte images hold display-encoded (sRGB) values
        med = tuple(float(c) for c in meshmath.srgb_to_linear(med))
    return med
