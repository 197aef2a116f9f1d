"""One task through `engine.pipeline.Session`, written as the CLI writes it, plus a record of what happened.

Runs inside a Ray actor (or in-process): it knows nothing of Ray. Every failure a user can cause becomes a
failed record with the BsbError's code; anything else is recorded as `internal` with its type and text, so
one bad asset never stops the others. The record is also written as `DIR/<id>/record.json` (atomically,
after every result file), which is what lets a rerun adopt work that a killed driver never logged.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from engine.batch.job import Task
from engine.errors import BsbError

RECORD = "record.json"


@dataclass
class Outputs:
    """What to write besides the .npz: previews on request for all tasks, .blend files with --blend."""

    preview: bool = False
    blend: bool = False

    def for_task(self, task: Task) -> dict[str, bool]:
        return {"preview": self.preview or task.preview, "blend": self.blend}


@dataclass
class _Timer:
    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = round(self.seconds.get(stage, 0.0) + time.perf_counter() - start, 4)


class TaskRunner:
    """Runs tasks with one Session; remembers the last prepared mesh (a job's lines often share a mesh)."""

    def __init__(self, session: Any, out_dir: Path, outputs: Outputs, run_id: str = "") -> None:
        self.session = session
        self.out_dir = Path(out_dir)
        self.outputs = outputs
        self.run_id = run_id
        self._last: tuple[tuple, Any, Any] | None = None  # (mesh identity, Mesh, PreparedMesh)

    def run(self, task: Task, request_hash: str) -> dict[str, Any]:
        timer = _Timer()
        record: dict[str, Any] = {"id": task.id, "kind": task.kind, "request_hash": request_hash,
                                  "mesh": str(task.mesh), "image": None if task.image is None else str(task.image),
                                  "run_id": self.run_id, "worker": f"{socket.gethostname()}:{os.getpid()}"}
        folder = self.out_dir / task.id
        try:
            with timer("total"):
                if folder.exists():
                    shutil.rmtree(folder)  # a stale or half-written earlier attempt
                folder.mkdir(parents=True)
                record.update(self._execute(task, folder, timer))
            record["status"] = "done"
        except BsbError as exc:
            record.update(status="failed", error={"code": exc.code, "message": exc.message})
        except Exception as exc:  # a bug, not the user's input: still only this asset fails
            record.update(status="failed", error={"code": "internal", "message": f"{type(exc).__name__}: {exc}"})
        record["timings"] = timer.seconds
        record["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        if folder.is_dir():
            write_record(folder, record)
        return record

    # ------------------------------------------------------------------------------------------------

    def _execute(self, task: Task, folder: Path, timer: _Timer) -> dict[str, Any]:
        from engine import results

        session = self.session
        outputs = self.outputs.for_task(task)
        with timer("load_mesh"):
            mesh = self._mesh(task)
        with timer("models"):
            model_ids = session.models.ids  # loaded once per actor: only its first task pays
        with timer("prepare"):
            prepared = self._prepared(task, mesh)
        info: dict[str, Any] = {"profile": session.profile, "random_weights": session.random_weights,
                                "model_ids": model_ids, "prepare_cached": prepared.cached,
                                "cache_key": {"mesh": prepared.key}, "vertices": mesh.num_vertices}
        parts: list[tuple[str, np.ndarray, np.ndarray]] = []  # (group, weights, mask) for --blend
        files: list[str] = []
        if task.kind in ("match", "match_all"):
            from engine.images import load_image

            with timer("set_image"):
                image = load_image(task.image)
                pimage = session.set_image(image)
            info["cache_key"]["image"] = pimage.key
        if task.kind == "match":
            points = list(task.pixels) + list(task.negatives)
            labels = [1] * len(task.pixels) + [0] * len(task.negatives)
            with timer("match"):
                match = session.match(prepared, pimage, points, labels, box=task.box,
                                      min_confidence=task.min_confidence)
            with timer("write"):
                results.write_match_npz(folder / "result.npz", match, mesh.num_vertices, image.original_size,
                                        session.random_weights)
                results.write_colored_ply(folder / "result.ply", mesh, match.vertex_mask)
                files += ["result.npz", "result.ply"]
                if outputs["preview"]:
                    from engine.preview import save_png

                    clicks = [(x, y, label) for (x, y), label in zip(points, labels)]
                    save_png(folder / "preview.png", results.match_preview(
                        mesh, image.rgb, match, clicks, image.scale, session.random_weights))
                    files.append("preview.png")
            info.update(found=match.found, confidence=round(float(match.confidence), 6), reason=match.reason,
                        n_selected=match.n_selected)
            if match.found:
                parts.append((task.group, match.weights, match.vertex_mask))
        elif task.kind == "match_all":
            with timer("match"):
                found = session.match_all(prepared, pimage, task.max_regions)
            union = np.zeros(mesh.num_vertices, bool)
            with timer("write"):
                for i, region in enumerate(found):
                    name = f"region{i:03d}.npz"
                    results.write_match_npz(folder / name, region, mesh.num_vertices, image.original_size,
                                            session.random_weights)
                    files.append(name)
                    if region.found:
                        union |= region.vertex_mask
                        parts.append((f"{task.group}_{i:03d}", region.weights, region.vertex_mask))
                results.write_colored_ply(folder / "result.ply", mesh, union)
                files.append("result.ply")
                if outputs["preview"]:
                    self._highlight(folder, mesh, union, f"match_all: {len(parts)} regions")
                    files.append("preview.png")
            confidences = [round(float(r.confidence), 6) for r in found]
            info.update(found=bool(parts), regions=len(found), confidences=confidences,
                        confidence=max(confidences, default=0.0))
        elif task.kind == "segment":
            clicks = [(v, True) for v in task.clicks] + [(w, False) for w in task.negatives]
            with timer("segment"):
                weights, mask = session.refine(prepared, clicks)
            with timer("write"):
                results.write_segment_npz(folder / "result.npz", weights, mask, clicks, session.random_weights)
                results.write_colored_ply(folder / "result.ply", mesh, mask)
                files += ["result.npz", "result.ply"]
                if outputs["preview"]:
                    self._highlight(folder, mesh, mask, f"iSeg selection from clicks {list(task.clicks)}")
                    files.append("preview.png")
            info.update(found=bool(mask.any()), n_selected=int(mask.sum()),
                        confidence=round(float(weights[mask].mean()) if mask.any() else 0.0, 6))
            parts.append((task.group, weights, mask))
        if outputs["blend"] and task.kind != "prepare":
            from engine.batch.blend import write_blend

            with timer("blend"):
                write_blend(folder / f"{task.id}.blend", mesh, parts)
            files.append(f"{task.id}.blend")
        info["files"] = files
        return info

    def _mesh(self, task: Task):
        from engine.mesh import load_mesh
        from engine.service.jobs import require_file

        require_file(task.mesh, "mesh")
        if self._last is not None and self._last[0] == _identity(task):
            return self._last[1]
        return load_mesh(task.mesh, up=task.up)

    def _prepared(self, task: Task, mesh):
        identity = _identity(task)
        if self._last is not None and self._last[0] == identity:
            prepared = self._last[2]
            prepared.cached = True  # reused in memory: nothing was computed for this task
            return prepared
        self._last = None  # free the previous mesh's features before preparing the next
        prepared = self.session.prepare(mesh)
        self._last = (identity, mesh, prepared)
        return prepared

    def _highlight(self, folder: Path, mesh, mask: np.ndarray, title: str) -> None:
        from engine import results
        from engine.preview import save_png

        save_png(folder / "preview.png", results.titled(
            [results.render_highlight(mesh, mask)], results.preview_title(title, self.session.random_weights)))


def _identity(task: Task) -> tuple:
    stat = task.mesh.stat()
    return (str(task.mesh.resolve()), task.up, stat.st_size, stat.st_mtime_ns)


def write_record(folder: Path, record: dict[str, Any]) -> None:
    """record.json, replaced atomically so a reader sees the old one or the new one, never half."""
    tmp = folder / f".{RECORD}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(record, fh, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, folder / RECORD)


def make_session(options: dict[str, Any]):
    """The default session factory: the CLI's options -> `engine.pipeline.Session` (models load on first use)."""
    from engine.pipeline import Session

    return Session(profile=options.get("profile"), device=options.get("device", "auto"),
                   models_dir=options.get("models"), cache_dir=options.get("cache"), offline=options.get("offline"))


SessionFactory = Callable[[dict[str, Any]], Any]
