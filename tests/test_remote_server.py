"""The remote server (engine/remote/) in-process on 127.0.0.1 with trivial handlers: auth before any work,
paths refused, size limits, garbage on the socket, fairness, per-client cancel, fetch after a dropped
connection, and the add-on's RemoteClient against it. The real engine is in tests/test_remote_engine.py."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import struct
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from bsb_addon import remote_client as rc
from bsb_addon.engine_client import ConnectionLost, EngineConfig, EngineError
from engine.errors import BsbError
from engine.remote import auth, frames, server as remote
from engine.remote.fairqueue import FairQueue
from engine.service.server import Job
from tests.remote_engine import FAKE_TOKEN as TOKEN
from tests.remote_engine import HELLO, Harness


@pytest.fixture
def harness(tmp_path, monkeypatch):
    monkeypatch.setattr(remote, "HEARTBEAT_S", 0.2)
    h = Harness(tmp_path / "jobs")
    yield h
    h.close()


class Raw:
    """A bare socket speaking frames, for what a well-behaved client would never send."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = bytearray()

    def send(self, message=None, blobs=None, raw: bytes | None = None):
        self.sock.sendall(raw if raw is not None else frames.encode(message, blobs))

    def auth(self, token=TOKEN, client="c1"):
        self.send({"type": "auth", "token": token, "client": client, "protocol": 1})
        return self.next()

    def next(self, skip_heartbeats=True):
        while True:
            frame = rc._take_frame(self.buf)
            if frame is not None:
                if skip_heartbeats and frame[0].get("type") == "heartbeat":
                    continue
                return frame[0] if not frame[1] else frame
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                return None
            self.buf += chunk

    def final(self, rid):
        """The result or error of request `rid` (progress skipped), bounded by the socket timeout."""
        while True:
            msg = self.next()
            assert msg is not None, f"connection closed before {rid} was answered"
            head = msg[0] if isinstance(msg, tuple) else msg
            if head.get("id") == rid and head["type"] in ("result", "error"):
                return msg

    def closed(self) -> bool:
        try:
            return self.next() is None
        except (ConnectionError, socket.timeout):
            return True


def npy(array) -> bytes:
    import io

    out = io.BytesIO()
    np.save(out, array, allow_pickle=False)
    return zlib.compress(out.getvalue())


MESH = [npy(np.random.rand(10, 3).astype(np.float32)), npy(np.array([[0, 1, 2]], np.int32))]
PREPARE = {"id": "p1", "type": "prepare", "mesh": {"vertices": {"blob": 0}, "faces": {"blob": 1}}}


# ----------------------------------------------------------------------------------------------------
# Authentication

@pytest.mark.parametrize("first", [
    {"type": "auth", "token": "wrong-token-0123456789", "client": "c1", "protocol": 1},
    {"type": "auth", "client": "c1", "protocol": 1},
    {"type": "auth", "token": TOKEN[:-1], "client": "c1", "protocol": 1},
    PREPARE,  # work before auth
])
def test_wrong_or_missing_token_is_rejected_before_any_work(harness, first):
    raw = Raw(harness.port)
    raw.send(first, MESH if first is PREPARE else None)
    answer = raw.next()
    assert answer["type"] == "error" and answer["code"] == "unauthorized" and "token" in answer["message"]
    assert raw.closed()
    time.sleep(0.2)
    assert harness.backend.calls == [] and len(harness.server.queue) == 0
    assert not (harness.server.root / "c1").exists()  # not even a folder was made


def test_right_token_gets_the_hello_and_runs_a_job(harness):
    raw = Raw(harness.port)
    hello = raw.auth()
    assert hello["type"] == "hello" and hello["remote"]["client"] == "c1" and hello["remote"]["instance"]
    raw.send(PREPARE, MESH)
    answer = raw.final("p1")
    assert answer["type"] == "result" and answer["data"]["n_vertices"] == 10
    assert raw.next(skip_heartbeats=False)["type"] == "heartbeat"  # HEARTBEAT_S is 0.2 s here


