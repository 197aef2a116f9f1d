"""The `serve` loop: a reader thread answers control requests at once and queues jobs; the calling thread
runs the jobs one at a time, in order.

Why two threads: a prepare can run for minutes, and the client must still be able to ask `status`, cancel
it, or shut the engine down meanwhile. Cancel is cooperative (a threading.Event the job's cancel
callback reads), so torch never gets interrupted in the middle of a kernel.
"""

from __future__ import annotations

import collections
import json
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Mapping

from engine.errors import BsbError, Cancelled, ProtocolError, os_reason
from engine.service import protocol
from engine.service.protocol import Channel

Progress = Callable[[float, str], None]
CancelCheck = Callable[[], bool]
Handler = Callable[[dict[str, Any], Progress, CancelCheck], dict[str, Any]]

PROGRESS_INTERVAL_S = 0.1
# Quick jobs that a running `prepare` with `"early": true` lets through at its steps, so that the provisional
# mesh it announces can be clicked while its SAM and iSeg stages go on (engine.provisional). They run in
# the job thread, between two steps of the prepare: the models are never used by two jobs at once.
INTERLEAVED = frozenset({"set_image", "match", "refine"})


@dataclass
class Job:
    """One queued request and its cancel flag (also used by engine.remote's fair queue)."""

    request: dict[str, Any]
    cancel: threading.Event = field(default_factory=threading.Event)

    @property
    def id(self) -> str:
        return self.request["id"]


class _State:
    """Everything the two threads share, behind one condition variable."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.queue: collections.deque[Job] = collections.deque()
        self.running: Job | None = None
        self.eof = False
        self.stop = False


def _log(text: str) -> None:
    print(f"[engine] {text}", file=sys.stderr, flush=True)


def serve(handlers: Mapping[str, Handler], hello: dict[str, Any], stdin: BinaryIO, channel: Channel,
          status: Callable[[], dict[str, Any]] | None = None, max_queue: int = 64) -> int:
    """Speak the protocol until shutdown, EOF on stdin (after finishing queued jobs) or a vanished client.

    `handlers` maps each job type to a function (request, progress, cancel) -> result data; a handler
    raises BsbError for problems the user can fix. Returns the process exit code.
    """
    state = _State()
    if not channel.send(hello):
        return 0
    reader = threading.Thread(target=_read_loop, name="protocol-reader",
                              args=(state, handlers, stdin, channel, status or dict, max_queue), daemon=True)
    reader.start()
    while True:
        with state.cond:
            while not state.queue and not state.stop and not state.eof and not channel.broken:
                state.cond.wait(0.5)
            if state.stop or channel.broken or not state.queue:
                break
            job = state.queue.popleft()
            state.running = job
        interleave = None
        if job.request.get("early"):
            interleave = lambda: _run_interleaved(state, handlers, channel)  # noqa: E731
        final = run_job(job, handlers[job.request["type"]], channel, interleave)
        with state.cond:  # not busy any more by the time the client reads the answer
            state.running = None
        channel.send(final)
    return 0


def _run_interleaved(state: _State, handlers: Mapping[str, Handler], channel: Channel) -> None:
    """Run the INTERLEAVED jobs at the head of the queue now (never past another job: order is kept)."""
    while True:
        with state.cond:
            if state.stop or not state.queue or state.queue[0].request["type"] not in INTERLEAVED:
                return
            job = state.queue.popleft()
        channel.send(run_job(job, handlers[job.request["type"]], channel))


def run_job(job: Job, handler: Handler, channel: Channel,
             interleave: Callable[[], None] | None = None) -> dict[str, Any]:
    """Run one job; returns its final message (result or error) for the caller to send.
    `interleave` runs at each of the job's progress steps (see INTERLEAVED)."""
    last = [0.0]

    def cancelled() -> bool:
        return job.cancel.is_set() or channel.broken

    def report(fraction: float, message: str, **extra: Any) -> None:
        now = time.monotonic()
        if extra or fraction >= 1.0 or now - last[0] >= PROGRESS_INTERVAL_S:
            last[0] = now
            channel.send(protocol.progress(job.id, fraction, message, **extra))
        if cancelled():
            raise Cancelled()
        if interleave is not None:
            interleave()

    kind = job.request["type"]
    start = time.monotonic()
    try:
        if cancelled():
            raise Cancelled()
        message = protocol.result(job.id, handler(job.request, report, cancelled))
        json.dumps(message, allow_nan=False)  # a NaN in a result is a bug: report it instead of sending it
        _log(f"{kind} {job.id} done in {time.monotonic() - start:.2f}s")
        return message
    except BsbError as exc:
        _log(f"{kind} {job.id} failed ({exc.code}): {exc.message}")
        return protocol.error(job.id, exc.code, exc.message, traceback.format_exc())
    except OSError as exc:  # an I/O problem no check caught: say which path, keep serving
        text = traceback.format_exc()
        _log(f"{kind} {job.id} failed on I/O:\n{text}")
        where = f" ({exc.filename})" if exc.filename else ""
        return protocol.error(job.id, "internal", f"cannot read or write a file{where}: {os_reason(exc)}", text)
    except Exception as exc:  # a bug: report it and keep serving
        text = traceback.format_exc()
        _log(f"{kind} {job.id} crashed:\n{text}")
        return protocol.error(job.id, "internal", f"{type(exc).__name__}: {exc}", text)


