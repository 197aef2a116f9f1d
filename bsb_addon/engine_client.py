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
    profile: str = "cpu"
    cache: str = ""
    log_path: str = ""
    workdir: str = ""
    command: list[str] = field(default_factory=list)
    start_timeout: float = 120.0
    cancel_grace: float = 5.0


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
    return cmd


def clean_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Blender's PYTHONPATH/PYTHONHOME must not leak into the engine's interpreter."""
    env = dict(os.environ if base is None else base)
    for key in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONEXECUTABLE", "__PYVENV_LAUNCHER__"):
        env.pop(key, None)
    env["PYTHONNOUSERSITE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


_CRASH = object()


class Pending:
    """One request in flight: its messages arrive on `queue` from the reader thread."""

    def __init__(self, client: "EngineClient", request_id: str, kind: str) -> None:
        self.client = client
        self.id = request_id
        self.kind = kind
        self.queue: queue.Queue = queue.Queue()

    def wait(
        self,
        progress: ProgressFn | None = None,
        cancel: CancelFn | None = None,
        timeout: float | None = None,
    ) -> dict:
        """Block until the result; forwards progress, sends the protocol's cancel when `cancel()` turns true."""
        deadline = None if timeout is None else time.monotonic() + timeout
        cancel_sent_at: float | None = None
        try:
            while True:
                if cancel is not None and cancel_sent_at is None and cancel():
                    cancel_sent_at = time.monotonic()
                    self.client.cancel(self.id)
                if cancel_sent_at is not None and time.monotonic() - cancel_sent_at > self.client.config.cancel_grace:
                    self.client.kill()
                    raise EngineCancelled("The engine did not stop in time, so it was stopped; it restarts on next use.")
                if deadline is not None and time.monotonic() > deadline:
                    raise EngineError(f"The engine did not answer '{self.kind}' within {timeout:.0f} s.", "timeout")
                try:
                    msg = self.queue.get(timeout=0.05)
                except queue.Empty:
                    continue
                if msg is _CRASH:
                    raise EngineCrashed(self.client.crash_message())
                kind = msg.get("type")
                if kind == "progress" and progress is not None:
                    progress(float(msg.get("fraction", 0.0)), str(msg.get("message", "")))
                elif kind == "result":
                    return msg.get("data") or {}
                elif kind == "error":
                    code = str(msg.get("code", "internal"))
                    text = str(msg.get("message", "engine error"))
                    if code == "cancelled":
                        raise EngineCancelled(text)
                    raise EngineError(text, code, str(msg.get("traceback", "")))
        finally:
            self.client._forget(self.id)


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
        self._reader: threading.Thread | None = None

    # -- lifetime -------------------------------------------------------------------------------
    def start(self) -> dict:
        """Start the process and check its handshake; returns the hello message."""
        cmd = build_command(self.config)
        log_path = Path(self.config.log_path or os.devnull)
        if self.config.log_path:
            log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "ab")
        flags = getattr(subprocess, "CREATE_NO_WINDOW", 0) if os.name == "nt" else 0
        try:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._log,
                env=clean_env(),
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
        return hello

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None and not self._dead

    @property
    def random_weights(self) -> bool:
        return bool(self.hello.get("random_weights", False))

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
        with self._lock:
            if self._dead or self.proc is None:
                raise EngineCrashed(self.crash_message())
            self._pending[request_id] = pending
        try:
            self._write({"id": request_id, "type": kind, **fields})
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
        **fields,
    ) -> dict:
        """Send and wait: the synchronous form used headless and from worker threads."""
        return self.send(kind, **fields).wait(progress=progress, cancel=cancel, timeout=timeout)

    def cancel(self, request_id: str) -> None:
        """Protocol cancel; answered at once by the engine, the job itself ends with `cancelled`."""
        try:
            self._write({"id": self._next_id(), "type": "cancel", "job": request_id})
        except EngineError:
            pass

    def log_tail(self, n_lines: int = 20) -> str:
        if not self.config.log_path or not Path(self.config.log_path).is_file():
            return ""
        with open(self.config.log_path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 8192))
            lines = fh.read().decode("utf-8", "replace").splitlines()
        return "\n".join(lines[-n_lines:])

    def crash_message(self) -> str:
        code = self.proc.poll() if self.proc is not None else None
        tail = self.log_tail(5)
        where = f" Log: {self.config.log_path}." if self.config.log_path else ""
        return (
            f"The engine stopped unexpectedly (exit code {code}). Press 'Restart engine' to try again.{where}"
            + (f"\n{tail}" if tail else "")
        )

    # -- internals ------------------------------------------------------------------------------
    def _next_id(self) -> str:
        return f"{self._session}-{next(self._ids)}"

    def _forget(self, request_id: str) -> None:
        with self._lock:
            self._pending.pop(request_id, None)

    def _write(self, message: dict) -> None:
        if self.proc is None or self.proc.stdin is None:
            raise EngineCrashed("The engine is not running. Press 'Restart engine'.")
        line = (json.dumps(message, separators=(",", ":")) + "\n").encode("utf-8")
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
            if pending is not None:
                pending.queue.put(msg)
            elif msg.get("type") == "error":
                self._log_line(f"[bsb client] engine error without a waiting request: {msg}".encode())
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
