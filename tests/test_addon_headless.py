"""examples/headless_match.py on bad input: one line, one JSON line, exit code 1, before any engine work.

Run in-process (validation needs no engine and loads nothing); the full run is covered by
tests/test_addon_install.py, which runs the script on the installed extension.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

bpy = pytest.importorskip("bpy")
pytestmark = pytest.mark.blender
SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "headless_match.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("headless_match", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def files(tmp_path):
    Image.fromarray(np.zeros((20, 40, 3), np.uint8)).save(tmp_path / "ref.png")
    (tmp_path / "m.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
    (tmp_path / "m.fbx").write_text("")
    return tmp_path


CASES = [
    (["--mesh", "{d}/none.obj", "--image", "{d}/ref.png", "--point", "1", "1"], "mesh file not found"),
    (["--mesh", "{d}/m.fbx", "--image", "{d}/ref.png", "--point", "1", "1"], "unsupported mesh format"),
    (["--mesh", "{d}/m.obj", "--image", "{d}/none.png", "--point", "1", "1"], "image file not found"),
    (["--mesh", "{d}/m.obj", "--image", "{d}/ref.png"], "at least one --point"),
    (["--mesh", "{d}/m.obj", "--image", "{d}/ref.png", "--point", "41", "3"], "outside the 40x20 image"),
    (["--mesh", "{d}/m.obj", "--image", "{d}/ref.png", "--point", "1", "1", "--negative", "-1", "3"], "outside"),
    (["--mesh", "{d}/m.obj", "--image", "{d}/ref.png", "--point", "1", "1", "--out", "{d}/x.obj"], "must end in .blend"),
    (["--mesh", "{d}/m.obj", "--image", "{d}/ref.png", "--point", "1", "1", "--out", "{d}/no/x.blend"], "cannot write"),
    (["--mesh", "{d}/m.obj", "--image", "{d}/ref.png", "--point", "1", "1", "--engine-python", "{d}/py"],
     "engine Python not found"),
]


@pytest.mark.parametrize("argv, expected", CASES)
def test_bad_input_is_one_line_a_json_line_and_exit_1_before_engine_work(script, files, monkeypatch, capsys,
                                                                        argv, expected):
    monkeypatch.setattr(sys, "argv", ["headless_match.py", "--", *[a.format(d=files) for a in argv]])
    objects_before = len(bpy.data.objects)
    assert script.main() == script.EXIT_ERROR
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("error: ") and expected in lines[0]
    summary = json.loads(lines[1])
    assert summary["ok"] is False and summary["code"] == "bad_input" and expected in summary["error"]
    assert len(bpy.data.objects) == objects_before  # nothing was loaded: validation came first


def test_usage_errors_exit_2_with_a_json_line(script, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["headless_match.py", "--", "--image", "x.png"])
    assert script.main() == script.EXIT_USAGE
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["code"] == "usage"
