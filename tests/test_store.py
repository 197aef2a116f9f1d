"""Model store: folders, offline flags, resumable verified downloads (local HTTP server), profile loading."""

from __future__ import annotations

import argparse
import hashlib
import http.server
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.errors import ModelMissingError
from engine.models import store
from engine.models.commands import add_commands
from engine.models.profiles import PROFILES, get_profile, load_profile_models

PAYLOAD = bytes(np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8))
SHA = "sha256:" + hashlib.sha256(PAYLOAD).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves PAYLOAD at any path, honouring `Range: bytes=N-` unless the server says not to."""

    def do_GET(self):  # noqa: N802 (http.server's naming)
        srv = self.server
        srv.requests.append(self.headers.get("Range"))
        start = 0
        rng = self.headers.get("Range")
        if rng and srv.honour_range:
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(PAYLOAD):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(PAYLOAD)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        else:
            self.send_response(200)
        body = PAYLOAD[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        srv.sent += len(body)  # counted before writing: the client may check as soon as it has read the body
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture()
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.requests, srv.sent, srv.honour_range = [], 0, True
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _url(srv) -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}/sam_test.pth"


def test_full_download_verified_and_atomic(server, tmp_path):
    dest = store.download(_url(server), tmp_path / "m" / "w.pth", SHA, progress=False)
    assert dest.read_bytes() == PAYLOAD and not (tmp_path / "m" / "w.pth.part").exists()
    assert server.requests == [None]


def test_resume_sends_only_the_rest(server, tmp_path):
    dest = tmp_path / "w.pth"
    (tmp_path / "w.pth.part").write_bytes(PAYLOAD[:120_000])
    store.download(_url(server), dest, SHA, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == ["bytes=120000-"] and server.sent == len(PAYLOAD) - 120_000


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    server.honour_range = False
    (tmp_path / "w.pth.part").write_bytes(b"stale bytes")
    store.download(_url(server), tmp_path / "w.pth", SHA, progress=False)
    assert (tmp_path / "w.pth").read_bytes() == PAYLOAD


def test_complete_part_file_is_verified_and_renamed(server, tmp_path):
    (tmp_path / "w.pth.part").write_bytes(PAYLOAD)
    md5 = "md5:" + hashlib.md5(PAYLOAD).hexdigest()
    store.download(_url(server), tmp_path / "w.pth", md5, progress=False)  # server answers 416
    assert (tmp_path / "w.pth").read_bytes() == PAYLOAD and server.sent == 0


def test_checksum_mismatch_deletes_the_download(server, tmp_path):
    with pytest.raises(ModelMissingError, match="checksum"):
        store.download(_url(server), tmp_path / "w.pth", "sha256:" + "0" * 64, progress=False)
    assert not (tmp_path / "w.pth").exists() and not (tmp_path / "w.pth.part").exists()


def test_unreachable_server_keeps_partial_for_resume(tmp_path):
    srv = http.server.HTTPServer(("127.0.0.1", 0), _Handler)
    port = srv.server_address[1]
    srv.server_close()  # nothing listens there any more
    (tmp_path / "w.pth.part").write_bytes(b"abc")
    with pytest.raises(ModelMissingError, match="resumes"):
        store.download(f"http://127.0.0.1:{port}/x", tmp_path / "w.pth", SHA, progress=False, timeout=5)
    assert (tmp_path / "w.pth.part").read_bytes() == b"abc"


def test_fetch_profile_downloads_the_sam_checkpoint(server, tmp_path, monkeypatch):
    monkeypatch.setitem(store.SAM_CHECKPOINTS, "vit_b", store.Checkpoint("sam_vit_b_01ec64.pth", _url(server), SHA, 1))
    monkeypatch.setattr(store, "hf_cached", lambda hub_id: True)
    store.fetch_profile(get_profile("cpu"), tmp_path, offline=False, progress=False)
    assert (tmp_path / "sam_vit_b_01ec64.pth").read_bytes() == PAYLOAD
    store.fetch_profile(get_profile("cpu"), tmp_path, offline=False, progress=False)  # present: no request
    assert len(server.requests) == 1


def test_models_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv("BSB_MODELS_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    if store.sys.platform.startswith("linux"):
        assert store.models_dir() == tmp_path / "xdg" / "bsb" / "models"
    monkeypatch.setenv("BSB_MODELS_DIR", str(tmp_path / "env"))
    assert store.models_dir() == tmp_path / "env"
    assert store.models_dir(tmp_path / "arg") == tmp_path / "arg"


def test_offline_flags(monkeypatch):
    monkeypatch.delenv("BSB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert not store.is_offline()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert store.is_offline() and not store.is_offline(False)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("BSB_OFFLINE", "true")
    assert store.is_offline()


@pytest.mark.parametrize("name", ["cpu", "gpu"])
def test_missing_weights_name_file_and_fetch_command(tmp_path, name):
    profile = PROFILES[name]
    with pytest.raises(ModelMissingError) as err:
        load_profile_models(name, tmp_path, torch.device("cpu"), offline=True)
    msg = str(err.value)
    assert f"python -m engine models fetch {name}" in msg and profile.sam_checkpoint in msg


def test_tiny_profile_loads_random_models_through_the_real_loaders(tmp_path):
    dino, sam = load_profile_models("tiny", tmp_path, torch.device("cpu"), offline=True)
    assert dino.random_weights and sam.random_weights and get_profile("tiny").random_weights
    assert (tmp_path / "tiny" / "dinov2-tiny-random" / "config.json").is_file()
    img = np.full((40, 60, 3), 128, np.uint8)
    assert dino(img[None]).shape[:2] == (1, dino.dim)
    sam.set_image(img)
    assert sam.predict(np.array([[[30.0, 20.0]]]), np.array([[1]])).masks.shape == (1, 3, 40, 60)
    # Real profiles never claim random weights.
    assert not any(p.random_weights for p in PROFILES.values() if p.name != "tiny")


def test_commands(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["models", "list", "--models", str(tmp_path)])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "MISSING" in out and "sam_vit_b_01ec64.pth" in out and "tiny" in out
    args = parser.parse_args(["doctor", "--models", str(tmp_path)])
    assert args.func(args) == 0
    assert "torch" in capsys.readouterr().out
    args = parser.parse_args(["models", "fetch", "cpu", "--offline", "--models", str(tmp_path)])
    with pytest.raises(ModelMissingError, match="models fetch cpu"):
        args.func(args)
    args = parser.parse_args(["models", "fetch", "tiny", "--models", str(tmp_path)])
    assert args.func(args) == 0 and Path(tmp_path / "tiny" / "sam_tiny_random.pth").is_file()
