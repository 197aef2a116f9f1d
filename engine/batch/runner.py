"""The driver: decide what is left to do, spread it over Ray actors, log every result as it arrives.

Each actor builds one `engine.pipeline.Session` and keeps its models loaded for the whole job; a GPU
actor takes a GPU (or a share of one, `gpus_per_actor`), a CPU actor a few cores, and several actors run
side by side when the cluster has room. Tasks on the same mesh go to the same actor one after another
(the prepared mesh stays in memory). Each actor holds at most two tasks, so a free actor is never idle
and a killed driver has little in flight. Ray is imported here only, and only when there is work.
"""

from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.batch.job import Job, Task, request_hash
from engine.batch.ledger import Ledger
from engine.batch.progress import Bar
from engine.batch.worker import Outputs, SessionFactory, TaskRunner, make_session
from engine.errors import BsbError

INSTALL_HINT = 'Ray is not installed; install the batch extra: pip install -e ".[batch]" (or: pip install "ray[default]>=2.9")'
IN_FLIGHT_PER_ACTOR = 2


def import_ray():
    """Ray, or a BsbError that says how to install it (it is an optional extra)."""
    try:
        import ray
    except ImportError:
        raise BsbError(INSTALL_HINT, "missing_dependency") from None
    return ray


@dataclass
class BatchOptions:
    out_dir: Path
    profile: str | None = None  # None: gpu when the actors get GPUs, else cpu (as a Session picks)
    device: str = "auto"
    models: Path | None = None
    cache: Path | None = None
    offline: bool | None = None
    outputs: Outputs = field(default_factory=Outputs)
    ray_address: str | None = None  # None: a local Ray started for this job (or the one already running here)
    actors: int | None = None
    cpus_per_actor: float | None = None
    gpus_per_actor: float | None = None
    show_progress: bool = True
    session_factory: SessionFactory = make_session  # how an actor builds its Session (bench: random weights)


@dataclass
class BatchReport:
    records: list[dict[str, Any]]  # computed (or failed) in this run, in arrival order
    skipped: list[str]  # ids already done with the same request
    wall_s: float
    profile: str

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("status") != "done"]


class _Actor:
    """A Ray actor: one Session (models loaded once, on the first task) running tasks in order."""

    def __init__(self, factory: SessionFactory, session_options: dict[str, Any], out_dir: Path, outputs: Outputs,
                 run_id: str, threads: int) -> None:
        import torch

        torch.set_num_threads(max(1, threads))
        self.runner = TaskRunner(factory(session_options), out_dir, outputs, run_id)

    def run(self, task: Task, digest: str) -> dict[str, Any]:
        return self.runner.run(task, digest)


def run_batch(job: Job, options: BatchOptions) -> BatchReport:
    start = time.monotonic()
    out_dir = Path(options.out_dir).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(out_dir)
    run_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    records: list[dict[str, Any]] = []
    for bad in job.bad:  # lines that never became tasks: failed at once, logged like any other failure
        record = {"id": bad.id, "kind": None, "status": "failed", "line": bad.line, "run_id": run_id,
                  "error": {"code": bad.code, "message": bad.message}, "timings": {}}
        ledger.append(record)
        records.append(record)

    ray = import_ray()
    started = False
    try:
        profile = options.profile or ("cpu" if options.device == "cpu" else None)
        if profile is None:  # the default profile depends on whether the workers get GPUs
            started = _connect(ray, options)
            profile = "gpu" if _plan(ray, options)["gpus"] > 0 else "cpu"
        hashes = _hashes(job.tasks, profile, options.outputs)
        pending = [t for t in job.tasks if not (ledger.is_done(t.id, hashes[t.id]) or ledger.adopt(t.id, hashes[t.id]))]
        todo = {t.id for t in pending}
        skipped = [t.id for t in job.tasks if t.id not in todo]
        if pending:  # a finished job's rerun never starts Ray
            started = _connect(ray, options) or started
            session_options = {"profile": profile, "device": options.device, "models": options.models,
                               "cache": options.cache, "offline": options.offline}
            records += _dispatch(ray, _plan(ray, options), pending, hashes, options, session_options, ledger,
                                 out_dir, run_id, len(skipped))
    finally:
        if started:
            ray.shutdown()
    return BatchReport(records, skipped, time.monotonic() - start, profile)


