"""The wire format of `python -m engine serve` (docs/protocol.md): NDJSON framing, request checks, messages.

Only plain JSON crosses the process boundary (a pickled torch exception cannot be read by Blender's
Python), so every message is built here from str/int/float/bool/list/dict and nothing else.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import threading
from typing import Any, BinaryIO, Callable, TextIO

from engine.errors import BsbError, ProtocolError

PROTOCOL_VERSION = 1
MAX_LINE_BYTES = 1 << 20
MAX_DEPTH = 32  # no request nests deeper than 4; a deeper line is refused before json sees it
MAX_NUMBER_CHARS = 40  # no request needs a longer number; Python would spend quadratic time on 5000 digits
ID_SCAN_BYTES = 4096  # how far into an unreadable line the request id is looked for
MAX_PHRASE_CHARS = 200  # a part name (find_part text); a sentence is no name

_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}:]')


class LineTooLong(BsbError):
    code = "too_large"

    def __init__(self, message: str, head: bytes = b"") -> None:
        super().__init__(message)
        self.head = head  # the line's start, where its id can still be found


class FdReader:
    """`readline(limit)` straight from a file descriptor, for the reader thread.

    A daemon thread blocked in a buffered stdin holds that buffer's lock; when the engine exits while the
    client still holds stdin open, Python aborts at shutdown ("_enter_buffered_busy"). os.read holds no
    Python-level lock, so the blocked reader simply ends with the process.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buf = bytearray()
        self._eof = False

    def readline(self, limit: int = -1) -> bytes:
        scanned = 0
        while True:
            end = self._buf.find(b"\n", scanned)
            if end >= 0:
                n = end + 1
            elif limit >= 0 and len(self._buf) >= limit:
                n = limit
            elif self._eof:
                n = len(self._buf)
            else:
                scanned = len(self._buf)
                chunk = os.read(self._fd, 1 << 16)
                if not chunk:
                    self._eof = True
                self._buf += chunk
                continue
            n = n if limit < 0 else min(n, limit)
            line = bytes(self._buf[:n])
            del self._buf[:n]
            return line


def protect_stdout() -> TextIO:
    """Keep fd 1 for the protocol alone: return a writer on a duplicate of it, and point fd 1 at stderr.

    Must run before torch/transformers are imported, so their stray prints (and tqdm) land on stderr,
    where the client logs them, instead of corrupting the message stream.
    """
    sys.stdout.flush()
    proto_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(proto_fd, "w", encoding="utf-8", buffering=1, newline="\n")


