"""Folders shared with the engine's command line, and job folders that several processes may share (no bpy).

Weights and the engine's venv are large and slow to make, so they live outside the extension's own
folder (Blender deletes that on uninstall) and the models folder is the one `python -m engine models
fetch` fills: $BSB_MODELS_DIR, else <user cache dir>/bsb/models (engine.models.store.models_dir).
"""

from __future__ import annotations

import os
import shutil
import sys
import time
import uuid
from pathlib import Path

KEEP_OWN_JOBS = 20
STALE_SECONDS = 24 * 3600.0


def user_cache_dir() -> Path:
    """The platform's per-user cache folder (the engine's store uses the same rule)."""
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")


def bsb_home() -> Path:
    return user_cache_dir() / "bsb"


def models_dir(chosen: str = "") -> Path:
    """The preferences' folder if set, else the one the engine's CLI uses by default."""
    if chosen:
        return Path(chosen).expanduser()
    if os.environ.get("BSB_MODELS_DIR"):
        return Path(os.environ["BSB_MODELS_DIR"]).expanduser()
    return bsb_home() / "models"


def venv_dir() -> Path:
    """Where 'Set up engine' makes the engine's venv (a short path: Windows limits path lengths)."""
    return bsb_home() / "engine-venv"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists but is not ours, or cannot tell: keep its folders
    return True


def _owner(path: Path) -> int | None:
    """Job folders are named <time>-<pid>-<random>; older names have no pid."""
    parts = path.name.split("-")
    return int(parts[2]) if len(parts) >= 4 and parts[2].isdigit() else None


def prune_jobs(root: Path, keep: int = KEEP_OWN_JOBS, stale: float = STALE_SECONDS) -> list[Path]:
    """Delete this process's job folders beyond the newest `keep`, and folders of processes that are gone.

    Another Blender (or a headless script) may share the folder: its folders are left alone while it runs
    (and for `stale` seconds when its pid cannot be read), so an in-flight request never loses its files.
    """
    removed = []
    now = time.time()
    own = []
    for path in root.iterdir():
        if not path.is_dir():
            continue
        try:
            age = now - path.stat().st_mtime
        except OSError:
            continue
        owner = _owner(path)
        if owner == os.getpid():
            own.append(path)
        elif (owner is not None and not _pid_alive(owner)) or (owner is None and age > stale):
            removed.append(path)
    own.sort(key=lambda p: p.name)
    removed += own[:-keep] if keep else own
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


def new_job_dir(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    prune_jobs(root)
    path = root / f"{time.strftime('%Y%m%d%H%M%S')}-{time.monotonic_ns() % 10**9:09d}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    path.mkdir(parents=True)
    return path
