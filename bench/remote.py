"""Remote engine on loopback: what the network transport costs over the local subprocess.

- `remote_click_overhead_ms`: what one `match` (mesh and image prepared, the result carries a 50k-vertex
  mesh's arrays) costs through `serve --listen` over the local `serve` subprocess (NDJSON + .npy files).
  Both engines run at once on one cache and their calls alternate. The model work of a match varies from
  30 to 270 ms on this shared 2-core VM, more than the transport costs, so each call's own model time (the
  result's `timings`) is subtracted before the medians are compared; `remote_click_overhead_raw_ms` is the
  plain difference of the round-trip medians. Target <= 50 ms. `*_ping_ms`: a `status` round trip.
- `remote_full_click_ms` / `local_full_click_ms`: the add-on's whole click (jobs.run_match: prepare, set_image,
  match, arrays loaded and checked). The remote client sends a mesh or image once per engine (it remembers
  what the engine has), the local client re-sends the paths and the engine re-reads them.
- `remote_upload_1m_s`: a 1M-vertex mesh (2M triangles, 36 MB of .npy) from the client's files until the
  engine has it queued (compress, send, read, check; answered by a `status` behind it on the connection),
  then cancelled; `remote_upload_1m_mb` is what crossed the socket.
- `remote_concurrent_errors`: 8 clients at once, each 20 clicks (match) on the prepared mesh; any exception
  or wrong-sized result counts. Also the clicks' p50/p95 latency and the spread of the clients' finish times
  (the fair queue should keep it small).
The work runs on the tiny profile (random weights, CPU, 1 thread): timings of the transport, not of models.
`--quick`: fewer clicks (8 x 5 concurrent, 10 timed). Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bsb_addon import jobs  # noqa: E402
from bsb_addon.engine_client import EngineClient, EngineConfig  # noqa: E402
from tests.remote_engine import RemoteEngine  # noqa: E402


def grid(side: int, d: Path, name: str) -> jobs.MeshFiles:
    """A wavy side x side grid (side**2 vertices, 2 (side-1)**2 triangles) saved as the add-on saves meshes."""
    x, y = np.meshgrid(np.linspace(-1, 1, side), np.linspace(-1, 1, side))
    v = np.stack([x, y, 0.2 * np.sin(3 * x) * np.cos(3 * y)], -1).reshape(-1, 3).astype(np.float32)
    i = np.arange(side - 1)
    a = (i[:, None] * side + i[None, :]).ravel()
    f = np.concatenate([np.stack([a, a + 1, a + side + 1], -1), np.stack([a, a + side + 1, a + side], -1)])
    np.save(d / f"{name}_v.npy", v)
    np.save(d / f"{name}_f.npy", f.astype(np.int32))
    return jobs.MeshFiles(str(d / f"{name}_v.npy"), str(d / f"{name}_f.npy"), len(v), name)


def timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def clicker(client, mesh: jobs.MeshFiles, image: str, d: Path, tag: str):
    """(one match round trip, one whole add-on click, one status ping) as functions, mesh and image prepared."""
    ids = {"mesh": jobs.prepare(client, mesh)["mesh_id"], "image": jobs.set_image(client, image)["image_id"]}
    counter = iter(range(10**6))

    def match():
        """Returns the engine's model time of this match (seconds) to subtract from the round trip."""
        job = d / f"{tag}-m{next(counter)}"
        job.mkdir()
        data = client.request("match", mesh_id=ids["mesh"], image_id=ids["image"], points=[[64.0, 64.0]],
                              labels=[1], job_dir=str(job))
        assert data.get("weights") is None or np.load(data["weights"]).shape == (mesh.n_vertices,)
        return sum((data.get("timings") or {}).values())

    def full():
        jobs.run_match(client, mesh, image, str(d / f"{tag}-f{next(counter)}"), points=[[64.0, 64.0]], labels=[1])

    def ping():
        client.request("status")

    match()  # warm-up
    return match, full, ping


