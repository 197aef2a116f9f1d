"""The add-on's engine client against the fake engine script (process boundary, no bpy, no torch)."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bsb_addon import engine_client as ec
from bsb_addon import jobs

FAKE = Path(__file__).with_name("fake_engine.py")


def make_client(tmp_path: Path, *flags: str, grace: float = 5.0) -> ec.EngineClient:
    cfg = ec.EngineConfig(command=[sys.executable, "-u", str(FAKE), *flags], log_path=str(tmp_path / "engine.log"),
                          start_timeout=30, cancel_grace=grace)
    client = ec.EngineClient(cfg)
    client.start()
    return client


@pytest.fixture
def scene(tmp_path: Path) -> tuple[jobs.MeshFiles, str]:
    """A 4x4x4 grid of points (z in 0..3) with a few triangles, and a 40x20 image."""
    g = np.stack(np.meshgrid(np.arange(4), np.arange(4), np.arange(4), indexing="ij"), -1).reshape(-1, 3)
    v = g.astype(np.float32)
    f = np.array([[0, 1, 4], [1, 5, 4], [16, 17, 20]], np.int32)
    np.save(tmp_path / "v.npy", v)
    np.save(tmp_path / "f.npy", f)
    Image.new("RGB", (40, 20), (200, 10, 10)).save(tmp_path / "ref.png")
    return jobs.MeshFiles(str(tmp_path / "v.npy"), str(tmp_path / "f.npy"), len(v), "grid"), str(tmp_path / "ref.png")


def test_clean_env_drops_blender_python_vars():
    env = ec.clean_env({"PYTHONPATH": "/blender/lib", "PYTHONHOME": "/blender", "PATH": "/bin"})
    assert "PYTHONPATH" not in env and "PYTHONHOME" not in env
    assert env["PYTHONNOUSERSITE"] == "1" and env["PATH"] == "/bin"


def test_default_command_uses_engine_module_and_flags(tmp_path):
    py = tmp_path / "python"
    py.write_text("")
    cmd = ec.build_command(ec.EngineConfig(python=str(py), device="cpu", profile="tiny", models="/m"))
    assert cmd[:6] == [str(py), "-s", "-u", "-m", "engine", "serve"]
    assert cmd[cmd.index("--profile") + 1] == "tiny" and cmd[cmd.index("--models") + 1] == "/m"


def test_missing_python_is_a_clear_error(tmp_path):
    with pytest.raises(ec.EngineMissing, match="does not exist"):
        ec.EngineClient(ec.EngineConfig(python=str(tmp_path / "nope"))).start()
    with pytest.raises(ec.EngineMissing, match="Set up engine"):
        ec.EngineClient(ec.EngineConfig()).start()


def test_handshake_and_match_follow_the_planted_rule(tmp_path, scene):
    mesh, image = scene
    client = make_client(tmp_path)
    try:
        assert client.hello["protocol"] == 1 and not client.random_weights
        seen = []
        # A click near the top of the image (Blender v=0.9 -> engine y = 2 of 20) must select the upper half.
        res = jobs.run_match(client, mesh, image, str(tmp_path / "job1"), points_uv=[(0.5, 0.9)],
                             labels=[1], progress=lambda f, m: seen.append(f))
        z = np.load(mesh.vertices)[:, 2]
        assert res.found and np.array_equal(res.mask, z > 1.5)
        assert res.image_size == (40, 20) and res.part_mask.shape == (20, 40)
        assert seen and all(0.0 <= f <= 1.0 for f in seen) and seen == sorted(seen)
        low = jobs.run_match(client, mesh, image, str(tmp_path / "job2"), points=[[20.0, 18.0]])
        assert np.array_equal(low.mask, z <= 1.5)
        none = jobs.run_match(client, mesh, image, str(tmp_path / "job3"), points=[[1.0, 5.0]])
        assert not none.found and none.mask is None and "no valid" in none.reason
        st = client.request("status")
        assert st["busy"] is False and st["meshes"] == 1
    finally:
        client.shutdown()
    assert not client.alive


def test_click_outside_the_image_is_refused_before_matching(tmp_path, scene):
    mesh, image = scene
    client = make_client(tmp_path)
    try:
        with pytest.raises(ec.EngineError, match="outside"):
            jobs.run_match(client, mesh, image, str(tmp_path / "j"), points=[[41.0, 5.0]])
    finally:
        client.shutdown()


def test_unknown_protocol_is_refused(tmp_path):
    with pytest.raises(ec.ProtocolMismatch, match="protocol 2"):
        make_client(tmp_path, "--protocol", "2")


def test_engine_that_dies_at_start_reports_its_stderr(tmp_path):
    with pytest.raises(ec.EngineMissing, match="No module named 'torch'"):
        make_client(tmp_path, "--die-at-start")


def test_crash_mid_job_raises_crashed_and_later_sends_fail_fast(tmp_path, scene):
    mesh, image = scene
    client = make_client(tmp_path, "--crash-on", "match")
    with pytest.raises(ec.EngineCrashed, match="exit code 3"):
        jobs.run_match(client, mesh, image, str(tmp_path / "j"), points=[[20.0, 2.0]])
    assert not client.alive
    with pytest.raises(ec.EngineCrashed):
        client.request("status")
    client.kill()


def test_cancel_sends_protocol_cancel_and_ends_promptly(tmp_path, scene):
    mesh, _ = scene
    client = make_client(tmp_path, "--slow", "20")
    flag = threading.Event()
    threading.Timer(0.3, flag.set).start()
    t0 = time.monotonic()
    try:
        with pytest.raises(ec.EngineCancelled):
            jobs.prepare(client, mesh, cancel=flag.is_set)
        assert time.monotonic() - t0 < 5
        assert client.alive  # a protocol cancel keeps the warm engine
    finally:
        client.shutdown()


def test_engine_ignoring_cancel_is_killed_after_grace(tmp_path, scene):
    mesh, _ = scene
    client = make_client(tmp_path, "--slow", "30", "--ignore-cancel", grace=0.5)
    with pytest.raises(ec.EngineCancelled, match="did not stop"):
        jobs.prepare(client, mesh, cancel=lambda: True)
    assert not client.alive


def test_wrong_sized_result_is_rejected(tmp_path, scene):
    mesh, image = scene
    client = make_client(tmp_path)
    try:
        wrong = jobs.MeshFiles(mesh.vertices, mesh.faces, mesh.n_vertices + 1, "grid")
        with pytest.raises(jobs.ResultError):
            jobs.run_match(client, wrong, image, str(tmp_path / "j"), points=[[20.0, 2.0]])
    finally:
        client.shutdown()


def test_refine_and_match_all_and_shape_to_image(tmp_path, scene):
    mesh, image = scene
    v = np.load(mesh.vertices)
    client = make_client(tmp_path, "--random-weights")
    try:
        assert client.random_weights
        ref = jobs.run_refine(client, mesh, [(0, True), (63, False)], str(tmp_path / "r"))
        expect = np.linalg.norm(v - v[0], axis=1) < np.linalg.norm(v - v[63], axis=1)
        assert np.array_equal(ref.mask, expect) and ref.random_weights
        regions = jobs.run_match_all(client, mesh, image, str(tmp_path / "a"))
        assert [r.name for r in regions] == ["top", "bottom"]
        assert np.array_equal(regions[0].mask | regions[1].mask, np.ones(len(v), bool))
        top_vertices = np.flatnonzero(v[:, 2] > 1.5).tolist()
        shot = jobs.run_shape_to_image(client, mesh, image, top_vertices, str(tmp_path / "s"))
        assert shot["mask"][:10].all() and not shot["mask"][10:].any()
        with pytest.raises(ec.EngineError, match="not on the mesh"):
            jobs.run_refine(client, mesh, [(999, True)], str(tmp_path / "r2"))
    finally:
        client.shutdown()


def test_engine_setup_runs_its_steps_reports_failure_and_cancels(tmp_path):
    from bsb_addon import env_setup

    src = tmp_path / "src"
    (src / "engine").mkdir(parents=True)
    (src / "pyproject.toml").write_text("[project]\nname='x'\n")
    with pytest.raises(ec.EngineError, match="missing"):
        env_setup.run_setup(sys.executable, tmp_path / "venv", tmp_path / "nowhere", tmp_path / "log.txt")
    failing = tmp_path / "fail.sh"
    failing.write_text("#!/bin/sh\necho cannot create venv\nexit 7\n")
    failing.chmod(0o755)
    with pytest.raises(ec.EngineError, match="creating the engine environment"):
        env_setup.run_setup(str(failing), tmp_path / "venv", src, tmp_path / "log.txt")
    assert "cannot create venv" in (tmp_path / "log.txt").read_text()
    slow = tmp_path / "slow.sh"
    slow.write_text("#!/bin/sh\nexec sleep 30\n")
    slow.chmod(0o755)
    t0 = time.monotonic()
    with pytest.raises(ec.EngineCancelled):
        env_setup.run_setup(str(slow), tmp_path / "venv", src, tmp_path / "log.txt",
                            cancel=lambda: time.monotonic() - t0 > 0.3)
    assert time.monotonic() - t0 < 5


def test_error_without_an_id_fails_the_waiting_request_at_once(tmp_path, scene):
    mesh, image = scene
    client = make_client(tmp_path, "--no-id-on", "refine")
    try:
        t0 = time.monotonic()
        with pytest.raises(ec.EngineError, match="Select fewer vertices") as info:
            jobs.run_refine(client, mesh, [(0, True)], str(tmp_path / "job"))
        assert info.value.code == "too_large" and time.monotonic() - t0 < 5
        assert client.alive  # the engine is fine; the next request works
        assert jobs.prepare(client, mesh)["n_vertices"] == mesh.n_vertices
    finally:
        client.shutdown()


def test_a_hung_engine_is_detected_by_a_status_ping_and_stopped(tmp_path, scene):
    mesh, _ = scene
    client = make_client(tmp_path, "--hang-on", "prepare")
    client.config.idle_check, client.config.status_timeout = 0.3, 0.7
    t0 = time.monotonic()
    with pytest.raises(ec.EngineCrashed, match="stopped answering"):
        jobs.prepare(client, mesh)
    assert time.monotonic() - t0 < 5 and not client.alive


def test_a_slow_but_alive_engine_is_not_mistaken_for_a_hung_one(tmp_path, scene):
    mesh, _ = scene
    client = make_client(tmp_path, "--slow", "1.5")
    client.config.idle_check, client.config.status_timeout = 0.2, 1.0
    try:
        assert jobs.prepare(client, mesh)["n_vertices"] == mesh.n_vertices
        with pytest.raises(ec.EngineError, match="within 0 min") as info:
            client.request("prepare", timeout=0.3, mesh={"npy_vertices": mesh.vertices, "npy_faces": mesh.faces})
        assert info.value.code == "timeout"
    finally:
        client.kill()


def test_an_oversized_request_is_refused_before_it_is_sent(tmp_path, scene):
    client = make_client(tmp_path)
    try:
        with pytest.raises(ec.EngineError, match="over the engine's 1 MiB limit") as info:
            client.send("shape_to_image", vertices=list(range(300_000)))
        assert info.value.code == "too_large" and not client._pending
    finally:
        client.shutdown()


def test_offline_flag_reaches_the_engine(tmp_path):
    client = make_client(tmp_path)
    try:
        assert client.hello["offline"] is True
    finally:
        client.shutdown()
    py = tmp_path / "python"
    py.write_text("")
    assert "--offline" in ec.build_command(ec.EngineConfig(python=str(py)))


def test_crash_message_shows_only_this_sessions_log_lines(tmp_path):
    (tmp_path / "engine.log").write_text("old session: Traceback of yesterday\n")
    with pytest.raises(ec.EngineMissing) as info:
        make_client(tmp_path, "--die-at-start")
    assert "No module named 'torch'" in str(info.value) and "yesterday" not in str(info.value)
