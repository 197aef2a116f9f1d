"""The real engine behind `serve --listen` on 127.0.0.1 (tiny profile, random weights: plumbing only):
killed mid-prepare and restarted, the client reports it, the cache stays consistent and a retry works."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from bsb_addon.engine_client import ConnectionLost
from engine.cache import Cache
from tests.remote_engine import ROOT, RemoteEngine


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    from engine.sample_meshes import mug

    d = tmp_path_factory.mktemp("remote")
    v, f, _, _ = mug(0, 16)
    np.save(d / "v.npy", v.astype(np.float32))
    np.save(d / "f.npy", f.astype(np.int32))
    return d


def test_listen_on_a_public_address_without_a_token_is_refused_before_the_models_load(tmp_path):
    run = subprocess.run([sys.executable, "-m", "engine", "serve", "--profile", "tiny", "--listen", "0.0.0.0:0",
                          "--token", ""], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, BSB_CONFIG_DIR=str(tmp_path)))
    assert run.returncode == 1 and "without a token" in run.stderr and "listening" not in run.stderr


def test_killed_mid_prepare_then_restarted_reports_keeps_the_cache_consistent_and_retry_works(dirs):
    mesh = {"npy_vertices": str(dirs / "v.npy"), "npy_faces": str(dirs / "f.npy")}
    engine = RemoteEngine(dirs)
    try:
        client = engine.client()
        assert client.hello["profile"] == "tiny" and client.hello["remote"]["tls"] is False

        def kill_on_progress(fraction, message):
            if engine.proc.poll() is None:
                engine.proc.kill()

        with pytest.raises(ConnectionLost) as err:
            client.request("prepare", mesh=mesh, up="z", progress=kill_on_progress, timeout=120)
        assert "Lost the connection to the remote engine" in err.value.message
        assert "Nothing was written to your .blend" in err.value.message
        assert not client.alive
    finally:
        engine.close()

    engine = RemoteEngine(dirs)  # same cache, same job folders
    try:
        cache = Cache(dirs / "cache")
        assert cache.leftovers() == []  # the half-written entry of the killed run was swept at start
        assert all(len(list(c.iterdir())) == 0 or all((j / "result.json").is_file() for j in c.iterdir())
                   for c in (dirs / "jobs").iterdir())  # no unfinished job folder kept
        client = engine.client()
        first = client.request("prepare", mesh=mesh, up="z", timeout=300)
        assert first["cached"] is False and first["n_vertices"] == len(np.load(dirs / "v.npy"))
        assert [e.kind for e in cache.entries()].count("mesh") >= 1
        client.kill()
        other = engine.client()  # another client: the prepared mesh is shared through the cache and state
        assert other.request("prepare", mesh=mesh, up="z", timeout=60)["mesh_id"] == first["mesh_id"]
        status = other.request("status")
        assert status["busy"] is False and status["meshes"] == 1
        other.kill()
    finally:
        engine.close()
