"""The serve loop (engine/service/server.py) against a trivial in-test backend: queueing, cancel, status,
errors that leave the server running, EOF and shutdown."""

from __future__ import annotations

import json
import os
import queue
import threading
import time

import pytest

from engine.errors import NotFoundError
from engine.service import protocol
from engine.service.server import serve

HELLO = protocol.hello("0.0.test", "cpu", "CPU", "0", "test", True)


def slow(request, progress, cancel):
    """Ten steps of 50 ms; raises Cancelled via progress when cancelled."""
    for step in range(10):
        progress(step / 10, f"step {step}")
        time.sleep(0.05)
    return {"steps": 10, "name": request.get("name", "")}


def fails(request, progress, cancel):
    raise NotFoundError(f"no file {request['path']}")


def crashes(request, progress, cancel):
    raise ZeroDivisionError("planted bug")


HANDLERS = {"prepare": slow, "set_image": fails, "refine": crashes}


class Client:
    """Runs serve() in a thread over OS pipes, like a real client would see it."""

    def __init__(self, handlers=HANDLERS):
        in_r, self._in_w = os.pipe()
        out_r, out_w = os.pipe()
        self._stdin = os.fdopen(in_r, "rb")
        self._out = os.fdopen(out_w, "w", buffering=1)
        self._writer = os.fdopen(self._in_w, "wb", buffering=0)
        self._reader = os.fdopen(out_r, "r")
        self.messages: queue.Queue = queue.Queue()
        self.exit_code = None
        self.thread = threading.Thread(target=self._run, args=(handlers,), daemon=True)
        self.thread.start()
        threading.Thread(target=self._pump, daemon=True).start()

    def _run(self, handlers):
        self.exit_code = serve(handlers, HELLO, self._stdin, protocol.Channel(self._out),
                               status=lambda: {"meshes": 0, "images": 0, "device": "cpu"})
        self._out.close()

    def _pump(self):
        for line in self._reader:
            self.messages.put(json.loads(line))
        self.messages.put(None)

    def send(self, raw: bytes | dict):
        self._writer.write(raw if isinstance(raw, bytes) else json.dumps(raw).encode() + b"\n")

    def close(self):
        self._writer.close()

    def next(self, timeout=10.0):
        return self.messages.get(timeout=timeout)

    def until(self, rid, timeout=10.0):
        """Collect messages until the final one (result or error) for request `rid`."""
        seen = []
        deadline = time.monotonic() + timeout
        while True:
            msg = self.next(max(0.01, deadline - time.monotonic()))
            assert msg is not None, f"engine closed before answering {rid}; saw {seen}"
            seen.append(msg)
            if msg.get("id") == rid and msg["type"] in ("result", "error"):
                return msg, seen


@pytest.fixture
def client():
    c = Client()
    assert c.next() == HELLO
    yield c
    c.close()
    c.thread.join(10)


def test_job_reports_progress_then_result(client):
    client.send({"id": "p1", "type": "prepare", "mesh": {"path": "x.obj"}, "name": "first"})
    final, seen = client.until("p1")
    assert final == {"type": "result", "id": "p1", "data": {"steps": 10, "name": "first"}}
    fractions = [m["fraction"] for m in seen if m["type"] == "progress"]
    assert fractions and fractions == sorted(fractions)


