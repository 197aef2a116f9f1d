"""Build the installable extension zip: bsb_addon/, blender_manifest.toml and LICENSE (GPL-3.0) at the
zip's root, plus the engine source in engine_src/.

The engine source rides along so "Set up engine" can pip-install it into its own venv (torch cannot be
bundled). The staged tree is checked and zipped by Blender's own extension tool (blender_ext.py, shipped
in the bpy wheel), so the result is what `blender --command extension build` would make.

    python tools/build_addon.py [--out dist] [--no-engine]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", ".*")


def blender_ext() -> Path:
    """Blender's extension CLI from the installed bpy wheel."""
    import importlib.util

    spec = importlib.util.find_spec("bpy")
    if spec is None or spec.origin is None:
        raise SystemExit("bpy is not installed: pip install bpy (it ships Blender's extension validator)")
    found = sorted(Path(spec.origin).parent.glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
    if not found:
        raise SystemExit("blender_ext.py not found inside the bpy wheel")
    return found[-1]


def stage(dest: Path, with_engine: bool) -> None:
    shutil.copytree(ROOT / "bsb_addon", dest, ignore=IGNORE)
    shutil.copy2(ROOT / "blender_manifest.toml", dest / "blender_manifest.toml")
    shutil.copy2(ROOT / "LICENSE", dest / "LICENSE")
    if with_engine:
        shutil.copytree(ROOT / "engine", dest / "engine_src" / "engine", ignore=IGNORE)
        shutil.copy2(ROOT / "pyproject.toml", dest / "engine_src" / "pyproject.toml")


def build(out_dir: Path, with_engine: bool = True) -> Path:
    manifest = tomllib.loads((ROOT / "blender_manifest.toml").read_text())
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{manifest['id']}-{manifest['version']}.zip"
    tool = blender_ext()
    with tempfile.TemporaryDirectory(prefix="bsb-addon-") as tmp:
        src = Path(tmp) / manifest["id"]
        stage(src, with_engine)
        for args in (["validate", str(src)],
                     ["build", "--source-dir", str(src), "--output-filepath", str(target)]):
            proc = subprocess.run([sys.executable, str(tool), *args], capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"blender_ext {args[0]} failed:\n{proc.stdout}{proc.stderr}")
    check = subprocess.run([sys.executable, str(tool), "validate", str(target)], capture_output=True, text=True)
    if check.returncode != 0:
        raise SystemExit(f"blender_ext validate of the zip failed:\n{check.stdout}{check.stderr}")
    return target


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "dist")
    ap.add_argument("--no-engine", action="store_true", help="leave out engine_src/ (no 'Set up engine')")
    args = ap.parse_args()
    print(build(args.out, not args.no_engine))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