def _read_loop(state: _State, handlers: Mapping[str, Handler], stdin: BinaryIO, channel: Channel,
               status: Callable[[], dict[str, Any]], max_queue: int) -> None:
    try:
        while not state.stop:
            try:
                line = protocol.read_line(stdin)
            except protocol.LineTooLong as exc:
                channel.send(protocol.error(protocol.recover_id(exc.head), exc.code, exc.message))
                continue
            if line is None:
                break
            if line.strip():
                _answer(state, handlers, line, channel, status, max_queue)
    except Exception:  # stdin broke: behave as at EOF rather than leaving the job loop waiting forever
        _log("reading requests failed:\n" + traceback.format_exc())
    with state.cond:
        state.eof = True
        state.cond.notify_all()


def _answer(state: _State, handlers: Mapping[str, Handler], line: bytes, channel: Channel,
            status: Callable[[], dict[str, Any]], max_queue: int) -> None:
    """Check one request line and queue or answer it; whatever the line holds, the reader survives it."""
    try:
        request = protocol.parse_request(line)
    except ProtocolError as exc:
        channel.send(protocol.error(protocol.recover_id(line), exc.code, exc.message))
        return
    except Exception as exc:  # a bug in the checks: answer this line, keep reading the next ones
        _log("checking a request failed:\n" + traceback.format_exc())
        channel.send(protocol.error(protocol.recover_id(line), "internal", f"{type(exc).__name__}: {exc}"))
        return
    _dispatch(state, handlers, request, channel, status, max_queue)


def _dispatch(state: _State, handlers: Mapping[str, Handler], request: dict[str, Any], channel: Channel,
              status: Callable[[], dict[str, Any]], max_queue: int) -> None:
    rid, kind = request["id"], request["type"]
    with state.cond:
        if kind == "status":
            running = state.running
            data = {"busy": running is not None, "job": running.id if running else None,
                    "queue": len(state.queue)}
            data.update(status())
            channel.send(protocol.result(rid, data))
        elif kind == "cancel":
            channel.send(protocol.result(rid, {"cancelled": _cancel(state, request["job"], channel)}))
        elif kind == "shutdown":
            state.stop = True
            if state.running is not None:
                state.running.cancel.set()
            while state.queue:
                dropped = state.queue.popleft()
                channel.send(protocol.error(dropped.id, "cancelled", "dropped: the engine is shutting down"))
            channel.send(protocol.result(rid, {"ok": True}))
            state.cond.notify_all()
        elif kind not in handlers:
            channel.send(protocol.error(rid, "bad_request", f"this engine cannot run '{kind}' requests"))
        elif (state.running and state.running.id == rid) or any(j.id == rid for j in state.queue):
            channel.send(protocol.error(rid, "bad_request", f"id {rid!r} is already in use; ids must be unique"))
        elif len(state.queue) >= max_queue:
            channel.send(protocol.error(rid, "busy", f"{len(state.queue)} jobs are already waiting; "
                                                     "wait for results before sending more"))
        else:
            state.queue.append(Job(request))
            state.cond.notify_all()


def _cancel(state: _State, job_id: str, channel: Channel) -> bool:
    """Cancel the running job (it ends with a `cancelled` error at its next step) or drop a queued one
    (it is answered with a `cancelled` error now, so every request still gets exactly one final reply)."""
    if state.running is not None and state.running.id == job_id:
        state.running.cancel.set()
        return True
    for job in list(state.queue):
        if job.id == job_id:
            state.queue.remove(job)
            channel.send(protocol.error(job_id, "cancelled", "dropped from the queue before it started"))
            return True
    return False
