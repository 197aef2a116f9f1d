"""Adversarial request lines against the serve loop (issue 13 item 6, issue 12 item 4) and a vanished
client (item 7): every bad line gets exactly one error, with its id when one can be read, and the server
keeps serving. No engine behind it: trivial handlers, loopback pipes, bounded waits."""

from __future__ import annotations

import io
import json
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_server import HANDLERS, Client

from engine.service import protocol
from engine.service.protocol import FdReader, LineTooLong, parse_request, read_line, recover_id

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def client():
    c = Client()
    assert c.next()["type"] == "hello"
    yield c
    c.close()
    c.thread.join(10)


def _one_error_then_alive(client, line: bytes, probe: str) -> dict:
    """Send `line` then a status request; exactly one message (an error) must come before the status."""
    client.send(line if line.endswith(b"\n") else line + b"\n")
    client.send({"id": probe, "type": "status"})
    final, seen = client.until(probe, timeout=20)
    assert final["type"] == "result", final
    before = seen[:-1]
    assert len(before) == 1 and before[0]["type"] == "error", (line[:200], before)
    return before[0]


def test_nesting_bombs_and_huge_numbers_get_bad_json_with_their_id(client):
    nested = b'{"id": "deep", "type": "status", "x": ' + b"[" * 1000 + b"]" * 1000 + b"}"
    digits = b'{"id": "digits", "type": "match", "points": [[' + b"9" * 5000 + b", 1]]}"
    for i, (line, rid) in enumerate([(nested, "deep"), (digits, "digits"), (b"[" * 100000, None),
                                     (b'{"id": "nan", "type": "status", "x": NaN}', "nan"),
                                     (b'{"id": "inf", "type": "status", "x": -Infinity}', "inf")]):
        error = _one_error_then_alive(client, line, f"s{i}")
        assert error["code"] == "bad_json" and error["id"] == rid


def test_too_large_line_is_answered_with_its_id(client):
    big = b'{"type": "refine", "id": "sel-1", "clicks": [' + b"[1, true], " * 150000 + b"[2, true]]}"
    assert len(big) > protocol.MAX_LINE_BYTES
    error = _one_error_then_alive(client, big, "after")
    assert error["code"] == "too_large" and error["id"] == "sel-1"
    error = _one_error_then_alive(client, b'{"pad": "' + b"x" * (2 << 20) + b'"}', "after2")
    assert error["code"] == "too_large" and error["id"] is None


def test_recover_id_reads_only_the_top_level_id():
    assert recover_id(b'{"mesh": {"id": "inner"}, "id": "outer", "pad": "xx') == "outer"
    assert recover_id(b'{"id": "a\\"b", "type": ') == 'a"b'
    assert recover_id(b'{"type": "x", "pad": "\\"id\\": \\"fake\\"", "id": 5}') is None
    assert recover_id(b"garbage") is None and recover_id(b'{"id": ""}') is None


def test_fd_reader_splits_lines_like_a_buffered_file(tmp_path):
    import os
    import threading

    data = b'{"a": 1}\n\nlong' + b"x" * 100000 + b"\n" + b"tail"
    r, w = os.pipe()

    def write():
        with os.fdopen(w, "wb") as fh:
            fh.write(data)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    reader = FdReader(r)
    assert read_line(reader, 1000) == b'{"a": 1}'
    assert read_line(reader, 1000) == b""
    with pytest.raises(LineTooLong) as info:
        read_line(reader, 1000)
    assert info.value.head.startswith(b"longxxx")
    assert read_line(reader, 1000) == b"tail" and read_line(reader, 1000) is None
    writer.join(5)
    os.close(r)
    assert read_line(io.BytesIO(b"abc\n"), 10) == b"abc"


# ----------------------------------------------------------------------------------------------------
# The property: random hostile lines, each answered once, the server still serving after all of them.

_VALID = [
    {"type": "prepare", "mesh": {"path": "/x.obj"}, "up": "z", "name": "n"},
    {"type": "set_image", "path": "/x.png"},
    {"type": "match", "mesh_id": "m", "image_id": "i", "points": [[1.5, 2.5]], "labels": [1],
     "box": [0, 0, 5, 5], "min_confidence": 0.5, "job_dir": "/tmp/j"},
    {"type": "refine", "mesh_id": "m", "clicks": [[3, True]], "job_dir": "/tmp/j"},
    {"type": "match_all", "mesh_id": "m", "image_id": "i", "max_regions": 3, "job_dir": "/tmp/j"},
    {"type": "shape_to_image", "mesh_id": "m", "image_id": "i", "vertices": [1, 2], "job_dir": "/tmp/j"},
    {"type": "cancel", "job": "nothing"},
]


