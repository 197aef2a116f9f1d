"""The provisional answer (engine/provisional.py): its region rule on hand-made features, and the early
hand-over through a tiny-profile Session (random weights: plumbing, not quality)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from engine.images import image_from_array
from engine.mesh import mesh_from_arrays
from engine.pipeline import Session, mesh_cache_key, render_views
from engine.provisional import ProvisionalSeed, is_provisional, prepare_early
from engine.sample_meshes import mug


def _strip(n: int) -> np.ndarray:
    """Faces of a strip of 2n triangles over vertices 0..2n+1 (pairs i, i+1 joined along it)."""
    faces = []
    for i in range(n):
        a, b, c, d = 2 * i, 2 * i + 1, 2 * i + 2, 2 * i + 3
        faces += [[a, b, c], [b, d, c]]
    return np.array(faces)


def test_the_region_is_similar_and_connected_to_the_click():
    # two strips of 8 vertices each (0-7 and 8-15), not joined; features: A on 0-5 and 8-13, B on 6-7, 14-15
    faces = np.concatenate([_strip(3), _strip(3) + 8])
    a, b = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    feats = torch.stack([a] * 6 + [b] * 2 + [a] * 6 + [b] * 2) + 0.01 * torch.randn(16, 3, generator=torch.Generator().manual_seed(0))
    seed = ProvisionalSeed(faces, feats)
    w = seed.predict([(0, True)])
    assert w.shape == (16,) and w.dtype == np.float32 and ((w >= 0) & (w <= 1)).all()
    assert (w[:6] >= 0.5).all(), "similar and connected: selected"
    assert (w[6:8] < 0.5).all(), "connected but dissimilar: not selected"
    assert (w[8:] < 0.5).all(), "similar but on another piece: not selected"
    both = seed.predict([(0, True), (8, True)])
    assert (both[8:14] >= 0.5).all() and (both[:6] >= 0.5).all()
    assert (seed.predict([(0, True), (4, False)])[:6] < 0.5).sum() > 0, "a negative click removes what is like it"
    assert not (seed.predict([(3, False)]) >= 0.5).any()


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    return Session("tiny", "cpu", models_dir=tmp_path_factory.mktemp("models"), use_cache=False)


def test_a_provisional_mesh_answers_before_the_preparation_ends(session):
    v, f, _, _ = mug(0, 16)
    mesh = mesh_from_arrays(v, f)
    _, _, renders = render_views(mesh, 1, 96, "uniform")
    image = session.set_image(image_from_array(renders[0]))
    covered = np.argwhere(renders[0].min(axis=-1) < 250)
    y, x = covered[len(covered) // 2]
    seen, stages = [], []

    def on_provisional(early):
        assert is_provisional(early)
        seen.append(stages[-1])  # how far the preparation had got
        seen.append(session.match(early, image, [[x + 0.5, y + 0.5]], [1]))
        seen.append(session.refine(early, [(0, True)]))

    final = prepare_early(session, mesh, on_provisional, progress=lambda f, m: stages.append(f))
    assert len(seen) == 3 and not is_provisional(final)
    handed_over_at, match, (weights, mask) = seen
    assert handed_over_at < 0.5 < max(stages), "handed over before the SAM stages, which then ran"
    assert weights.shape == (mesh.num_vertices,) and mask[0]
    if match.found:
        assert match.weights.shape == (mesh.num_vertices,) and match.vertex_mask.any()
    assert final.key == mesh_cache_key(mesh, session.models, session.settings)  # one mesh id for both answers


# ----- the protocol: a prepare with "early" lets clicks through ----------------------------------------------

def _early_backend():
    """prepare announces a provisional mesh, then steps until a match was answered (bounded); match is quick."""
    answered = threading.Event()

    def prepare(request, progress, cancel):
        if request.get("early"):
            progress(0.4, "DINO ready", mesh_id="m1", provisional=True)
        for step in range(200):
            if answered.is_set():
                break
            progress(0.4 + step / 400, f"step {step}")
            time.sleep(0.01)
        return {"mesh_id": "m1", "match_answered_meanwhile": answered.is_set()}

    def match(request, progress, cancel):
        answered.set()
        return {"provisional": True}

    return {"prepare": prepare, "match": match}


@pytest.mark.parametrize("early", [True, False])
def test_a_match_is_answered_during_an_early_prepare_only(early):
    from test_server import HELLO, Client

    client = Client(_early_backend())
    try:
        assert client.next() == HELLO
        client.send({"id": "p", "type": "prepare", "mesh": {"path": "x.obj"}, "early": early})
        if early:
            msg = client.next()
            while msg["type"] != "progress" or "mesh_id" not in msg:
                msg = client.next()
            assert (msg["mesh_id"], msg["provisional"]) == ("m1", True)
        client.send({"id": "q", "type": "match", "mesh_id": "m1", "image_id": "i", "points": [[1, 1]],
                     "labels": [1], "job_dir": "/tmp/x"})
        finals = []
        while len(finals) < 2:
            msg = client.next()
            if msg["type"] in ("result", "error"):
                finals.append(msg)
        assert [m["id"] for m in finals] == (["q", "p"] if early else ["p", "q"])
        assert finals[-1 if early else 0]["data"]["match_answered_meanwhile"] is early
    finally:
        client.close()
        client.thread.join(10)


def test_the_engine_answers_provisionally_then_finally(session, tmp_path):
    """The real handlers on the tiny profile: early prepare -> provisional mesh id -> set_image and match
    answered during the preparation (provisional: true) -> the same mesh id answers finally afterwards."""
    from test_server import HELLO, Client

    from engine.service import jobs

    v, f, _, _ = mug(0, 12)
    np.save(tmp_path / "v.npy", v.astype(np.float32))
    np.save(tmp_path / "f.npy", f.astype(np.int64))
    _, _, renders = render_views(mesh_from_arrays(v, f, up="z"), 1, 96, "uniform")
    from PIL import Image

    Image.fromarray(renders[0]).save(tmp_path / "ref.png")
    covered = np.argwhere(renders[0].min(axis=-1) < 250)
    y, x = covered[len(covered) // 2]
    state = jobs.EngineState(session)
    client = Client(jobs.make_handlers(state))
    try:
        client.next()
        client.send({"id": "p", "type": "prepare", "early": True,
                     "mesh": {"npy_vertices": str(tmp_path / "v.npy"), "npy_faces": str(tmp_path / "f.npy")}})
        msg = client.next(120)
        while "mesh_id" not in msg:
            msg = client.next(120)
        mesh_id = msg["mesh_id"]
        query = {"type": "match", "mesh_id": mesh_id, "points": [[float(x) + 0.5, float(y) + 0.5]], "labels": [1]}
        client.send({"id": "i", "type": "set_image", "path": str(tmp_path / "ref.png")})
        image_id = client.until("i", 120)[0]["data"]["image_id"]
        client.send({"id": "m1", **query, "image_id": image_id, "job_dir": str(tmp_path / "j1")})
        first, seen = client.until("m1", 120)
        assert first["type"] == "result" and first["data"]["provisional"] is True
        assert not any(m.get("id") == "p" and m["type"] == "result" for m in seen), "answered before the prepare"
        prepared, _ = client.until("p", 300)
        assert prepared["data"]["mesh_id"] == mesh_id
        client.send({"id": "m2", **query, "image_id": image_id, "job_dir": str(tmp_path / "j2")})
        final, _ = client.until("m2", 120)
        assert final["data"]["provisional"] is False
    finally:
        client.close()
        client.thread.join(30)


def test_the_command_line_prints_the_provisional_answer_then_the_final_one(tmp_path, capsys):
    import trimesh

    from engine.cli import main
    from engine.preview import save_png

    v, f, _, _ = mug(0, 12)
    trimesh.Trimesh(v, f, process=False).export(tmp_path / "mug.ply")
    _, _, renders = render_views(mesh_from_arrays(v, f), 1, 80, "uniform")
    save_png(tmp_path / "ref.png", renders[0])
    args = ["match", str(tmp_path / "mug.ply"), str(tmp_path / "ref.png"), "--up", "z", "--pixel", "40.5", "40.5",
            "--out", str(tmp_path / "m.npz"), "--profile", "tiny", "--device", "cpu", "--models",
            str(tmp_path / "models"), "--cache", str(tmp_path / "cache")]
    assert main([*args, "--early"]) in (0, 3)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" ")[0] for line in lines] == ["provisional", "final"]
    assert main(args) in (0, 3)  # from the cache: the final answer only
    assert [line.split(" ")[0] for line in capsys.readouterr().out.splitlines()] == ["final"]


def test_the_addon_client_gets_a_provisional_then_a_final_answer(tmp_path):
    """bsb_addon.jobs.run_match against the real engine process (tiny profile): the provisional answer
    arrives through `on_provisional` while the engine prepares; the returned one is final."""
    import sys
    from pathlib import Path

    from bsb_addon import engine_client as ec
    from bsb_addon import jobs
    from engine.preview import save_png

    root = Path(__file__).resolve().parents[1]
    v, f, _, _ = mug(0, 12)
    np.save(tmp_path / "v.npy", v.astype(np.float32))
    np.save(tmp_path / "f.npy", f.astype(np.int32))
    _, _, renders = render_views(mesh_from_arrays(v, f, up="z"), 1, 80, "uniform")
    save_png(tmp_path / "ref.png", renders[0])
    cfg = ec.EngineConfig(command=[sys.executable, "-u", "-m", "engine", "serve", "--profile", "tiny", "--device",
                                   "cpu", "--models", str(tmp_path / "models"), "--cache", str(tmp_path / "cache")],
                          workdir=str(root), log_path=str(tmp_path / "engine.log"), start_timeout=120)
    client = ec.EngineClient(cfg)
    client.start()
    try:
        mesh = jobs.MeshFiles(str(tmp_path / "v.npy"), str(tmp_path / "f.npy"), len(v), "mug", up="z")
        early = []
        final = jobs.run_match(client, mesh, str(tmp_path / "ref.png"), str(tmp_path / "job"), points=[[40.5, 40.5]],
                               on_provisional=early.append)
        assert len(early) == 1 and early[0].provisional and not final.provisional
        again = jobs.run_match(client, mesh, str(tmp_path / "ref.png"), str(tmp_path / "job2"),
                               points=[[40.5, 40.5]], on_provisional=early.append)
        assert len(early) == 1 and not again.provisional, "a prepared mesh answers finally at once"
    finally:
        client.shutdown()