def test_token_is_generated_stored_private_and_reused(tmp_path, monkeypatch):
    monkeypatch.delenv(auth.ENV_TOKEN, raising=False)
    token, source = auth.resolve_token(None, tmp_path)
    assert source.startswith("new") and len(token) >= 40
    assert (tmp_path / auth.TOKEN_FILE).stat().st_mode & 0o077 == 0
    assert auth.resolve_token(None, tmp_path) == (token, f"stored in {tmp_path / auth.TOKEN_FILE}")
    with pytest.raises(BsbError, match="too weak"):
        auth.resolve_token("short", tmp_path)
    assert auth.token_matches(token, token) and not auth.token_matches(token[:-1] + "x", token)
    assert not auth.token_matches(None, token)


def test_tls_needs_both_files_and_readable_ones(tmp_path):
    with pytest.raises(BsbError, match="--cert and --key"):
        remote.tls_context(tmp_path / "c.pem", None)
    with pytest.raises(BsbError, match="cannot load the TLS certificate"):
        remote.tls_context(tmp_path / "c.pem", tmp_path / "k.pem")


def test_non_loopback_address_without_token_is_refused():
    with pytest.raises(BsbError, match="without a token"):
        remote.check_listen("0.0.0.0:8765", "")
    assert remote.check_listen("127.0.0.1:8765", "") == ("127.0.0.1", 8765)
    assert remote.check_listen("0.0.0.0:8765", TOKEN) == ("0.0.0.0", 8765)


# ----------------------------------------------------------------------------------------------------
# Data, not paths; limits

@pytest.mark.parametrize("request_, blobs", [
    ({"id": "a", "type": "prepare", "mesh": {"path": "/etc/passwd"}}, []),
    ({"id": "a", "type": "prepare", "mesh": {"npy_vertices": "/tmp/v.npy", "npy_faces": "/tmp/f.npy"}}, []),
    ({"id": "a", "type": "set_image", "path": "/etc/hosts"}, []),
    ({"id": "a", "type": "match", "mesh_id": "m", "image_id": "i", "points": [[1, 1]], "labels": [1],
      "job_dir": "/tmp/elsewhere"}, []),
    ({**PREPARE, "id": "a", "name": {"path": "/x"}}, MESH),
])
def test_a_path_in_a_request_is_refused(harness, request_, blobs):
    raw = Raw(harness.port)
    raw.auth()
    raw.send(request_, blobs)
    answer = raw.final("a")
    assert answer["type"] == "error" and answer["code"] == "bad_request" and "not paths" in answer["message"]
    assert harness.backend.calls == []


@pytest.mark.parametrize("rid", ["../x", "a/b", ".hidden", "x" * 81])
def test_an_id_that_could_name_another_folder_is_refused(harness, rid):
    raw = Raw(harness.port)
    raw.auth()
    raw.send({**PREPARE, "id": rid}, MESH)
    answer = raw.next()
    assert answer["type"] == "error" and answer["code"] == "bad_request"
    assert harness.backend.calls == []


def test_oversized_request_is_refused_with_a_clear_error(harness):
    raw = Raw(harness.port)
    raw.auth()
    big = [os.urandom(600_000), os.urandom(600_000)]  # 1.2 MB of blobs, limit 1 MiB
    raw.send({**PREPARE, "id": "big"}, big)
    answer = raw.next()
    assert answer["type"] == "error" and answer["code"] == "too_large" and answer["id"] == "big"
    assert "limit of 1 MiB" in answer["message"] and "--max-request" in answer["message"]
    assert harness.backend.calls == []
    again = Raw(harness.port)  # the server goes on
    assert again.auth()["type"] == "hello"


