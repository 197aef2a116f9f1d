"""The engine process for this Blender session, job folders, and running jobs off the main thread.

bpy is only touched on the main thread: a job's engine work runs in a worker thread that reports into
a queue.Queue; a bpy.app.timers callback drains it. In background mode (headless scripts, where timers
never fire) the same job runs synchronously on the calling thread.
"""

from __future__ import annotations

import queue
import tempfile
import threading
from pathlib import Path
from typing import Callable

import bpy

from . import paths
from .engine_client import EngineCancelled, EngineClient, EngineConfig, EngineError, ProgressFn
from .remote_client import RemoteClient

ADDON = __package__

_client: EngineClient | RemoteClient | None = None
_adopted = False  # set by use_client: kept whatever the preferences say
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
    """A fresh folder for one request's .npy files; old ones of this process (and of finished ones) are pruned."""
    return paths.new_job_dir(user_dir("jobs"))


def preferences():
    """The add-on preferences, or None when the package is not enabled as an add-on."""
    addon = bpy.context.preferences.addons.get(ADDON)
    return addon.preferences if addon is not None else None


def engine_config() -> EngineConfig:
    prefs = preferences()
    cfg = EngineConfig(log_path=str(user_dir("logs") / "engine.log"), workdir=str(user_dir("jobs")))
    if prefs is not None:
        cfg.python = bpy.path.abspath(prefs.engine_python) if prefs.engine_python else ""
        cfg.models = str(models_folder())
        cfg.device = prefs.device.lower()
        cfg.profile = prefs.profile.lower()
        cfg.cache = str(user_dir("cache"))
        if prefs.engine_mode == "REMOTE":
            cfg.remote, cfg.address, cfg.token = True, prefs.remote_address.strip(), prefs.remote_token.strip()
            cfg.tls, cfg.cafile = prefs.remote_tls, bpy.path.abspath(prefs.remote_cafile) if prefs.remote_cafile else ""
            cfg.online = bool(bpy.app.online_access)
    return cfg


def _target(config: EngineConfig) -> tuple:
    """What identifies an engine: a change in the preferences means another one."""
    return (config.remote, config.address, config.token, config.tls, config.cafile)


def models_folder() -> Path:
    """One folder for the add-on and the engine's CLI, outside the extension (kept on uninstall)."""
    prefs = preferences()
    return paths.models_dir(bpy.path.abspath(prefs.models_dir) if prefs is not None and prefs.models_dir else "")


# -- the engine process ----------------------------------------------------------------------------
def get_client(config: EngineConfig | None = None,
               progress: ProgressFn | None = None) -> EngineClient | RemoteClient:
    """The running engine, started (or restarted after a crash) on demand.

    Off the main thread pass `config` (made on the main thread by `engine_config()`): it reads bpy.
    """
    global _client, _adopted
    config = config if config is not None else engine_config()
    if _client is not None and _client.alive and (_adopted or _target(_client.config) == _target(config)):
        return _client
    if _client is not None:  # gone, or the preferences now name another engine
        _client.shutdown()
    if progress is not None:
        progress(0.0, f"connecting to the remote engine at {config.address}" if config.remote
                 else "starting the engine (loading torch and the models)")
    client = RemoteClient(config) if config.remote else EngineClient(config)
    client.start()
    _client, _adopted = client, False
    return client


def current_client() -> EngineClient | RemoteClient | None:
    return _client if _client is not None and _client.alive else None


def use_client(client: EngineClient | RemoteClient | None) -> None:
    """Adopt an engine started elsewhere (headless scripts, tests); the previous one is released."""
    global _client, _adopted
    if _client is not None and _client is not client:
        _client.shutdown()
    _client, _adopted = client, client is not None


def release() -> None:
    """Stop the engine to free its memory (models, caches); the next action starts it again."""
    global _client, _adopted
    if _client is not None:
        _client.shutdown()
    _client, _adopted = None, False


def keep_alive() -> bool:
    prefs = preferences()
    return prefs is None or prefs.keep_engine_alive


# -- jobs ------------------------------------------------------------------------------------------
def busy() -> bool:
    return bool(_job) and not _job.get("done", False)


