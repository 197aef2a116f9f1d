"""Add-on preferences: where the engine's Python is, models, device and profile."""

from __future__ import annotations

from pathlib import Path

import bpy
from bpy.props import BoolProperty, EnumProperty, StringProperty


class BSB_AddonPreferences(bpy.types.AddonPreferences):
    bl_idname = __package__

    engine_python: StringProperty(
        name="Engine Python", subtype="FILE_PATH",
        description="Python of a venv where the engine is installed (made by 'Set up engine')",
    )
    base_python: StringProperty(
        name="Base Python", subtype="FILE_PATH",
        description="Python 3.10+ used to create the engine venv; empty uses Blender's own Python",
    )
    models_dir: StringProperty(name="Models folder", subtype="DIR_PATH",
                               description="Folder with the SAM and DINOv2 checkpoints; empty uses the add-on's folder")
    device: EnumProperty(name="Device", default="AUTO", items=[
        ("AUTO", "Auto", "CUDA, then MPS, then CPU"), ("CPU", "CPU", ""), ("CUDA", "CUDA", "NVIDIA GPU"),
        ("MPS", "MPS", "Apple GPU")])
    profile: EnumProperty(name="Profile", default="CPU", items=[
        ("CPU", "CPU", "Smaller models and fewer views, for machines without a GPU"),
        ("GPU", "GPU", "Full-size models, for a CUDA or Apple GPU"),
        ("TINY", "Plumbing check", "Random weights: tests the set-up only, results are meaningless")])
    keep_engine_alive: BoolProperty(name="Keep engine alive", default=True,
                                    description="Keep models loaded between actions (faster, uses memory)")

    def draw(self, context):
        layout = self.layout
        layout.use_property_split = True
        layout.use_property_decorate = False
        col = layout.column()
        col.prop(self, "engine_python")
        col.prop(self, "models_dir")
        col.prop(self, "device")
        col.prop(self, "profile")
        col.prop(self, "keep_engine_alive")
        col.prop(self, "base_python")
        job = context.window_manager.bsb_job
        row = layout.row(align=True)
        row.operator("bsb.setup_engine", icon="IMPORT")
        row.operator("bsb.test_engine", icon="PLAY")
        row.operator("bsb.release_engine", icon="X")
        row.operator("bsb.open_log", icon="TEXT")
        if job.busy and job.kind == "setup":
            row = layout.row(align=True)
            row.progress(text=job.message, factor=job.fraction)
            row.operator("bsb.cancel_job", text="", icon="CANCEL")
        if job.engine_info:
            layout.label(text=job.engine_info, icon="INFO")
        if job.error:
            box = layout.box()
            for line in job.error.splitlines()[:6]:
                box.label(text=line)


classes = (BSB_AddonPreferences,)


def engine_source() -> Path | None:
    """The engine source shipped in the extension zip (engine_src/), or the repository in development."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "engine_src", here.parent):
        if (candidate / "pyproject.toml").is_file() and (candidate / "engine").is_dir():
            return candidate
    return None

