"""Blender data in and out: mesh to .npy, results to vertex groups, attributes and materials.

Bulk access goes through foreach_get/foreach_set (milliseconds at 100k+ vertices). Writers assume a
validated result and an object that `find_unchanged` has just re-checked; each is called from one
operator (one undo step) so Ctrl-Z removes the whole assignment.
"""

from __future__ import annotations

import hashlib
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
    """What must still hold when a result arrives (undo and file loads invalidate ID references):
    the same object, the same vertex positions and the same faces."""

    name: str
    n_vertices: int
    n_polygons: int
    positions: str
    topology: str


def require_mesh(obj) -> None:
    if obj is None:
        raise InputError("No active object: select the mesh to segment.")
    if obj.type != "MESH":
        raise InputError(f"'{obj.name}' is a {obj.type.lower()}, not a mesh: select a mesh object.")
    flush_edits(obj)
    if len(obj.data.vertices) == 0 or len(obj.data.polygons) == 0:
        raise InputError(f"'{obj.name}' has no faces: the engine needs a surface to render.")


def flush_edits(obj) -> None:
    """Edit Mode keeps its edits in a BMesh: copy them into the mesh before reading or checking it."""
    if obj is not None and obj.mode == "EDIT":
        obj.update_from_editmode()


def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.blake2b(digest_size=16)
    for arr in arrays:
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def stamp(obj) -> MeshStamp:
    """A cheap fingerprint (foreach_get + one hash: ~10 ms per million vertices) of positions and topology."""
    require_mesh(obj)
    me = obj.data
    co = np.empty(len(me.vertices) * 3, np.float32)
    me.vertices.foreach_get("co", co)
    corners = np.empty(len(me.loops), np.int32)
    me.loops.foreach_get("vertex_index", corners)
    starts = np.empty(len(me.polygons), np.int32)
    me.polygons.foreach_get("loop_start", starts)
    return MeshStamp(obj.name, len(me.vertices), len(me.polygons), _digest(co), _digest(corners, starts))


def find_unchanged(st: MeshStamp):
    """Re-find the object by name (Edit Mode flushed) and refuse if it changed since the request left."""
    obj = bpy.data.objects.get(st.name)
    if obj is None or obj.type != "MESH":
        raise ObjectChanged(f"'{st.name}' no longer exists (deleted, renamed or undone); nothing was written.")
    flush_edits(obj)
    now = stamp(obj) if len(obj.data.polygons) else None
    if now is None or now.n_vertices != st.n_vertices or now.n_polygons != st.n_polygons:
        n_v, n_p = len(obj.data.vertices), len(obj.data.polygons)
        raise ObjectChanged(
            f"'{st.name}' was edited while the engine worked ({st.n_vertices} -> {n_v} vertices, "
            f"{st.n_polygons} -> {n_p} faces); nothing was written. Run it again.")
    if now.topology != st.topology:
        raise ObjectChanged(f"The faces of '{st.name}' were edited while the engine worked (same counts, different "
                            "connections); nothing was written. Run it again.")
    if now.positions != st.positions:
        raise ObjectChanged(f"Vertices of '{st.name}' were moved (edited or sculpted) while the engine worked; "
                            "nothing was written. Run it again.")
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


def _has_modifiers(obj) -> bool:
    return any(m.show_viewport for m in obj.modifiers) or obj.data.shape_keys is not None


def _mesh_arrays(me) -> tuple[np.ndarray, np.ndarray]:
    co = np.empty(len(me.vertices) * 3, np.float32)
    me.vertices.foreach_get("co", co)
    me.calc_loop_triangles()
    tris = np.empty(len(me.loop_triangles) * 3, np.int32)
    me.loop_triangles.foreach_get("vertices", tris)
    return co.reshape(-1, 3), tris.reshape(-1, 3)


CODE_ATTR, INDEX_ATTR = "bsb_tmp_code", "bsb_tmp_index"


