"""The preferences' Models section: which weights each profile needs, and downloading them on request.

Weights are never fetched behind the user's back: the engine always runs offline, and a download starts
only from the Download button, after a confirmation that states its size, and only when Blender's
"Allow Online Access" is on. It runs `python -m engine models fetch PROFILE --json` (the same command and
folder as the CLI, so either fills it for both); progress is the size of the `.part` file being written,
and Cancel stops the process (the `.part` stays, so the next download resumes).
"""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path

import bpy
from bpy.props import StringProperty

from . import session
from .engine_client import EngineError, clean_env, engine_command, list_models

_listing: dict = {"data": None, "error": "", "loading": False}
_download: dict = {}


def listing() -> dict:
    return _listing


def download_state() -> dict:
    return _download


def downloading() -> bool:
    return bool(_download) and _download.get("proc") is not None and _download["proc"].poll() is None


def _redraw() -> None:
    for window in bpy.context.window_manager.windows:
        for area in window.screen.areas:
            if area.type == "PREFERENCES":
                area.tag_redraw()


def _poll_timer() -> float | None:
    """Main thread: refresh the progress figure; stop when nothing is loading or downloading."""
    if _download and _download.get("proc") is not None:
        _download["fraction"] = _fraction()
        if _download["proc"].poll() is not None and not _download.get("finished"):
            _finish_download()
    _redraw()
    return 0.5 if (downloading() or _listing["loading"]) else None


def _start_timer() -> None:
    if not bpy.app.timers.is_registered(_poll_timer):
        bpy.app.timers.register(_poll_timer, first_interval=0.2, persistent=True)


def refresh(config=None) -> None:
    """List the profiles' files in a thread (`models list` imports torch: a few seconds)."""
    config = config if config is not None else session.engine_config()
    if _listing["loading"]:
        return
    _listing["loading"] = True

    def work() -> None:
        try:
            _listing["data"], _listing["error"] = list_models(config), ""
        except EngineError as exc:
            _listing["error"] = exc.message
        finally:
            _listing["loading"] = False

    threading.Thread(target=work, name="bsb-models-list", daemon=True).start()
    if not bpy.app.background:
        _start_timer()


def profile_entry(name: str) -> dict | None:
    data = _listing["data"] or {}
    return next((p for p in data.get("profiles", []) if p["name"] == name), None)


def missing_mb(name: str) -> int:
    entry = profile_entry(name)
    return sum(f["size_mb"] for f in entry["files"] if not f["present"]) if entry else 0


def _fraction() -> float:
    files = _download.get("files") or []
    total = sum(f["size_mb"] for f in files) * 2**20
    if not total:
        return 0.0
    have = 0
    for f in files:
        where = Path(f["where"])
        for candidate in (where, where.with_name(where.name + ".part")):
            if candidate.is_file():
                have += candidate.stat().st_size
                break
    return min(1.0, have / total)


def start_download(profile: str, config=None) -> None:
    """Run the fetch command (online); its JSON plan names the files whose .part sizes show progress."""
    if downloading():
        raise EngineError("A download is already running; wait for it or press Cancel.", "busy")
    if not bpy.app.online_access:
        raise EngineError("Blender's 'Allow Online Access' is off (Preferences > System > Network), so nothing is "
                          f"downloaded. Turn it on, or run 'python -m engine models fetch {profile}' on a connected "
                          f"machine and copy its models folder to {session.models_folder()}.", "offline")
    config = config if config is not None else session.engine_config()
    cmd = engine_command(config, "models", "fetch", profile, "--json")
    log = open(session.user_dir("logs") / "models.log", "ab")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, env=clean_env(offline=False))
    _download.clear()
    _download.update({"profile": profile, "proc": proc, "log": log, "files": [], "fraction": 0.0,
                      "message": f"downloading the {profile} weights", "error": "", "finished": False})

    def read() -> None:
        for raw in proc.stdout:
            try:
                msg = json.loads(raw)
            except ValueError:
                continue
            if msg.get("event") == "plan":
                _download["files"] = msg.get("files", [])

    threading.Thread(target=read, name="bsb-models-fetch", daemon=True).start()
    _start_timer()


def _finish_download(relist: bool = True) -> None:
    proc = _download["proc"]
    _download["finished"] = True
    _download["log"].close()
    if _download.get("cancelled"):
        _download["message"] = "download cancelled; Download again resumes it"
    elif proc.returncode == 0:
        _download["message"], _download["fraction"] = f"the {_download['profile']} weights are ready", 1.0
    else:
        path = session.user_dir("logs") / "models.log"
        tail = path.read_text(errors="replace").strip().splitlines()[-1:] if path.is_file() else []
        _download["error"] = f"Download failed: {(tail or ['see ' + str(path)])[0][:300]}"
        _download["message"] = ""
    if relist:
        refresh()


def cancel_download(unregistering: bool = False) -> None:
    """Stop the download (the .part stays for a resume); on unregister also stop the progress timer."""
    if downloading():
        _download["cancelled"] = True
        _download["proc"].kill()
        try:
            _download["proc"].wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        _finish_download(relist=not unregistering)
    if unregistering and bpy.app.timers.is_registered(_poll_timer):
        bpy.app.timers.unregister(_poll_timer)


class BSB_OT_models_refresh(bpy.types.Operator):
    """List the weight files each profile needs, their sizes and which are already here"""

    bl_idname = "bsb.models_refresh"
    bl_label = "Refresh Models"

    def execute(self, context):
        refresh()
        return {"FINISHED"}


class BSB_OT_models_download(bpy.types.Operator):
    """Download this profile's model weights (asks first; needs Blender's Allow Online Access)"""

    bl_idname = "bsb.models_download"
    bl_label = "Download Weights"

    profile: StringProperty(options={"HIDDEN"})

    @classmethod
    def poll(cls, context):
        return not downloading()

    def invoke(self, context, event):
        if not bpy.app.online_access:
            return self.execute(context)  # reports why nothing is downloaded
        return context.window_manager.invoke_confirm(
            self, event, title="Download model weights?",
            message=f"The '{self.profile}' profile needs about {missing_mb(self.profile)} MB into "
                    f"{session.models_folder()} (shared with the engine's command line).", confirm_text="Download")

    def execute(self, context):
        try:
            start_download(self.profile)
        except EngineError as exc:
            self.report({"ERROR"}, exc.message)
            return {"CANCELLED"}
        self.report({"INFO"}, f"Downloading the {self.profile} weights")
        return {"FINISHED"}


class BSB_OT_models_cancel(bpy.types.Operator):
    """Stop the download (what arrived is kept; the next download resumes)"""

    bl_idname = "bsb.models_cancel"
    bl_label = "Cancel Download"

    def execute(self, context):
        cancel_download()
        return {"FINISHED"}


classes = (BSB_OT_models_refresh, BSB_OT_models_download, BSB_OT_models_cancel)
