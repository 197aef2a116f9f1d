"""Shared test fixtures: where ../shared's evaluation data lives."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SHARED_DATA = ROOT.parent / "shared" / "eval" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"evaluation data not found at {SHARED_DATA}; ../shared must sit beside the repository")
    return SHARED_DATA


def _torch_default_threads() -> int | None:
    try:
        import torch
    except ImportError:
        return None
    return torch.get_num_threads()


_DEFAULT_THREADS = _torch_default_threads()  # read at collection, before any test can change it


@pytest.fixture(autouse=True, scope="module")
def _default_torch_threads():
    """Each test module starts with torch's default thread count, as it would alone.

    Why: the thread count is process-wide and some code sets it (a batch actor in Ray's local mode, a
    test of thread limits); CPU training is not bit-exact across thread counts, so an oracle-trained test
    must not depend on which modules ran before it.
    """
    if _DEFAULT_THREADS is not None:
        import torch

        torch.set_num_threads(_DEFAULT_THREADS)
    yield