def _connect(ray, options: BatchOptions) -> bool:
    """Join `options.ray_address`, or start a local Ray; reuse one this process already joined. True if joined now."""
    if ray.is_initialized():
        return False
    ray.init(address=options.ray_address, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    return True


def _hashes(tasks: list[Task], profile: str, outputs: Outputs) -> dict[str, str]:
    from engine.pipeline import settings_for

    settings = settings_for(profile).to_dict()
    return {t.id: request_hash(t, profile, settings, outputs.for_task(t)) for t in tasks}


def _plan(ray, options: BatchOptions) -> dict[str, Any]:
    """How many actors and what each takes: a GPU (or a share) each when there are GPUs, else ~4 cores each."""
    resources = ray.cluster_resources()
    cpus, gpus = float(resources.get("CPU", 1)), float(resources.get("GPU", 0))
    if options.device == "cpu":
        gpus = 0.0
    if gpus > 0:
        per_gpu = options.gpus_per_actor or 1.0
        actors = options.actors or max(1, int(gpus / per_gpu))
        per_cpu = options.cpus_per_actor or max(1.0, float(int(cpus / actors)))
    else:
        per_gpu = 0.0
        per_cpu = options.cpus_per_actor or min(4.0, cpus)
        actors = options.actors or max(1, int(cpus / per_cpu))
    return {"actors": actors, "cpus": per_cpu, "gpus": per_gpu}


def _runtime_env() -> dict[str, Any]:
    """Workers import `engine` from where this driver did (a checkout may shadow an installed copy)."""
    import engine

    root = str(Path(engine.__file__).resolve().parents[1])
    paths = [root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != root]
    return {"env_vars": {"PYTHONPATH": os.pathsep.join(paths)}}


class _Queue:
    """Tasks grouped by mesh; an actor finishes its group before it takes the next one."""

    def __init__(self, tasks: list[Task]) -> None:
        groups: dict[tuple[str, str], list[Task]] = {}
        for t in tasks:
            groups.setdefault((str(t.mesh.resolve()), t.up), []).append(t)
        self.groups = deque(deque(g) for g in groups.values())
        self.current: dict[int, deque] = {}

    def next_for(self, actor: int) -> Task | None:
        group = self.current.get(actor)
        if not group:
            if not self.groups:
                return None
            group = self.current[actor] = self.groups.popleft()
        return group.popleft()


def _dispatch(ray, plan: dict[str, Any], pending: list[Task], hashes: dict[str, str], options: BatchOptions,
              session_options: dict[str, Any], ledger: Ledger, out_dir: Path, run_id: str,
              skipped: int) -> list[dict[str, Any]]:
    remote = ray.remote(_Actor)
    n_actors = min(plan["actors"], len(pending))

    def spawn():
        return remote.options(num_cpus=plan["cpus"], num_gpus=plan["gpus"], runtime_env=_runtime_env(),
                              max_restarts=0).remote(options.session_factory, session_options, out_dir,
                                                     options.outputs, run_id, int(plan["cpus"]))

    actors = [spawn() for _ in range(n_actors)]
    queue = _Queue(pending)
    in_flight: dict[Any, tuple[int, Any, Task]] = {}  # ref -> (slot, actor handle, task)
    load = [0] * n_actors
    records: list[dict[str, Any]] = []

    def feed(i: int) -> None:
        while load[i] < IN_FLIGHT_PER_ACTOR and (task := queue.next_for(i)) is not None:
            in_flight[actors[i].run.remote(task, hashes[task.id])] = (i, actors[i], task)
            load[i] += 1

    bar = Bar(len(pending), skipped, options.show_progress)
    try:
        for i in range(n_actors):
            feed(i)
        while in_flight:
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            for ref in ready:
                i, actor, task = in_flight.pop(ref)
                load[i] -= 1
                try:
                    record = ray.get(ref)
                except ray.exceptions.RayError as exc:  # the actor died (out of memory, node lost...)
                    record = _lost(task, hashes[task.id], run_id, exc)
                    if actors[i] is actor:  # replace it once; its other queued tasks fail the same way
                        actors[i] = spawn()
                ledger.append(record)
                records.append(record)
                bar.update(record)
                feed(i)
    finally:
        bar.close()
        for actor in actors:
            ray.kill(actor)
    return records


def _lost(task: Task, digest: str, run_id: str, exc: Exception) -> dict[str, Any]:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return {"id": task.id, "kind": task.kind, "request_hash": digest, "status": "failed", "run_id": run_id,
            "mesh": str(task.mesh), "timings": {},
            "error": {"code": "worker_lost", "message": f"the worker running this asset died: {first[:300]}"}}
