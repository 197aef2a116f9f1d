"""The network server: asyncio streams for the connections, one worker thread for the jobs.

Why this shape: connections only read frames, check them and queue jobs, so `status`, `cancel`,
`fetch` and heartbeats are answered at once whatever runs. The worker thread takes jobs from a
FairQueue and runs them with engine.service.server.run_job and the handlers of engine.service.jobs,
exactly as the stdin server does; only the job's inputs and outputs differ (files in a per-client
folder, see engine.remote.jobs). A running job belongs to its client, not to its connection: if the
connection drops the job still finishes (or stops at a `cancel`), its result is kept, progress and
the result go to the client's newest connection, and a client that reconnects can `fetch` it.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
import ssl
import sys
import threading
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from engine.errors import BsbError, ProtocolError
from engine.remote import auth, frames, jobs
from engine.remote.fairqueue import FairQueue, QueueFull
from engine.service import protocol
from engine.service.server import Handler, run_job

HEARTBEAT_S = 5.0  # both sides send one this often; a side silent for IDLE_TIMEOUT_S is gone
IDLE_TIMEOUT_S = 30.0
AUTH_TIMEOUT_S = 10.0


@dataclass
class Limits:
    max_request: int = 256 << 20  # compressed blob bytes in one frame
    max_inflated: int = 1 << 30  # one input after inflating
    max_clients: int = 32  # open connections
    per_client_queue: int = 32


def _log(text: str) -> None:
    print(f"[engine] {text}", file=sys.stderr, flush=True)


class Connection:
    """One authenticated connection; `send` may be called from any thread."""

    def __init__(self, client: str, writer: asyncio.StreamWriter, loop: asyncio.AbstractEventLoop) -> None:
        self.client = client
        self.writer = writer
        self.loop = loop
        self.closed = False

    def send(self, message: dict[str, Any], blobs: list[bytes] | None = None) -> bool:
        if self.closed:
            return False
        data = frames.encode(message, blobs)
        try:
            self.loop.call_soon_threadsafe(self._write, data)
        except RuntimeError:  # the loop has closed
            return False
        return True

    def _write(self, data: bytes) -> None:
        if self.closed or self.writer.is_closing():
            self.closed = True
            return
        self.writer.write(data)


class _Sink:
    """The `channel` run_job reports to: the client's newest connection, so a reconnect picks the job up.
    Never `broken`: only a cancel stops a job, a dropped connection does not."""

    broken = False

    def __init__(self, server: "RemoteServer", client: str) -> None:
        self._server, self._client = server, client

    def send(self, message: dict[str, Any]) -> bool:
        conn = self._server.connections.get(self._client)
        if conn is not None:
            conn.send(message)
        return True


class RemoteServer:
    def __init__(self, handlers: Mapping[str, Handler], hello: dict[str, Any], status: Callable[[], dict[str, Any]],
                 token: str, root: Path, limits: Limits | None = None) -> None:
        self.handlers, self.hello, self.status, self.token, self.root = handlers, hello, status, token, root
        self.limits = limits or Limits()
        self.instance = secrets.token_hex(8)  # tells a client whether it reconnected to the same process
        self.queue = FairQueue(self.limits.per_client_queue)
        self.connections: dict[str, Connection] = {}
        self.open_connections = 0
        self.stop = threading.Event()

    @property
    def running(self) -> jobs.RemoteJob | None:
        return self.queue.current  # type: ignore[return-value]  # the queue only ever holds RemoteJobs

    # -- the worker thread ------------------------------------------------------------------------
    def work(self) -> None:
        while not self.stop.is_set():
            item = self.queue.take(timeout=0.5)
            if item is not None:
                self._run(item[1])

    def _run(self, job: jobs.RemoteJob) -> None:
        handler = self.handlers[job.request["type"]]

        def with_inputs(request: dict[str, Any], progress: Callable, cancel: Callable) -> dict[str, Any]:
            jobs.materialize(job, self.limits.max_inflated)
            return handler(request, progress, cancel)

        try:
            final = run_job(job, with_inputs, _Sink(self, job.client))
            jobs.drop_inputs(job)
            message, blobs = jobs.attach(jobs.store_result(job, final), job.folder)
            jobs.prune(self.root, job.client)
        except Exception as exc:  # storing the result failed (disk full?): still answer, keep serving
            _log(f"storing the result of {job.id} failed:\n{traceback.format_exc()}")
            message, blobs = protocol.error(job.id, "internal", f"cannot keep the result: {exc}"), []
        self.queue.finish()
        conn = self.connections.get(job.client)
        if conn is not None:
            conn.send(message, blobs)

    # -- connections ------------------------------------------------------------------------------
    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open_connections += 1
        conn: Connection | None = None
        heartbeat: asyncio.Task | None = None
        try:
            if self.open_connections > self.limits.max_clients:
                await _refuse(writer, "busy", f"this engine serves {self.limits.max_clients} connections at most; "
                                              "try again later")
                return
            conn = await self._authenticate(reader, writer)
            if conn is None:
                return
            heartbeat = asyncio.create_task(self._heartbeat(conn))
            while not self.stop.is_set():
                try:
                    message, blobs = await read_frame(reader, frames.MAX_JSON_BYTES, self.limits.max_request,
                                                      IDLE_TIMEOUT_S)
                except frames.FrameError as exc:
                    conn.send(protocol.error(exc.request_id, exc.code, str(exc)))
                    if exc.fatal:
                        await _discard(reader)
                        break
                    continue
                self._dispatch(conn, message, blobs)
        except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError, ssl.SSLError, OSError):
            pass  # the client went away or fell silent: its jobs go on, their results are kept
        except asyncio.CancelledError:
            pass  # the engine is stopping: close this connection quietly
        except Exception:  # a bug: this connection ends, the server does not
            _log("connection failed:\n" + traceback.format_exc())
        finally:
            self.open_connections -= 1
            if heartbeat is not None:
                heartbeat.cancel()
            if conn is not None:
                conn.closed = True
                if self.connections.get(conn.client) is conn:
                    del self.connections[conn.client]
            await _close(writer)

    async def _authenticate(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Connection | None:
        """The first frame must carry the token; nothing else is read, queued or answered before it."""
        try:
            message, _ = await asyncio.wait_for(read_frame(reader, frames.AUTH_JSON_BYTES, 0, AUTH_TIMEOUT_S),
                                                AUTH_TIMEOUT_S)
        except (frames.FrameError, asyncio.TimeoutError):
            message = {}
        if message.get("type") != "auth" or not auth.token_matches(message.get("token"), self.token):
            await _discard(reader, 1 << 20, 0.2)
            await _refuse(writer, "unauthorized", "wrong or missing token: the first frame must be "
                                                  '{"type": "auth", "token": ...}; copy the token the engine printed '
                                                  "into the add-on preferences")
            return None
        client = message.get("client")
        if not jobs.safe_name(client):
            await _refuse(writer, "bad_request", "auth needs a 'client' name of 1-80 letters, digits, '.', '_', '-'")
            return None
        if message.get("protocol") != protocol.PROTOCOL_VERSION:
            await _refuse(writer, "protocol", f"this engine speaks protocol {protocol.PROTOCOL_VERSION}, the client "
                                              f"{message.get('protocol')!r}; update the add-on or the engine")
            return None
        conn = Connection(client, writer, asyncio.get_running_loop())
        previous = self.connections.get(client)
        if previous is not None:
            previous.closed = True
        self.connections[client] = conn
        conn.send({**self.hello, "remote": {"instance": self.instance, "client": client, "tls": _tls(writer),
                                            "max_request": self.limits.max_request, "heartbeat_s": HEARTBEAT_S}})
        return conn

    async def _heartbeat(self, conn: Connection) -> None:
        while not conn.closed:
            await asyncio.sleep(HEARTBEAT_S)
            conn.send({"type": "heartbeat"})

    def _dispatch(self, conn: Connection, message: dict[str, Any], blobs: list[bytes]) -> None:
        kind, rid = message.get("type"), message.get("id")
        if kind == "heartbeat":
            return
        if not jobs.safe_name(rid):
            conn.send(protocol.error(rid if isinstance(rid, str) else None, "bad_request",
                                     "every request needs an 'id' of 1-80 letters, digits, '.', '_' or '-'"))
            return
        client = conn.client
        current = self.running
        running = current if current is not None and current.client == client else None
        if kind == "status":
            data = {"busy": current is not None, "job": running.id if running else None,
                    "queue": len(self.queue), "your_queue": self.queue.waiting(client),
                    "clients": len(self.connections), "instance": self.instance}
            data.update(self.status())
            conn.send(protocol.result(rid, data))
        elif kind == "cancel":
            job_id = message.get("job")
            if running is not None and running.id == job_id:
                running.cancel.set()
                done = True
            elif (dropped := self.queue.remove(client, str(job_id))) is not None:
                conn.send(protocol.error(dropped.id, "cancelled", "dropped from the queue before it started"))
                done = True
            else:
                done = False
            conn.send(protocol.result(rid, {"cancelled": done}))
        elif kind == "fetch":
            self._fetch(conn, rid, message.get("job"), running)
        elif kind == "shutdown":
            conn.send(protocol.error(rid, "bad_request", "a remote client cannot stop a shared engine; stop it "
                                                         "on its own machine"))
        elif kind not in self.handlers:
            conn.send(protocol.error(rid, "bad_request", f"this engine cannot run {str(kind)[:40]!r} requests"))
        elif (running is not None and running.id == rid) or self.queue.find(client, rid) is not None:
            conn.send(protocol.error(rid, "bad_request", f"id {rid!r} is already in use; ids must be unique"))
        else:
            try:
                self.queue.put(client, jobs.translate(message, blobs, client, self.root))
            except BsbError as exc:
                conn.send(protocol.error(rid, exc.code, exc.message))
            except QueueFull as exc:
                conn.send(protocol.error(rid, "busy", str(exc)))

    def _fetch(self, conn: Connection, rid: str, job_id: Any, running: jobs.RemoteJob | None) -> None:
        """A job's state; a finished one comes with its final message (and arrays)."""
        if not jobs.safe_name(job_id):
            conn.send(protocol.error(rid, "bad_request", "fetch needs the 'job' id of an earlier request"))
        elif running is not None and running.id == job_id:
            conn.send(protocol.result(rid, {"state": "running"}))
        elif self.queue.find(conn.client, job_id) is not None:
            conn.send(protocol.result(rid, {"state": "queued"}))
        elif (stored := jobs.load_result(self.root, conn.client, job_id)) is None:
            conn.send(protocol.error(rid, "not_found", f"no job {job_id!r} of this client: it never arrived or the "
                                                       "engine stopped before it finished; send it again"))
        else:
            try:
                message, blobs = jobs.attach(stored, self.root / conn.client / job_id)
            except OSError as exc:
                conn.send(protocol.error(rid, "not_found", f"the arrays of job {job_id!r} are gone ({exc.strerror}); "
                                                           "send it again"))
                return
            conn.send(protocol.result(rid, {"state": "done", "message": message}), blobs)


