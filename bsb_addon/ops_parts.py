"""Split Into Parts (one vertex group and one colour per part) and Find Part (a part by its name).

Both follow the match operators (ops_part.py): Blender data is read on the main thread (Edit Mode
flushed), the engine work runs as a job, and the result is written through `deliver`, i.e. inside
`bsb.apply_result`: one undo step, after the object has been re-checked.
"""

from __future__ import annotations

import bpy
import numpy as np

from . import api, meshio, parts, session
from .engine_client import EngineError
from .ops_engine import launch
from .ops_part import MeshOperator, _fail, _warn, deliver, on_success

TMP_PREFIX = "bsb_tmp_split"


def _remove(coll, name: str) -> None:
    if coll.get(name) is not None:
        coll.remove(coll[name])


def write_split(obj, split: parts.Split, prefix: str) -> list[str]:
    """Replace the groups of an earlier split with this prefix by one group per part, and the colour
    attribute by this split's colours, all or nothing.

    Everything is built under temporary names first; only when all of it exists are the old groups and
    colours removed and the new ones renamed, so a failure part-way leaves the mesh as it was.
    """
    names = parts.split_names(prefix, split.n_parts)
    if len(split.labels) != len(obj.data.vertices):
        raise EngineError(f"The split has {len(split.labels)} vertices but '{obj.name}' has "
                          f"{len(obj.data.vertices)}; nothing was written. Run it again.", "object_changed")
    me = obj.data
    tmp_groups = [f"{TMP_PREFIX} {i}" for i in range(split.n_parts)]
    tmp_color = TMP_PREFIX + "_color"

    def clean() -> None:
        for name in tmp_groups:
            _remove(obj.vertex_groups, name)
        _remove(me.attributes, tmp_color)

    clean()
    try:
        for i, name in enumerate(tmp_groups):
            obj.vertex_groups.new(name=name).add(np.flatnonzero(split.labels == i).tolist(), 1.0, "REPLACE")
        rgba = parts.linear_rgba(split.colors)[split.labels]
        me.attributes.new(tmp_color, "FLOAT_COLOR", "POINT").data.foreach_set("color", rgba.ravel())
    except Exception:
        clean()
        raise
    for group in [g for g in obj.vertex_groups if parts.is_split_name(g.name, prefix) or g.name in names]:
        _remove(me.attributes, meshio.attribute_name(group.name))  # a matched part's twin, if it was one
        obj.vertex_groups.remove(group)
    _remove(me.attributes, parts.COLOR_ATTRIBUTE)
    for tmp, name in zip(tmp_groups, names):
        obj.vertex_groups[tmp].name = name
    me.attributes[tmp_color].name = parts.COLOR_ATTRIBUTE
    colors = getattr(me, "color_attributes", None)
    if colors is not None and colors.get(parts.COLOR_ATTRIBUTE) is not None:
        colors.active_color = colors[parts.COLOR_ATTRIBUTE]  # what Solid mode's "Attribute" colour shows
    me.update()
    return names


class BSB_OT_split_parts(MeshOperator, bpy.types.Operator):
    """Split the active mesh into parts: one vertex group and one colour per part (Granularity: coarse to fine)"""

    bl_idname = "bsb.split_parts"
    bl_label = "Split Into Parts"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        s = context.scene.bsb
        try:
            prefix = parts.split_prefix(s.parts_prefix)
            req = api.begin(context.active_object)
        except EngineError as exc:
            return _fail(self, exc)
        _warn(self, req)
        granularity, config = float(s.granularity), session.engine_config()

        def work(progress, cancel):
            return parts.run_segment_all(session.get_client(config, progress), req.mesh, str(req.job_dir / "split"),
                                         granularity, progress, cancel)

        def apply(split: parts.Split):
            obj = meshio.find_unchanged(req.stamp)
            with meshio.object_mode(obj):
                names = write_split(obj, split, prefix)
            text = f"{len(names)} parts: {names[0]} .. {names[-1]}" if len(names) > 1 else f"1 part: {names[0]}"
            if split.random_weights:
                text += f" - {api.PLUMBING}"
            bpy.context.window_manager.bsb_job.message = text

        return launch(self, "split", work, on_success(apply))


class BSB_OT_find_part(MeshOperator, bpy.types.Operator):
    """Find the part named in the text field (no reference image needed) and select it as a vertex group"""

    bl_idname = "bsb.find_part"
    bl_label = "Find Part"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        from . import feedback

        s = context.scene.bsb
        obj = context.active_object
        try:
            text = parts.check_part_text(s.part_text)
            group = meshio.check_group_name(s.group_name.strip() or text)
            req = api.begin(obj)
        except EngineError as exc:
            return _fail(self, exc)
        _warn(self, req)
        config = session.engine_config()

        def work(progress, cancel):
            return parts.run_find_part(session.get_client(config, progress), req.mesh, text,
                                       str(req.job_dir / "find"), progress, cancel)

        def apply(result):
            summary = api.apply_part(req, result, group)
            bpy.context.window_manager.bsb_job.message = f"'{text}' found: {summary['group']}, {summary['label']}"

        def done(result, error):
            if error is not None:
                return
            if not result.found:  # an answer, not an error: said in the status bar, nothing written
                message = f"'{text}' not found: {result.reason or 'no view shows it'}"
                if result.random_weights:
                    message += f" - {api.PLUMBING}"
                bpy.context.window_manager.bsb_job.message = message
                if session.interactive():
                    feedback.report("WARNING", message)
                else:
                    print(f"BSB: {message}")
                return
            deliver(lambda: apply(result))

        return launch(self, "find_part", work, done)


classes = (BSB_OT_split_parts, BSB_OT_find_part)
