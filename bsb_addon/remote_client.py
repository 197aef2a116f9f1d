"""Client of a remote engine (`python -m engine serve --listen HOST:PORT`, docs/protocol.md "Remote engine").

No bpy and no extra wheel: socket, ssl, struct and zlib. `RemoteClient` has the interface of
EngineClient (start, send/request, cancel, alive, hello, shutdown, ...) so jobs.py, api.py and the
operators use either unchanged. The difference is kept here: the local job folder's .npy files and image
travel as compressed blobs (the engine never sees a path of ours), and the arrays of a result come back as
blobs that are written into the job folder the caller named, so jobs.part_from_data reads them as before.

Every wait is bounded: connect (`connect_timeout`), sends (`send_timeout`), the server's heartbeats
(a connection silent for IDLE_TIMEOUT_S is lost), and Pending.wait's own limits. A lost connection during
a job is retried once: reconnect and `fetch` the job by id (the engine keeps running jobs and results).
"""

from __future__ import annotations

import hashlib
import ipaddress
import itertools
import json
import re
import select
import socket
import ssl
import struct
import threading
import time
import uuid
import zlib
from pathlib import Path

from .engine_client import (_CRASH, PROTOCOL_VERSION, ConnectionLost, EngineConfig, EngineError, EngineMissing,
                            Pending, ProtocolMismatch)

HEADER = struct.Struct(">II")  # JSON length, blob length (big-endian), then JSON, then blobs
MAX_JSON_BYTES = 1 << 20
MAX_INFLATED = 1 << 30
HEARTBEAT_S = 5.0
IDLE_TIMEOUT_S = 20.0  # the engine sends a heartbeat every 5 s: four missed ones mean the link is gone
RECONNECT_EVERY_S = 60.0  # at most one reconnect per minute: a link that keeps dropping fails the job
RESULT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,79}\.npy")


def parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise EngineMissing(f"The remote engine address '{text}' is not HOST:PORT (e.g. 192.168.1.20:8765); "
                            "fix it in the add-on preferences.")
    return host.strip("[]"), int(port)


def encode(message: dict, blobs: list[bytes] | None = None) -> bytes:
    blobs = blobs or []
    if blobs:
        message = {**message, "blobs": [len(b) for b in blobs]}
    data = json.dumps(message, separators=(",", ":")).encode("utf-8")
    return HEADER.pack(len(data), sum(len(b) for b in blobs)) + data + b"".join(blobs)


def compress(raw: bytes) -> bytes:
    """zlib level 1, or level 0 (a stored zlib stream) when the first 64 KiB barely shrink (float arrays)."""
    probe = raw[:1 << 16]
    return zlib.compress(raw, 1 if len(zlib.compress(probe, 1)) < 0.9 * len(probe) else 0)


def inflate(blob: bytes, limit: int = MAX_INFLATED) -> bytes:
    inflater = zlib.decompressobj()
    raw = inflater.decompress(blob, limit)
    if inflater.unconsumed_tail or not inflater.eof:
        raise ValueError("a result array is truncated or too large")
    return raw