def _junk(rng: random.Random, depth: int = 0):
    """A random JSON value of any type (sometimes huge, deep or odd)."""
    makers = [lambda: None, lambda: True, lambda: False, lambda: rng.randint(-10**6, 10**6),
              lambda: rng.uniform(-1e9, 1e9), lambda: "", lambda: "x" * rng.randrange(50), lambda: 1e308,
              lambda: [_junk(rng, depth + 1) for _ in range(rng.randrange(4))],
              lambda: {str(rng.randrange(9)): _junk(rng, depth + 1) for _ in range(rng.randrange(4))},
              lambda: [[_junk(rng, depth + 1)]], lambda: -0.0]
    return makers[rng.randrange(len(makers) if depth < 3 else 8)]()


def _hostile_line(rng: random.Random, rid: str) -> bytes:
    base = dict(rng.choice(_VALID), id=rid)
    kind = rng.randrange(7)
    if kind == 0:  # truncated anywhere
        text = json.dumps(base).encode()
        return text[: rng.randrange(1, len(text) - 1)]
    if kind == 1:  # deeply nested in some field
        n = rng.choice([33, 200, 1000, 5000])
        return json.dumps(base)[:-1].encode() + b', "deep": ' + b"[" * n + b"]" * n + b"}"
    if kind == 2:  # an oversized number in some field
        field = rng.choice([k for k in base if k not in ("id", "type")] or ["x"])
        number = rng.choice([b"9" * rng.randrange(41, 6000), b"1e" + b"9" * 50, b"-" + b"1" * 4400])
        text = json.dumps({**base, field: "@@"}).encode()
        return text.replace(b'"@@"', number)
    if kind == 3:  # a wrong type in a required or optional field
        fields = [k for k in base if k not in ("id",)]
        field = rng.choice(fields)
        return json.dumps({**base, field: _junk(rng)}).encode()
    if kind == 4:  # binary garbage / broken UTF-8
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))).replace(b"\n", b" ")
    if kind == 5:  # a non-object, or an object without a usable id or type
        return json.dumps(rng.choice([_junk(rng), {"id": _junk(rng), "type": "status"},
                                      {"id": rid, "type": _junk(rng)}])).encode()
    return json.dumps({**base, "type": rng.choice(["dance", "PREPARE", "", "status "])}).encode()


def test_property_random_hostile_lines_each_get_one_error_and_the_server_keeps_serving():
    seed = 1301
    rng = random.Random(seed)
    c = Client(handlers={"prepare": HANDLERS["prepare"]})  # a line that slipped through would queue a job
    try:
        assert c.next()["type"] == "hello"
        tested = 0
        for i in range(250):
            rid = f"r{i}"
            line = _hostile_line(rng, rid)
            try:
                parse_request(line)
            except protocol.ProtocolError:
                pass
            else:
                continue  # a random wrong value that is still a valid request (a job runs): not a hostile line
            error = _one_error_then_alive(c, line, f"probe{i}")
            assert error["code"] in ("bad_json", "bad_request"), (seed, i, line[:300], error)
            assert error["id"] in (rid, None), (seed, i, line[:300], error)
            json.dumps(error, allow_nan=False)
            tested += 1
        assert tested > 200, tested
    finally:
        c.close()
        c.thread.join(10)


# ----------------------------------------------------------------------------------------------------

_CLOSER = textwrap.dedent("""
    import sys, time
    from engine.service import protocol, server
    proto = protocol.protect_stdout()
    def slow(request, progress, cancel):
        for i in range(500):
            progress(i / 500, "step")
            time.sleep(0.02)
        return {}
    hello = protocol.hello("t", "cpu", "CPU", "0", "t", True)
    sys.exit(server.serve({"prepare": slow}, hello, protocol.FdReader(sys.stdin.fileno()), protocol.Channel(proto)))
""")


def test_client_closing_stdout_mid_job_ends_the_engine_cleanly():
    """The client keeps stdin open but stops reading: the job is cancelled and the process exits 0 (it used to
    abort with "Fatal Python error: _enter_buffered_busy", a daemon reader holding stdin's buffer lock)."""
    proc = subprocess.Popen([sys.executable, "-c", _CLOSER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": ""})
    try:
        assert json.loads(proc.stdout.readline())["type"] == "hello"
        proc.stdin.write(b'{"id": "p", "type": "prepare", "mesh": {"path": "x.obj"}}\n')
        proc.stdin.flush()
        assert json.loads(proc.stdout.readline())["type"] == "progress"
        proc.stdout.close()
        assert proc.wait(30) == 0
        err = proc.stderr.read().decode()
        assert "Fatal Python error" not in err and "cancelled" in err
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdin.close()
        proc.wait(10)