def test_errors_keep_the_server_running(client):
    client.send(b"{broken json\n")
    msg = client.next()
    assert msg["type"] == "error" and msg["code"] == "bad_json" and msg["id"] is None
    client.send({"id": "u", "type": "teleport"})
    msg = client.next()
    assert (msg["id"], msg["code"]) == ("u", "bad_request")
    client.send({"id": "m", "type": "match_all", "mesh_id": "a", "image_id": "b", "job_dir": "d"})
    msg = client.next()
    assert (msg["id"], msg["code"]) == ("m", "bad_request") and "cannot run" in msg["message"]
    client.send(b"x" * (protocol.MAX_LINE_BYTES + 10) + b"\n")
    msg = client.next()
    assert msg["code"] == "too_large"
    client.send({"id": "s", "type": "set_image", "path": "/nope.png"})
    msg, _ = client.until("s")
    assert msg["code"] == "not_found" and "/nope.png" in msg["message"]
    client.send({"id": "r", "type": "refine", "mesh_id": "m", "clicks": [[0, True]], "job_dir": "d"})
    msg, _ = client.until("r")
    assert msg["code"] == "internal" and "planted bug" in msg["message"] and "ZeroDivisionError" in msg["traceback"]
    client.send({"id": "ok", "type": "prepare", "mesh": {"path": "x.obj"}})
    msg, _ = client.until("ok")
    assert msg["type"] == "result"


def test_status_and_cancel_are_answered_while_a_job_runs(client):
    client.send({"id": "long", "type": "prepare", "mesh": {"path": "x.obj"}})
    client.send({"id": "queued", "type": "prepare", "mesh": {"path": "y.obj"}})
    while True:  # wait until the first job is really running
        msg = client.next()
        if msg["type"] == "progress":
            break
    client.send({"id": "st", "type": "status"})
    status, _ = client.until("st", timeout=0.3)  # answered long before the 0.5 s job ends
    assert status["data"]["busy"] is True and status["data"]["job"] == "long" and status["data"]["queue"] == 1
    client.send({"id": "c1", "type": "cancel", "job": "queued"})
    dropped, seen = client.until("queued", timeout=0.3)
    assert dropped["code"] == "cancelled"
    assert any(m["id"] == "c1" and m["data"] == {"cancelled": True} for m in seen + [client.next()])
    t0 = time.monotonic()
    client.send({"id": "c2", "type": "cancel", "job": "long"})
    final, seen = client.until("long")
    assert final["type"] == "error" and final["code"] == "cancelled"
    assert time.monotonic() - t0 < 1.0
    client.send({"id": "c3", "type": "cancel", "job": "nothing"})
    msg, _ = client.until("c3")
    assert msg["data"] == {"cancelled": False}


def test_jobs_run_in_order_one_at_a_time(client):
    for name in "abc":
        client.send({"id": name, "type": "prepare", "mesh": {"path": "x.obj"}, "name": name})
    order = []
    while len(order) < 3:
        msg = client.next()
        if msg["type"] == "result":
            order.append(msg["id"])
        if msg["type"] == "progress" and order:
            assert msg["id"] not in order  # a finished job never reports again
    assert order == ["a", "b", "c"]


def test_duplicate_id_is_refused(client):
    client.send({"id": "x", "type": "prepare", "mesh": {"path": "x.obj"}})
    client.send({"id": "x", "type": "prepare", "mesh": {"path": "x.obj"}})
    msgs = [client.next() for _ in range(3)]
    assert any(m["type"] == "error" and "already in use" in m["message"] for m in msgs)


def test_eof_finishes_queued_work_then_exits():
    c = Client()
    assert c.next()["type"] == "hello"
    c.send({"id": "last", "type": "prepare", "mesh": {"path": "x.obj"}})
    c.close()
    final, _ = c.until("last")
    assert final["type"] == "result"
    c.thread.join(5)
    assert not c.thread.is_alive() and c.exit_code == 0
    assert c.next() is None  # stdout closed


def test_shutdown_stops_at_once():
    c = Client()
    assert c.next()["type"] == "hello"
    c.send({"id": "long", "type": "prepare", "mesh": {"path": "x.obj"}})
    c.send({"id": "q", "type": "prepare", "mesh": {"path": "x.obj"}})
    c.send({"id": "bye", "type": "shutdown"})
    seen = []
    while (msg := c.next()) is not None:
        seen.append(msg)
    finals = {m["id"]: m for m in seen if m["type"] in ("result", "error")}
    assert finals["bye"]["data"] == {"ok": True}
    assert finals["q"]["code"] == "cancelled" and finals["long"]["code"] == "cancelled"
    c.thread.join(5)
    assert c.exit_code == 0
    c.close()


