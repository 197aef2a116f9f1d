"""`python -m engine batch`: job checks, the ledger's resume rules, and real runs on a local 2-CPU Ray.

Tiny profile (random weights: plumbing, not answers). One Ray instance serves the whole module (it is
slow to start); the killed-driver test runs a second driver process against it. The preparations of the
first run are cached, so later runs only pay for clicks.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from engine.batch.job import load_job, request_hash
from engine.batch.ledger import RESULTS, Ledger
from engine.batch.worker import RECORD, Outputs, write_record
from engine.errors import BsbError

ROOT = Path(__file__).resolve().parents[1]
# Six PSB meshes that the tiny profile's 56-pixel DINO views can cover (thin ones cannot: bad_request).
MESHES = ("cup/22", "cup/23", "vase/367", "teddy/161", "bust/316", "fourleg/382")


def write_job(path: Path, lines: list) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


# ----------------------------------------------------------------------------------------------------
# Job file and ledger (no Ray, no models)

def test_job_lines_are_checked_one_by_one(tmp_path):
    job = load_job(write_job(tmp_path / "job.jsonl", [
        {"id": "a", "mesh": "m.off", "task": "match", "image": "i.png", "pixels": [[1, 2]], "negatives": [[3, 4]]},
        {"id": "b", "mesh": "/abs/m.off", "task": "segment", "clicks": [3], "negatives": [5], "up": "z"},
        {"id": "c", "mesh": "m.off", "task": "match", "image": "i.png"},  # no click, no box
        {"id": "d", "mesh": "m.off", "task": "prepare", "pixels": [[1, 2]]},  # prepare takes no pixels
        {"id": "e/..", "mesh": "m.off", "task": "prepare"},  # ids name folders
        {"id": "f", "mesh": "m.off", "task": "paint"},
        "# a comment", "", "{not json",
    ]))
    assert [t.id for t in job.tasks] == ["a", "b"]
    a, b = job.tasks
    assert a.mesh == tmp_path / "m.off" and a.image == tmp_path / "i.png" and a.negatives == ((3.0, 4.0),)
    assert b.mesh == Path("/abs/m.off") and b.clicks == (3,) and b.negatives == (5,) and b.up == "z"
    assert {x.id: x.code for x in job.bad} == {"c": "bad_request", "d": "bad_request", "line-5": "bad_request",
                                               "f": "bad_request", "line-9": "bad_request"}
    assert "pixels" in next(x.message for x in job.bad if x.id == "c")
    with pytest.raises(BsbError, match="unique"):
        load_job(write_job(tmp_path / "dup.jsonl", [{"id": "a", "mesh": "m", "task": "prepare"}] * 2))


def test_request_hash_follows_inputs_request_and_outputs(tmp_path):
    mesh = tmp_path / "m.off"
    mesh.write_text("OFF\n3 1 0\n0 0 0\n1 0 0\n0 1 0\n3 0 1 2\n")
    line = {"id": "a", "mesh": "m.off", "task": "segment", "clicks": [0]}
    task = load_job(write_job(tmp_path / "j.jsonl", [line])).tasks[0]
    base = request_hash(task, "tiny", {"k": 1}, {"preview": False})
    assert base == request_hash(task, "tiny", {"k": 1}, {"preview": False})
    other = load_job(write_job(tmp_path / "j2.jsonl", [dict(line, clicks=[1])])).tasks[0]
    assert len({base, request_hash(other, "tiny", {"k": 1}, {"preview": False}),
                request_hash(task, "cpu", {"k": 1}, {"preview": False}),
                request_hash(task, "tiny", {"k": 2}, {"preview": False}),
                request_hash(task, "tiny", {"k": 1}, {"preview": True})}) == 5
    mesh.write_text("OFF\n3 1 0\n0 0 0\n2 0 0\n0 1 0\n3 0 1 2\n")  # same path, new geometry
    assert request_hash(task, "tiny", {"k": 1}, {"preview": False}) != base


def test_ledger_skips_only_complete_results_and_adopts_unlogged_ones(tmp_path):
    ledger = Ledger(tmp_path)
    for asset in ("a", "b"):
        (tmp_path / asset).mkdir()
        (tmp_path / asset / "result.npz").write_bytes(b"x")
    ledger.append({"id": "a", "status": "done", "request_hash": "h1", "files": ["result.npz"]})
    with open(tmp_path / RESULTS, "a") as fh:
        fh.write('{"id": "b", "status": "do')  # a driver killed mid-line
    write_record(tmp_path / "b", {"id": "b", "status": "done", "request_hash": "h2", "files": ["result.npz"]})

    ledger = Ledger(tmp_path)
    assert ledger.is_done("a", "h1") and not ledger.is_done("a", "other request")
    assert not ledger.is_done("b", "h2") and not ledger.adopt("b", "other request")
    assert ledger.adopt("b", "h2") and Ledger(tmp_path).is_done("b", "h2")  # logged on a fresh line
    (tmp_path / "a" / "result.npz").unlink()
    assert not Ledger(tmp_path).is_done("a", "h1")  # a deleted result is computed again
    lines = (tmp_path / RESULTS).read_text().splitlines()
    assert json.loads(lines[-1])["id"] == "b"


def test_without_ray_batch_says_how_to_install(tmp_path, monkeypatch, capsys):
    from engine.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    job = write_job(tmp_path / "job.jsonl", [{"id": "a", "mesh": "m.off", "task": "prepare"}])
    assert main(["batch", str(job), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert 'pip install -e ".[batch]"' in err and "Traceback" not in err


# ----------------------------------------------------------------------------------------------------
# Real runs on Ray

@pytest.fixture(scope="module")
def ray_address():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def library(tmp_path_factory, shared_data):
    """Six PSB meshes with a rendered reference image each, a truncated mesh, and shared models/cache folders."""
    from engine.mesh import load_mesh
    from engine.pipeline import render_views
    from engine.preview import save_png

    root = tmp_path_factory.mktemp("batch")
    items = []
    for name in MESHES:
        path = shared_data / "psb" / f"{name}.off"
        _, raster, renders = render_views(load_mesh(path), 1, 96, "uniform")
        image = root / f"{name.replace('/', '_')}.png"
        save_png(image, renders[0])
        ys, xs = np.nonzero(raster.face_id[0] >= 0)
        pixel = [float(np.median(xs)) + 0.5, float(np.median(ys)) + 0.5]
        items.append((name.replace("/", "_"), path, image, pixel))
    text = (shared_data / "psb" / "cup" / "24.off").read_text()
    (root / "broken.off").write_text(text[: len(text) // 2])
    return {"root": root, "items": items}


def options(library, out: Path, **extra):
    from engine.batch.runner import BatchOptions

    root = library["root"]
    return BatchOptions(out_dir=out, profile="tiny", device="cpu", models=root / "models", cache=root / "cache",
                        show_progress=False, **extra)


def full_job(library) -> Path:
    root, items = library["root"], library["items"]
    (a, ma, ia, pa), (b, mb, _, _), (c, mc, ic, _), (d, md, _, _), (e, me, ie, pe), (f, mf, _, _) = items
    return write_job(root / "job.jsonl", [
        {"id": a, "mesh": str(ma), "task": "match", "image": str(ia), "pixels": [pa]},
        {"id": b, "mesh": str(mb), "task": "segment", "clicks": [0, 5], "negatives": [9]},
        {"id": c, "mesh": str(mc), "task": "match_all", "image": str(ic), "max_regions": 3},
        {"id": d, "mesh": str(md), "task": "prepare"},
        {"id": e, "mesh": str(me), "task": "match", "image": str(ie), "pixels": [pe], "preview": True},
        {"id": f, "mesh": str(mf), "task": "segment", "clicks": [1]},
        {"id": "broken", "mesh": str(root / "broken.off"), "task": "segment", "clicks": [0]},
        {"id": "no-image", "mesh": str(ma), "task": "match", "image": str(root / "missing.png"), "pixels": [pa]},
    ])


def test_batch_writes_results_and_a_rerun_computes_nothing(ray_address, library, tmp_path):
    from engine.batch.runner import run_batch
    from engine.cli import main

    job_path, out = full_job(library), tmp_path / "out"
    report = run_batch(load_job(job_path), options(library, out))
    by_id = {r["id"]: r for r in report.records}
    assert sorted(r["id"] for r in report.records if r["status"] == "done") == sorted(i[0] for i in library["items"])
    assert {i: by_id[i]["error"]["code"] for i in ("broken", "no-image")} == {"broken": "bad_mesh",
                                                                               "no-image": "not_found"}
    assert "missing.png" in by_id["no-image"]["error"]["message"]
    for record in by_id.values():
        if record["status"] == "done":
            assert record["random_weights"] and record["profile"] == "tiny" and record["cache_key"]["mesh"]
            assert set(record["model_ids"]) == {"dino", "sam"} and record["timings"]["total"] > 0
            assert all((out / record["id"] / name).stat().st_size > 0 for name in record["files"])
    (a, mesh_a, image_a, pixel_a), *_ = library["items"]
    assert by_id[a]["files"] == ["result.npz", "result.ply"] and "confidence" in by_id[a]
    assert "preview.png" in by_id[library["items"][4][0]]["files"]
    assert len(by_id[library["items"][2][0]]["confidences"]) == by_id[library["items"][2][0]]["regions"]
    ledger = [json.loads(line) for line in (out / RESULTS).read_text().splitlines()]
    assert sorted(r["id"] for r in ledger) == sorted(by_id)

    # the CLI, same inputs and folders (the preparation comes from the cache): the same answer
    root = library["root"]
    code = main(["match", str(mesh_a), str(image_a), "--pixel", *map(str, pixel_a), "--out", str(tmp_path / "cli.npz"),
                 "--profile", "tiny", "--device", "cpu", "--models", str(root / "models"), "--cache", str(root / "cache")])
    cli, batch = np.load(tmp_path / "cli.npz"), np.load(out / a / "result.npz")
    assert code == (0 if by_id[a]["found"] else 3)
    for key in ("mask", "part_mask", "object_mask", "candidate_vertices", "found", "winner_vertex"):
        assert np.array_equal(cli[key], batch[key]), key
    np.testing.assert_allclose(cli["weights"], batch["weights"], atol=1e-5)

    # rerun: every done asset is skipped untouched; only the two failures are tried (and fail) again
    stamps = {p: p.stat().st_mtime_ns for p in out.glob(f"*/{RECORD}") if p.parent.name in report.skipped + list(by_id)}
    again = run_batch(load_job(job_path), options(library, out))
    assert sorted(again.skipped) == sorted(i[0] for i in library["items"])
    assert sorted(r["id"] for r in again.records) == ["broken", "no-image"]
    assert all(r["status"] == "failed" for r in again.records)
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items() if p.parent.name in again.skipped)


def test_killed_driver_loses_nothing_and_recomputes_nothing(ray_address, library, tmp_path):
    from engine.batch.runner import run_batch

    root = library["root"]
    lines = [{"id": f"{name}-{k}", "mesh": str(mesh), "task": "match", "image": str(image), "pixels": [pixel]}
             for name, mesh, image, pixel in library["items"][:3] for k in range(2)]
    job_path, out = write_job(tmp_path / "job.jsonl", lines), tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    driver = subprocess.Popen(
        [sys.executable, "-m", "engine", "batch", str(job_path), "--out", str(out), "--ray", ray_address,
         "--profile", "tiny", "--device", "cpu", "--models", str(root / "models"), "--cache", str(root / "cache"),
         "--no-progress"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and driver.poll() is None:
            results = out / RESULTS
            if results.is_file() and '"done"' in results.read_text():
                break
            time.sleep(0.05)
        assert driver.poll() is None, "the driver finished before it could be killed"
        os.kill(driver.pid, signal.SIGKILL)  # by its own pid
    finally:
        driver.wait(timeout=30)
    first = {json.loads(p.read_text())["id"]: json.loads(p.read_text())["run_id"] for p in out.glob(f"*/{RECORD}")
             if json.loads(p.read_text())["status"] == "done"}
    assert 1 <= len(first) < len(lines)

    report = run_batch(load_job(job_path), options(library, out))
    assert sorted(report.skipped) == sorted(first)  # finished before the kill: never computed again
    assert sorted(r["id"] for r in report.records) == sorted(set(l["id"] for l in lines) - set(first))
    ledger = [json.loads(line) for line in (out / RESULTS).read_text().splitlines() if line.strip().endswith("}")]
    done = [r["id"] for r in ledger if r["status"] == "done"]
    assert sorted(done) == sorted(l["id"] for l in lines)  # each asset logged once, none lost
    for asset, run_id in first.items():
        assert json.loads((out / asset / RECORD).read_text())["run_id"] == run_id


@pytest.mark.blender
def test_blend_holds_the_part_as_a_vertex_group(tmp_path):
    pytest.importorskip("bpy")
    from engine.batch.blend import write_blend
    from engine.mesh import mesh_from_arrays

    vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], float)
    mesh = mesh_from_arrays(vertices, np.array([[0, 1, 2], [0, 1, 3], [0, 2, 3], [1, 2, 3]]), up="y")
    mask = np.array([False, True, False, True])
    path = write_blend(tmp_path / "asset.blend", mesh, [("handle", mask.astype(np.float32), mask)])
    check = ("import bpy, json\n"
             f"bpy.ops.wm.open_mainfile(filepath={str(path)!r})\n"
             "o = bpy.data.objects['asset']\n"
             "g = o.vertex_groups['handle'].index\n"
             "print(json.dumps({'members': [v.index for v in o.data.vertices if any(x.group == g for x in v.groups)],"
             " 'attr': [d.value for d in o.data.attributes['bsb_handle'].data],"
             " 'co': [list(v.co) for v in o.data.vertices]}))\n")
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120, check=True)
    data = json.loads(out.stdout.strip().splitlines()[-1])
    assert data["members"] == [1, 3] and data["attr"] == [0.0, 1.0, 0.0, 1.0]
    np.testing.assert_allclose(data["co"], [[0, 0, 0], [1, 0, 0], [0, 0, 1], [0, -1, 0]], atol=1e-6)  # Y-up -> Z-up