async def _read(reader: asyncio.StreamReader, n: int, idle: float) -> bytes:
    """`n` bytes; asyncio.TimeoutError only when no byte came for `idle` s (a slow upload that moves is fine)."""
    parts, left = [], n
    while left:
        chunk = await asyncio.wait_for(reader.read(min(left, 1 << 20)), idle)
        if not chunk:
            raise asyncio.IncompleteReadError(b"".join(parts), n)
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


async def read_frame(reader: asyncio.StreamReader, max_json: int, max_blobs: int,
                     idle: float) -> tuple[dict[str, Any], list[bytes]]:
    """One frame, its lengths checked before reading; FrameError names the problem (fatal: the stream
    cannot be trusted after it, the connection ends)."""
    json_len, blob_len = frames.HEADER.unpack(await _read(reader, frames.HEADER.size, idle))
    if json_len == 0 or json_len > max_json:
        raise frames.FrameError(f"frame JSON of {json_len} bytes is outside 1..{max_json}; see docs/protocol.md "
                                "(Remote engine) for the framing", "too_large")
    body = await _read(reader, json_len, idle)
    if blob_len > max_blobs:
        raise frames.FrameError(f"request of {blob_len / 2**20:.1f} MiB is over this engine's limit of "
                                f"{max_blobs / 2**20:.0f} MiB (engine option --max-request); send a smaller mesh "
                                "or image", "too_large", request_id=protocol.recover_id(body))
    data = await _read(reader, blob_len, idle)
    try:
        message = protocol.decode_json(body)
    except ProtocolError as exc:
        raise frames.FrameError(exc.message, exc.code, fatal=False, request_id=protocol.recover_id(body)) from None
    if not isinstance(message, dict):
        raise frames.FrameError("a frame's JSON must be an object", "bad_json", fatal=False)
    return message, frames.split_blobs(message, data)


