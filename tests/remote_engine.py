"""Remote engines for tests, on 127.0.0.1: `RemoteEngine`, the real `python -m engine serve --listen` (tiny
profile, CPU; its bound address read from stderr), and `Harness`, an in-process RemoteServer whose trivial
handlers (`Backend`) can be held mid-job. Used by tests/test_remote_*.py and bench/remote.py."""

from __future__ import annotations

import asyncio
import os
import queue
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from bsb_addon import remote_client as rc
from bsb_addon.engine_client import EngineConfig
from engine.remote import server as remote
from engine.service import protocol

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "engine-test-token-0123456789"


class RemoteEngine:
    """`python -m engine serve --listen 127.0.0.1:0` with its stderr watched for the bound address."""

    def __init__(self, d: Path, *extra: str, token: str = TOKEN):
        env = dict(os.environ, BSB_CONFIG_DIR=str(d / "config"), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "engine", "serve", "--listen", "127.0.0.1:0", "--token", token, "--profile",
             "tiny", "--device", "cpu", "--models", str(d / "models"), "--cache", str(d / "cache"),
             "--jobs-dir", str(d / "jobs"), *extra], stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [self.lines.put(x) for x in self.proc.stderr] + [self.lines.put(None)],
                         daemon=True).start()
        self.address = self.wait_for(r"listening on (\S+)")

    def wait_for(self, pattern: str, timeout: float = 120.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            assert line is not None, "the engine exited"
            if (m := re.search(pattern, line)) is not None:
                return m.group(1)
        raise AssertionError(f"no '{pattern}' from the engine in {timeout} s")

    def client(self) -> rc.RemoteClient:
        client = rc.RemoteClient(EngineConfig(address=self.address, token=TOKEN, connect_timeout=3))
        client.start()
        return client

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)


FAKE_TOKEN = "test-token-0123456789abcdef"
HELLO = protocol.hello("0.0.test", "cpu", "CPU", "0", "test", True)


class Backend:
    """Handlers that record what ran; `prepare` takes `steps` x 50 ms; `match` writes a 50-vertex result."""

    def __init__(self):
        self.calls: list[tuple[str, dict]] = []
        self.gate = threading.Event()
        self.gate.set()

    def handlers(self):
        def prepare(request, progress, cancel):
            self.calls.append(("prepare", request))
            v = np.load(request["mesh"]["npy_vertices"])
            name = str(request.get("name", ""))
            for step in range(int(name) if name.isdigit() else 1):  # tests ask for N steps by name
                progress(step / 10, f"step {step}")
                self.gate.wait(10)
                time.sleep(0.05)
            return {"mesh_id": "mesh-x", "n_vertices": len(v), "cached": False}

        def set_image(request, progress, cancel):
            self.calls.append(("set_image", request))
            return {"image_id": "image-x", "width": 4, "height": 2, "bytes": Path(request["path"]).stat().st_size}

        def match(request, progress, cancel):
            self.calls.append(("match", request))
            folder = Path(request["job_dir"])
            np.save(folder / "weights.npy", np.linspace(0, 1, 50, dtype=np.float32))
            np.save(folder / "vertex_mask.npy", np.arange(50) >= 25)
            return {"found": True, "weights": str(folder / "weights.npy"), "mask": str(folder / "vertex_mask.npy"),
                    "part_mask": None}

        return {"prepare": prepare, "set_image": set_image, "match": match}


class Harness:
    """A RemoteServer with its event loop and worker in threads, listening on 127.0.0.1:<free port>."""

    def __init__(self, root: Path, limits=None, context=None):
        self.backend = Backend()
        self.server = remote.RemoteServer(self.backend.handlers(), HELLO, lambda: {"device": "cpu"}, FAKE_TOKEN, root,
                                          limits or remote.Limits(max_request=1 << 20))
        self.loop = asyncio.new_event_loop()
        started = threading.Event()

        def run_loop():
            asyncio.set_event_loop(self.loop)
            self.listener = self.loop.run_until_complete(asyncio.start_server(self.server.handle, "127.0.0.1", 0,
                                                                                  ssl=context))
            self.port = self.listener.sockets[0].getsockname()[1]
            started.set()
            self.loop.run_forever()
            self.loop.close()

        self.thread = threading.Thread(target=run_loop, daemon=True)
        self.thread.start()
        threading.Thread(target=self.server.work, daemon=True).start()
        assert started.wait(10)

    def close(self):
        """Stop listening, end every connection's task, then the loop (bounded)."""
        if self.loop.is_closed():
            return
        self.server.stop.set()
        self.backend.gate.set()

        async def shutdown():
            self.listener.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.loop.stop()

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop)
        self.thread.join(10)
