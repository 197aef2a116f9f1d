"""Operators that turn clicks into parts: prepare, match, refine, shape to image, match all, material.

Each reads Blender data on the main thread (`api.begin`), runs the engine work as a job, and writes
through `deliver`, i.e. inside `bsb.apply_result` (one undo step) once the validated result arrives.
"""

from __future__ import annotations

import json
import uuid

import bpy
import numpy as np
from bpy.props import BoolProperty, StringProperty

from . import api, feedback, jobs, meshmath, overlay, pixels, session
from .engine_client import EngineError
from .errors import InputError
from .ops_engine import launch

_appliers: dict[str, object] = {}


def on_success(apply):
    """A job's `done` callback that delivers `apply(result)` (one undo step) when the job succeeded;
    failures already reached the status bar through the job."""
    def done(result, error) -> None:
        if error is None:
            deliver(lambda: apply(result))
    return done


def deliver(apply) -> None:
    """Write a result: directly when headless (already inside the operator), else as its own undo step.

    Operators called from Python push no undo step unless asked (the positional `True`), so without it
    one Ctrl-Z would also take away the step before (e.g. the match under an Assign Material).
    """
    if not session.interactive():
        apply()
        return
    token = uuid.uuid4().hex
    _appliers[token] = apply
    windows = bpy.context.window_manager.windows
    if windows:
        with bpy.context.temp_override(window=windows[0]):
            bpy.ops.bsb.apply_result("EXEC_DEFAULT", True, token=token)
    else:
        bpy.ops.bsb.apply_result("EXEC_DEFAULT", True, token=token)


def _target(context, obj):
    """The selected row of the results list when it belongs to `obj` (Refine and Assign Material act on it)."""
    s = context.scene.bsb
    if 0 <= s.active_result < len(s.results) and s.results[s.active_result].object_name == obj.name:
        return s.results[s.active_result]
    return None


def _warn(op, req) -> None:
    if req.warning:
        op.report({"WARNING"}, req.warning)


def _say(summary: dict) -> None:
    state = bpy.context.window_manager.bsb_job
    state.message = f"{summary['group']}: {summary['label']}" if summary["found"] else (
        f"no corresponding part ({summary['reason']})" + (f" - {api.PLUMBING}" if summary["random_weights"] else ""))


def _require_image(settings) -> None:
    if settings.image is None:
        raise InputError("No reference image: choose one in the BSB panel.")


def _fail(op, exc: Exception) -> set[str]:
    feedback.show_error(exc)
    op.report({"ERROR"}, feedback.describe(exc))
    return {"CANCELLED"}


def _base_positions(obj) -> np.ndarray:
    co = np.empty(len(obj.data.vertices) * 3, np.float32)
    obj.data.vertices.foreach_get("co", co)
    return co.reshape(-1, 3)


class MeshOperator:
    """Shared poll: an active mesh object and no job running."""

    @classmethod
    def poll(cls, context):
        obj = context.active_object
        return obj is not None and obj.type == "MESH" and not session.busy()


class BSB_OT_apply_result(bpy.types.Operator):
    """Write an engine result into the mesh (internal: one undo step per result)"""

    bl_idname = "bsb.apply_result"
    bl_label = "Apply BSB Result"
    bl_options = {"REGISTER", "UNDO", "INTERNAL"}

    token: StringProperty(options={"HIDDEN", "SKIP_SAVE"})

    def execute(self, context):
        apply = _appliers.pop(self.token, None)
        if apply is None:
            return {"CANCELLED"}
        try:
            apply()
        except EngineError as exc:  # a refusal (object gone or edited): said plainly, nothing written
            feedback.show_error(exc)
            return {"CANCELLED"}
        return {"FINISHED"}