def test_a_zip_bomb_is_refused_after_a_bounded_inflate(tmp_path, monkeypatch):
    h = Harness(tmp_path / "jobs", remote.Limits(max_request=1 << 20, max_inflated=1 << 20))
    try:
        raw = Raw(h.port)
        raw.auth()
        bomb = zlib.compress(b"\0" * (64 << 20))  # 64 MiB of zeros in ~64 KB
        raw.send({**PREPARE, "id": "bomb"}, [bomb, MESH[1]])
        answer = raw.final("bomb")
        assert answer["code"] == "too_large" and "inflates to more than" in answer["message"]
    finally:
        h.close()


def test_client_refuses_an_oversized_request_before_sending(harness, tmp_path):
    np.save(tmp_path / "v.npy", np.random.rand(200_000, 3).astype(np.float32))  # ~2.3 MB, barely compressible
    np.save(tmp_path / "f.npy", np.zeros((1, 3), np.int32))
    client = rc.RemoteClient(EngineConfig(address=f"127.0.0.1:{harness.port}", token=TOKEN))
    client.start()
    with pytest.raises(EngineError) as err:
        client.send("prepare", mesh={"npy_vertices": str(tmp_path / "v.npy"), "npy_faces": str(tmp_path / "f.npy")})
    assert err.value.code == "too_large" and "--max-request" in err.value.message
    client.kill()


# ----------------------------------------------------------------------------------------------------
# Garbage never crashes the server

def test_garbage_on_the_socket_never_crashes_the_server(harness):
    rng = random.Random(15)
    cases = [
        lambda: os.urandom(rng.randint(1, 64)),  # random bytes
        lambda: struct.pack(">II", 0xFFFFFFFF, 0xFFFFFFFF),  # huge length prefixes
        lambda: struct.pack(">II", 100, 0) + b"{}",  # truncated frame
        lambda: struct.pack(">II", 2, 1 << 40 & 0xFFFFFFFF) + b"{}",
        lambda: frames.encode({"type": "auth", "token": TOKEN, "client": "c1", "protocol": 1})[:-3],
        lambda: struct.pack(">II", 5, 0) + b"\xff\xfe{[",
    ]
    for i in range(60):  # bounded: 60 connections, each with one kind of garbage before or after auth
        raw = Raw(harness.port)
        raw.sock.settimeout(3)
        if i % 2:
            raw.auth(client=f"g{i}")
            raw.send(raw=cases[i % len(cases)]() + struct.pack(">II", 3, 7) + b"[1]" + os.urandom(7))
            raw.send(raw=os.urandom(rng.randint(0, 200)))
        else:
            raw.send(raw=cases[i % len(cases)]())
        raw.sock.close()
    for bad in (b'{"id": 5}', b'[1, 2]', b'{"id": "x", "type": "dance"}', b'{"id": "x", "type": "prepare"}',
                b'{"id": "y", "type": "prepare", "blobs": [9]}', b'{' * 40 + b'}' * 40):
        raw = Raw(harness.port)
        raw.auth()
        raw.send(raw=struct.pack(">II", len(bad), 0) + bad)
        answer = raw.next()
        assert answer["type"] == "error" and answer["code"] in ("bad_request", "bad_json")
    raw = Raw(harness.port)  # still serving, and it did no work for any of it
    assert raw.auth()["type"] == "hello"
    raw.send(PREPARE, MESH)
    assert raw.final("p1")["type"] == "result"
    assert [c[0] for c in harness.backend.calls] == ["prepare"]


# ----------------------------------------------------------------------------------------------------
# Several clients

def test_fair_queue_takes_clients_in_turn():
    q = FairQueue()
    for i in range(3):
        q.put("a", Job({"id": f"a{i}", "type": "prepare"}))
    q.put("b", Job({"id": "b0", "type": "prepare"}))
    q.put("c", Job({"id": "c0", "type": "prepare"}))
    order = [q.take(0.1)[1].id for _ in range(5)]
    assert order == ["a0", "b0", "c0", "a1", "a2"] and q.take(0.01) is None


