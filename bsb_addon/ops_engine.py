"""Operators that manage the engine process and its environment."""

from __future__ import annotations

import sys

import bpy

from . import env_setup, feedback, prefs, session
from .engine_client import EngineError


def launch(op, kind: str, work, done) -> set[str]:
    """Start a job; report at once what fails at once (and, headless, what failed during the job)."""
    feedback.clear_error()
    try:
        session.run_job(kind, work, done)
    except EngineError as exc:
        feedback.show_error(exc)
        op.report({"ERROR"}, exc.message)
        return {"CANCELLED"}
    error = bpy.context.window_manager.bsb_job.error
    if bpy.app.background and error:
        op.report({"ERROR"}, error)
        return {"CANCELLED"}
    return {"FINISHED"}


def _engine_info(hello: dict) -> str:
    text = (f"Engine {hello.get('engine', '?')} on {hello.get('device_name') or hello.get('device', '?')}, "
            f"torch {hello.get('torch', '?')}, profile {hello.get('profile', '?')}")
    return text + (" - random weights: plumbing check only" if hello.get("random_weights") else "")


class BSB_OT_test_engine(bpy.types.Operator):
    """Start the engine and show its device and versions"""

    bl_idname = "bsb.test_engine"
    bl_label = "Test Engine"

    def execute(self, context):
        config = session.engine_config()

        def work(progress, cancel):
            return session.get_client(config).hello

        def done(hello, error):
            if error is None:
                context.window_manager.bsb_job.engine_info = _engine_info(hello)

        return launch(self, "test", work, done)


class BSB_OT_restart_engine(bpy.types.Operator):
    """Stop the engine (if it still runs) and start it again"""

    bl_idname = "bsb.restart_engine"
    bl_label = "Restart Engine"

    def execute(self, context):
        session.release()
        return bpy.ops.bsb.test_engine()


class BSB_OT_release_engine(bpy.types.Operator):
    """Stop the engine to free its memory; the next action starts it again"""

    bl_idname = "bsb.release_engine"
    bl_label = "Release Engine"

    def execute(self, context):
        session.release()
        context.window_manager.bsb_job.engine_info = ""
        return {"FINISHED"}


class BSB_OT_cancel_job(bpy.types.Operator):
    """Cancel the running engine job"""

    bl_idname = "bsb.cancel_job"
    bl_label = "Cancel"

    def execute(self, context):
        session.cancel_job()
        return {"FINISHED"}


class BSB_OT_setup_engine(bpy.types.Operator):
    """Create a Python environment for the engine and install it there (downloads torch, several GB)"""

    bl_idname = "bsb.setup_engine"
    bl_label = "Set Up Engine"

    def execute(self, context):
        p = session.preferences()
        source = prefs.engine_source()
        if p is None or source is None:
            self.report({"ERROR"}, "The engine source is not bundled with this add-on; reinstall the extension.")
            return {"CANCELLED"}
        base = bpy.path.abspath(p.base_python) if p.base_python else sys.executable
        venv_dir = session.user_dir("venv")
        log = session.user_dir("logs") / "setup.log"
        session.release()

        def work(progress, cancel):
            return env_setup.run_setup(base, venv_dir, source, log, progress, cancel)

        def done(python, error):
            if error is None:
                p.engine_python = python

        return launch(self, "setup", work, done)


class BSB_OT_report(bpy.types.Operator):
    """Put a background job's message into the status bar and the Info log (internal)"""

    bl_idname = "bsb.report"
    bl_label = "BSB Report"
    bl_options = {"INTERNAL"}

    level: bpy.props.EnumProperty(items=[(k, k, "") for k in ("INFO", "WARNING", "ERROR")], default="INFO")
    message: bpy.props.StringProperty()

    def execute(self, context):
        self.report({self.level}, self.message)
        return {"FINISHED"}


class BSB_OT_open_log(bpy.types.Operator):
    """Open the engine's log file (its stderr)"""

    bl_idname = "bsb.open_log"
    bl_label = "Open Log"

    def execute(self, context):
        return bpy.ops.wm.path_open(filepath=str(session.user_dir("logs")))


class BSB_OT_open_prefs(bpy.types.Operator):
    """Show this add-on's preferences"""

    bl_idname = "bsb.open_prefs"
    bl_label = "Engine Preferences"

    def execute(self, context):
        bpy.ops.preferences.addon_show(module=session.ADDON)
        return {"FINISHED"}


classes = (BSB_OT_report, BSB_OT_test_engine, BSB_OT_restart_engine, BSB_OT_release_engine, BSB_OT_cancel_job,
           BSB_OT_setup_engine, BSB_OT_open_log, BSB_OT_open_prefs)