class BSB_OT_prepare_mesh(MeshOperator, bpy.types.Operator):
    """Send the active mesh to the engine (renders views and caches features; slow the first time)"""

    bl_idname = "bsb.prepare_mesh"
    bl_label = "Prepare Mesh"

    def execute(self, context):
        try:
            req = api.begin(context.active_object)
        except EngineError as exc:
            return _fail(self, exc)
        _warn(self, req)
        config = session.engine_config()
        name = context.active_object.name

        def work(progress, cancel):
            return jobs.prepare(session.get_client(config, progress), req.mesh, progress, cancel)

        def done(data, error):
            if error is None:
                state = context.window_manager.bsb_job
                state.prepared = name
                state.message = f"{name}: {data.get('n_vertices')} vertices ready" + (
                    " (cached)" if data.get("cached") else "")

        return launch(self, "prepare", work, done)


class BSB_OT_match(MeshOperator, bpy.types.Operator):
    """Find the mesh part that matches the clicks on the reference image"""

    bl_idname = "bsb.match"
    bl_label = "Match Part"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        s = context.scene.bsb
        try:
            _require_image(s)
            if len(s.clicks) == 0 and not s.use_box:
                raise InputError("No clicks yet: use 'Pick Part' in the Image Editor to click the part.")
            req = api.begin(context.active_object, s.image)
            group = api.group_name_for(context.active_object, s.group_name)
        except EngineError as exc:
            return _fail(self, exc)
        _warn(self, req)
        points_uv = [(c.u, c.v) for c in s.clicks]
        labels = [int(c.positive) for c in s.clicks]
        req.clicks = [[float(u), float(v), lab] for (u, v), lab in zip(points_uv, labels)]
        box_uv = tuple(s.box) if s.use_box else None
        soft = s.soft_weights
        min_conf = s.min_confidence or None
        config = session.engine_config()

        def work(progress, cancel):  # a provisional answer is written first, then replaced by the final one
            return jobs.run_match(session.get_client(config, progress), req.mesh, req.image_path,
                                  str(req.job_dir / "match"), points_uv=points_uv, labels=labels, box_uv=box_uv,
                                  min_confidence=min_conf, progress=progress, cancel=cancel,
                                  on_provisional=lambda early: session.post(lambda: deliver(lambda: apply(early))))

        def apply(result):
            _say(api.apply_part(req, result, group, soft))
            if result.found and not result.provisional:  # the clicks stay with this part; the next starts afresh
                settings = bpy.context.scene.bsb
                settings.clicks.clear()
                settings.use_box = False

        return launch(self, "match", work, on_success(apply))


class BSB_OT_refine(MeshOperator, bpy.types.Operator):
    """Refine the active part with the selected vertices as positive (or negative) clicks"""

    bl_idname = "bsb.refine"
    bl_label = "Refine"
    bl_options = {"REGISTER", "UNDO"}

    positive: BoolProperty(name="Positive", default=True)

    def execute(self, context):
        s = context.scene.bsb
        obj = context.active_object
        try:
            selected = api.selected_vertices(obj)
            if selected.size == 0:
                raise InputError("Select vertices of the part (Edit Mode) to refine with.")
            req = api.begin(obj)
            item = _target(context, obj)
            group = item.name if item is not None else api.group_name_for(obj, s.group_name)
        except EngineError as exc:
            return _fail(self, exc)
        _warn(self, req)
        previous = json.loads(item.refine_clicks) if item is not None and item.refine_clicks else []
        # A big selection is sent (and saved) as a spread of clicks over it, never as one huge list.
        spread = meshmath.spread_sample(selected, _base_positions(obj), jobs.MAX_VERTEX_CLICKS)
        clicks = [tuple(c) for c in previous] + [(int(v), self.positive) for v in spread]
        soft, config = s.soft_weights, session.engine_config()

        def work(progress, cancel):
            return jobs.run_refine(session.get_client(config, progress), req.mesh, clicks,
                                   str(req.job_dir / "refine"), progress, cancel)

        def apply(result):
            _say(api.apply_part(req, result, group, soft))
            entry = next(r for r in context.scene.bsb.results if r.object_name == obj.name and r.name == group)
            entry.refine_clicks = json.dumps([[int(v), bool(p)] for v, p in clicks])

        return launch(self, "refine", work, on_success(apply))