def _evaluated(obj, depsgraph) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The mesh with its modifiers, and which base vertex each of its vertices copies (None: the same vertices).

    Blender does not expose its ORIGINAL_INDEX layer to Python, so the base vertices carry their index
    and a random code as temporary attributes through the modifier stack (meshmath.copies_of_base).
    """
    me = obj.data
    n = len(me.vertices)
    codes = np.random.default_rng(n).uniform(1.0, 2.0, n).astype(np.float32)
    with object_mode(obj):
        for name in (CODE_ATTR, INDEX_ATTR):
            if me.attributes.get(name) is not None:
                me.attributes.remove(me.attributes[name])
        me.attributes.new(CODE_ATTR, "FLOAT", "POINT").data.foreach_set("value", codes)
        me.attributes.new(INDEX_ATTR, "INT", "POINT").data.foreach_set("value", np.arange(n, dtype=np.int32))
        try:
            depsgraph = bpy.context.evaluated_depsgraph_get()  # sees the new attributes
            evaluated = obj.evaluated_get(depsgraph)
            em = evaluated.to_mesh()
            try:
                co, tris = _mesh_arrays(em)
                ne = len(em.vertices)
                code_attr, index_attr = em.attributes.get(CODE_ATTR), em.attributes.get(INDEX_ATTR)
                copies = None
                if code_attr is not None and index_attr is not None:
                    ce, ie = np.empty(ne, np.float32), np.empty(ne, np.int32)
                    code_attr.data.foreach_get("value", ce)
                    index_attr.data.foreach_get("value", ie)
                    copies = meshmath.copies_of_base(ce, ie, codes)
            finally:
                evaluated.to_mesh_clear()
        finally:
            for name in (CODE_ATTR, INDEX_ATTR):
                if me.attributes.get(name) is not None:
                    me.attributes.remove(me.attributes[name])
    if copies is None:
        copies = np.full(len(co), -1, np.int64)
    return co, tris, copies


def read_mesh(obj, depsgraph=None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, str]:
    """Vertices (V, 3) float32 oriented as in the scene (Z up), triangles (T, 3) int32, the map from
    those vertices to the base mesh (None when they are the base vertices), and a warning ("" if none).

    With modifiers or shape keys the evaluated mesh is what the user sees, so that is what is matched
    (half a mirrored character is not the character); results are carried back to the base vertices.
    When a modifier leaves some base vertex without a copy (Decimate, Remesh) there is no such map, so
    the base mesh is sent and the warning says the modifiers were left out.
    """
    require_mesh(obj)
    me = obj.data
    n = len(me.vertices)
    copies, warning = None, ""
    co, tris = None, None
    if depsgraph is not None and _has_modifiers(obj):
        eco, etris, ecopies = _evaluated(obj, depsgraph)
        covered = np.zeros(n, bool)
        covered[ecopies[ecopies >= 0]] = True
        if covered.all() and len(etris):
            co, tris = eco, etris
            identity = len(eco) == n and np.array_equal(ecopies, np.arange(n))
            copies = None if identity else ecopies
        else:
            names = ", ".join(m.name for m in obj.modifiers if m.show_viewport) or "shape keys"
            warning = (f"The modifiers of '{obj.name}' ({names}) remove or merge vertices, so a result cannot be "
                       f"mapped back; the mesh WITHOUT its modifiers was matched ({int((~covered).sum())} of {n} "
                       "vertices have no counterpart). Apply the modifiers to match what you see.")
    if co is None:
        co, tris = _mesh_arrays(me)
    # Rotation and scale of the object, not its location: what looks upright in the viewport is upright.
    basis = np.array(obj.matrix_world.to_3x3(), dtype=np.float64)
    co = (co.astype(np.float64) @ basis.T).astype(np.float32)
    return co, tris, copies, warning


def export_mesh(obj, job_dir: Path, depsgraph=None) -> tuple[MeshFiles, str]:
    vertices, faces, copies, warning = read_mesh(obj, depsgraph)
    vpath, fpath = Path(job_dir) / "vertices.npy", Path(job_dir) / "faces.npy"
    np.save(vpath, vertices)
    np.save(fpath, faces)
    files = MeshFiles(str(vpath), str(fpath), len(vertices), obj.name, up="z", copies=copies,
                      n_base=len(obj.data.vertices))
    return files, warning


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


def check_group_name(group_name: str) -> str:
    """The name that will be written: cut to Blender's limit (with the attribute's prefix) on a character."""
    name = meshmath.fit_name(group_name)
    if not name:
        raise InputError("The group name is empty; type a name for the part.")
    return name


def write_part(obj, group_name: str, weights: np.ndarray, mask: np.ndarray, soft: bool = False) -> int:
    """Replace (or create) the vertex group and its float point attribute `bsb_<group>`, all or nothing.

    Both are built under temporary names and swapped in at the end, so a failure part-way leaves the
    old group and attribute as they were.
    """
    name = check_group_name(group_name)
    if len(mask) != len(obj.data.vertices):
        raise ObjectChanged(f"The result has {len(mask)} vertices but '{obj.name}' has {len(obj.data.vertices)}; "
                            "nothing was written. Run it again.")
    levels = meshmath.weight_levels(weights, mask, soft)
    values = np.where(mask, np.clip(weights, 0.0, 1.0), 0.0).astype(np.float32) if soft else mask.astype(np.float32)
    me = obj.data
    tmp_group, tmp_attr = "bsb_tmp_group", "bsb_tmp_attr"
    for coll, tmp in ((obj.vertex_groups, tmp_group), (me.attributes, tmp_attr)):
        if coll.get(tmp) is not None:
            coll.remove(coll[tmp])
    try:
        group = obj.vertex_groups.new(name=tmp_group)
        for weight, idx in levels.items():
            group.add(idx.tolist(), weight, "REPLACE")
        me.attributes.new(tmp_attr, "FLOAT", "POINT").data.foreach_set("value", values)
    except Exception:
        for coll, tmp in ((obj.vertex_groups, tmp_group), (me.attributes, tmp_attr)):
            if coll.get(tmp) is not None:
                coll.remove(coll[tmp])
        raise
    old = obj.vertex_groups.get(name)
    if old is not None:
        obj.vertex_groups.remove(old)
    obj.vertex_groups[tmp_group].name = name
    old_attr = me.attributes.get(attribute_name(name))
    if old_attr is not None:
        me.attributes.remove(old_attr)
    me.attributes[tmp_attr].name = attribute_name(name)
    me.update()
    return int(mask.sum())


def group_mask(obj, group_name: str) -> np.ndarray:
    """Membership of a vertex group (weight > 0).

    Groups this add-on wrote have a twin float attribute read in one foreach_get (milliseconds at 1M
    vertices); other groups need one Python pass over the vertices (vertex groups are not attributes).
    """
    group = obj.vertex_groups.get(group_name)
    if group is None:
        raise InputError(f"'{obj.name}' has no vertex group '{group_name}'; match a part first.")
    flush_edits(obj)
    me = obj.data
    attr = me.attributes.get(attribute_name(group_name))
    if attr is not None and attr.domain == "POINT" and attr.data_type == "FLOAT":
        values = np.empty(len(me.vertices), np.float32)
        attr.data.foreach_get("value", values)
        return values > 0.0
    gi = group.index
    return np.array([any(g.group == gi and g.weight > 0.0 for g in v.groups) for v in me.vertices], bool)


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
