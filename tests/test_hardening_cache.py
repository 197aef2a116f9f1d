"""Adversarial cases of issue 13 against the cache (engine/cache.py): nothing deleted that is not ours,
concurrent writers and readers, unloadable entries set aside, leftovers of killed writers, failed writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from engine.cache import MARKER, Cache, default_cache_limit, parse_size
from engine.errors import BsbError


def _foreign_tree(root):
    """What a cache root pointed at a home folder finds: files and folders that are not cache entries."""
    (root / "Documents").mkdir(parents=True)
    (root / "Documents" / "thesis.txt").write_text("years of work")
    (root / "Music").mkdir()  # empty, and named like a cache kind
    (root / "mesh" / "0123abcd").mkdir(parents=True)  # shaped like an entry, without our marker
    (root / "mesh" / "0123abcd" / "manifest.json").write_text('{"files": {}}')
    (root / "mesh" / ".tmp-ffff-1234").mkdir()  # shaped like a leftover, without our marker
    (root / "mesh" / ".tmp-ffff-1234" / "keep.bin").write_bytes(b"x")


def test_clear_deletes_only_entries_the_cache_wrote(tmp_path):
    _foreign_tree(tmp_path)
    cache = Cache(tmp_path)
    assert cache.entries() == [] and cache.clear() == 0
    cache.put_arrays("mesh", "a1", {"x": np.zeros(4)})
    cache.put_arrays("image", "b2", {"x": np.zeros(4)})
    assert {e.key for e in cache.entries()} == {"a1", "b2"}
    assert cache.clear() == 2
    assert cache.entries() == []
    assert (tmp_path / "Documents" / "thesis.txt").read_text() == "years of work"
    assert (tmp_path / "Music").is_dir()
    assert (tmp_path / "mesh" / "0123abcd" / "manifest.json").is_file()
    assert (tmp_path / "mesh" / ".tmp-ffff-1234" / "keep.bin").is_file()
    assert not (tmp_path / "image").exists()  # a kind folder the cache emptied goes with its entries


def test_foreign_folder_at_a_key_is_neither_used_nor_replaced(tmp_path):
    cache = Cache(tmp_path)
    foreign = tmp_path / "mesh" / "abc"
    foreign.mkdir(parents=True)
    (foreign / "x.npy").write_bytes(b"mine")
    assert cache.get("mesh", "abc") is None
    assert cache.put_arrays("mesh", "abc", {"x": np.zeros(3)}) is not None  # the rename fails; a warning at most
    assert (foreign / "x.npy").read_bytes() == b"mine"
    cache.evict()
    cache.max_bytes = 0
    cache.evict()
    assert (foreign / "x.npy").read_bytes() == b"mine"


def test_concurrent_writers_and_readers_of_one_key(tmp_path):
    cache = Cache(tmp_path)
    data = np.arange(20000, dtype=np.float32)
    errors, seen = [], []

    def writer():
        try:
            mine = Cache(tmp_path)
            for _ in range(15):
                mine.put_arrays("mesh", "k", {"x": data})
            errors.extend(mine.warnings)  # "Directory not empty" would land here
        except Exception as exc:  # any exception is a failure of the test
            errors.append(exc)

    def reader():
        try:
            for _ in range(40):
                got = Cache(tmp_path).get_arrays("mesh", "k", ("x",))
                if got is not None:
                    seen.append(bool(np.array_equal(got[0]["x"], data)))
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer) for _ in range(4)] + [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and all(seen)
    assert [e.key for e in cache.entries()] == ["k"]
    assert not [p for p in (tmp_path / "mesh").iterdir() if p.name.startswith(".")]  # no leftovers


def test_concurrent_processes_write_one_key_without_failures(tmp_path):
    script = ("import sys, numpy as np; from engine.cache import Cache\n"
              "c = Cache(sys.argv[1])\n"
              "for _ in range(10): c.put_arrays('mesh', 'k', {'x': np.arange(5000.0)})\n"
              "sys.exit(len(c.warnings))\n")
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], env=env) for _ in range(3)]
    assert [p.wait(60) for p in procs] == [0, 0, 0]
    assert Cache(tmp_path).get_arrays("mesh", "k", ("x",)) is not None


def _entry(cache, kind="mesh", key="k"):
    return cache.put_arrays(kind, key, {"x": np.arange(10.0)})


def _rewrite_manifest(path, change):
    manifest = json.loads((path / "manifest.json").read_text())
    change(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))


def _files_as_list(path):
    _rewrite_manifest(path, lambda m: m.update(files=list(m["files"].items())))


def _object_array(path):
    np.save(path / "x.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    _rewrite_manifest(path, lambda m: m["files"].pop("x.npy"))  # passes its checksums: not listed


def _missing_everywhere(path):
    (path / "x.npy").unlink()
    _rewrite_manifest(path, lambda m: m["files"].pop("x.npy"))


@pytest.mark.parametrize("damage", [_files_as_list, _object_array, _missing_everywhere])
def test_entry_that_cannot_be_loaded_is_set_aside_and_rebuilt(tmp_path, damage):
    cache = Cache(tmp_path)
    path = _entry(cache)
    damage(path)
    assert cache.get_arrays("mesh", "k", ("x",)) is None
    assert not path.exists()  # off its key, so the next run rebuilds it
    assert _entry(cache) is not None
    np.testing.assert_array_equal(cache.get_arrays("mesh", "k", ("x",))[0]["x"], np.arange(10.0))
    cache.remove_leftovers()
    assert [p.name for p in (tmp_path / "mesh").iterdir()] == ["k"]


def test_a_pickled_model_file_is_never_unpickled_and_is_set_aside(tmp_path):
    import torch

    from engine.iseg.model import ISegModel

    cache = Cache(tmp_path)

    class Boom:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    path = cache.put("mesh", "k", lambda folder: torch.save({"format": "bsb-iseg-1", "x": Boom()}, folder / "iseg.pt"))
    assert cache.load("mesh", "k", lambda folder, meta: ISegModel.load(folder / "iseg.pt")) is None
    assert not (tmp_path / "pwned").exists() and not path.exists()
    assert any("set aside" in w for w in cache.take_warnings())


def test_leftovers_of_a_killed_writer_are_counted_then_removed(tmp_path):
    cache = Cache(tmp_path)
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(done.stdout)
    import socket

    for name, pid in ((".tmp-dead-0001", dead_pid), (".tmp-live-0002", os.getppid())):
        folder = tmp_path / "mesh" / name
        folder.mkdir(parents=True)
        (folder / MARKER).write_text(json.dumps({"format": "bsb-cache-entry", "pid": pid,
                                                 "host": socket.gethostname()}))
        (folder / "big.npy").write_bytes(b"\0" * 5000)
    assert {p.name: dead for p, dead in cache.leftovers()} == {".tmp-dead-0001": True, ".tmp-live-0002": False}
    cache.max_bytes = 6000  # the two leftovers alone are over the limit: a new entry evicts the old one
    _entry(cache, key="old")
    _entry(cache, key="new")
    assert [e.key for e in cache.entries()] == ["new"]
    assert cache.remove_leftovers() == 1
    assert sorted(p.name for p in (tmp_path / "mesh").iterdir()) == [".tmp-live-0002", "new"]


def test_failed_write_is_a_warning_naming_the_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    cache = Cache(blocker / "cache")  # read-only or full disks fail the same way: an OSError on write
    assert cache.put_arrays("mesh", "k", {"x": np.zeros(3)}) is None
    (warning,) = cache.take_warnings()
    assert str(blocker) in warning and "kept for this session" in warning

    def torch_save_fails(folder):
        raise RuntimeError("enforce fail at inline_container.cc:603")

    cache = Cache(tmp_path / "ok")
    assert cache.put("mesh", "k", torch_save_fails) is None
    assert "inline_container" in cache.take_warnings()[0]
    assert not [p for p in (tmp_path / "ok" / "mesh").iterdir()]


def test_cache_limit_from_the_environment(monkeypatch):
    monkeypatch.setenv("BSB_CACHE_LIMIT", "500M")
    assert default_cache_limit() == 500 << 20 and Cache("/nonexistent").max_bytes == 500 << 20
    monkeypatch.setenv("BSB_CACHE_LIMIT", "lots")
    with pytest.raises(BsbError, match="BSB_CACHE_LIMIT"):
        default_cache_limit()
    monkeypatch.delenv("BSB_CACHE_LIMIT")
    assert default_cache_limit() == 8 << 30
    assert parse_size("1.5GiB") == 3 << 29
    for bad in ("-1G", "nan", "inf", ""):
        with pytest.raises(BsbError):
            parse_size(bad)
