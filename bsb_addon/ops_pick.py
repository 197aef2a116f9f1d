"""Clicking the part on the reference image: a modal operator in the Image Editor.

Left click adds a positive point, Shift+click a negative one, a drag sets a box; Enter matches, Esc or
right click restores the clicks from before. Other events pass through, so pan and zoom still work.
"""

from __future__ import annotations

import bpy

from . import pixels

DRAG_PIXELS = 6


def _window_region(area):
    return next((r for r in area.regions if r.type == "WINDOW"), None)


class BSB_OT_pick_part(bpy.types.Operator):
    """Click the part on the image (Shift: negative, drag: box, Enter: match, Esc: cancel)"""

    bl_idname = "bsb.pick_part"
    bl_label = "Pick Part"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        space = context.space_data
        return context.area is not None and context.area.type == "IMAGE_EDITOR" and space.image is not None

    def invoke(self, context, event):
        s = context.scene.bsb
        if s.image != context.space_data.image:
            s.image = context.space_data.image
            s.clicks.clear()
        self._saved = [(c.u, c.v, c.positive) for c in s.clicks]
        self._saved_box = (s.use_box, tuple(s.box))
        self._press = None
        self._area = context.area
        context.workspace.status_text_set("Click: part  Shift+click: not part  Drag: box  Enter: match  Esc: cancel")
        context.window_manager.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def _view_coords(self, event):
        """Mouse -> (region x, y, u, v) in the image editor's main region, or None outside it."""
        region = _window_region(self._area)
        x, y = event.mouse_x - region.x, event.mouse_y - region.y
        if not (0 <= x < region.width and 0 <= y < region.height):
            return None
        u, v = region.view2d.region_to_view(x, y)
        return x, y, u, v

    def modal(self, context, event):
        s = context.scene.bsb
        self._area.tag_redraw()
        if event.type in {"ESC", "RIGHTMOUSE"} and event.value == "PRESS":
            s.clicks.clear()
            for u, v, positive in self._saved:
                c = s.clicks.add()
                c.u, c.v, c.positive = u, v, positive
            s.use_box, s.box = self._saved_box[0], self._saved_box[1]
            return self._end(context, {"CANCELLED"})
        if event.type in {"RET", "NUMPAD_ENTER", "SPACE"} and event.value == "PRESS":
            self._end(context, {"FINISHED"})
            if context.active_object is not None and context.active_object.type == "MESH":
                bpy.ops.bsb.match()
            else:
                self.report({"WARNING"}, "Clicks kept; select the mesh and press Match Part.")
            return {"FINISHED"}
        where = self._view_coords(event)
        if event.type == "LEFTMOUSE" and event.value == "PRESS":
            if where is None:
                return {"PASS_THROUGH"}
            self._press = where
            return {"RUNNING_MODAL"}
        if event.type == "MOUSEMOVE" and self._press is not None and where is not None:
            x0, y0, u0, v0 = self._press
            if abs(where[0] - x0) + abs(where[1] - y0) > DRAG_PIXELS:
                s.use_box, s.box = True, (u0, v0, where[2], where[3])
            return {"RUNNING_MODAL"}
        if event.type == "LEFTMOUSE" and event.value == "RELEASE" and self._press is not None:
            x0, y0, u0, v0 = self._press
            self._press = None
            if where is not None and abs(where[0] - x0) + abs(where[1] - y0) > DRAG_PIXELS:
                s.use_box, s.box = True, (u0, v0, where[2], where[3])
            elif not pixels.inside(u0, v0):
                self.report({"WARNING"}, "That click is outside the image; click on the image itself.")
            else:
                c = s.clicks.add()
                c.u, c.v, c.positive = u0, v0, not event.shift
            return {"RUNNING_MODAL"}
        return {"PASS_THROUGH"}

    def _end(self, context, result):
        context.workspace.status_text_set(None)
        self._area.tag_redraw()
        return result


classes = (BSB_OT_pick_part,)
