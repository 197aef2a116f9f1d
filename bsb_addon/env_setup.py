"""Create the engine's own venv and pip-install the bundled engine into it (no bpy; runs on a thread).

Torch cannot live inside Blender's Python, so the engine gets a separate interpreter. The bundled source
is copied out first: the extension folder may be read-only and setuptools writes build files beside it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from .engine_client import CancelFn, EngineCancelled, EngineError, ProgressFn, clean_env


def venv_python(venv_dir: Path) -> Path:
    return Path(venv_dir) / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def setup_commands(base_python: str, venv_dir: Path, source: Path) -> list[tuple[str, list[str]]]:
    py = str(venv_python(venv_dir))
    return [
        ("creating the engine environment", [base_python, "-m", "venv", str(venv_dir)]),
        ("updating pip", [py, "-m", "pip", "install", "--upgrade", "pip"]),
        ("installing the engine and torch (large download)", [py, "-m", "pip", "install", str(source)]),
    ]


def run_setup(base_python: str, venv_dir: Path, engine_src: Path, log_path: Path,
              progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> str:
    """Returns the new engine Python's path; raises EngineError (with the log's path) on failure."""
    if not (Path(engine_src) / "pyproject.toml").is_file():
        raise EngineError(f"The bundled engine source is missing at {engine_src}; reinstall the extension.", "setup")
    with tempfile.TemporaryDirectory(prefix="bsb-engine-src-") as tmp:
        source = Path(tmp) / "engine_src"
        shutil.copytree(engine_src, source, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        steps = setup_commands(base_python, Path(venv_dir), source)
        with open(log_path, "ab") as log:
            for i, (label, cmd) in enumerate(steps):
                if progress is not None:
                    progress(i / len(steps), label)
                log.write(f"\n$ {' '.join(cmd)}\n".encode())
                log.flush()
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=clean_env())
                while proc.poll() is None:
                    if cancel is not None and cancel():
                        proc.kill()
                        proc.wait()
                        raise EngineCancelled("Engine setup cancelled; run 'Set up engine' again to finish it.")
                    time.sleep(0.2)
                if proc.returncode != 0:
                    raise EngineError(f"Engine setup failed while {label} (exit {proc.returncode}); see {log_path}.",
                                      "setup")
    if progress is not None:
        progress(1.0, "engine ready")
    return str(venv_python(venv_dir))