class RemoteClient:
    """One connection to a remote engine; reconnects once (and fetches the job) if it drops mid-job."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.hello: dict = {}
        self.client_name = f"blender-{uuid.uuid4().hex[:16]}"  # one per client: the engine's job folder
        self._sock: socket.socket | None = None
        self._pending: dict[str, Pending] = {}
        self._job_dirs: dict[str, str] = {}
        self._memo_keys: dict[str, tuple] = {}
        self._memo: dict[tuple, dict] = {}
        self._fetches: dict[str, str] = {}  # fetch request id -> the job it asks about
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._dead = True
        self._closing = False
        self._reason = ""
        self._last_sent = 0.0
        self._last_reconnect = -RECONNECT_EVERY_S

    # -- lifetime -------------------------------------------------------------------------------
    @property
    def address(self) -> str:
        return self.config.address.strip()

    def start(self) -> dict:
        self._closing = False
        self._connect()
        return self.hello

    def _connect(self) -> None:
        host, port = parse_address(self.address)
        cfg = self.config
        if not cfg.online and not _loopback(host):
            raise EngineMissing("Blender's 'Allow Online Access' is off (Preferences > System > Network): allow it "
                                f"to use the remote engine at {self.address}, or use the Local engine.")
        check = (f"check the address in the add-on preferences, that the engine runs there "
                 f"(python -m engine serve --listen ...) and that no firewall blocks port {port}")
        try:
            sock = socket.create_connection((host, port), timeout=cfg.connect_timeout)
        except socket.timeout:
            raise EngineMissing(f"No answer from the remote engine at {self.address} within "
                                f"{cfg.connect_timeout:.0f} s: {check}.") from None
        except OSError as exc:
            raise EngineMissing(f"Cannot connect to the remote engine at {self.address} "
                                f"({exc.strerror or exc}): {check}.") from None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            if cfg.tls:
                context = ssl.create_default_context(cafile=cfg.cafile or None)
                sock = context.wrap_socket(sock, server_hostname=host)
            sock.sendall(encode({"type": "auth", "token": cfg.token, "client": self.client_name,
                                 "protocol": PROTOCOL_VERSION}))
            buf = bytearray()
            hello, _ = _read_frame(sock, buf)
        except ssl.SSLError as exc:
            sock.close()
            raise EngineMissing(f"The TLS handshake with {self.address} failed ({exc.reason or exc}): check the "
                                "certificate file in the preferences, or turn TLS off if the engine runs without "
                                "--cert.") from None
        except (OSError, ValueError) as exc:
            sock.close()
            raise EngineMissing(f"The remote engine at {self.address} did not complete the handshake within "
                                f"{cfg.connect_timeout:.0f} s ({exc}): {check}; is TLS set the same on both "
                                "sides?") from None
        if hello.get("type") == "error":
            sock.close()
            if hello.get("code") == "unauthorized":
                raise EngineError(f"The remote engine at {self.address} refused the token: copy the token the "
                                  "engine printed at its first start (or its config folder's remote-token file) "
                                  "into the add-on preferences.", "unauthorized")
            raise EngineError(f"The remote engine at {self.address} refused the connection: "
                              f"{hello.get('message', '')}", str(hello.get("code", "internal")))
        if hello.get("type") != "hello" or hello.get("protocol") != PROTOCOL_VERSION:
            sock.close()
            raise ProtocolMismatch(f"The remote engine at {self.address} speaks protocol {hello.get('protocol')!r}, "
                                   f"this add-on {PROTOCOL_VERSION}: update the engine or the add-on.")
        sock.settimeout(cfg.send_timeout)
        with self._lock:
            self._sock, self.hello, self._dead, self._reason = sock, hello, False, ""
        self._last_sent = time.monotonic()
        threading.Thread(target=self._read_loop, args=(sock, buf), name="bsb-remote-reader", daemon=True).start()

    @property
    def alive(self) -> bool:
        return not self._dead and self._sock is not None

    @property
    def random_weights(self) -> bool:
        return bool(self.hello.get("random_weights", False))

    @property
    def instance(self) -> str:
        return str((self.hello.get("remote") or {}).get("instance", ""))

    def models_of_profile(self) -> dict:
        return dict(self.hello.get("models") or {})

    def shutdown(self, timeout: float = 5.0) -> None:
        """Close the connection; the engine is shared, so it is never asked to stop."""
        self.kill()

    def kill(self) -> None:
        self._closing = True
        with self._lock:
            sock, self._sock, self._dead = self._sock, None, True
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    # -- requests -------------------------------------------------------------------------------
    def send(self, kind: str, **fields) -> Pending:
        """Send one request (files it names travel as data); its answer arrives on the returned Pending."""
        request_id = f"{next(self._ids)}-{uuid.uuid4().hex[:8]}"
        pending = Pending(self, request_id, kind)
        job_dir = fields.pop("job_dir", None)
        fields, raws, key = self._data_form(kind, fields)
        if key is not None and key in self._memo:  # this engine already has that mesh or image
            pending.queue.put({"type": "result", "id": request_id, "data": dict(self._memo[key])})
            return pending
        blobs = [compress(raw) for raw in raws]
        limit = int((self.hello.get("remote") or {}).get("max_request", 0))
        size = sum(len(b) for b in blobs)
        if limit and size > limit:
            raise EngineError(f"The '{kind}' request is {size / 2**20:.1f} MiB compressed, over the remote engine's "
                              f"limit of {limit / 2**20:.0f} MiB (its --max-request). Use a smaller mesh or image, "
                              "or raise the limit on the engine.", "too_large")
        frame = encode({"id": request_id, "type": kind, **fields}, blobs)
        if len(frame) - size > MAX_JSON_BYTES:
            raise EngineError(f"The '{kind}' request is over the engine's 1 MiB limit for its fields. Select fewer "
                              "vertices and try again.", "too_large")
        with self._lock:
            if self._dead or self._sock is None:
                raise self.crash_error()
            self._pending[request_id] = pending
            if job_dir is not None:
                self._job_dirs[request_id] = str(job_dir)
            if key is not None:
                self._memo_keys[request_id] = key
        try:
            self._write(frame, what=f"the '{kind}' request")
        except EngineError:
            self._forget(request_id)
            raise
        return pending

    def _data_form(self, kind: str, fields: dict) -> tuple[dict, list[bytes], tuple | None]:
        """The remote form of a request: the mesh's .npy files and the image file as raw bytes."""
        try:
            if kind == "prepare" and "npy_vertices" in fields.get("mesh", {}):
                raws = [Path(fields["mesh"][k]).read_bytes() for k in ("npy_vertices", "npy_faces")]
                fields = {**fields, "mesh": {"vertices": {"blob": 0}, "faces": {"blob": 1}}}
            elif kind == "set_image" and "path" in fields:
                path = Path(fields.pop("path"))
                raws = [path.read_bytes()]
                fields = {**fields, "image": {"blob": 0, "suffix": path.suffix.lower()}}
            else:
                return fields, [], None
        except OSError as exc:
            raise EngineError(f"Cannot read {exc.filename} to send it to the remote engine ({exc.strerror}).",
                              "bad_request") from None
        digest = hashlib.sha256()
        for raw in raws:
            digest.update(hashlib.sha256(raw).digest())
        digest.update(json.dumps(fields, sort_keys=True).encode())
        return fields, raws, (self.instance, kind, digest.hexdigest())

    def request(self, kind: str, progress=None, cancel=None, timeout: float | None = None, on_event=None,
                **fields) -> dict:
        """As EngineClient.request; `on_event` gets whole progress messages (an early prepare's mesh id)."""
        return self.send(kind, **fields).wait(progress=progress, cancel=cancel, timeout=timeout, on_event=on_event)

    def cancel(self, request_id: str) -> None:
        try:
            self._write(encode({"id": f"c{next(self._ids)}", "type": "cancel", "job": request_id}), what="cancel")
        except EngineError:
            pass

    def log_tail(self, n_lines: int = 20) -> str:
        return ""

    def log_hint(self) -> str:
        return f" The engine's log is on the machine at {self.address}."

    def crash_error(self) -> EngineError:
        return ConnectionLost(self.crash_message())

    def crash_message(self) -> str:
        why = f" ({self._reason})" if self._reason else ""
        return (f"Lost the connection to the remote engine at {self.address}{why}. Check that the engine still "
                "runs there and that the network is up. Nothing was written to your .blend: press 'Restart "
                "Engine' to reconnect, or 'Retry' to reconnect and run the action again.")

    # -- internals ------------------------------------------------------------------------------
    def _forget(self, request_id: str) -> None:
        with self._lock:
            self._pending.pop(request_id, None)
            self._job_dirs.pop(request_id, None)
            self._memo_keys.pop(request_id, None)

    def _write(self, frame: bytes, what: str, blocking: bool = True) -> None:
        sock = self._sock
        if sock is None:
            raise self.crash_error()
        if not self._write_lock.acquire(blocking=blocking):
            return  # a heartbeat while a large request is being sent: that send is traffic enough
        try:
            sock.sendall(frame)
            self._last_sent = time.monotonic()
        except socket.timeout:
            self._reason = f"sending {what} took over {self.config.send_timeout:.0f} s"
            self.kill()
            raise self.crash_error() from None
        except OSError as exc:
            self._reason = f"sending {what} failed: {exc.strerror or exc}"
            raise self.crash_error() from None
        finally:
            self._write_lock.release()

    def _read_loop(self, sock: socket.socket, buf: bytearray) -> None:
        last_heard = time.monotonic()
        try:
            while self._sock is sock:
                ready = isinstance(sock, ssl.SSLSocket) and sock.pending()
                if not ready:
                    ready = bool(select.select([sock], [], [], 0.5)[0])
                now = time.monotonic()
                if now - self._last_sent > HEARTBEAT_S:
                    self._write(encode({"type": "heartbeat"}), "a heartbeat", blocking=False)
                if not ready:
                    if now - last_heard > IDLE_TIMEOUT_S:
                        raise TimeoutError(f"no heartbeat for {IDLE_TIMEOUT_S:.0f} s")
                    continue
                chunk = sock.recv(1 << 20)
                if not chunk:
                    raise ConnectionError("the engine closed the connection")
                last_heard = time.monotonic()
                buf += chunk
                while (frame := _take_frame(buf)) is not None:
                    self._route(*frame)
        except (OSError, ValueError, EngineError) as exc:
            if self._sock is sock and not self._closing:
                self._reason = str(exc) or type(exc).__name__
                self._lost(sock)

    def _route(self, msg: dict, blobs: list[bytes]) -> None:
        if msg.get("type") == "heartbeat":
            return
        rid = str(msg.get("id"))
        with self._lock:
            fetched = self._fetches.pop(rid, None)
        if fetched is not None:  # the answer to a fetch after a reconnect
            data = msg.get("data") or {}
            if msg.get("type") == "error":  # the engine restarted and lost the job
                self._reason = "the engine restarted; the job was lost"
                with self._lock:
                    pending = self._pending.get(fetched)
                if pending is not None:
                    pending.queue.put(_CRASH)
            elif data.get("state") == "done":
                self._deliver(fetched, data.get("message") or {}, blobs)
            return  # queued or running: its result will come on this connection
        self._deliver(rid, msg, blobs)

    def _deliver(self, rid: str, msg: dict, blobs: list[bytes]) -> None:
        with self._lock:
            pending = self._pending.get(rid)
            job_dir = self._job_dirs.get(rid)
            key = self._memo_keys.get(rid)
        if pending is None:
            return
        if msg.get("type") == "result":
            try:
                msg = {**msg, "data": _localize(msg.get("data") or {}, blobs, job_dir)}
            except (OSError, ValueError, IndexError, TypeError) as exc:
                msg = {"type": "error", "id": rid, "code": "bad_result",
                       "message": f"The remote engine's result could not be saved locally ({exc}); run it again."}
            if key is not None:
                self._memo[key] = dict(msg["data"])
        pending.queue.put(msg)

    def _lost(self, sock: socket.socket) -> None:
        """The connection dropped: reconnect once and ask for each waiting job, else fail them all."""
        with self._lock:
            if self._sock is sock:
                self._sock, self._dead = None, True
            waiting = dict(self._pending)
        try:
            sock.close()
        except OSError:
            pass
        jobs = {rid: p for rid, p in waiting.items() if p.kind not in ("status", "cancel")}
        if jobs and not self._closing and time.monotonic() - self._last_reconnect > RECONNECT_EVERY_S:
            self._last_reconnect = time.monotonic()
            try:
                self._connect()
                for rid, pending in waiting.items():
                    if rid in jobs:
                        fetch_id = f"f{next(self._ids)}"
                        with self._lock:
                            self._fetches[fetch_id] = rid
                        self._write(encode({"id": fetch_id, "type": "fetch", "job": rid}), "a fetch")
                    else:  # a status ping of the old connection: the new one answered for it
                        pending.queue.put({"type": "result", "id": rid, "data": {}})
                return
            except EngineError:
                pass
        for pending in waiting.values():
            pending.queue.put(_CRASH)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _take_frame(buf: bytearray) -> tuple[dict, list[bytes]] | None:
    """Cut one whole frame off the front of `buf`, or None while it is incomplete."""
    if len(buf) < HEADER.size:
        return None
    json_len, blob_len = HEADER.unpack_from(buf)
    if json_len > MAX_JSON_BYTES:
        raise ValueError(f"the engine sent a frame of {json_len} JSON bytes; is this a BSB engine?")
    end = HEADER.size + json_len + blob_len
    if len(buf) < end:
        return None
    msg = json.loads(bytes(buf[HEADER.size:HEADER.size + json_len]).decode("utf-8"))
    data = bytes(buf[HEADER.size + json_len:end])
    del buf[:end]
    if not isinstance(msg, dict):
        raise ValueError("the engine sent a frame that is not a JSON object")
    blobs, at = [], 0
    for size in msg.pop("blobs", []):
        blobs.append(data[at:at + int(size)])
        at += int(size)
    return msg, blobs


def _read_frame(sock: socket.socket, buf: bytearray) -> tuple[dict, list[bytes]]:
    """Blocking read of one frame (the handshake), bounded by the socket's timeout."""
    while (frame := _take_frame(buf)) is None:
        chunk = sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("the engine closed the connection")
        buf += chunk
    return frame


def _localize(data: dict, blobs: list[bytes], job_dir: str | None) -> dict:
    """A result's {"blob": i, "name": "x.npy"} arrays written into the caller's job folder, as paths."""
    def walk(value):
        if isinstance(value, dict) and set(value) == {"blob", "name"}:
            name = str(value["name"])
            if job_dir is None or not RESULT_NAME.fullmatch(name):
                raise ValueError(f"unexpected result array {name!r}")
            folder = Path(job_dir)
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / name
            path.write_bytes(inflate(blobs[int(value["blob"])]))
            return str(path)
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    return walk(data)
