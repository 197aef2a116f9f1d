"""A stand-in for `python -m engine serve` at the process boundary (protocol v1), for client tests.

Its answers follow a planted rule so tests know them by construction: a click in the top half of the
image (y < H/2, top-left origin) selects the vertices above the mesh's mid-height along its up axis,
a click in the bottom half the ones below; a click in the leftmost tenth finds no part. segment_all cuts
the mesh into height bands (2 below granularity 0.5, else 3), find_part finds "top" (the upper half) only. Flags make it
misbehave on purpose: --protocol N, --random-weights, --crash-on TYPE, --slow SECONDS, --ignore-cancel,
--die-at-start, --hang-on TYPE (stop answering anything, status included), --no-id-on TYPE (answer that
request with an error whose id is null, as the engine does for a line it cannot read). The hello also
reports whether the client started it offline (BSB_OFFLINE).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import queue
import sys
import threading
import time

import numpy as np
from PIL import Image

UP_AXIS = {"z": 2, "y": 1}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--protocol", type=int, default=1)
    ap.add_argument("--random-weights", action="store_true")
    ap.add_argument("--crash-on", default="")
    ap.add_argument("--slow", type=float, default=0.0)
    ap.add_argument("--ignore-cancel", action="store_true")
    ap.add_argument("--die-at-start", action="store_true")
    ap.add_argument("--hang-on", default="")
    ap.add_argument("--no-id-on", default="")
    args = ap.parse_args()

    if args.die_at_start:
        print("fake engine: ModuleNotFoundError: No module named 'torch'", file=sys.stderr)
        return 1

    out_lock = threading.Lock()

    def emit(msg: dict) -> None:
        with out_lock:
            sys.stdout.write(json.dumps(msg) + "\n")
            sys.stdout.flush()

    emit({"type": "hello", "protocol": args.protocol, "engine": "0.0-fake", "device": "cpu",
          "device_name": "fake", "torch": "none", "profile": "fake", "random_weights": args.random_weights,
          "offline": os.environ.get("BSB_OFFLINE") == "1"})

    meshes: dict[str, dict] = {}
    images: dict[str, tuple[int, int]] = {}
    jobs: queue.Queue = queue.Queue()
    cancelled: set[str] = set()
    state = {"job": None}

    def check_cancel(req_id: str) -> None:
        if req_id in cancelled and not args.ignore_cancel:
            raise Cancelled()

    def work(req: dict) -> dict:
        kind, rid = req["type"], req["id"]
        emit({"type": "progress", "id": rid, "fraction": 0.0, "message": f"{kind} started"})
        if args.crash_on == kind:
            print(f"fake engine: crashing on {kind}", file=sys.stderr)
            sys.stderr.flush()
            os._exit(3)
        steps = int(args.slow / 0.05)
        for i in range(steps):
            time.sleep(0.05)
            check_cancel(rid)
            if i % 10 == 0:
                emit({"type": "progress", "id": rid, "fraction": i / max(steps, 1), "message": "working"})
        check_cancel(rid)
        if kind == "prepare":
            v = np.load(req["mesh"]["npy_vertices"])
            f = np.load(req["mesh"]["npy_faces"])
            if v.ndim != 2 or v.shape[1] != 3 or f.ndim != 2 or f.shape[1] != 3:
                raise Failure("bad_array", f"vertices {v.shape} / faces {f.shape}")
            mesh_id = hashlib.sha256(v.tobytes() + f.tobytes()).hexdigest()[:16]
            cached = mesh_id in meshes
            meshes[mesh_id] = {"v": v, "f": f, "up": UP_AXIS[req.get("up", "z")]}
            return {"mesh_id": mesh_id, "cached": cached, "n_vertices": len(v), "n_faces": len(f), "seconds": 0.0}
        if kind == "set_image":
            if not os.path.isfile(req["path"]):
                raise Failure("not_found", f"no image at {req['path']}")
            with Image.open(req["path"]) as im:
                size = im.size
            image_id = hashlib.sha256(req["path"].encode()).hexdigest()[:16]
            images[image_id] = size
            return {"image_id": image_id, "width": size[0], "height": size[1], "cached": False}
        mesh = meshes.get(req.get("mesh_id"))
        if mesh is None:
            raise Failure("not_found", "unknown mesh_id")
        height_axis = mesh["v"][:, mesh["up"]]
        mid = 0.5 * (height_axis.min() + height_axis.max())
        top = height_axis > mid
        if kind == "segment_all":
            n = 2 if req.get("granularity", 0.5) < 0.5 else 3
            edges = np.quantile(height_axis, np.linspace(0, 1, n + 1)[1:-1])
            labels = np.searchsorted(edges, height_axis, side="right").astype(np.int32)
            path = os.path.join(req["job_dir"], "part_labels.npy")
            np.save(path, labels)
            parts = [{"index": i, "name": f"part {i + 1}", "n_vertices": int((labels == i).sum()), "area": 1 / n,
                      "score": 0.9, "seed": int(np.argmax(labels == i)), "color": [200, 40 * i, 255 - 60 * i]}
                     for i in range(n)]
            return {"labels": path, "n_parts": n, "granularity": req.get("granularity", 0.5), "parts": parts,
                    "reused": False, "seconds": 0.0}
        if kind == "find_part":
            if req["text"] != "top":
                return {"found": False, "reason": f"no view shows a '{req['text']}'", "mask": None, "weights": None}
            return {"found": True, "reason": "", **save(req["job_dir"], top, None)}
        if kind == "refine":
            clicks = req["clicks"]
            pos = [c[0] for c in clicks if c[1]]
            neg = [c[0] for c in clicks if not c[1]]
            sel = nearest_distance(mesh["v"], pos) < nearest_distance(mesh["v"], neg)
            return {**save(req["job_dir"], sel, None), "n_selected": int(sel.sum())}
        width, height = images[req["image_id"]]
        if kind == "match":
            x, y = req["points"][0] if req["points"] else (
                0.5 * (req["box"][0] + req["box"][2]), 0.5 * (req["box"][1] + req["box"][3]))
            part2d = np.zeros((height, width), bool)
            if x < 0.1 * width:
                part2d[:, : max(1, width // 10)] = True
                np.save(os.path.join(req["job_dir"], "part_mask.npy"), part2d)
                return {"found": False, "confidence": 0.1, "reason": "no valid candidate", "weights": None,
                        "mask": None, "part_mask": os.path.join(req["job_dir"], "part_mask.npy"), "n_selected": 0}
            in_top = y < 0.5 * height
            sel = top if in_top else ~top
            if in_top:
                part2d[: height // 2] = True
            else:
                part2d[height // 2:] = True
            return {"found": True, "confidence": 0.9, "n_candidates": 10, "n_valid": 3, "winner_vertex": 0,
                    "winner_pixel": [x, y], **save(req["job_dir"], sel, part2d), "n_selected": int(sel.sum()),
                    "timings": {}, "reason": None}
        if kind == "match_all":
            regions = []
            for name, sel in (("top", top), ("bottom", ~top)):
                sub = os.path.join(req["job_dir"], name)
                os.makedirs(sub, exist_ok=True)
                regions.append({"name": name, "found": True, "confidence": 0.8, **save(sub, sel, None),
                                "n_selected": int(sel.sum())})
            return {"regions": regions}
        if kind == "shape_to_image":
            in_top = bool(top[req["vertices"]].mean() > 0.5)
            part2d = np.zeros((height, width), bool)
            if in_top:
                part2d[: height // 2] = True
            else:
                part2d[height // 2:] = True
            path = os.path.join(req["job_dir"], "image_mask.npy")
            np.save(path, part2d)
            return {"pixel": [width / 2, height / 4 if in_top else 3 * height / 4], "mask": path, "confidence": 0.7}
        raise Failure("bad_request", f"unknown type {kind}")

    def worker() -> None:
        while True:
            req = jobs.get()
            state["job"] = req["id"]
            try:
                if req["id"] in cancelled and not args.ignore_cancel:
                    raise Cancelled()
                msg = {"type": "result", "id": req["id"], "data": work(req)}
            except Cancelled:
                msg = {"type": "error", "id": req["id"], "code": "cancelled", "message": "cancelled by the user"}
            except Failure as exc:
                msg = {"type": "error", "id": req["id"], "code": exc.code, "message": exc.text}
            except Exception as exc:  # the real engine reports bugs as `internal` too
                msg = {"type": "error", "id": req["id"], "code": "internal", "message": repr(exc)}
            state["job"] = None
            emit(msg)

    threading.Thread(target=worker, daemon=True).start()
    for line in sys.stdin:
        if state.get("hung"):
            continue
        try:
            req = json.loads(line)
        except json.JSONDecodeError:
            emit({"type": "error", "id": None, "code": "bad_json", "message": "not JSON"})
            continue
        kind = req.get("type")
        if kind and kind == args.hang_on:
            state["hung"] = True
            continue
        if kind and kind == args.no_id_on:
            emit({"type": "error", "id": None, "code": "too_large", "message": "request line over 1 MiB"})
            continue
        if kind == "cancel":
            cancelled.add(req.get("job"))
            emit({"type": "result", "id": req["id"], "data": {"cancelled": True}})
        elif kind == "status":
            emit({"type": "result", "id": req["id"], "data": {"busy": state["job"] is not None, "job": state["job"],
                                                               "queue": jobs.qsize(), "meshes": len(meshes),
                                                               "images": len(images), "device": "cpu"}})
        elif kind == "shutdown":
            emit({"type": "result", "id": req["id"], "data": {"ok": True}})
            return 0
        else:
            jobs.put(req)
    return 0


def nearest_distance(v: np.ndarray, indices: list[int]) -> np.ndarray:
    """Distance from every vertex to the nearest of `indices` (inf if none), one click at a time to stay small."""
    best = np.full(len(v), np.inf)
    for i in indices:
        np.minimum(best, np.linalg.norm(v - v[i], axis=1), out=best)
    return best


def save(job_dir: str, sel: np.ndarray, part2d: np.ndarray | None) -> dict:
    os.makedirs(job_dir, exist_ok=True)
    weights = os.path.join(job_dir, "weights.npy")
    mask = os.path.join(job_dir, "vertex_mask.npy")
    np.save(weights, np.where(sel, 0.9, 0.05).astype(np.float32))
    np.save(mask, sel)
    out = {"weights": weights, "mask": mask}
    if part2d is not None:
        out["part_mask"] = os.path.join(job_dir, "part_mask.npy")
        np.save(out["part_mask"], part2d)
    return out


class Cancelled(Exception):
    pass


class Failure(Exception):
    def __init__(self, code: str, text: str) -> None:
        super().__init__(text)
        self.code, self.text = code, text


if __name__ == "__main__":
    raise SystemExit(main())
