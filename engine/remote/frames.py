"""The remote wire format: every message is one frame.

    frame = u32 JSON length | u32 blob length | JSON (UTF-8) | blobs

both lengths big-endian. The JSON object lists its blobs' sizes in "blobs" (in order, summing to the blob
length); a field refers to blob i as {"blob": i}. Every blob is zlib-compressed (a .npy file for
arrays, the image file's own bytes for an image). Lengths are checked before anything is read, and
inflating is capped, so neither a huge prefix nor a zip bomb can make the engine allocate more than
its limits.
"""

from __future__ import annotations

import json
import struct
import zlib
from typing import Any

HEADER = struct.Struct(">II")
MAX_JSON_BYTES = 1 << 20  # the NDJSON protocol's line limit: the JSON part never needs more
AUTH_JSON_BYTES = 4096  # the first frame of a connection (auth) is small and carries no blobs
ZLIB_LEVEL = 1  # masks and faces shrink a lot at level 1 already; higher levels cost more than they save
PROBE_BYTES = 1 << 16


class FrameError(Exception):
    """A frame that breaks the format; `code` is a protocol error code, `fatal` when the stream is lost."""

    def __init__(self, message: str, code: str = "bad_frame", fatal: bool = True,
                 request_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.fatal = fatal
        self.request_id = request_id


def encode(message: dict[str, Any], blobs: list[bytes] | None = None) -> bytes:
    """One frame; `blobs` are already compressed."""
    blobs = blobs or []
    if blobs:
        message = {**message, "blobs": [len(b) for b in blobs]}
    data = json.dumps(message, allow_nan=False, separators=(",", ":")).encode("utf-8")
    return HEADER.pack(len(data), sum(len(b) for b in blobs)) + data + b"".join(blobs)


def split_blobs(message: dict[str, Any], data: bytes) -> list[bytes]:
    """The frame's blobs, by the sizes its JSON lists; the sizes must account for every byte."""
    sizes = message.pop("blobs", [])
    if not isinstance(sizes, list) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                              for s in sizes) or sum(sizes) != len(data):
        raise FrameError("'blobs' must list the sizes of the frame's blobs, summing to its blob length",
                         "bad_request", fatal=False)
    out, at = [], 0
    for size in sizes:
        out.append(data[at:at + size])
        at += size
    return out


def compress(raw: bytes) -> bytes:
    """zlib at level 1, or level 0 (stored, still a zlib stream) when a probe of the first 64 KiB shrinks
    by less than 10 %: float arrays (weights, vertices) barely compress and would cost ~50 ms per MB."""
    probe = raw[:PROBE_BYTES]
    level = ZLIB_LEVEL if len(zlib.compress(probe, ZLIB_LEVEL)) < 0.9 * len(probe) else 0
    return zlib.compress(raw, level)


def inflate(blob: bytes, limit: int, what: str) -> bytes:
    """Decompress one blob to at most `limit` bytes; raises ValueError with a message for people."""
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(blob, limit)
    except zlib.error as exc:
        raise ValueError(f"{what} is not zlib-compressed data ({exc})") from None
    if inflater.unconsumed_tail or not inflater.eof:
        if inflater.unconsumed_tail:
            raise ValueError(f"{what} inflates to more than {limit / 2**20:.0f} MiB, this engine's limit")
        raise ValueError(f"{what} is truncated zlib data")
    return raw


def blob_ref(value: Any, n_blobs: int) -> int | None:
    """The index of a {"blob": i} reference, or None when `value` is not a valid one."""
    if isinstance(value, dict) and isinstance(value.get("blob"), int) and not isinstance(value["blob"], bool):
        if 0 <= value["blob"] < n_blobs:
            return value["blob"]
    return None
