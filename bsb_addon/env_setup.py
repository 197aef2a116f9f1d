"""Create the engine's own venv and pip-install the bundled engine into it (no bpy; runs on a thread).

Torch cannot live inside Blender's Python, so the engine gets a separate interpreter, outside the
extension's folder (paths.venv_dir: an uninstall must not delete gigabytes the user waited for). The
torch build is chosen per platform (CUDA, CPU-only, or the default index that carries Apple's MPS
builds), and everything can come from another index or from a folder of wheels (offline installs).
A failed or cancelled setup deletes the half-made venv, so no broken engine is left behind.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .engine_client import CancelFn, EngineCancelled, EngineError, ProgressFn, clean_env

TORCH_INDEX = {"CPU": "https://download.pytorch.org/whl/cpu", "CUDA": "https://download.pytorch.org/whl/cu128",
               "MPS": ""}  # MPS: the default index's macOS wheels
DOWNLOAD_MB = {"CPU": 1200, "CUDA": 4500, "MPS": 1200}  # torch + the engine's libraries, rounded up


def venv_python(venv_dir: Path) -> Path:
    return Path(venv_dir) / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def default_variant(platform: str = sys.platform, has_nvidia: bool | None = None) -> str:
    """MPS on macOS, CUDA where an NVIDIA driver is installed, else CPU."""
    if platform == "darwin":
        return "MPS"
    if has_nvidia is None:
        has_nvidia = shutil.which("nvidia-smi") is not None
    return "CUDA" if has_nvidia else "CPU"


def torch_pins(source: Path) -> list[str]:
    """torch/torchvision requirements as the engine's pyproject pins them (installed first, from the variant's index)."""
    text = (Path(source) / "pyproject.toml").read_text()
    return re.findall(r'"((?:torch|torchvision)\s*[=<>!~][^"]*)"', text)


def setup_commands(base_python: str, venv_dir: Path, source: Path, variant: str = "CPU", index_url: str = "",
                   wheels_dir: str = "") -> list[tuple[str, list[str]]]:
    """The steps: make the venv, (update pip), torch for the platform, then the engine."""
    py = str(venv_python(venv_dir))
    pip = [py, "-m", "pip", "install", "--disable-pip-version-check"]
    if wheels_dir:
        where = ["--no-index", "--find-links", str(wheels_dir)]
        torch_where = where
    else:
        where = ["--index-url", index_url] if index_url else []
        torch_where = ["--index-url", index_url or TORCH_INDEX[variant]] if (index_url or TORCH_INDEX[variant]) else []
        if TORCH_INDEX[variant] and not index_url:
            torch_where += ["--extra-index-url", "https://pypi.org/simple"]
    steps = [("creating the engine environment", [base_python, "-m", "venv", str(venv_dir)])]
    if not wheels_dir:
        steps.append(("updating pip", [*pip, "--upgrade", "pip", *where]))
    pins = torch_pins(source)
    if pins:
        steps.append((f"installing torch ({variant})", [*pip, *pins, *torch_where]))
    steps.append(("installing the engine", [*pip, str(source), *where]))
    return steps


def run_setup(base_python: str, venv_dir: Path, engine_src: Path, log_path: Path,
              progress: ProgressFn | None = None, cancel: CancelFn | None = None, variant: str = "CPU",
              index_url: str = "", wheels_dir: str = "") -> str:
    """Returns the new engine Python's path; raises EngineError (with the log's path) on failure.

    An existing venv at `venv_dir` is replaced (the user confirmed that); after a failure or cancel the
    folder is removed, so the preferences never point at a half-installed engine.
    """
    if not (Path(engine_src) / "pyproject.toml").is_file():
        raise EngineError(f"The bundled engine source is missing at {engine_src}; reinstall the extension.", "setup")
    if wheels_dir and not Path(wheels_dir).is_dir():
        raise EngineError(f"The wheels folder {wheels_dir} does not exist; choose the folder with the .whl files.",
                          "setup")
    venv_dir = Path(venv_dir)
    shutil.rmtree(venv_dir, ignore_errors=True)
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(prefix="bsb-engine-src-") as tmp:
            source = Path(tmp) / "engine_src"
            shutil.copytree(engine_src, source, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
            steps = setup_commands(base_python, venv_dir, source, variant, index_url, wheels_dir)
            with open(log_path, "ab") as log:
                for i, (label, cmd) in enumerate(steps):
                    if progress is not None:
                        progress(i / len(steps), label)
                    _run_step(label, cmd, log, log_path, cancel)
    except BaseException:
        shutil.rmtree(venv_dir, ignore_errors=True)
        raise
    if progress is not None:
        progress(1.0, "engine ready")
    return str(venv_python(venv_dir))


def _run_step(label: str, cmd: list[str], log, log_path: Path, cancel: CancelFn | None,
              timeout: float = 2 * 3600.0) -> None:
    log.write(f"\n$ {' '.join(cmd)}\n".encode())
    log.flush()
    try:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=clean_env())
    except OSError as exc:
        raise EngineError(f"Engine setup could not start while {label} ({exc}); check the base Python.", "setup")
    started = time.monotonic()
    while proc.poll() is None:
        if (cancel is not None and cancel()) or time.monotonic() - started > timeout:
            proc.kill()
            proc.wait()
            if cancel is not None and cancel():
                raise EngineCancelled("Engine setup cancelled and its half-made environment removed; "
                                      "run 'Set up engine' again to install it.")
            raise EngineError(f"Engine setup took over {timeout / 3600:.0f} h while {label}; see {log_path}.", "setup")
        time.sleep(0.2)
    if proc.returncode != 0:
        raise EngineError(f"Engine setup failed while {label} (exit {proc.returncode}); the half-made environment "
                          f"was removed. See {log_path}.", "setup")