def test_cancel_is_per_client_and_a_dropped_connection_keeps_the_result_for_fetch(harness):
    a, b = Raw(harness.port), Raw(harness.port)
    a.auth(client="alice")
    b.auth(client="bob")
    harness.backend.gate.clear()  # hold alice's job on its first step
    a.send({**PREPARE, "id": "long", "name": "3"}, MESH)
    deadline = time.monotonic() + 10
    while harness.server.running is None and time.monotonic() < deadline:
        time.sleep(0.02)
    b.send({"id": "c1", "type": "cancel", "job": "long"})
    assert b.final("c1")["data"] == {"cancelled": False}  # bob cannot cancel alice's job
    a.sock.close()  # alice's connection drops mid-job
    harness.backend.gate.set()
    again = Raw(harness.port)
    again.auth(client="alice")
    for _ in range(200):  # bounded: the job has 3 steps of 50 ms
        again.send({"id": "f1", "type": "fetch", "job": "long"})
        answer = again.final("f1")
        head = answer[0] if isinstance(answer, tuple) else answer
        if head["data"]["state"] == "done":
            break
        time.sleep(0.05)
    assert head["data"]["message"]["type"] == "result" and head["data"]["message"]["data"]["n_vertices"] == 10
    again.send({"id": "f2", "type": "fetch", "job": "never"})
    assert again.final("f2")["code"] == "not_found"
    b.send({"id": "f3", "type": "fetch", "job": "long"})  # bob cannot read alice's results either
    assert b.final("f3")["code"] == "not_found"


def test_remote_client_writes_result_arrays_into_the_callers_job_folder(harness, tmp_path):
    np.save(tmp_path / "v.npy", np.random.rand(10, 3).astype(np.float32))
    np.save(tmp_path / "f.npy", np.array([[0, 1, 2]], np.int32))
    (tmp_path / "ref.png").write_bytes(b"\x89PNG fake")
    client = rc.RemoteClient(EngineConfig(address=f"127.0.0.1:{harness.port}", token=TOKEN))
    assert client.start()["profile"] == "test"
    mesh = {"npy_vertices": str(tmp_path / "v.npy"), "npy_faces": str(tmp_path / "f.npy")}
    assert client.request("prepare", mesh=mesh, up="z")["n_vertices"] == 10
    assert client.request("set_image", path=str(tmp_path / "ref.png"))["bytes"] == 9
    job = tmp_path / "job"
    data = client.request("match", mesh_id="mesh-x", image_id="image-x", points=[[1, 1]], labels=[1],
                          job_dir=str(job))
    assert data["weights"] == str(job / "weights.npy") and np.load(data["mask"]).sum() == 25
    assert client.request("prepare", mesh=mesh, up="z")["n_vertices"] == 10
    assert [c[0] for c in harness.backend.calls] == ["prepare", "set_image", "match"]  # second prepare: memo
    seen = {c[1]["job_dir"] for c in harness.backend.calls if "job_dir" in c[1]}
    assert all(Path(d).parent == harness.server.root / client.client_name for d in seen)
    assert client.request("status", timeout=5)["your_queue"] == 0
    client.kill()


def test_remote_client_reconnects_and_fetches_a_job_whose_connection_dropped(harness, tmp_path):
    np.save(tmp_path / "v.npy", np.random.rand(10, 3).astype(np.float32))
    np.save(tmp_path / "f.npy", np.array([[0, 1, 2]], np.int32))
    client = rc.RemoteClient(EngineConfig(address=f"127.0.0.1:{harness.port}", token=TOKEN))
    client.start()
    harness.backend.gate.clear()
    pending = client.send("prepare", mesh={"npy_vertices": str(tmp_path / "v.npy"),
                                           "npy_faces": str(tmp_path / "f.npy")}, name="3")
    time.sleep(0.3)
    client._sock.shutdown(socket.SHUT_RDWR)  # the network drops under a running job
    harness.backend.gate.set()
    assert pending.wait(timeout=20)["n_vertices"] == 10
    assert client.alive


