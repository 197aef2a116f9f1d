"""The on-disk cache (engine/cache.py): verified reads, atomic writes, damaged entries rebuilt, LRU eviction."""

from __future__ import annotations

import os

import numpy as np
import pytest

from engine.cache import Cache, default_cache_dir, make_key, parse_size


def test_round_trip_and_key_sensitivity(tmp_path):
    cache = Cache(tmp_path)
    key = make_key("mesh", "abc123", {"views": 8})
    assert key == make_key("mesh", "abc123", {"views": 8})
    assert key != make_key("mesh", "abc124", {"views": 8}) != make_key("mesh", "abc123", {"views": 9})
    assert cache.get_arrays("field", key) is None
    feats = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32)
    cache.put_arrays("field", key, {"features": feats}, meta={"n": 50})
    arrays, meta = cache.get_arrays("field", key)
    np.testing.assert_array_equal(arrays["features"], feats)
    assert meta == {"n": 50}
    assert [(e.kind, e.key) for e in cache.entries()] == [("field", key)]


@pytest.mark.parametrize("damage", ["flip_byte", "truncate", "delete_file", "garble_manifest", "no_manifest"])
def test_damaged_entry_is_detected_removed_and_rebuildable(tmp_path, damage):
    cache = Cache(tmp_path)
    path = cache.put_arrays("field", "k1", {"a": np.arange(1000, dtype=np.float32)})
    data = path / "a.npy"
    if damage == "flip_byte":
        raw = bytearray(data.read_bytes())
        raw[-7] ^= 0xFF
        data.write_bytes(bytes(raw))
    elif damage == "truncate":
        data.write_bytes(data.read_bytes()[:100])
    elif damage == "delete_file":
        data.unlink()
    elif damage == "garble_manifest":
        (path / "manifest.json").write_text("{half")
    else:
        (path / "manifest.json").unlink()
    assert cache.get_arrays("field", "k1") is None
    assert not path.exists()
    cache.put_arrays("field", "k1", {"a": np.arange(1000, dtype=np.float32)})
    np.testing.assert_array_equal(cache.get_arrays("field", "k1")[0]["a"], np.arange(1000))


def test_failed_write_leaves_nothing_behind(tmp_path):
    cache = Cache(tmp_path)

    def write(folder):
        (folder / "part.bin").write_bytes(b"half")
        raise RuntimeError("disk full")

    assert cache.put("field", "k2", write) is None  # a failed write is a warning, not a lost result
    assert "disk full" in cache.take_warnings()[0]
    assert cache.get("field", "k2") is None
    assert list((tmp_path / "field").iterdir()) == []


def test_least_recently_used_entries_are_evicted(tmp_path):
    one_kib = np.zeros(256, dtype=np.float32)
    probe = Cache(tmp_path / "probe")
    probe.put_arrays("img", "a", {"x": one_kib})
    entry_size = probe.entries()[0].size
    cache = Cache(tmp_path / "lru", max_bytes=3 * entry_size + entry_size // 2)  # room for three
    for i, key in enumerate(["a", "b", "c"]):
        cache.put_arrays("img", key, {"x": one_kib})
        os.utime(tmp_path / "lru" / "img" / key / "manifest.json", (1000 + i, 1000 + i))
    assert cache.get("img", "a") is not None  # touching "a" makes "b" the oldest
    cache.put_arrays("img", "d", {"x": one_kib})
    keys = {e.key for e in cache.entries()}
    assert keys == {"a", "c", "d"}


def test_clear_and_default_dir(tmp_path, monkeypatch):
    cache = Cache(tmp_path)
    cache.put_arrays("img", "a", {"x": np.zeros(3)})
    cache.put_arrays("mesh", "b", {"x": np.zeros(3)})
    assert cache.clear("img") == 1
    assert [e.kind for e in cache.entries()] == ["mesh"]
    assert cache.clear() == 1 and cache.entries() == []
    monkeypatch.setenv("BSB_CACHE_DIR", str(tmp_path / "env"))
    assert default_cache_dir() == tmp_path / "env"
    monkeypatch.delenv("BSB_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "bsb" / "cache"
    assert parse_size("500M") == 500 << 20 and parse_size("2g") == 2 << 30 and parse_size("123") == 123
