"""The built extension zip: validated by Blender's tool, installed into a throw-away user folder, enabled,
registered twice, and used headless (API and examples/headless_match.py) against the fake engine.

Each Blender session runs in a subprocess because BLENDER_USER_RESOURCES must be set before bpy loads.
The fake engine is reached through the preferences' "engine Python" (a wrapper script), so the real
start-up path (preferences -> command line -> handshake) is what runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("bpy")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import build_addon  # noqa: E402

pytestmark = pytest.mark.blender
NAME = "bl_ext.user_default.bsb_for_blender"

IN_BLENDER = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import bpy, addon_utils, numpy as np
    zip_path, fake_python, image_path = sys.argv[1:4]
    report = {"install": sorted(bpy.ops.extensions.package_install_files(
        repo="user_default", filepath=zip_path, enable_on_install=True))}
    name = "%s"
    report["enabled"] = name in bpy.context.preferences.addons
    cycles = []
    for _ in range(2):
        addon_utils.disable(name, default_set=True)
        off = hasattr(bpy.types.Scene, "bsb") or hasattr(bpy.types, "BSB_OT_match")
        addon_utils.enable(name, default_set=True, handle_error=None)
        cycles.append([off, hasattr(bpy.types.Scene, "bsb") and hasattr(bpy.types, "BSB_PT_view3d")])
    report["cycles"] = cycles
    prefs_mod = sys.modules[name + ".prefs"]
    session = sys.modules[name + ".session"]
    api = sys.modules[name + ".api"]
    report["engine_src"] = str(prefs_mod.engine_source())
    report["jobs_dir"] = str(session.user_dir("jobs"))
    prefs = bpy.context.preferences.addons[name].preferences
    prefs.engine_python = fake_python
    bpy.ops.mesh.primitive_uv_sphere_add(segments=16, ring_count=9)
    obj = bpy.context.active_object
    out = api.match(obj, image_path, [[20.0, 2.0]], [1], "Top", material="NEW")
    co = np.empty(len(obj.data.vertices) * 3, np.float32)
    obj.data.vertices.foreach_get("co", co)
    report["expected"] = int((co.reshape(-1, 3)[:, 2] > 0).sum())
    report["match"] = out
    report["log"] = session.current_client().config.log_path
    bpy.ops.bsb.test_engine()
    report["engine_info"] = bpy.context.window_manager.bsb_job.engine_info
    session.release()
    print("REPORT " + json.dumps(report))
    """
    % NAME
)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Zip, sandboxed Blender user folder, a fake engine Python, and a reference image."""
    tmp = tmp_path_factory.mktemp("install")
    zip_path = build_addon.build(tmp / "dist")
    fake_python = tmp / "engine-python"
    fake_python.write_text(f"#!/bin/sh\nexec '{sys.executable}' -u '{ROOT / 'tests' / 'fake_engine.py'}'\n")
    fake_python.chmod(0o755)
    rgb = np.zeros((20, 40, 3), np.uint8)
    rgb[:10] = (255, 0, 0)
    rgb[10:] = (0, 0, 255)
    Image.fromarray(rgb).save(tmp / "ref.png")
    env = {**os.environ, "BLENDER_USER_RESOURCES": str(tmp / "user")}
    env.pop("PYTHONPATH", None)
    return {"tmp": tmp, "zip": zip_path, "python": fake_python, "image": tmp / "ref.png", "env": env}


def run_blender_script(script: Path, args: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)


def test_zip_layout(built):
    names = zipfile.ZipFile(built["zip"]).namelist()
    assert "blender_manifest.toml" in names and "__init__.py" in names
    licence = zipfile.ZipFile(built["zip"]).read("LICENSE").decode()
    assert "GNU GENERAL PUBLIC LICENSE" in licence and "Version 3, 29 June 2007" in licence
    manifest = zipfile.ZipFile(built["zip"]).read("blender_manifest.toml").decode()
    assert "network =" in manifest and "files =" in manifest
    assert "engine_src/pyproject.toml" in names and "engine_src/engine/__init__.py" in names
    assert not any("__pycache__" in n or n.startswith("bsb_addon/") for n in names)


@pytest.fixture(scope="module")
def installed(built):
    """Install, enable, cycle and match in one Blender session; returns what it saw."""
    script = built["tmp"] / "in_blender.py"
    script.write_text(IN_BLENDER)
    proc = run_blender_script(script, [str(built["zip"]), str(built["python"]), str(built["image"])],
                              built["env"], built["tmp"])
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("REPORT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-2000:] + proc.stderr[-3000:]
    return json.loads(lines[-1][len("REPORT "):])


def test_install_enable_register_twice_and_match_headless(built, installed):
    report = installed
    user = str(built["tmp"] / "user")
    assert report["install"] == ["FINISHED"] and report["enabled"]
    assert report["cycles"] == [[False, True], [False, True]]
    assert report["engine_src"].startswith(user) and report["engine_src"].endswith("engine_src")
    assert report["jobs_dir"].startswith(user) and report["log"].startswith(user)
    assert report["match"]["found"] and report["match"]["n_selected"] == report["expected"] > 0
    assert report["match"]["material"] == "Top" and report["match"]["n_faces"] > 0
    assert "0.0-fake" in report["engine_info"]


def test_example_script_runs_headless_with_the_installed_extension(built, installed):
    obj = built["tmp"] / "column.obj"
    ys = np.repeat(np.arange(6, dtype=float), 4)  # OBJ is Y-up: 6 levels of a square column
    xz = np.tile([[0, 0], [1, 0], [1, 1], [0, 1]], (6, 1))
    lines = [f"v {x} {y} {z}" for (x, z), y in zip(xz, ys)]
    for level in range(5):
        for k in range(4):
            a, b = level * 4 + k, level * 4 + (k + 1) % 4
            lines.append(f"f {a + 1} {b + 1} {b + 5} {a + 5}")
    obj.write_text("\n".join(lines) + "\n")
    out_blend = built["tmp"] / "out.blend"
    proc = run_blender_script(
        ROOT / "examples" / "headless_match.py",
        ["--", "--mesh", str(obj), "--image", str(built["image"]), "--point", "20", "2", "--group", "Upper",
         "--material", "--engine-python", str(built["python"]), "--out", str(out_blend)],
        built["env"], built["tmp"],
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["addon"] == NAME
    assert summary["found"] and summary["n_selected"] == 12  # the three upper levels (y > 2.5)
    assert summary["n_faces"] == 8 and out_blend.is_file()  # two rings of quads lie wholly above
