"""The bpy-wheel add-on drives a real loopback remote engine (tiny profile: random weights, plumbing only):
Test Connection, api.match(address=, token=) and the headless example writing the vertex group; and, on an
in-process engine that can be held mid-job, a lost connection (nothing written, the error in the status
bar, Retry offered and working)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image

bpy = pytest.importorskip("bpy")
import addon_utils  # noqa: E402

from bsb_addon import api, feedback, session  # noqa: E402
from tests.remote_engine import FAKE_TOKEN, TOKEN, Harness, RemoteEngine  # noqa: E402

pytestmark = pytest.mark.blender


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("remote_addon")
    mod = addon_utils.enable("bsb_addon", default_set=True, handle_error=None)
    assert mod is not None
    engine = RemoteEngine(d)
    holder = {"engine": engine, "dir": d}
    prefs = session.preferences()
    prefs.engine_mode, prefs.remote_address, prefs.remote_token = "REMOTE", engine.address, TOKEN
    yield holder
    session.release()
    holder["engine"].close()
    session.preferences().engine_mode = "LOCAL"  # fetched again: a file was loaded since
    addon_utils.disable("bsb_addon", default_set=True)


def reset_scene():
    for coll in (bpy.data.objects, bpy.data.meshes, bpy.data.images):
        for item in list(coll):
            coll.remove(item)
    s = bpy.context.scene.bsb
    s.results.clear()
    s.clicks.clear()
    job = bpy.context.window_manager.bsb_job
    job.error, job.fix, job.message, job.busy, job.engine_info = "", "NONE", "", False, ""


def sphere():
    bpy.ops.mesh.primitive_uv_sphere_add(segments=12, ring_count=8, radius=1.0)
    return bpy.context.active_object


def reference(d) -> str:
    px = np.zeros((48, 64, 3), np.uint8)
    px[8:40, 16:48] = (200, 80, 40)
    Image.fromarray(px).save(d / "ref.png")
    return str(d / "ref.png")


def pump(until, timeout: float) -> None:
    """Play the drain timer (bounded) until `until()` holds."""
    end = time.monotonic() + timeout
    while not until() and time.monotonic() < end:
        if bpy.app.timers.is_registered(session.drain):
            session.drain()
        time.sleep(0.02)
    assert until(), "timed out"


def test_test_connection_reports_latency_version_device_and_profile(env):
    reset_scene()
    assert bpy.ops.bsb.test_connection() == {"FINISHED"}
    info = bpy.context.window_manager.bsb_job.engine_info
    assert f"Remote engine at {env['engine'].address}" in info and "ms round trip" in info
    assert "profile tiny" in info and "cpu" in info.lower() and "Engine 0." in info


def test_lost_connection_mid_job_writes_nothing_reports_it_and_retry_works(env, monkeypatch, tmp_path):
    """In-process engine (trivial handlers, held mid-prepare by a gate) so the drop lands mid-job for sure."""
    monkeypatch.setattr(session, "_force_interactive", True)
    reports: list[tuple[str, str]] = []
    monkeypatch.setattr(feedback, "report", lambda level, msg: reports.append((level, msg)))
    prefs = session.preferences()
    harness = Harness(tmp_path / "jobs")
    prefs.remote_address, prefs.remote_token = f"127.0.0.1:{harness.port}", FAKE_TOKEN
    reset_scene()
    session.release()
    bpy.ops.mesh.primitive_uv_sphere_add(segments=8, ring_count=7)  # 50 vertices: the trivial match's size
    obj = bpy.context.active_object
    bpy.context.scene.bsb.image = bpy.data.images.load(reference(tmp_path))
    click = bpy.context.scene.bsb.clicks.add()
    click.u, click.v, click.positive = 0.5, 0.5, True
    job = bpy.context.window_manager.bsb_job
    harness.backend.gate.clear()  # the preparation waits on its first step
    assert bpy.ops.bsb.match() == {"FINISHED"} and session.busy()
    pump(lambda: harness.server.running is not None, 30)
    harness.close()  # the engine's machine goes away mid-job; the reconnect finds nobody
    pump(lambda: not session.busy(), 60)
    assert job.fix == "RETRY" and "Lost the connection to the remote engine" in job.error
    assert ("ERROR", job.error) in reports  # the status bar
    assert len(obj.vertex_groups) == 0 and len(bpy.context.scene.bsb.results) == 0  # the .blend is untouched

    harness = Harness(tmp_path / "jobs2")  # back (on another port): the preferences follow it
    try:
        prefs.remote_address = f"127.0.0.1:{harness.port}"
        assert bpy.ops.bsb.retry() == {"FINISHED"}
        pump(lambda: not session.busy(), 60)
        assert job.error == "", job.error
        assert "Part 1" in obj.vertex_groups and len(bpy.context.scene.bsb.results) == 1
        assert [c[0] for c in harness.backend.calls] == ["prepare", "set_image", "match"]
    finally:
        session.release()
        harness.close()
        prefs.remote_address, prefs.remote_token = env["engine"].address, TOKEN


def test_api_match_on_a_remote_engine_writes_the_vertex_group(env):
    reset_scene()
    session.release()
    obj = sphere()
    out = api.match(obj, reference(env["dir"]), [[32, 24]], group_name="Seat", address=env["engine"].address,
                    token=TOKEN, min_confidence=0.0)
    assert out["random_weights"] is True and out["label"].endswith(api.PLUMBING)
    assert out["found"], out
    assert "Seat" in obj.vertex_groups and out["n_selected"] > 0
    group = obj.vertex_groups["Seat"].index
    members = sum(any(g.group == group for g in v.groups) for v in obj.data.vertices)
    assert members == out["n_selected"]
    assert isinstance(session.current_client(), type(session.current_client())) and session.current_client().alive


def test_headless_example_runs_on_a_remote_engine(env, tmp_path, monkeypatch, capsys):
    import importlib.util
    import json
    import sys
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("headless_match", Path(__file__).parents[1] / "examples" /
                                                  "headless_match.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    reset_scene()
    sphere()  # the same mesh as above: the engine has it in its cache
    bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "in.blend"))
    base = ["--mesh", str(tmp_path / "in.blend"), "--image", reference(env["dir"]), "--point", "32", "24",
            "--group", "Seat", "--remote", env["engine"].address]
    monkeypatch.delenv("BSB_REMOTE_TOKEN", raising=False)
    monkeypatch.setattr(sys, "argv", ["headless_match.py", "--", *base])
    assert script.main() == script.EXIT_ERROR  # no token: refused before any engine work
    assert "needs the engine's token" in json.loads(capsys.readouterr().out.strip().splitlines()[-1])["error"]

    monkeypatch.setenv("BSB_REMOTE_TOKEN", TOKEN)
    monkeypatch.setattr(sys, "argv", ["headless_match.py", "--", *base, "--out", str(tmp_path / "out.blend")])
    code = script.main()
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == script.EXIT_FOUND and summary["ok"] and summary["group"] == "Seat", summary
    assert summary["random_weights"] is True
    bpy.ops.wm.open_mainfile(filepath=str(tmp_path / "out.blend"))
    assert "Seat" in bpy.data.objects["Sphere"].vertex_groups
