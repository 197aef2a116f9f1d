"""A real `python -m engine serve --listen 127.0.0.1:0` for tests (tiny profile, CPU), its bound address read
from stderr. Used by tests/test_remote_engine.py and tests/test_remote_addon.py."""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

from bsb_addon import remote_client as rc
from bsb_addon.engine_client import EngineConfig

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