class BSB_OT_shape_to_image(MeshOperator, bpy.types.Operator):
    """Show where the selected vertices are in the reference image (and add that point as a click)"""

    bl_idname = "bsb.shape_to_image"
    bl_label = "Shape to Image"

    def execute(self, context):
        s = context.scene.bsb
        obj = context.active_object
        try:
            _require_image(s)
            selected = api.selected_vertices(obj)
            if not selected.size:
                raise InputError("Select vertices of the part (Edit Mode) first.")
            req = api.begin(obj, s.image)
        except EngineError as exc:
            return _fail(self, exc)
        _warn(self, req)
        config = session.engine_config()

        def work(progress, cancel):
            return jobs.run_shape_to_image(session.get_client(config, progress), req.mesh, req.image_path, selected,
                                           str(req.job_dir / "shape"), progress, cancel)

        def done(found, error):
            if error is None and found["pixel"] is not None:
                u, v = pixels.pixel_to_view(*found["pixel"], *found["size"])
                click = context.scene.bsb.clicks.add()
                click.u, click.v, click.positive = u, v, True
                overlay.show_image_mask(found["mask"])
                context.window_manager.bsb_job.message = (
                    f"found in the image (confidence {found['confidence']:.2f})"
                    + (f" - {api.PLUMBING}" if found["random_weights"] else ""))

        return launch(self, "shape_to_image", work, done)


class BSB_OT_match_all(MeshOperator, bpy.types.Operator):
    """Match every part the engine finds in the image, one vertex group each"""

    bl_idname = "bsb.match_all"
    bl_label = "Match All"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        s = context.scene.bsb
        try:
            _require_image(s)
            req = api.begin(context.active_object, s.image)
        except EngineError as exc:
            return _fail(self, exc)
        _warn(self, req)
        prefix, max_regions, config = s.group_name.strip() or "BSB", s.max_regions, session.engine_config()

        def work(progress, cancel):
            return jobs.run_match_all(session.get_client(config, progress), req.mesh, req.image_path, str(req.job_dir / "all"),
                                      max_regions, progress, cancel)

        def apply(regions):
            summaries = api.apply_regions(req, regions, prefix)
            context.window_manager.bsb_job.message = f"{sum(r['found'] for r in summaries)} parts matched"

        return launch(self, "match_all", work, on_success(apply))


class BSB_OT_assign_material(MeshOperator, bpy.types.Operator):
    """Give the faces of the active result's group a material (the chosen one, or a new one)"""

    bl_idname = "bsb.assign_material"
    bl_label = "Assign Material"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        s = context.scene.bsb
        obj = context.active_object
        item = _target(context, obj)
        if item is None:
            self.report({"ERROR"}, f"No result of '{obj.name}' is selected in the list: match a part first.")
            return {"CANCELLED"}
        group = item.name
        color = None
        if s.material is None and s.color_from_image and s.image is not None:
            from . import meshio

            color = meshio.part_color(s.image, api.part_mask_for(obj.name, group, context.scene))
        try:
            out = api.assign_material(obj, group, s.material, color)
        except EngineError as exc:
            return _fail(self, exc)
        self.report({"INFO"}, f"{out['material']} on {out['n_faces']} faces")
        return {"FINISHED"}


class BSB_OT_clear_clicks(bpy.types.Operator):
    """Forget the clicks and box on the reference image"""

    bl_idname = "bsb.clear_clicks"
    bl_label = "Clear Clicks"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        context.scene.bsb.clicks.clear()
        context.scene.bsb.use_box = False
        overlay.show_image_mask(None)
        return {"FINISHED"}


classes = (BSB_OT_apply_result, BSB_OT_prepare_mesh, BSB_OT_match, BSB_OT_refine, BSB_OT_shape_to_image,
           BSB_OT_match_all, BSB_OT_assign_material, BSB_OT_clear_clicks)