def test_remote_client_names_what_to_check_when_it_cannot_connect(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    with pytest.raises(EngineError) as err:
        rc.RemoteClient(EngineConfig(address=f"127.0.0.1:{port}", token=TOKEN, connect_timeout=2)).start()
    assert "engine runs there" in err.value.message and "firewall" in err.value.message
    with pytest.raises(EngineError, match="HOST:PORT"):
        rc.RemoteClient(EngineConfig(address="nowhere", token=TOKEN)).start()
    with pytest.raises(EngineError, match="Allow Online Access"):
        rc.RemoteClient(EngineConfig(address="192.0.2.1:8765", token=TOKEN, online=False)).start()


def test_remote_client_reports_a_wrong_token(harness):
    with pytest.raises(EngineError) as err:
        rc.RemoteClient(EngineConfig(address=f"127.0.0.1:{harness.port}", token="nope-nope-nope-nope")).start()
    assert err.value.code == "unauthorized" and "token" in err.value.message


def test_remote_client_fails_a_job_when_the_engine_is_gone(harness, tmp_path):
    np.save(tmp_path / "v.npy", np.random.rand(10, 3).astype(np.float32))
    np.save(tmp_path / "f.npy", np.array([[0, 1, 2]], np.int32))
    client = rc.RemoteClient(EngineConfig(address=f"127.0.0.1:{harness.port}", token=TOKEN, connect_timeout=2))
    client.start()
    harness.backend.gate.clear()
    pending = client.send("prepare", mesh={"npy_vertices": str(tmp_path / "v.npy"),
                                           "npy_faces": str(tmp_path / "f.npy")}, name="3")
    time.sleep(0.3)
    harness.close()  # stops the listener and ends the connection: the reconnect finds nobody
    with pytest.raises(ConnectionLost) as err:
        pending.wait(timeout=20)
    assert "Lost the connection" in err.value.message and "Nothing was written" in err.value.message


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
def test_tls_with_a_self_signed_certificate(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True, timeout=30)
    h = Harness(tmp_path / "jobs", context=remote.tls_context(cert, key))
    try:
        address = f"127.0.0.1:{h.port}"
        client = rc.RemoteClient(EngineConfig(address=address, token=TOKEN, tls=True, cafile=str(cert)))
        assert client.start()["remote"]["tls"] is True
        assert client.request("status", timeout=10)["busy"] is False
        client.kill()
        with pytest.raises(EngineError, match="certificate"):  # the system's CAs do not know this certificate
            rc.RemoteClient(EngineConfig(address=address, token=TOKEN, tls=True, connect_timeout=3)).start()
        with pytest.raises(EngineError, match="TLS set the same"):  # plain client, TLS engine
            rc.RemoteClient(EngineConfig(address=address, token=TOKEN, connect_timeout=2)).start()
    finally:
        h.close()


def test_remote_client_detects_a_silent_engine_and_stops_reconnecting(monkeypatch):
    """An engine that completes the handshake, then never sends again (no heartbeats): the job fails
    after one reconnect instead of waiting for the request timeout."""
    monkeypatch.setattr(rc, "IDLE_TIMEOUT_S", 0.5)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    held = []

    def accept():
        for _ in range(3):  # bounded
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            held.append(conn)
            conn.sendall(frames.encode({**HELLO, "remote": {"instance": "x", "max_request": 1 << 20}}))

    threading.Thread(target=accept, daemon=True).start()
    client = rc.RemoteClient(EngineConfig(address=f"127.0.0.1:{listener.getsockname()[1]}", token=TOKEN))
    client.start()
    start = time.monotonic()
    with pytest.raises(ConnectionLost) as err:
        client.request("refine", mesh_id="m", clicks=[[0, True]], job_dir="/tmp/unused", timeout=30)
    assert "no heartbeat" in err.value.message and time.monotonic() - start < 10
    assert len(held) == 2  # the first connection and one reconnect
    listener.close()
    for conn in held:
        conn.close()