async def _discard(reader: asyncio.StreamReader, limit: int = 64 << 20, seconds: float = 2.0) -> None:
    """Read (and drop) what the client already sent, bounded, before closing: closing a socket with unread
    input resets it, and the reset would destroy the error frame that explains the refusal."""
    deadline = asyncio.get_running_loop().time() + seconds
    try:
        while limit > 0:
            left = deadline - asyncio.get_running_loop().time()
            chunk = await asyncio.wait_for(reader.read(min(limit, 1 << 20)), max(left, 0.001))
            if not chunk:
                return
            limit -= len(chunk)
    except (asyncio.TimeoutError, ConnectionError, OSError, ssl.SSLError):
        pass


async def _refuse(writer: asyncio.StreamWriter, code: str, message: str) -> None:
    writer.write(frames.encode(protocol.error(None, code, message)))
    await _close(writer)


async def _close(writer: asyncio.StreamWriter) -> None:
    try:
        await asyncio.wait_for(writer.drain(), 5)
        writer.close()
        await asyncio.wait_for(writer.wait_closed(), 5)
    except (ConnectionError, asyncio.TimeoutError, ssl.SSLError, OSError):
        pass


def _tls(writer: asyncio.StreamWriter) -> bool:
    return writer.get_extra_info("ssl_object") is not None