# ----------------------------------------------------------------------------------------------------
# The real engine in a subprocess, tiny profile (random weights: plumbing only).

import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


class Engine:
    """`python -m engine serve` with its stdout parsed line by line (every line must be JSON)."""

    def __init__(self, models: Path, cache: Path, log: Path):
        self.log = open(log, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "engine", "serve", "--profile", "tiny", "--device", "cpu",
             "--models", str(models), "--cache", str(cache)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, cwd=ROOT)
        self.messages: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for raw in self.proc.stdout:
            self.messages.put(json.loads(raw))  # a stray print on stdout would fail here
        self.messages.put(None)

    def send(self, raw):
        self.proc.stdin.write(raw if isinstance(raw, bytes) else json.dumps(raw).encode() + b"\n")
        self.proc.stdin.flush()

    def next(self, timeout=120.0):
        return self.messages.get(timeout=timeout)

    def until(self, rid, timeout=300.0, on_progress=None):
        deadline = time.monotonic() + timeout
        while True:
            msg = self.next(max(0.01, deadline - time.monotonic()))
            assert msg is not None, f"engine exited before answering {rid}"
            if msg["type"] == "progress" and on_progress:
                on_progress(msg)
            if msg.get("id") == rid and msg["type"] in ("result", "error"):
                return msg

    def call(self, request, **kw):
        self.send(request)
        return self.until(request["id"], **kw)

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)
        self.log.close()


@pytest.fixture(scope="module")
def engine_dirs(tmp_path_factory):
    from engine.mesh import mesh_from_arrays
    from engine.pipeline import render_views
    from engine.preview import save_png
    from engine.sample_meshes import mug

    root = tmp_path_factory.mktemp("engine")
    v, f, _, _ = mug(0, 16)
    np.save(root / "v.npy", v.astype(np.float32))
    np.save(root / "f.npy", f.astype(np.int32))
    np.save(root / "v_scaled.npy", (v * 2.0).astype(np.float32))
    np.save(root / "bad_v.npy", v[:, :2].astype(np.float32))
    _, _, renders = render_views(mesh_from_arrays(v, f), 1, 120, "uniform")
    save_png(root / "ref.png", np.ascontiguousarray(renders[0][:, 10:110]))  # 100 x 120, not square
    return root


