"""Viewport feedback: the 2D part mask and clicks over the image, the matched faces over the mesh.

GPU drawing does not exist in background mode, so everything here is a no-op there. Data is prepared on
the main thread when a result is applied; GPU objects are built lazily inside the draw callbacks.
"""

from __future__ import annotations

import bpy
import numpy as np

from . import pixels

_handlers: list[tuple[type, object]] = []
_state: dict = {}

MASK_COLOR = (1.0, 0.45, 0.0, 0.45)
MAX_TEXTURE_SIDE = 1024  # the overlay texture is uploaded from a Python list: keep it small
FACE_COLOR = (1.0, 0.45, 0.0, 0.35)


def _overlay_rgba(mask: np.ndarray) -> np.ndarray:
    h, w = mask.shape
    scale = min(1.0, MAX_TEXTURE_SIDE / max(h, w))
    small = pixels.resize_mask(mask, max(1, round(w * scale)), max(1, round(h * scale)))
    return pixels.mask_to_rgba(small, MASK_COLOR)


def show_result(object_name: str, vertex_mask: np.ndarray | None, part_mask: np.ndarray | None) -> None:
    """Remember what to draw for the latest result (main thread)."""
    if bpy.app.background:
        return
    _state.clear()
    _state["object"] = object_name
    if part_mask is not None:
        _state["mask_rgba"] = _overlay_rgba(part_mask)
    obj = bpy.data.objects.get(object_name)
    if vertex_mask is not None and obj is not None and obj.type == "MESH":
        me = obj.data
        me.calc_loop_triangles()
        tris = np.empty(len(me.loop_triangles) * 3, np.int32)
        me.loop_triangles.foreach_get("vertices", tris)
        tris = tris.reshape(-1, 3)
        keep = vertex_mask[tris].sum(axis=1) >= 2
        co = np.empty(len(me.vertices) * 3, np.float32)
        me.vertices.foreach_get("co", co)
        _state["tri_coords"] = co.reshape(-1, 3)[tris[keep].ravel()]
    _tag_redraw()


def on_file_load() -> None:
    """What was drawn belongs to the previous file."""
    _state.clear()


def show_image_mask(part_mask: np.ndarray | None) -> None:
    if bpy.app.background:
        return
    _state.pop("texture", None)
    _state.pop("mask_rgba", None)
    if part_mask is not None:
        _state["mask_rgba"] = _overlay_rgba(part_mask)
    _tag_redraw()


def _tag_redraw() -> None:
    wm = bpy.context.window_manager
    for window in wm.windows:
        for area in window.screen.areas:
            if area.type in {"VIEW_3D", "IMAGE_EDITOR"}:
                area.tag_redraw()


def _draw_image_editor() -> None:
    import gpu
    from gpu_extras.batch import batch_for_shader

    context = bpy.context
    settings = context.scene.bsb
    space = context.space_data
    if not settings.show_overlay or space is None or space.image is None or space.image != settings.image:
        return
    view2d = context.region.view2d
    x0, y0 = view2d.view_to_region(0.0, 0.0, clip=False)
    x1, y1 = view2d.view_to_region(1.0, 1.0, clip=False)
    gpu.state.blend_set("ALPHA")
    rgba = _state.get("mask_rgba")
    if rgba is not None:
        tex = _state.get("texture")
        if tex is None:
            h, w = rgba.shape[:2]
            buf = gpu.types.Buffer("FLOAT", w * h * 4, rgba.ravel().tolist())
            tex = _state["texture"] = gpu.types.GPUTexture((w, h), format="RGBA32F", data=buf)
        shader = gpu.shader.from_builtin("IMAGE")
        batch = batch_for_shader(shader, "TRI_FAN", {
            "pos": ((x0, y0), (x1, y0), (x1, y1), (x0, y1)),
            "texCoord": ((0, 0), (1, 0), (1, 1), (0, 1)),
        })
        shader.bind()
        shader.uniform_sampler("image", tex)
        batch.draw(shader)
    marks = [(c.u, c.v, c.positive) for c in settings.clicks]
    if marks:
        shader = gpu.shader.from_builtin("UNIFORM_COLOR")
        for positive in (True, False):
            quads = []
            for u, v, pos in marks:
                if pos != positive:
                    continue
                cx, cy = x0 + u * (x1 - x0), y0 + v * (y1 - y0)
                quads += [(cx - 4, cy - 4), (cx + 4, cy - 4), (cx + 4, cy + 4),
                          (cx - 4, cy - 4), (cx + 4, cy + 4), (cx - 4, cy + 4)]
            if quads:
                batch = batch_for_shader(shader, "TRIS", {"pos": quads})
                shader.uniform_float("color", (0.1, 1.0, 0.2, 1.0) if positive else (1.0, 0.1, 0.1, 1.0))
                batch.draw(shader)
    if settings.use_box:
        u0, v0, u1, v1 = settings.box
        pts = [(x0 + u * (x1 - x0), y0 + v * (y1 - y0)) for u, v in ((u0, v0), (u1, v0), (u1, v1), (u0, v1))]
        shader = gpu.shader.from_builtin("UNIFORM_COLOR")
        batch = batch_for_shader(shader, "LINE_LOOP", {"pos": pts})
        shader.uniform_float("color", (1.0, 1.0, 0.2, 1.0))
        batch.draw(shader)
    gpu.state.blend_set("NONE")


def _draw_view3d() -> None:
    import gpu
    from gpu_extras.batch import batch_for_shader

    coords = _state.get("tri_coords")
    if coords is None or not bpy.context.scene.bsb.show_overlay:
        return
    obj = bpy.data.objects.get(_state.get("object", ""))
    if obj is None:
        return
    shader = gpu.shader.from_builtin("UNIFORM_COLOR")
    batch = batch_for_shader(shader, "TRIS", {"pos": coords})
    gpu.state.blend_set("ALPHA")
    gpu.state.depth_test_set("LESS_EQUAL")
    gpu.matrix.push()
    gpu.matrix.multiply_matrix(obj.matrix_world)
    shader.uniform_float("color", FACE_COLOR)
    batch.draw(shader)
    gpu.matrix.pop()
    gpu.state.depth_test_set("NONE")
    gpu.state.blend_set("NONE")


def register() -> None:
    if bpy.app.background:
        return
    _handlers.append((bpy.types.SpaceImageEditor,
                      bpy.types.SpaceImageEditor.draw_handler_add(_draw_image_editor, (), "WINDOW", "POST_PIXEL")))
    _handlers.append((bpy.types.SpaceView3D,
                      bpy.types.SpaceView3D.draw_handler_add(_draw_view3d, (), "WINDOW", "POST_VIEW")))


def unregister() -> None:
    for space, handle in _handlers:
        space.draw_handler_remove(handle, "WINDOW")
    _handlers.clear()
    _state.clear()
