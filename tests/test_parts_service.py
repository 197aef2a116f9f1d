"""The parts commands and protocol handlers on the tiny profile (random weights: plumbing, not answers)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import trimesh

from engine.cli import main
from engine.errors import NotFoundError, ProtocolError
from engine.sample_meshes import mug
from engine.service import parts_jobs, protocol


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from engine.mesh import load_mesh
    from engine.pipeline import Session
    from engine.service.jobs import EngineState

    root = tmp_path_factory.mktemp("parts")
    v, f, _, _ = mug(0, 16)
    trimesh.Trimesh(v, f, process=False).export(root / "mug.ply")
    session = Session(profile="tiny", device="cpu", models_dir=root / "models", cache_dir=root / "cache")
    mesh = load_mesh(root / "mug.ply")
    state = EngineState(session, meshes={"mesh-1": session.prepare(mesh)})
    return root, state


def common(root):
    return ["--profile", "tiny", "--device", "cpu", "--models", str(root / "models"), "--cache", str(root / "cache")]


def test_segment_all_request_recuts_without_recomputing(setup, tmp_path):
    root, state = setup
    handlers = parts_jobs.make_handlers(state)
    n = state.meshes["mesh-1"].mesh.num_vertices
    fine = handlers["segment_all"]({"mesh_id": "mesh-1", "granularity": 1.0, "job_dir": str(tmp_path)}, None, None)
    labels = np.load(fine["labels"])
    assert labels.shape == (n,) and fine["n_parts"] == len(np.unique(labels)) == len(fine["parts"])
    assert not fine["reused"] and sum(p["n_vertices"] for p in fine["parts"]) == n
    assert all(len(p["color"]) == 3 for p in fine["parts"])
    coarse = handlers["segment_all"]({"mesh_id": "mesh-1", "granularity": 0.0, "job_dir": str(tmp_path)}, None, None)
    assert coarse["reused"] and coarse["n_parts"] <= fine["n_parts"]
    json.dumps(coarse)                                # plain JSON only
    with pytest.raises(NotFoundError):
        handlers["segment_all"]({"mesh_id": "nope", "job_dir": str(tmp_path)}, None, None)


def test_find_part_request_answers_plain_json(setup, tmp_path):
    root, state = setup
    handlers = parts_jobs.make_handlers(state)
    out = handlers["find_part"]({"mesh_id": "mesh-1", "text": "handle", "job_dir": str(tmp_path)}, None, None)
    json.dumps(out)
    assert isinstance(out["found"], bool) and np.load(out["votes"]).shape == (state.meshes["mesh-1"].mesh.num_vertices,)
    assert (out["mask"] is not None) == out["found"] and (out["reason"] == "") == out["found"]


def test_schemas_check_the_new_requests():
    ok = protocol.parse_request(b'{"id": "1", "type": "segment_all", "mesh_id": "m", "granularity": 0.3, "job_dir": "/tmp/x"}')
    assert ok["granularity"] == 0.3
    with pytest.raises(ProtocolError, match="granularity"):
        protocol.parse_request(b'{"id": "1", "type": "segment_all", "mesh_id": "m", "granularity": 2, "job_dir": "/t"}')
    with pytest.raises(ProtocolError, match="text"):
        protocol.parse_request(b'{"id": "2", "type": "find_part", "mesh_id": "m", "text": "  ", "job_dir": "/t"}')
    with pytest.raises(ProtocolError, match="job_dir"):
        protocol.parse_request(b'{"id": "3", "type": "find_part", "mesh_id": "m", "text": "wing"}')


def test_cli_segment_all_and_find_part(setup, capsys):
    root, _ = setup
    out = root / "parts.npz"
    assert main(["segment-all", str(root / "mug.ply"), "--out", str(out), "--ply", str(root / "parts.ply"),
                 "--granularity", "1", *common(root)]) == 0
    labels = np.load(out)["labels"]
    assert labels.min() == 0 and len(labels) == trimesh.load(root / "mug.ply", process=False).vertices.shape[0]
    assert (root / "parts.ply").stat().st_size > 0
    assert "parts over" in capsys.readouterr().out
    code = main(["find-part", str(root / "mug.ply"), "handle", "--out", str(root / "part.npz"), *common(root)])
    assert code in (0, 3)                             # random weights may or may not find a "handle"
    assert (root / "part.npz").is_file() == (code == 0)


def test_the_real_server_answers_segment_all_and_find_part(setup, tmp_path):
    """`python -m engine serve` (tiny profile) knows both requests: fields checked, results as .npy files."""
    from test_server import Engine

    root, _ = setup
    eng = Engine(root / "models", root / "cache", tmp_path / "engine.log")
    try:
        assert eng.next()["type"] == "hello"
        prep = eng.call({"id": "p", "type": "prepare", "mesh": {"path": str(root / "mug.ply")}})
        assert prep["type"] == "result", prep
        mesh_id, n = prep["data"]["mesh_id"], prep["data"]["n_vertices"]
        progress = []
        fine = eng.call({"id": "s1", "type": "segment_all", "mesh_id": mesh_id, "granularity": 1.0,
                         "job_dir": str(tmp_path / "s1")}, on_progress=progress.append)
        assert fine["type"] == "result", fine
        data = fine["data"]
        labels = np.load(data["labels"])
        assert labels.shape == (n,) and labels.dtype == np.int32 and data["n_parts"] == len(np.unique(labels))
        assert [p["index"] for p in data["parts"]] == list(range(data["n_parts"])) and not data["reused"]
        assert {"index", "name", "n_vertices", "area", "score", "seed", "color"} <= set(data["parts"][0])
        assert progress and all(m["id"] == "s1" for m in progress)
        coarse = eng.call({"id": "s2", "type": "segment_all", "mesh_id": mesh_id, "granularity": 0,
                           "job_dir": str(tmp_path / "s2")})
        assert coarse["data"]["reused"] and coarse["data"]["n_parts"] <= data["n_parts"]
        bad = eng.call({"id": "s3", "type": "segment_all", "mesh_id": mesh_id, "granularity": 1.5,
                        "job_dir": str(tmp_path / "s3")})
        assert bad["type"] == "error" and bad["code"] == "bad_request" and "granularity" in bad["message"]
        unknown = eng.call({"id": "s4", "type": "segment_all", "mesh_id": "mesh-nope", "job_dir": str(tmp_path / "s4")})
        assert unknown["code"] == "not_found" and "prepare" in unknown["message"]
        found = eng.call({"id": "f1", "type": "find_part", "mesh_id": mesh_id, "text": "handle",
                          "job_dir": str(tmp_path / "f1")})
        assert found["type"] == "result", found
        answer = found["data"]
        assert np.load(answer["votes"]).shape == (n,)
        assert (answer["mask"] is not None) == answer["found"] and (answer["reason"] == "") == answer["found"]
        foreign = eng.call({"id": "f2", "type": "find_part", "mesh_id": mesh_id, "text": "handle",
                            "job_dir": str(root)})        # a folder holding files the engine did not write
        assert foreign["code"] == "bad_request" and "did not write" in foreign["message"]
    finally:
        eng.close()
