"""The real engine (`python -m engine serve`, tiny profile: random weights, plumbing only) under hostile
use (issue 13 items 4, 6, 8, 10, 11, 16; issue 12 items 4 and 9): a cache that cannot be written, a single
triangle, request lines that used to stop the server, bad files, folders and boxes. One engine, one prepare."""

from __future__ import annotations

import numpy as np
import pytest
from test_server import Engine

from engine.preview import save_png


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    root = tmp_path_factory.mktemp("hengine")
    np.save(root / "tri_v.npy", np.array([[0, 0, 0], [1, 0, 0], [0, 0, 1]], np.float32))
    np.save(root / "tri_f.npy", np.array([[0, 1, 2]], np.int32))
    save_png(root / "ref.png", np.full((40, 60, 3), 200, np.uint8))
    (root / "blocker").write_text("a file where the cache folder should be")
    (root / "folder.png").mkdir()
    eng = Engine(root / "models", root / "blocker" / "cache", root / "engine.log")  # the cache cannot be written
    assert eng.next()["type"] == "hello"
    yield eng, root
    eng.close()


def test_a_single_triangle_prepares_and_an_unwritable_cache_loses_nothing(engine):
    eng, d = engine
    mesh = {"npy_vertices": str(d / "tri_v.npy"), "npy_faces": str(d / "tri_f.npy")}
    done = eng.call({"id": "p1", "type": "prepare", "mesh": mesh, "up": "z"})
    assert done["type"] == "result", done
    assert done["data"]["n_vertices"] == 3 and done["data"]["cached"] is False
    assert str(d / "blocker") in done["data"]["warning"]  # the failed cache write, said once
    job = d / "job"
    r = eng.call({"id": "r1", "type": "refine", "mesh_id": done["data"]["mesh_id"], "clicks": [[0, True]],
                  "job_dir": str(job)})
    assert r["type"] == "result" and np.load(r["data"]["weights"]).shape == (3,)

    image = eng.call({"id": "i1", "type": "set_image", "path": str(d / "ref.png")})
    assert image["type"] == "result"
    base = {"type": "match", "mesh_id": done["data"]["mesh_id"], "image_id": image["data"]["image_id"]}
    outside = eng.call({**base, "id": "m1", "points": [], "labels": [], "box": [100, 100, 200, 200],
                        "job_dir": str(d / "m1")})
    assert outside["code"] == "bad_request" and "entirely outside" in outside["message"]
    foreign = eng.call({**base, "id": "m2", "points": [[5, 5]], "labels": [1], "job_dir": str(d)})
    assert foreign["code"] == "bad_request" and "did not write" in foreign["message"]
    relative = eng.call({**base, "id": "m3", "points": [[5, 5]], "labels": [1], "job_dir": "jobs/x"})
    assert relative["code"] == "bad_request" and "absolute" in relative["message"]


def test_files_that_are_folders_or_unreadable_are_named(engine):
    eng, d = engine
    folder = eng.call({"id": "f1", "type": "set_image", "path": str(d / "folder.png")})
    assert folder["code"] == "bad_request" and "is a folder" in folder["message"]
    mem = eng.call({"id": "f2", "type": "set_image", "path": "/proc/self/mem"})
    assert mem["code"] == "not_found" and "cannot read image file /proc/self/mem" in mem["message"]


def test_lines_that_used_to_stop_the_server_are_answered_with_their_id(engine):
    eng, _ = engine
    eng.send(b'{"id": "deep", "type": "status", "x": ' + b"[" * 1000 + b"]" * 1000 + b"}\n")
    assert eng.until("deep", timeout=30)["code"] == "bad_json"
    eng.send(b'{"id": "digits", "type": "status", "x": ' + b"7" * 5000 + b"}\n")
    assert eng.until("digits", timeout=30)["code"] == "bad_json"
    eng.send(b'{"id": "huge", "type": "refine", "clicks": [' + b"[1, true], " * 150000 + b"[2, true]]}\n")
    assert eng.until("huge", timeout=30)["code"] == "too_large"
    status = eng.call({"id": "s", "type": "status"}, timeout=30)
    assert status["type"] == "result" and status["data"]["meshes"] >= 0 and eng.proc.poll() is None
