"""Client for `python -m engine serve` (protocol v1, docs/protocol.md).

No bpy here: this module runs in Blender's Python but is tested with plain pytest. The engine lives in
its own interpreter so torch never loads into Blender; only plain JSON crosses the pipe. A reader
thread turns stdout lines into per-request queues; callers block on them (headless, worker threads)
while the UI drains its own event queue on the main thread.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

PROTOCOL_VERSION = 1
# The engine refuses request lines over 1 MiB (docs/protocol.md); big arrays travel as .npy files instead.
MAX_LINE_BYTES = 1 << 20

ProgressFn = Callable[[float, str], None]
CancelFn = Callable[[], bool]


class EngineError(Exception):
    """An error reported by (or about) the engine; `code` follows the protocol's error codes."""

    def __init__(self, message: str, code: str = "internal", traceback: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.traceback = traceback

    @property
    def message(self) -> str:
        return str(self)


class EngineMissing(EngineError):
    def __init__(self, message: str) -> None:
        super().__init__(message, "engine_missing")


class EngineCrashed(EngineError):
    def __init__(self, message: str) -> None:
        super().__init__(message, "crashed")


class ConnectionLost(EngineCrashed):
    """The connection to a remote engine dropped; the engine (and a retry) may well be fine."""


class EngineCancelled(EngineError):
    def __init__(self, message: str = "cancelled by the user") -> None:
        super().__init__(message, "cancelled")


class ProtocolMismatch(EngineError):
    def __init__(self, message: str) -> None:
        super().__init__(message, "protocol")


@dataclass
class EngineConfig:
    """How to start the engine. `command` replaces the default `python -m engine serve ...` (tests)."""

    python: str = ""
    models: str = ""
    device: str = "auto"
    profile: str = "auto"  # the engine picks by device: `paper` on CUDA, `fast` on CPU and Apple MPS
    cache: str = ""
    log_path: str = ""
    workdir: str = ""
    command: list[str] = field(default_factory=list)
    start_timeout: float = 120.0
    cancel_grace: float = 5.0
    # A job may legitimately run long (a first preparation on a CPU), so the overall limit is generous;
    # a hung engine is caught sooner: after `idle_check` s without a message a `status` ping must be
    # answered within `status_timeout` s (the engine answers status at once, even mid-job).
    request_timeout: float = 3 * 3600.0
    idle_check: float = 20.0
    status_timeout: float = 15.0
    offline: bool = True
    # A remote engine (bsb_addon/remote_client.py) instead of the subprocess when `remote` is set.
    remote: bool = False
    address: str = ""
    token: str = ""
    tls: bool = False
    cafile: str = ""
    connect_timeout: float = 10.0
    send_timeout: float = 120.0
    online: bool = True  # Blender's "Allow Online Access": off, only a loopback remote engine is used


def build_command(config: EngineConfig) -> list[str]:
    """The engine command line: -s (no user site) and -u (unbuffered) keep the child predictable."""
    if config.command:
        return list(config.command)
    if not config.python:
        raise EngineMissing("No engine Python is set. Set it in the add-on preferences or run 'Set up engine'.")
    if not Path(config.python).is_file():
        raise EngineMissing(
            f"The engine Python '{config.python}' does not exist. Fix the path in the add-on preferences "
            "or run 'Set up engine'."
        )
    cmd = [config.python, "-s", "-u", "-m", "engine", "serve", "--device", config.device, "--profile", config.profile]
    if config.models:
        cmd += ["--models", config.models]
    if config.cache:
        cmd += ["--cache", config.cache]
    if config.offline:  # weights are fetched only from the preferences' Models section, when the user asks
        cmd += ["--offline"]
    return cmd


def clean_env(base: dict[str, str] | None = None, offline: bool = False) -> dict[str, str]:
    """Blender's PYTHONPATH/PYTHONHOME must not leak into the engine's interpreter.

    `offline` also stops the engine's libraries (Hugging Face) from reaching the network on their own.
    """
    env = dict(os.environ if base is None else base)
    for key in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONEXECUTABLE", "__PYVENV_LAUNCHER__"):
        env.pop(key, None)
    env["PYTHONNOUSERSITE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    if offline:
        env["BSB_OFFLINE"] = "1"
        env["HF_HUB_OFFLINE"] = "1"
    return env


def engine_command(config: EngineConfig, *args: str) -> list[str]:
    """`python -m engine ARGS --models FOLDER` with the engine's Python (for `models list|fetch`)."""
    if not config.python or not Path(config.python).is_file():
        raise EngineMissing("No engine Python is set. Run 'Set up engine' or set it in the add-on preferences.")
    return [config.python, "-s", "-u", "-m", "engine", *args] + (["--models", config.models] if config.models else [])


def list_models(config: EngineConfig, timeout: float = 120.0) -> dict:
    """`models list --json`: profiles, their weight files, sizes and presence (imports torch: seconds)."""
    try:
        proc = subprocess.run(engine_command(config, "models", "list", "--json"), capture_output=True,
                              env=clean_env(), timeout=timeout)
    except subprocess.TimeoutExpired:
        raise EngineError(f"Listing the models took over {timeout:.0f} s; try again.", "timeout") from None
    except OSError as exc:
        raise EngineMissing(f"Could not run the engine's Python ({exc}); check the path in the preferences.") from None
    lines = proc.stdout.decode("utf-8", "replace").strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
        raise EngineError(f"Listing the models failed: {tail[0][:300]}", "models")
    return json.loads(lines[-1])


_CRASH = object()


def _encode(message: dict) -> bytes:
    return (json.dumps(message, separators=(",", ":")) + "\n").encode("utf-8")


class Pending:
    """One request in flight: its messages arrive on `queue` from the reader thread."""

    def __init__(self, client: "EngineClient", request_id: str, kind: str) -> None:
        self.client = client
        self.id = request_id
        self.kind = kind
        self.queue: queue.Queue = queue.Queue()
        self.sent_at = time.monotonic()

    def wait(
        self,
        progress: ProgressFn | None = None,
        cancel: CancelFn | None = None,
        timeout: float | None = None,
        on_event: Callable[[dict], None] | None = None,
    ) -> dict:
        """Block until the result; forwards progress, sends the protocol's cancel when `cancel()` turns true.
        `on_event` gets every progress message whole (an early prepare's provisional `mesh_id`).

        Every way out is bounded: the overall `timeout` (default: the config's `request_timeout`), a
        status ping when the engine has been silent for a while, and the cancel grace period.
        """
        cfg = self.client.config
        timeout = cfg.request_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        cancel_sent_at: float | None = None
        last_heard = time.monotonic()
        ping: Pending | None = None
        try:
            while True:
                now = time.monotonic()
                if cancel is not None and cancel_sent_at is None and cancel():
                    cancel_sent_at = now
                    self.client.cancel(self.id)
                if cancel_sent_at is not None and now - cancel_sent_at > cfg.cancel_grace:
                    self.client.kill()
                    raise EngineCancelled("The engine did not stop in time, so it was stopped; it restarts on next use.")
                if now > deadline:
                    raise EngineError(
                        f"The engine did not finish '{self.kind}' within {timeout / 60:.0f} min. Press 'Restart "
                        f"engine' and try again (a smaller mesh or the CPU profile is faster).{self.client.log_hint()}",
                        "timeout")
                ping, last_heard = self._check_alive(ping, last_heard, now)
                try:
                    msg = self.queue.get(timeout=0.05)
                except queue.Empty:
                    continue
                last_heard = time.monotonic()
                if msg is _CRASH:
                    raise self.client.crash_error()
                kind = msg.get("type")
                if kind == "progress" and progress is not None:
                    progress(float(msg.get("fraction", 0.0)), str(msg.get("message", "")))
                if kind == "progress" and on_event is not None:
                    on_event(msg)
                elif kind == "result":
                    return msg.get("data") or {}
                elif kind == "error":
                    code = str(msg.get("code", "internal"))
                    text = str(msg.get("message", "engine error"))
                    if code == "cancelled":
                        raise EngineCancelled(text)
                    if code == "too_large":
                        text += " Select fewer vertices (or a smaller mesh) and try again."
                    raise EngineError(text, code, str(msg.get("traceback", "")))
        finally:
            self.client._forget(self.id)
            if ping is not None:
                self.client._forget(ping.id)

    def _check_alive(self, ping: "Pending | None", last_heard: float, now: float) -> tuple["Pending | None", float]:
        """Ping a silent engine with `status`; an engine that does not answer it is hung and is stopped."""
        cfg = self.client.config
        if ping is not None:
            try:
                answer = ping.queue.get_nowait()
            except queue.Empty:
                answer = None
            if answer is not None and answer is not _CRASH:
                self.client._forget(ping.id)
                return None, now
            if now - ping.sent_at > cfg.status_timeout:
                self.client.kill()
                raise EngineCrashed(
                    f"The engine stopped answering (no reply to a status check within {cfg.status_timeout:.0f} s), "
                    f"so it was stopped. Press 'Restart engine'.{self.client.log_hint()}")
            return ping, last_heard
        if now - last_heard > cfg.idle_check:
            return self.client.send("status"), last_heard
        return None, last_heard


class EngineClient:
    """One engine process. Thread-safe `send`; one reader thread; stderr goes to a log file."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.proc: subprocess.Popen | None = None
        self.hello: dict = {}
        self._pending: dict[str, Pending] = {}
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._session = f"{os.getpid()}-{int(time.time() * 1000) % 10**8}"
        self._hello_q: queue.Queue = queue.Queue()
        self._dead = False
        self._log = None
        self._log_start = 0
        self._models: dict | None = None
        self._reader: threading.Thread | None = None

    # -- lifetime -------------------------------------------------------------------------------
    def start(self) -> dict:
        """Start the process and check its handshake; returns the hello message."""
        cmd = build_command(self.config)
        log_path = Path(self.config.log_path or os.devnull)
        if self.config.log_path:
            log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "ab")
        self._log_start = self._log.tell()  # the log is shared across sessions: show only this one's lines
        flags = getattr(subprocess, "CREATE_NO_WINDOW", 0) if os.name == "nt" else 0
        try:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._log,
                env=clean_env(offline=self.config.offline),
                cwd=self.config.workdir or None,
                creationflags=flags,
            )
        except OSError as exc:
            self._log.close()
            raise EngineMissing(f"Could not start the engine ({cmd[0]}): {exc}. Check the engine Python path.") from exc
        self._reader = threading.Thread(target=self._read_loop, name="bsb-engine-reader", daemon=True)
        self._reader.start()
        try:
            hello = self._hello_q.get(timeout=self.config.start_timeout)
        except queue.Empty:
            self.kill()
            raise EngineMissing(
                f"The engine did not say hello within {self.config.start_timeout:.0f} s; see the log {self.config.log_path}."
            ) from None
        if hello is _CRASH:
            self.kill()  # reaps the process and closes the log file
            raise EngineMissing("The engine stopped before its handshake. " + self.crash_message())
        if hello.get("type") != "hello":
            self.kill()
            raise ProtocolMismatch(f"The engine's first message was not a handshake: {str(hello)[:200]}")
        if hello.get("protocol") != PROTOCOL_VERSION:
            self.kill()
            raise ProtocolMismatch(
                f"The engine speaks protocol {hello.get('protocol')!r}, this add-on speaks {PROTOCOL_VERSION}. "
                "Update the engine with 'Set up engine' (or the add-on) so both match."
            )
        self.hello = hello
        if self.config.python and not self.config.command:
            threading.Thread(target=self._read_model_ids, name="bsb-model-ids", daemon=True).start()
        return hello

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None and not self._dead

    @property
    def random_weights(self) -> bool:
        return bool(self.hello.get("random_weights", False))

    def models_of_profile(self) -> dict:
        """{part: model id} of the running profile, read by `models list` in the background after the
        handshake (never delaying a result); {} until known or when unknown."""
        return dict(self._models or {})

    def _read_model_ids(self) -> None:
        try:
            listing = list_models(self.config, timeout=120.0)
            profile = next(p for p in listing["profiles"] if p["name"] == self.hello.get("profile"))
            self._models = {f["part"]: f["id"] for f in profile["files"]}
        except (EngineError, StopIteration, KeyError, ValueError, TypeError):
            pass  # provenance is a record, not a requirement: a missing id never blocks a result

    def shutdown(self, timeout: float = 5.0) -> None:
        """Ask politely, then kill: frees the engine's memory (models, caches)."""
        if self.alive:
            try:
                self._write({"id": self._next_id(), "type": "shutdown"})
                self.proc.wait(timeout=timeout)
            except (EngineError, subprocess.TimeoutExpired, OSError):
                pass
        self.kill()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(timeout=5)
        if self._log is not None and not self._log.closed:
            self._log.close()

    # -- requests -------------------------------------------------------------------------------
    def send(self, kind: str, **fields) -> Pending:
        """Send one request; its answer arrives on the returned Pending."""
        request_id = self._next_id()
        pending = Pending(self, request_id, kind)
        line = _encode({"id": request_id, "type": kind, **fields})
        if len(line) > MAX_LINE_BYTES:
            raise EngineError(
                f"The '{kind}' request is {len(line) / 2**20:.1f} MiB, over the engine's 1 MiB limit. "
                "Select fewer vertices (or a smaller mesh) and try again.", "too_large")
        with self._lock:
            if self._dead or self.proc is None:
                raise EngineCrashed(self.crash_message())
            self._pending[request_id] = pending
        try:
            self._write_line(line)
        except EngineError:
            self._forget(request_id)
            raise
        return pending

    def request(
        self,
        kind: str,
        progress: ProgressFn | None = None,
        cancel: CancelFn | None = None,
        timeout: float | None = None,
        on_event: Callable[[dict], None] | None = None,
        **fields,
    ) -> dict:
        """Send and wait: the synchronous form used headless and from worker threads."""
        return self.send(kind, **fields).wait(progress=progress, cancel=cancel, timeout=timeout, on_event=on_event)

    def cancel(self, request_id: str) -> None:
        """Protocol cancel; answered at once by the engine, the job itself ends with `cancelled`."""
        try:
            self._write({"id": self._next_id(), "type": "cancel", "job": request_id})
        except EngineError:
            pass

    def log_tail(self, n_lines: int = 20) -> str:
        """The last lines this engine process wrote to the log (earlier sessions' lines are not shown)."""
        if not self.config.log_path or not Path(self.config.log_path).is_file():
            return ""
        with open(self.config.log_path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(self._log_start, fh.tell() - 8192))
            lines = fh.read().decode("utf-8", "replace").splitlines()
        return "\n".join(lines[-n_lines:])

    def log_hint(self) -> str:
        return f" Log: {self.config.log_path}." if self.config.log_path else ""

    def crash_error(self) -> EngineError:
        return EngineCrashed(self.crash_message())

    def crash_message(self) -> str:
        code = self.proc.poll() if self.proc is not None else None
        tail = self.log_tail(3)
        return (
            f"The engine stopped unexpectedly (exit code {code}). Press 'Restart engine' to try again.{self.log_hint()}"
            + (f"\nLast log lines:\n{tail}" if tail else "")
        )

    # -- internals ------------------------------------------------------------------------------
    def _next_id(self) -> str:
        return f"{self._session}-{next(self._ids)}"

    def _forget(self, request_id: str) -> None:
        with self._lock:
            self._pending.pop(request_id, None)

    def _write(self, message: dict) -> None:
        self._write_line(_encode(message))

    def _write_line(self, line: bytes) -> None:
        if self.proc is None or self.proc.stdin is None:
            raise EngineCrashed("The engine is not running. Press 'Restart engine'.")
        with self._write_lock:
            try:
                self.proc.stdin.write(line)
                self.proc.stdin.flush()
            except (BrokenPipeError, OSError, ValueError) as exc:
                raise EngineCrashed(self.crash_message()) from exc

    def _read_loop(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        got_hello = False
        for raw in self.proc.stdout:
            try:
                msg = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                self._log_line(b"[bsb client] non-JSON line on engine stdout: " + raw[:500])
                continue
            if not isinstance(msg, dict):
                continue
            if not got_hello:
                got_hello = True
                self._hello_q.put(msg)
                continue
            with self._lock:
                pending = self._pending.get(str(msg.get("id")))
                waiting = list(self._pending.values())
            if pending is not None:
                pending.queue.put(msg)
            elif msg.get("type") == "error" and msg.get("id") is None:
                # The engine could not read the request's id (a line it refused whole): this add-on sends
                # one request at a time, so the error belongs to what is waiting; failing it beats a hang.
                self._log_line(f"[bsb client] engine error without an id: {str(msg)[:500]}".encode())
                for other in waiting:
                    other.queue.put(msg)
            elif msg.get("type") == "error":
                self._log_line(f"[bsb client] engine error without a waiting request: {str(msg)[:500]}".encode())
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        with self._lock:
            self._dead = True
            waiting = list(self._pending.values())
        if not got_hello:
            self._hello_q.put(_CRASH)
        for pending in waiting:
            pending.queue.put(_CRASH)

    def _log_line(self, data: bytes) -> None:
        if self._log is not None and not self._log.closed:
            try:
                self._log.write(data.rstrip(b"\n") + b"\n")
                self._log.flush()
            except (OSError, ValueError):
                pass
