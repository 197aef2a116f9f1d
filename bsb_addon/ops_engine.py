"""Operators that manage the engine process and its environment."""

from __future__ import annotations

import statistics
import sys
import time

import bpy

from . import env_setup, feedback, paths, prefs, session
from .engine_client import EngineError


def launch(op, kind: str, work, done) -> set[str]:
    """Start a job; report at once what fails at once (and, headless, what failed during the job)."""
    feedback.clear_error()
    if kind in RETRYABLE:
        bpy.context.window_manager.bsb_job.retry = type(op).__name__.partition("_OT_")[2]  # BSB_OT_match -> match
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


RETRYABLE = ("prepare", "match", "refine", "shape_to_image", "match_all")
PINGS = 5


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


class BSB_OT_test_connection(bpy.types.Operator):
    """Connect to the engine chosen in the preferences (Local or Remote) and report latency, version, device
    and profile"""

    bl_idname = "bsb.test_connection"
    bl_label = "Test Connection"

    def execute(self, context):
        config = session.engine_config()
        where = f"Remote engine at {config.address}" if config.remote else "Local engine"
        op = self

        def work(progress, cancel):
            session.release()  # test what the preferences say now, not an engine started before
            client = session.get_client(config, progress)
            times = []
            for _ in range(PINGS):
                start = time.monotonic()
                client.request("status", timeout=config.status_timeout)
                times.append(time.monotonic() - start)
            return client.hello, 1000 * statistics.median(times)

        def done(result, error):
            if error is None:
                hello, latency_ms = result
                info = f"{where}: {latency_ms:.1f} ms round trip. " + _engine_info(hello)
                context.window_manager.bsb_job.engine_info = info
                feedback.report("INFO", info)

        return launch(op, "test", work, done)


class BSB_OT_retry(bpy.types.Operator):
    """Reconnect to the engine and run the last action again (nothing was written by the failed one)"""

    bl_idname = "bsb.retry"
    bl_label = "Retry"

    def execute(self, context):
        name = context.window_manager.bsb_job.retry
        session.release()
        if not name:
            return bpy.ops.bsb.test_connection()
        return getattr(bpy.ops.bsb, name)()


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
    """Create a Python environment for the engine and install it there (asks first: downloads torch)"""

    bl_idname = "bsb.setup_engine"
    bl_label = "Set Up Engine"

    variant: bpy.props.EnumProperty(name="Torch", items=[
        ("CUDA", "CUDA (NVIDIA GPU)", "Largest download (about 4.5 GB)"),
        ("CPU", "CPU only", "About 1.2 GB; works everywhere"),
        ("MPS", "Apple GPU (MPS)", "macOS on Apple silicon")])
    index_url: bpy.props.StringProperty(name="Package index", description="Another package index (mirror); empty "
                                        "uses PyPI and PyTorch's own index for the chosen torch")
    wheels_dir: bpy.props.StringProperty(name="Local wheels", subtype="DIR_PATH",
                                         description="Install only from this folder of .whl files (no network)")

    def invoke(self, context, event):
        self.variant = env_setup.default_variant()
        return context.window_manager.invoke_props_dialog(self, width=520, title="Set up the BSB engine",
                                                          confirm_text="Install")

    def draw(self, context):
        layout = self.layout
        layout.prop(self, "variant")
        layout.prop(self, "index_url")
        layout.prop(self, "wheels_dir")
        where = "the local wheels folder" if self.wheels_dir else f"about {env_setup.DOWNLOAD_MB[self.variant]} MB"
        layout.label(text=f"Downloads {where}; installs into {paths.venv_dir()}", icon="INFO")
        layout.label(text="An existing engine environment there is replaced. Model weights are separate "
                          "(Preferences > Models).")
        if not self.wheels_dir and not bpy.app.online_access:
            layout.label(text="Online access is off: choose a local wheels folder or allow online access",
                         icon="ERROR")

    def execute(self, context):
        p = session.preferences()
        source = prefs.engine_source()
        if p is None or source is None:
            self.report({"ERROR"}, "The engine source is not bundled with this add-on; reinstall the extension.")
            return {"CANCELLED"}
        wheels = bpy.path.abspath(self.wheels_dir) if self.wheels_dir else ""
        if not wheels and not bpy.app.online_access:
            self.report({"ERROR"}, "Blender's 'Allow Online Access' is off (Preferences > System > Network): allow "
                                   "it, or choose a folder of wheels to install from.")
            return {"CANCELLED"}
        base = bpy.path.abspath(p.base_python) if p.base_python else sys.executable
        venv_dir = paths.venv_dir()
        log = session.user_dir("logs") / "setup.log"
        variant, index_url = self.variant, self.index_url.strip()
        session.release()
        p.engine_python = ""  # the old environment is replaced: never point at it half-way

        def work(progress, cancel):
            return env_setup.run_setup(base, venv_dir, source, log, progress, cancel, variant, index_url, wheels)

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


classes = (BSB_OT_report, BSB_OT_test_engine, BSB_OT_test_connection, BSB_OT_retry, BSB_OT_restart_engine, BSB_OT_release_engine, BSB_OT_cancel_job,
           BSB_OT_setup_engine, BSB_OT_open_log, BSB_OT_open_prefs)