def test_real_engine_round_trip_errors_cache_and_cancel(engine_dirs):
    d = engine_dirs
    eng = Engine(d / "models", d / "cache", d / "engine.log")
    try:
        hello = eng.next()
        assert hello["type"] == "hello" and hello["protocol"] == 1
        assert hello["profile"] == "tiny" and hello["random_weights"] is True and hello["device"] == "cpu"
        mesh = {"npy_vertices": str(d / "v.npy"), "npy_faces": str(d / "f.npy")}
        first = eng.call({"id": "p1", "type": "prepare", "mesh": mesh, "up": "z"})
        assert first["type"] == "result", first
        n_vertices = first["data"]["n_vertices"]
        assert first["data"]["cached"] is False and n_vertices == len(np.load(d / "v.npy"))
        again = eng.call({"id": "p2", "type": "prepare", "mesh": mesh, "up": "z"})
        assert again["data"]["cached"] is True and again["data"]["mesh_id"] == first["data"]["mesh_id"]
        mesh_id = first["data"]["mesh_id"]

        img = eng.call({"id": "i1", "type": "set_image", "path": str(d / "ref.png")})
        assert (img["data"]["width"], img["data"]["height"]) == (100, 120)
        job = d / "job1"
        m = eng.call({"id": "m1", "type": "match", "mesh_id": mesh_id, "image_id": img["data"]["image_id"],
                      "points": [[50.5, 60.5]], "labels": [1], "job_dir": str(job)})
        assert m["type"] == "result", m
        data = m["data"]
        assert np.load(data["part_mask"]).shape == (120, 100)  # original image frame, (H, W)
        if data["found"]:
            assert np.load(data["weights"]).shape == (n_vertices,)
            assert np.load(data["mask"]).sum() == data["n_selected"]
        r = eng.call({"id": "r1", "type": "refine", "mesh_id": mesh_id, "clicks": [[0, True], [9, False]],
                      "job_dir": str(job)})
        assert np.load(r["data"]["weights"]).shape == (n_vertices,)

        # problems a client can cause: each answered with an error, the engine keeps going
        bad = {"npy_vertices": str(d / "bad_v.npy"), "npy_faces": str(d / "f.npy")}
        assert eng.call({"id": "e1", "type": "prepare", "mesh": bad})["code"] == "bad_array"
        assert eng.call({"id": "e2", "type": "set_image", "path": str(d / "missing.png")})["code"] == "not_found"
        assert eng.call({"id": "e3", "type": "refine", "mesh_id": "nope", "clicks": [[0, True]],
                         "job_dir": str(job)})["code"] == "not_found"
        assert eng.call({"id": "e4", "type": "refine", "mesh_id": mesh_id, "clicks": [[10 ** 7, True]],
                         "job_dir": str(job)})["code"] == "bad_request"
        eng.send(b"{oops\n")
        assert eng.next()["code"] == "bad_json"
        eng.send(b'{"id": "big", "pad": "' + b"x" * (1 << 20) + b'"}\n')
        assert eng.next()["code"] == "too_large"
        assert eng.call({"id": "e5", "type": "dance"})["code"] == "bad_request"

        # cancel an uncached preparation once it is under way
        scaled = {"npy_vertices": str(d / "v_scaled.npy"), "npy_faces": str(d / "f.npy")}
        sent = {}

        def cancel_once(msg):
            if msg["id"] == "p3" and msg["fraction"] > 0.05 and not sent:
                sent["t"] = time.monotonic()
                eng.send({"id": "c1", "type": "cancel", "job": "p3"})

        final = eng.call({"id": "p3", "type": "prepare", "mesh": scaled}, on_progress=cancel_once)
        assert final["type"] == "error" and final["code"] == "cancelled"
        latency = time.monotonic() - sent["t"]
        print(f"cancel latency {latency:.2f}s")
        assert latency < 5.0  # honoured at the next step (about a second on a quiet machine)
        status = eng.call({"id": "s1", "type": "status"})
        assert status["data"]["busy"] is False and status["data"]["meshes"] == 1 and status["data"]["images"] == 1

        assert eng.call({"id": "bye", "type": "shutdown"})["data"] == {"ok": True}
        assert eng.proc.wait(30) == 0
    finally:
        eng.close()


def test_killed_engine_gives_eof_and_a_new_one_works(engine_dirs):
    d = engine_dirs
    eng = Engine(d / "models", d / "cache2", d / "engine2.log")
    try:
        assert eng.next()["type"] == "hello"
        mesh = {"npy_vertices": str(d / "v.npy"), "npy_faces": str(d / "f.npy")}
        eng.send({"id": "p", "type": "prepare", "mesh": mesh})
        while (msg := eng.next()) is not None and msg["type"] != "progress":
            pass
        eng.proc.kill()
        while (msg := eng.next(30)) is not None:  # the client sees EOF, not a hang
            pass
    finally:
        eng.close()
    fresh = Engine(d / "models", d / "cache2", d / "engine3.log")
    try:
        assert fresh.next()["type"] == "hello"
        done = fresh.call({"id": "p", "type": "prepare", "mesh": mesh})
        assert done["type"] == "result" and done["data"]["cached"] is False  # nothing half-written was used
        fresh.proc.stdin.close()  # EOF on stdin: clean exit
        assert fresh.proc.wait(60) == 0
    finally:
        fresh.close()
