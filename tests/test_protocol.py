"""Protocol framing and request checks (engine/service/protocol.py), without any engine behind them."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest

from engine.errors import ProtocolError
from engine.service import protocol
from engine.service.protocol import Channel, LineTooLong, parse_request, read_line


def _req(**fields) -> bytes:
    return json.dumps(fields).encode()


def test_read_line_splits_lines_and_ends_at_eof():
    stream = io.BytesIO(b'{"a": 1}\n\n{"b": 2}\r\nlast')
    assert read_line(stream) == b'{"a": 1}'
    assert read_line(stream) == b""
    assert read_line(stream) == b'{"b": 2}'
    assert read_line(stream) == b"last"
    assert read_line(stream) is None


def test_a_huge_line_is_skipped_whole_and_the_next_line_still_reads():
    limit = 1000
    stream = io.BytesIO(b"x" * (5 * limit) + b"\n" + b'{"ok": 1}\n')
    with pytest.raises(LineTooLong, match="5001 bytes"):
        read_line(stream, limit)
    assert read_line(stream, limit) == b'{"ok": 1}'
    # exactly at the limit is fine
    assert read_line(io.BytesIO(b"y" * limit + b"\n"), limit) == b"y" * limit


@pytest.mark.parametrize("line, code, words", [
    (b"{not json", "bad_json", "not valid JSON"),
    (b"[1, 2]", "bad_json", "JSON object"),
    (b"\xff\xfe", "bad_json", "not valid JSON"),
    (_req(type="status"), "bad_request", "'id'"),
    (_req(id="1", type="explode"), "bad_request", "unknown request type 'explode'"),
    (_req(id="1", type="prepare"), "bad_request", "missing 'mesh'"),
    (_req(id="1", type="prepare", mesh={"path": "a.obj"}, up="x"), "bad_request", "'up'"),
    (_req(id="1", type="prepare", mesh={"npy_vertices": "v.npy"}), "bad_request", "'mesh'"),
    (_req(id="1", type="match", mesh_id="m", image_id="i", points=[[1, 2]], labels=[1, 0], job_dir="d"),
     "bad_request", "1 points but 2 labels"),
    (_req(id="1", type="match", mesh_id="m", image_id="i", points=[[1]], labels=[1], job_dir="d"),
     "bad_request", "'points'"),
    (_req(id="1", type="match", mesh_id="m", image_id="i", points=[], labels=[], job_dir="d"),
     "bad_request", "at least one point or a box"),
    (_req(id="1", type="match", mesh_id="m", image_id="i", points=[], labels=[], box=[5, 5, 1, 9], job_dir="d"),
     "bad_request", "'box'"),
    (_req(id="1", type="refine", mesh_id="m", clicks=[[3, 1]], job_dir="d"), "bad_request", "'clicks'"),
    (_req(id="1", type="refine", mesh_id="m", clicks=[[-3, True]], job_dir="d"), "bad_request", "'clicks'"),
    (_req(id="1", type="shape_to_image", mesh_id="m", image_id="i", vertices=[], job_dir="d"),
     "bad_request", "'vertices'"),
    (_req(id="1", type="cancel"), "bad_request", "missing 'job'"),
])
def test_bad_requests_are_refused_with_a_code_and_the_field(line, code, words):
    with pytest.raises(ProtocolError) as info:
        parse_request(line)
    assert info.value.code == code
    assert words in info.value.message


def test_good_requests_pass_unchanged():
    good = [
        dict(id="a", type="prepare", mesh={"path": "spot.obj"}, up="y", name="Spot"),
        dict(id="b", type="prepare", mesh={"npy_vertices": "v.npy", "npy_faces": "f.npy"}),
        dict(id="c", type="match", mesh_id="m", image_id="i", points=[[1.5, 2]], labels=[1], job_dir="d",
             min_confidence=0.5),
        dict(id="d", type="match", mesh_id="m", image_id="i", points=[], labels=[], box=[0, 0, 4, 4], job_dir="d"),
        dict(id="e", type="refine", mesh_id="m", clicks=[[0, True], [7, False]], job_dir="d"),
        dict(id="f", type="status"), dict(id="g", type="cancel", job="a"), dict(id="h", type="shutdown"),
    ]
    for request in good:
        assert parse_request(json.dumps(request).encode()) == request


def test_messages_are_plain_json_and_fraction_is_clamped():
    out = io.StringIO()
    channel = Channel(out)
    assert channel.send(protocol.progress("j", 3.0, "step"))
    assert channel.send(protocol.error(None, "bad_json", "oops"))
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert lines[0] == {"type": "progress", "id": "j", "fraction": 1.0, "message": "step"}
    assert lines[1]["id"] is None and lines[1]["code"] == "bad_json"
    with pytest.raises(ValueError):  # NaN is not JSON: refuse to write it rather than corrupt the stream
        channel.send({"type": "result", "id": "x", "data": {"v": float("nan")}})


def test_channel_reports_a_vanished_client():
    class Gone(io.StringIO):
        def write(self, text):
            raise BrokenPipeError

    channel = Channel(Gone())
    assert not channel.send(protocol.result("x", {}))
    assert channel.broken


def test_protect_stdout_sends_stray_prints_to_stderr():
    code = ("import os, sys; from engine.service.protocol import protect_stdout;"
            "proto = protect_stdout(); print('stray'); os.write(1, b'raw fd write\\n');"
            "proto.write('PROTOCOL\\n'); proto.flush()")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=os.path.dirname(os.path.dirname(__file__)))
    assert done.returncode == 0, done.stderr
    assert done.stdout == "PROTOCOL\n"
    assert "stray" in done.stderr and "raw fd write" in done.stderr
