"""The engine process for this Blender session, job folders, and running jobs off the main thread.

bpy is only touched on the main thread: a job's engine work runs in a worker thread that reports into
a queue.Queue; a bpy.app.timers callback drains it. In background mode (headless scripts, where timers
never fire) the same job runs synchronously on the calling thread.
"""

from __future__ import annotations

import queue
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Callable

import bpy

from .engine_client import EngineClient, EngineConfig, EngineError

ADDON = __package__

_client: EngineClient | None = None
_events: queue.Queue = queue.Queue()
_job: dict = {}


# -- folders ---------------------------------------------------------------------------------------
def user_dir(sub: str) -> Path:
    """A writable folder of ours; the extension folder itself may be read-only and is wiped on upgrade."""
    try:
        return Path(bpy.utils.extension_path_user(ADDON, path=sub, create=True))
    except ValueError:  # imported as a plain package (tests, development), not as an installed extension
        path = Path(tempfile.gettempdir()) / "bsb_for_blender" / sub
        path.mkdir(parents=True, exist_ok=True)
        return path


def new_job_dir() -> Path:
    """A fresh folder for one request's .npy files; all but the newest 20 are pruned so the folder does not grow forever."""
    root = user_dir("jobs")
    old = sorted(root.iterdir(), key=lambda p: p.stat().st_mtime)[:-20]
    for path in old:
        shutil.rmtree(path, ignore_errors=True)
    path = root / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
    path.mkdir(parents=True)
    return path


def preferences():
    """The add-on preferences, or None when the package is not enabled as an add-on."""
    addon = bpy.context.preferences.addons.get(ADDON)
    return addon.preferences if addon is not None else None


def engine_config() -> EngineConfig:
    prefs = preferences()
    cfg = EngineConfig(log_path=str(user_dir("logs") / "engine.log"), workdir=str(user_dir("jobs")))
    if prefs is not None:
        cfg.python = bpy.path.abspath(prefs.engine_python) if prefs.engine_python else ""
        cfg.models = bpy.path.abspath(prefs.models_dir) if prefs.models_dir else str(user_dir("models"))
        cfg.device = prefs.device.lower()
        cfg.profile = prefs.profile.lower()
        cfg.cache = str(user_dir("cache"))
    return cfg


# -- the engine process ----------------------------------------------------------------------------
def get_client(config: EngineConfig | None = None) -> EngineClient:
    """The running engine, started (or restarted after a crash) on demand.

    Off the main thread pass `config` (made on the main thread by `engine_config()`): it reads bpy.
    """
    global _client
    if _client is not None and _client.alive:
        return _client
    if _client is not None:
        _client.kill()
    client = EngineClient(config if config is not None else engine_config())
    client.start()
    _client = client
    return client


def current_client() -> EngineClient | None:
    return _client if _client is not None and _client.alive else None


def use_client(client: EngineClient | None) -> None:
    """Adopt an engine started elsewhere (headless scripts, tests); the previous one is released."""
    global _client
    if _client is not None and _client is not client:
        _client.shutdown()
    _client = client


def release() -> None:
    """Stop the engine to free its memory (models, caches); the next action starts it again."""
    global _client
    if _client is not None:
        _client.shutdown()
    _client = None


def keep_alive() -> bool:
    prefs = preferences()
    return prefs is None or prefs.keep_engine_alive


# -- jobs ------------------------------------------------------------------------------------------
def busy() -> bool:
    return bool(_job) and not _job.get("done", False)


def cancel_job() -> None:
    if _job:
        _job["cancel"].set()


Work = Callable[[Callable[[float, str], None], Callable[[], bool]], object]
Done = Callable[[object, Exception | None], None]


def run_job(kind: str, work: Work, done: Done) -> None:
    """Run `work(progress, cancel)` off the main thread; call `done(result, error)` on the main thread.

    `work` must not touch bpy. Headless, it runs here and now (timers do not fire in background mode).
    """
    global _job
    if busy():
        raise EngineError(f"The engine is busy with '{_job['kind']}'. Wait for it or press Cancel.", "busy")
    cancel = threading.Event()
    _job = {"kind": kind, "cancel": cancel, "done": False, "callback": done}
    state = bpy.context.window_manager.bsb_job
    state.busy, state.kind, state.fraction, state.message, state.error = True, kind, 0.0, "starting", ""
    state.fix = "NONE"
    if bpy.app.background:
        result, error = None, None
        try:
            result = work(lambda f, m: None, cancel.is_set)
        except Exception as exc:  # noqa: BLE001 - every failure reaches the caller as an error, not a crash
            error = exc
        _finish(done, result, error)
        return

    def thread_main() -> None:
        try:
            result = work(lambda f, m: _events.put(("progress", f, m)), cancel.is_set)
            _events.put(("done", result, None))
        except Exception as exc:  # noqa: BLE001 - reported on the main thread
            _events.put(("done", None, exc))

    threading.Thread(target=thread_main, name=f"bsb-{kind}", daemon=True).start()
    if not bpy.app.timers.is_registered(_drain):
        bpy.app.timers.register(_drain, first_interval=0.1)


def _drain() -> float | None:
    """Timer callback (main thread): apply progress, finish the job when its result arrives."""
    state = bpy.context.window_manager.bsb_job
    try:
        while True:
            event = _events.get_nowait()
            if event[0] == "progress":
                state.fraction, state.message = float(event[1]), str(event[2])[:200]
            else:
                _finish(_job["callback"], event[1], event[2])
                _redraw()
                return None
    except queue.Empty:
        pass
    _redraw()
    return 0.1


def _finish(done: Done, result: object, error: Exception | None) -> None:
    from . import feedback

    state = bpy.context.window_manager.bsb_job
    _job["done"] = True
    state.busy, state.fraction = False, 1.0 if error is None else state.fraction
    try:
        if error is None:
            state.message = "done"
            done(result, None)
        else:
            feedback.show_error(error)
            done(None, error)
    except Exception as exc:  # noqa: BLE001 - a failed write is shown, never half-applied silently
        feedback.show_error(exc)
    if not keep_alive():
        release()


def _redraw() -> None:
    wm = bpy.context.window_manager
    for window in wm.windows:
        for area in window.screen.areas:
            if area.type in {"VIEW_3D", "IMAGE_EDITOR", "PREFERENCES"}:
                area.tag_redraw()


def shutdown_all() -> None:
    """unregister(): cancel the job and stop the engine."""
    cancel_job()
    release()
    if bpy.app.timers.is_registered(_drain):
        bpy.app.timers.unregister(_drain)