def cancel_job(reason: str = "") -> None:
    """Ask the running job to stop; `reason` (a file load) also means its result must never be written."""
    if _job:
        _job["cancel"].set()
        if reason:
            _job["orphaned"] = reason


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
    if bpy.app.background and not interactive():
        result, error = None, None
        try:
            result = work(lambda f, m: None, cancel.is_set)
        except Exception as exc:  # noqa: BLE001 - every failure reaches the caller as an error, not a crash
            error = exc
        _finish(_job, result, error)
        return
    job = _job

    def thread_main() -> None:
        try:
            result = work(lambda f, m: _events.put((job, "progress", f, m)), cancel.is_set)
            _events.put((job, "done", result, None))
        except Exception as exc:  # noqa: BLE001 - reported on the main thread
            _events.put((job, "done", None, exc))

    threading.Thread(target=thread_main, name=f"bsb-{kind}", daemon=True).start()
    ensure_timer()


def post(fn: Callable[[], None]) -> None:
    """From the running job's worker: call `fn` on the main thread (at once when headless, where the work
    itself runs on the main thread). A provisional answer is written this way while the job goes on."""
    if not interactive() or _job is None:
        fn()
        return
    _events.put((_job, "call", fn))


def interactive() -> bool:
    """The GUI path (worker thread + timer). Tests of the GUI path switch it on in background mode."""
    return not bpy.app.background or _force_interactive


_force_interactive = False


def ensure_timer() -> None:
    """Persistent: a file load must not drop the timer, or the job could never finish and the add-on stays busy."""
    if not bpy.app.timers.is_registered(drain):
        bpy.app.timers.register(drain, first_interval=0.1, persistent=True)


def drain() -> float | None:
    """Timer callback (main thread): apply progress, finish the job when its result arrives."""
    state = bpy.context.window_manager.bsb_job
    try:
        while True:
            job, kind, *rest = _events.get_nowait()
            if job is not _job:
                continue  # a job from before a reload or unregister
            if kind == "progress":
                state.fraction, state.message = float(rest[0]), str(rest[1])[:200]
            elif kind == "call":
                _call(rest[0])
            else:
                _finish(job, rest[0], rest[1])
                _redraw()
                return None
    except queue.Empty:
        pass
    _redraw()
    return 0.1 if busy() else None


def _call(fn: Callable[[], None]) -> None:
    from . import feedback

    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - shown; the job itself goes on
        feedback.show_error(exc)


def _finish(job: dict, result: object, error: Exception | None) -> None:
    from . import feedback

    state = bpy.context.window_manager.bsb_job
    job["done"] = True
    state.busy, state.fraction = False, 1.0 if error is None else state.fraction
    orphaned = job.get("orphaned")
    if orphaned:  # its objects belong to a file that is gone: nothing of it is written
        result, error = None, EngineCancelled(f"'{job['kind']}' was cancelled because {orphaned}; run it again.")
    try:
        if error is None:
            state.message = "done"
            job["callback"](result, None)
        else:
            feedback.show_error(error)
            if not orphaned:
                job["callback"](None, error)
    except Exception as exc:  # noqa: BLE001 - a failed write is shown, never half-applied silently
        feedback.show_error(exc)
    if not keep_alive():
        release()


def on_file_load() -> None:
    """load_post: the new file's window manager has fresh (or saved) job state; make it tell the truth."""
    state = bpy.context.window_manager.bsb_job
    state.busy = busy()
    if busy():
        state.kind, state.message = _job["kind"], "cancelling: a file was loaded"
        ensure_timer()
    elif not state.error:
        state.message = ""


def _redraw() -> None:
    wm = bpy.context.window_manager
    for window in wm.windows:
        for area in window.screen.areas:
            if area.type in {"VIEW_3D", "IMAGE_EDITOR", "PREFERENCES"}:
                area.tag_redraw()


def shutdown_all() -> None:
    """unregister(): cancel the job and stop the engine."""
    global _job
    cancel_job("the add-on was disabled")
    release()
    _job = {}
    if bpy.app.timers.is_registered(drain):
        bpy.app.timers.unregister(drain)
