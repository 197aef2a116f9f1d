"""Scene settings (saved with the .blend), the results list, and the job state (window manager, not saved)."""

from __future__ import annotations

import bpy
from bpy.props import (BoolProperty, CollectionProperty, EnumProperty, FloatProperty, FloatVectorProperty,
                       IntProperty, IntVectorProperty, PointerProperty, StringProperty)


class BSB_PG_click(bpy.types.PropertyGroup):
    """A click on the reference image in normalised view coordinates (bottom-left origin)."""

    u: FloatProperty()
    v: FloatProperty()
    positive: BoolProperty(default=True)


class BSB_PG_result(bpy.types.PropertyGroup):
    """One entry of the results list; `name` is the vertex group's name."""

    object_name: StringProperty()
    found: BoolProperty()
    confidence: FloatProperty()
    n_vertices: IntProperty()
    reason: StringProperty()
    random_weights: BoolProperty(description="Made with random weights: a plumbing check, not a real answer")
    refine_clicks: StringProperty(description="JSON list of [vertex, positive] clicks used to refine this part")
    # Provenance, saved with the .blend: what made this part, so it can be understood (or redone) later.
    image: StringProperty(description="Reference image (name and file) the part was matched on")
    image_clicks: StringProperty(description="JSON list of [u, v, positive] clicks on the image (view coordinates)")
    engine: StringProperty(description="JSON: engine version, profile, device and model ids")
    part_mask: StringProperty(description="The image part as zlib-compressed, base64 packed bits (W x H)")
    part_mask_size: IntVectorProperty(size=2, description="Width and height of the image part mask")


class BSB_PG_settings(bpy.types.PropertyGroup):
    image: PointerProperty(type=bpy.types.Image, name="Reference", description="The image to click on")
    clicks: CollectionProperty(type=BSB_PG_click)
    use_box: BoolProperty(name="Box", description="Also send the dragged box to the engine")
    box: FloatVectorProperty(size=4, description="Dragged box u0, v0, u1, v1 (normalised, bottom-left origin)")
    group_name: StringProperty(name="Group", default="",
                               description="Vertex group (and attribute) to write; empty makes a new 'Part N' each "
                                           "time, a name you type replaces that group")
    soft_weights: BoolProperty(name="Soft weights", description="Write the engine's weights instead of 0/1")
    min_confidence: FloatProperty(name="Min confidence", min=0.0, max=1.0, default=0.0,
                                  description="Below this the engine answers 'no corresponding part'")
    material: PointerProperty(type=bpy.types.Material, name="Material",
                              description="Material for the part's faces; empty makes a new one")
    color_from_image: BoolProperty(name="Colour from image", default=True,
                                   description="A new material takes the image part's median colour")
    results: CollectionProperty(type=BSB_PG_result)
    active_result: IntProperty()
    max_regions: IntProperty(name="Max regions", default=8, min=1, max=64)
    show_overlay: BoolProperty(name="Overlay", default=True, description="Show the part over image and mesh")
    granularity: FloatProperty(name="Granularity", min=0.0, max=1.0, default=0.5, subtype="FACTOR",
                               description="Split Into Parts: 0 gives few big parts, 1 the finest; moving it and "
                                           "splitting again needs no new preparation")
    parts_prefix: StringProperty(name="Prefix", default="Split",
                                 description="Split Into Parts names its groups '<prefix> 01', '<prefix> 02', ...; "
                                             "a new split replaces the groups of the last one with this prefix")
    part_text: StringProperty(name="Find", default="",
                              description="Name of the part to find on the mesh, such as 'handle' or 'wing' "
                                          "(no reference image needed); the vertex group gets this name "
                                          "unless Group is set")


class BSB_PG_job(bpy.types.PropertyGroup):
    busy: BoolProperty()
    kind: StringProperty()
    fraction: FloatProperty(min=0.0, max=1.0)
    message: StringProperty()
    error: StringProperty()
    fix: EnumProperty(items=[("NONE", "None", ""), ("RESTART", "Restart engine", ""),
                             ("PREFS", "Open preferences", ""), ("SETUP", "Set up engine", ""),
                             ("RETRY", "Retry", "")])
    retry: StringProperty(description="The operator of the last engine action, run again by Retry")
    engine_info: StringProperty()
    prepared: StringProperty(description="Name of the object last prepared")


classes = (BSB_PG_click, BSB_PG_result, BSB_PG_settings, BSB_PG_job)


def register() -> None:
    bpy.types.Scene.bsb = PointerProperty(type=BSB_PG_settings)
    bpy.types.WindowManager.bsb_job = PointerProperty(type=BSB_PG_job)


def unregister() -> None:
    del bpy.types.WindowManager.bsb_job
    del bpy.types.Scene.bsb