def interleaved(local: dict, remote: dict, n: int) -> dict[str, list[float]]:
    """Alternate local and remote calls so the machine's load hits both alike."""
    out: dict[str, list[float]] = {}
    for kind, count in (("match", n), ("full", max(3, n // 3)), ("ping", n)):
        for _ in range(count):
            for side, fns in (("local", local), ("remote", remote)):
                if kind == "match":
                    start = time.perf_counter()
                    work = fns["match"]()
                    total = time.perf_counter() - start
                    out.setdefault(f"{side}_match", []).append(total)
                    out.setdefault(f"{side}_transport", []).append(total - work)
                else:
                    out.setdefault(f"{side}_{kind}", []).extend(timed(fns[kind], 1))
    return out


def upload(engine: RemoteEngine, mesh: jobs.MeshFiles) -> tuple[float, float]:
    client = engine.client()
    start = time.perf_counter()
    pending = client.send("prepare", mesh={"npy_vertices": mesh.vertices, "npy_faces": mesh.faces}, up="z")
    client.request("status", timeout=120)
    seconds = time.perf_counter() - start
    client.cancel(pending.id)
    try:
        pending.wait(timeout=120)
    except Exception:  # noqa: BLE001 - cancelled, as asked
        pass
    from bsb_addon.remote_client import compress

    sent = sum(len(compress(Path(p).read_bytes())) for p in (mesh.vertices, mesh.faces))
    client.kill()
    return seconds, sent / 1e6


def concurrent(engine: RemoteEngine, mesh: jobs.MeshFiles, image: str, d: Path, n_clients: int, n_clicks: int):
    errors: list[str] = []
    latencies: list[float] = []
    finished: list[float] = []
    lock = threading.Lock()
    start = time.perf_counter()

    def one(k: int) -> None:
        try:
            client = engine.client()
            mesh_id = jobs.prepare(client, mesh)["mesh_id"]
            image_id = jobs.set_image(client, image)["image_id"]
            for i in range(n_clicks):
                job = d / f"c{k}-{i}"
                job.mkdir()
                t = time.perf_counter()
                try:
                    data = client.request("match", mesh_id=mesh_id, image_id=image_id, points=[[32.0 + i, 64.0]],
                                          labels=[1], job_dir=str(job), timeout=600)
                    if data.get("weights") is not None and np.load(data["weights"]).shape != (mesh.n_vertices,):
                        raise ValueError("wrong-sized weights")
                except Exception as exc:  # noqa: BLE001 - counted
                    with lock:
                        errors.append(f"client {k} click {i}: {exc}")
                with lock:
                    latencies.append(time.perf_counter() - t)
            client.kill()
        except Exception as exc:  # noqa: BLE001 - counted
            with lock:
                errors.append(f"client {k}: {exc}")
        with lock:
            finished.append(time.perf_counter() - start)

    threads = [threading.Thread(target=one, args=(k,)) for k in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(1200)
    return errors, latencies, finished, time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer clicks (8 x 5 concurrent, 10 timed)")
    args = ap.parse_args()
    n_timed, n_conc = (10, 5) if args.quick else (30, 20)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    d = Path(tempfile.mkdtemp(prefix="bsb-bench-remote-"))
    mesh = grid(224, d, "g50k")  # 50,176 vertices
    big = grid(1000, d, "g1m")  # 1,000,000 vertices
    px = np.zeros((128, 128, 3), np.uint8)
    px[32:96, 32:96] = (200, 90, 40)
    Image.fromarray(px).save(d / "ref.png")
    image = str(d / "ref.png")

    config = EngineConfig(command=[sys.executable, "-m", "engine", "serve", "--profile", "tiny", "--device", "cpu",
                                   "--models", str(d / "models"), "--cache", str(d / "cache")],
                          workdir=str(ROOT), start_timeout=300, log_path=str(d / "local.log"), offline=True)
    t0 = time.perf_counter()
    first = EngineClient(config)  # prepares into the cache; both measured engines then load from it alike
    first.start()
    jobs.prepare(first, mesh)
    first.shutdown()
    local = EngineClient(config)
    local.start()
    engine = RemoteEngine(d)
    try:
        fns = [clicker(c, mesh, image, d, tag) for c, tag in ((local, "local"), (engine.client(), "remote"))]
        setup_s = time.perf_counter() - t0
        times = interleaved(*({"match": m, "full": f, "ping": p} for m, f, p in fns), n_timed)
        local.shutdown()
        upload_s, upload_mb = upload(engine, big)
        errors, latencies, finished, conc_s = concurrent(engine, mesh, image, d, 8, n_conc)
    finally:
        local.kill()
        engine.close()

    ms = lambda xs: 1000 * statistics.median(xs)  # noqa: E731
    result = {
        "remote_click_overhead_ms": round(ms(times["remote_transport"]) - ms(times["local_transport"]), 1),
        "remote_click_overhead_raw_ms": round(ms(times["remote_match"]) - ms(times["local_match"]), 1),
        "remote_match_minus_model_ms": round(ms(times["remote_transport"]), 1),
        "local_match_minus_model_ms": round(ms(times["local_transport"]), 1),
        "remote_match_ms": round(ms(times["remote_match"]), 1), "local_match_ms": round(ms(times["local_match"]), 1),
        "remote_full_click_ms": round(ms(times["remote_full"]), 1),
        "local_full_click_ms": round(ms(times["local_full"]), 1),
        "remote_ping_ms": round(ms(times["remote_ping"]), 2), "local_ping_ms": round(ms(times["local_ping"]), 2),
        "remote_upload_1m_s": round(upload_s, 2), "remote_upload_1m_mb": round(upload_mb, 1),
        "remote_concurrent_errors": len(errors), "remote_concurrent_clicks": len(latencies),
        "remote_concurrent_p50_ms": round(ms(latencies), 1) if latencies else None,
        "remote_concurrent_p95_ms": round(1000 * float(np.percentile(latencies, 95)), 1) if latencies else None,
        "remote_concurrent_s": round(conc_s, 1),
        "remote_concurrent_finish_spread_s": round(max(finished) - min(finished), 1) if finished else None,
        "n_vertices_click": mesh.n_vertices, "n_vertices_upload": big.n_vertices, "profile": "tiny",
        "quick": args.quick, "setup_s": round(setup_s, 1), "load": round(os.getloadavg()[0], 2),
    }
    for line in errors[:5]:
        print("error:", line)
    print(f"{'metric':34s} value")
    for key, value in result.items():
        print(f"{key:34s} {value}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