def tls_context(cert: Path | None, key: Path | None) -> ssl.SSLContext | None:
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise BsbError("TLS needs both --cert and --key", "bad_request")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise BsbError(f"cannot load the TLS certificate {cert} / key {key}: {exc}", "bad_request") from None
    return context


def check_listen(listen: str, token: str) -> tuple[str, int]:
    """(host, port) of --listen; a non-loopback address needs a token."""
    host, port = auth.parse_address(listen)
    if not token and not auth.is_loopback(host):
        raise BsbError(f"refusing to listen on {host}, which is not a loopback address, without a token; leave "
                       "--token out to have one generated", "bad_request")
    return host, port


def run(server: RemoteServer, listen: str, context: ssl.SSLContext | None) -> int:
    """Serve until SIGINT/SIGTERM. Prints `listening on HOST:PORT` (the real port when 0 was asked)."""
    host, port = check_listen(listen, server.token)
    if context is None and not auth.is_loopback(host):
        _log("warning: no TLS (--cert/--key): the token and the data cross the network in clear")
    swept = jobs.sweep_unfinished(server.root)
    if swept:
        _log(f"removed {swept} unfinished job folders left by an earlier run")
    worker = threading.Thread(target=server.work, name="remote-worker", daemon=True)
    worker.start()

    async def main() -> None:
        listener = await asyncio.start_server(server.handle, host, port, ssl=context, limit=1 << 16)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError):  # Windows: Ctrl+C raises KeyboardInterrupt instead
                pass
        bound = listener.sockets[0].getsockname()
        _log(f"listening on {bound[0]}:{bound[1]} ({'TLS' if context else 'plain TCP'})")
        async with listener:
            await stop.wait()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    server.stop.set()
    if (current := server.running) is not None:
        current.cancel.set()
    worker.join(timeout=30)
    return 0
