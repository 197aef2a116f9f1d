"""Sidebar panels ("BSB" tab) in the 3D View and the Image Editor, and the results list."""

from __future__ import annotations

import bpy

from . import api, feedback, session

FIX_BUTTONS = {"RESTART": ("bsb.restart_engine", "FILE_REFRESH"), "PREFS": ("bsb.open_prefs", "PREFERENCES"),
               "SETUP": ("bsb.setup_engine", "IMPORT"), "RETRY": ("bsb.retry", "FILE_REFRESH")}


class BSB_UL_results(bpy.types.UIList):
    def draw_item(self, context, layout, data, item, icon, active_data, active_propname, index):
        row = layout.row(align=True)
        row.label(text=item.name, icon="GROUP_VERTEX" if item.found else "QUESTION")
        if item.found:
            row.label(text=f"{item.confidence:.2f}")
            row.label(text=f"{item.n_vertices} v")
        else:
            row.label(text="no corresponding part")
        if item.random_weights:
            row.label(text=api.PLUMBING, icon="ERROR")


def draw_job(layout, context) -> None:
    """Progress with cancel, the last message, and an error box with its fix-it button."""
    job = context.window_manager.bsb_job
    if job.busy:
        row = layout.row(align=True)
        row.progress(text=f"{job.kind}: {job.message}", factor=job.fraction, type="BAR")
        row.operator("bsb.cancel_job", text="", icon="CANCEL")
    elif job.message:
        for i, line in enumerate(feedback.wrap(job.message, max_lines=4)):
            layout.label(text=line, icon="INFO" if i == 0 else "BLANK1")
    if job.error:
        box = layout.box()
        for i, line in enumerate(feedback.wrap(job.error)):
            box.label(text=line, icon="ERROR" if i == 0 else "BLANK1")
        if job.fix in FIX_BUTTONS:
            op, icon = FIX_BUTTONS[job.fix]
            box.operator(op, icon=icon)
    client = session.current_client()
    if client is not None and client.random_weights:
        layout.label(text="Engine has random weights: " + api.PLUMBING, icon="ERROR")


def draw_clicks(layout, settings) -> None:
    pos = sum(c.positive for c in settings.clicks)
    neg = len(settings.clicks) - pos
    row = layout.row(align=True)
    row.label(text=f"{pos} part / {neg} not-part clicks" + (", box" if settings.use_box else ""))
    row.operator("bsb.clear_clicks", text="", icon="X")


def draw_parts(layout, settings) -> None:
    """Split Into Parts (granularity, group prefix) and Find Part (a name, no image needed)."""
    box = layout.box()
    row = box.row(align=True)
    row.prop(settings, "granularity")
    row.prop(settings, "parts_prefix", text="")
    box.operator("bsb.split_parts", icon="MOD_EXPLODE")
    row = box.row(align=True)
    row.prop(settings, "part_text", text="", icon="VIEWZOOM")
    row.operator("bsb.find_part", text="Find Part")


class BSB_PT_view3d(bpy.types.Panel):
    bl_label = "BSB"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "BSB"

    def draw(self, context):
        layout = self.layout
        s = context.scene.bsb
        draw_job(layout, context)
        layout.template_ID(s, "image", open="image.open")
        obj = context.active_object
        if obj is None or obj.type != "MESH":
            layout.label(text="Select a mesh object", icon="INFO")
            return
        layout.operator("bsb.prepare_mesh", icon="MESH_DATA")
        draw_clicks(layout, s)
        col = layout.column(align=True)
        col.prop(s, "group_name")
        col.prop(s, "soft_weights")
        col.prop(s, "min_confidence")
        layout.operator("bsb.match", icon="VIEWZOOM")
        layout.template_list("BSB_UL_results", "", s, "results", s, "active_result", rows=3)
        box = layout.box()
        box.label(text="Refine in 3D (selected vertices)")
        row = box.row(align=True)
        row.operator("bsb.refine", text="Add", icon="ADD").positive = True
        row.operator("bsb.refine", text="Remove", icon="REMOVE").positive = False
        box.operator("bsb.shape_to_image", icon="IMAGE_DATA")
        row = layout.row(align=True)
        row.operator("bsb.match_all", icon="OUTLINER_DATA_POINTCLOUD")
        row.prop(s, "max_regions", text="")
        draw_parts(layout, s)
        box = layout.box()
        box.prop(s, "material")
        box.prop(s, "color_from_image")
        box.operator("bsb.assign_material", icon="MATERIAL")
        layout.prop(s, "show_overlay")


class BSB_PT_image(bpy.types.Panel):
    bl_label = "BSB"
    bl_space_type = "IMAGE_EDITOR"
    bl_region_type = "UI"
    bl_category = "BSB"

    def draw(self, context):
        layout = self.layout
        s = context.scene.bsb
        draw_job(layout, context)
        layout.operator("bsb.pick_part", icon="RESTRICT_SELECT_OFF")
        draw_clicks(layout, s)
        layout.prop(s, "use_box")
        layout.prop(s, "group_name")
        layout.operator("bsb.match", icon="VIEWZOOM")
        layout.prop(s, "show_overlay")


classes = (BSB_UL_results, BSB_PT_view3d, BSB_PT_image)