class Channel:
    """Thread-safe writer of one JSON object per line; the reader thread and the job thread both send."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self.broken = False

    def send(self, message: dict[str, Any]) -> bool:
        """Write one message; False once the client has gone (broken pipe), so callers can stop work."""
        line = json.dumps(message, allow_nan=False, separators=(",", ":"))
        with self._lock:
            if self.broken:
                return False
            try:
                self._stream.write(line + "\n")
                self._stream.flush()
            except (BrokenPipeError, OSError, ValueError):
                self.broken = True
                return False
        return True


def read_line(stream: BinaryIO, limit: int = MAX_LINE_BYTES) -> bytes | None:
    """The next request line without its newline; None at EOF. A line over `limit` is skipped whole and
    reported with LineTooLong, so one huge request cannot wedge the stream or exhaust memory."""
    line = stream.readline(limit + 1)
    if not line:
        return None
    if line.endswith(b"\n") or len(line) <= limit:  # a whole line, or the last one without a newline
        return line.rstrip(b"\r\n")
    head = line[:ID_SCAN_BYTES]
    size = len(line)
    while not line.endswith(b"\n"):
        line = stream.readline(1 << 16)
        if not line:
            break
        size += len(line)
    raise LineTooLong(f"request line of {size} bytes is over the {limit} byte limit; "
                      "pass large arrays as .npy files instead of inline JSON", head)


# ----------------------------------------------------------------------------------------------------
# Messages (engine -> client)

def hello(engine: str, device: str, device_name: str, torch_version: str, profile: str,
          random_weights: bool) -> dict[str, Any]:
    return {"type": "hello", "protocol": PROTOCOL_VERSION, "engine": engine, "device": device,
            "device_name": device_name, "torch": torch_version, "profile": profile,
            "random_weights": bool(random_weights)}


def progress(request_id: str, fraction: float, message: str, **extra: Any) -> dict[str, Any]:
    """`extra`: plain JSON fields a job adds to one event (a prepare's provisional `mesh_id`)."""
    fraction = 0.0 if not math.isfinite(fraction) else min(1.0, max(0.0, float(fraction)))
    return {**extra, "type": "progress", "id": request_id, "fraction": fraction, "message": str(message)}


def result(request_id: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"type": "result", "id": request_id, "data": data}


def error(request_id: str | None, code: str, message: str, traceback: str = "") -> dict[str, Any]:
    return {"type": "error", "id": request_id, "code": code, "message": message, "traceback": traceback}


# ----------------------------------------------------------------------------------------------------
# Requests (client -> engine)

def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _str(value: Any) -> bool:
    return isinstance(value, str) and value != ""


def _points(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(p, list) and len(p) == 2 and all(_number(c) for c in p) for p in value)


def _labels(value: Any) -> bool:
    return isinstance(value, list) and all(v in (0, 1) and not isinstance(v, float) for v in value)


def _box(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 4 and all(_number(c) for c in value) \
        and value[0] < value[2] and value[1] < value[3]


def _vertex(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _clicks(value: Any) -> bool:
    return isinstance(value, list) and len(value) > 0 and all(
        isinstance(c, list) and len(c) == 2 and _vertex(c[0]) and isinstance(c[1], bool) for c in value)


def _vertices(value: Any) -> bool:
    return isinstance(value, list) and len(value) > 0 and all(_vertex(v) for v in value)


def _mesh(value: Any) -> bool:
    if not isinstance(value, dict):
        return False
    if set(value) == {"path"}:
        return _str(value["path"])
    return set(value) == {"npy_vertices", "npy_faces"} and all(_str(v) for v in value.values())


def _fraction(value: Any) -> bool:
    return _number(value) and 0.0 <= value <= 1.0


def _phrase(value: Any) -> bool:
    return _str(value) and len(value) <= MAX_PHRASE_CHARS and bool(value.strip())


# type -> field -> (check, what it must be, required)
SCHEMAS: dict[str, dict[str, tuple[Callable[[Any], bool], str, bool]]] = {
    "prepare": {"mesh": (_mesh, '{"path": str} or {"npy_vertices": str, "npy_faces": str}', True),
                "up": (lambda v: v in ("y", "z"), '"y" or "z"', False),
                "name": (lambda v: isinstance(v, str), "a string", False),
                "early": (lambda v: isinstance(v, bool), "true or false", False)},
    "set_image": {"path": (_str, "an image file path", True)},
    "match": {"mesh_id": (_str, "a mesh id from prepare", True),
              "image_id": (_str, "an image id from set_image", True),
              "points": (_points, "a list of [x, y] pixel pairs", True),
              "labels": (_labels, "a list of 1 (positive) / 0 (negative), one per point", True),
              "box": (_box, "[x0, y0, x1, y1] with x0 < x1 and y0 < y1", False),
              "min_confidence": (_number, "a number", False),
              "job_dir": (_str, "a folder path for the result arrays", True)},
    "refine": {"mesh_id": (_str, "a mesh id from prepare", True),
               "clicks": (_clicks, "a non-empty list of [vertex index, true/false]", True),
               "job_dir": (_str, "a folder path for the result arrays", True)},
    "match_all": {"mesh_id": (_str, "a mesh id from prepare", True),
                  "image_id": (_str, "an image id from set_image", True),
                  "max_regions": (lambda v: _vertex(v) and v > 0, "a positive integer", False),
                  "job_dir": (_str, "a folder path for the result arrays", True)},
    "shape_to_image": {"mesh_id": (_str, "a mesh id from prepare", True),
                       "image_id": (_str, "an image id from set_image", True),
                       "vertices": (_vertices, "a non-empty list of vertex indices", True),
                       "job_dir": (_str, "a folder path for the result arrays", True)},
    "segment_all": {"mesh_id": (_str, "a mesh id from prepare", True),
                    "granularity": (_fraction, "a number from 0 (coarse) to 1 (fine)", False),
                    "job_dir": (_str, "a folder path for the result arrays", True)},
    "find_part": {"mesh_id": (_str, "a mesh id from prepare", True),
                  "text": (_phrase, f"a part name such as \"handle\" (at most {MAX_PHRASE_CHARS} characters)", True),
                  "image_id": (_str, "an image id from set_image (find the text in that image, then BSB)", False),
                  "job_dir": (_str, "a folder path for the result arrays", True)},
    "status": {},
    "cancel": {"job": (_str, "the id of the request to cancel", True)},
    "shutdown": {},
}


def request_id_of(obj: Any) -> str | None:
    """The id to answer an invalid request with, when one can be read from it."""
    if isinstance(obj, dict) and isinstance(obj.get("id"), str):
        return obj["id"]
    return None


def recover_id(line: bytes) -> str | None:
    """The top-level "id" string of a line that cannot be parsed (truncated, too large, too deep), found
    by scanning its first bytes, so a client waiting on that id gets its answer instead of waiting forever."""
    head = line[:ID_SCAN_BYTES]
    matches = list(_TOKEN.finditer(head))
    depth = 0
    for i, m in enumerate(matches):
        token = m.group()
        if token in (b"{", b"["):
            depth += 1
        elif token in (b"}", b"]"):
            depth -= 1
        elif depth == 1 and token == b'"id"' and len(matches) > i + 2 and matches[i + 1].group() == b":":
            value = matches[i + 2]
            # the value must follow the colon directly: `"id": 5, "type"` has no id string
            if not value.group().startswith(b'"') or head[matches[i + 1].end():value.start()].strip():
                return None
            try:
                text = json.loads(value.group().decode("utf-8"))
            except ValueError:
                return None
            return text if _str(text) else None
    return None


def _depth(line: bytes) -> int:
    """How deep the brackets of a line nest (outside strings)."""
    depth = deepest = 0
    for m in _TOKEN.finditer(line):
        token = m.group()
        if token in (b"{", b"["):
            depth += 1
            deepest = max(deepest, depth)
        elif token in (b"}", b"]"):
            depth -= 1
    return deepest


def _bounded(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        if len(text) > MAX_NUMBER_CHARS:
            raise ValueError(f"a number of {len(text)} characters is longer than any request needs "
                             f"(at most {MAX_NUMBER_CHARS})")
        return kind(text)
    return parse


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number; send finite numbers only")


def decode_json(line: bytes) -> Any:
    """Strict JSON with bounded nesting and number sizes; raises ProtocolError(bad_json)."""
    if _depth(line) > MAX_DEPTH:
        raise ProtocolError(f"request nests deeper than {MAX_DEPTH} levels; no request needs that", "bad_json")
    try:
        return json.loads(line.decode("utf-8"), parse_int=_bounded(int), parse_float=_bounded(float),
                          parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"request is not valid JSON ({exc}); send one JSON object per line", "bad_json")


def parse_request(line: bytes) -> dict[str, Any]:
    """Decode and check one request line; raises ProtocolError (code bad_json / bad_request) naming the field."""
    return check_request(decode_json(line))


def check_request(obj: Any) -> dict[str, Any]:
    """Check a decoded request against SCHEMAS (the NDJSON and the remote transport share it)."""
    if not isinstance(obj, dict):
        raise ProtocolError("a request must be a JSON object with 'id' and 'type'", "bad_json")
    if not _str(obj.get("id")):
        raise ProtocolError("request has no 'id' string; every request needs a unique id")
    kind = obj.get("type")
    if not isinstance(kind, str) or kind not in SCHEMAS:
        raise ProtocolError(f"unknown request type {kind!r}; known types: {', '.join(SCHEMAS)}")
    for field, (check, what, required) in SCHEMAS[kind].items():
        if field not in obj:
            if required:
                raise ProtocolError(f"{kind} request is missing '{field}' ({what})")
            continue
        if not check(obj[field]):
            raise ProtocolError(f"{kind} field '{field}' must be {what}, got {json.dumps(obj[field])[:80]}")
    if kind == "match":
        if len(obj["points"]) != len(obj["labels"]):
            raise ProtocolError(f"match has {len(obj['points'])} points but {len(obj['labels'])} labels; "
                                "give one label per point")
        if not obj["points"] and "box" not in obj:
            raise ProtocolError("match needs at least one point or a box")
    return obj
