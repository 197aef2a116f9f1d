"""On-disk cache of expensive per-mesh and per-image work (distilled fields, iSeg decoder, embeddings).

An entry is a folder `ROOT/KIND/KEY/` holding data files plus `manifest.json` (sizes and sha256 of every
file). It is written in a temporary sibling folder, fsynced, then renamed into place, so a reader never sees
half an entry; a crash or a disk error that leaves a damaged entry is caught by the checksums on the next
read, and the entry is removed and rebuilt instead of being used. The manifest's mtime is the entry's last
use, which drives least-recently-used eviction under a size limit.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from engine import __version__
from engine.errors import BsbError

MANIFEST = "manifest.json"
DEFAULT_MAX_BYTES = 8 << 30


def default_cache_dir() -> Path:
    """`$BSB_CACHE_DIR`, else `$XDG_CACHE_HOME/bsb/cache`, else `~/.cache/bsb/cache`."""
    if os.environ.get("BSB_CACHE_DIR"):
        return Path(os.environ["BSB_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "bsb" / "cache"


def make_key(*parts: Any) -> str:
    """A short stable key over everything that determines an entry's content, plus the engine version
    (a new engine may compute things differently, so it never reuses an older engine's entries)."""
    text = json.dumps([__version__, *parts], sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


@dataclass(frozen=True)
class EntryInfo:
    kind: str
    key: str
    path: Path
    size: int
    last_used: float
    meta: dict[str, Any]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # directories cannot be opened on Windows; rename is still atomic there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class Cache:
    """Entries by (kind, key). `get` returns a verified entry folder or None; `put` writes one atomically."""

    def __init__(self, root: Path | str | None = None, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()
        self.max_bytes = int(max_bytes)

    def _dir(self, kind: str, key: str) -> Path:
        if not kind.isidentifier() or not key.isalnum():
            raise ValueError(f"bad cache kind/key {kind!r}/{key!r}")
        return self.root / kind / key

    def get(self, kind: str, key: str) -> tuple[Path, dict[str, Any]] | None:
        """The entry folder and its metadata, after checking every file against the manifest.

        A damaged entry is deleted (and None returned) so the caller rebuilds it."""
        path = self._dir(kind, key)
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            if path.exists():
                shutil.rmtree(path, ignore_errors=True)
            return None
        try:
            manifest = json.loads(manifest_path.read_text("utf-8"))
            for name, info in manifest["files"].items():
                file = path / name
                if file.stat().st_size != info["size"] or _sha256(file) != info["sha256"]:
                    raise ValueError(f"{name} does not match its checksum")
            meta = manifest.get("meta", {})
        except (OSError, ValueError, KeyError, TypeError) as exc:
            print(f"[cache] discarding damaged entry {kind}/{key}: {exc}", file=sys.stderr)
            shutil.rmtree(path, ignore_errors=True)
            return None
        try:
            os.utime(manifest_path)
        except OSError:
            pass
        return path, meta

    def put(self, kind: str, key: str, write: Callable[[Path], None], meta: dict[str, Any] | None = None) -> Path:
        """Create an entry: `write(folder)` fills a fresh temporary folder, which then becomes the entry."""
        final = self._dir(kind, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".tmp-{key}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            write(tmp)
            files = {}
            for file in sorted(p for p in tmp.iterdir() if p.is_file()):
                _fsync_file(file)
                files[file.name] = {"size": file.stat().st_size, "sha256": _sha256(file)}
            manifest = {"kind": kind, "key": key, "engine": __version__, "created": time.time(),
                        "files": files, "meta": meta or {}}
            with open(tmp / MANIFEST, "w", encoding="utf-8") as fh:
                json.dump(manifest, fh, indent=1, default=str)
                fh.flush()
                os.fsync(fh.fileno())
            _fsync_dir(tmp)
            if final.exists():  # another writer won the race, or a damaged leftover: replace it
                shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            _fsync_dir(final.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.evict(keep=final)
        return final

    def put_arrays(self, kind: str, key: str, arrays: dict[str, np.ndarray], meta: dict[str, Any] | None = None) -> Path:
        def write(folder: Path) -> None:
            for name, array in arrays.items():
                np.save(folder / f"{name}.npy", np.ascontiguousarray(array), allow_pickle=False)
        return self.put(kind, key, write, meta)

    def get_arrays(self, kind: str, key: str) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
        found = self.get(kind, key)
        if found is None:
            return None
        path, meta = found
        try:
            arrays = {p.stem: np.load(p, allow_pickle=False) for p in path.glob("*.npy")}
        except (OSError, ValueError) as exc:
            print(f"[cache] discarding unreadable entry {kind}/{key}: {exc}", file=sys.stderr)
            shutil.rmtree(path, ignore_errors=True)
            return None
        return arrays, meta

    def entries(self) -> list[EntryInfo]:
        """Every complete entry, most recently used first (damaged ones are listed; `get` weeds them out)."""
        found = []
        if not self.root.is_dir():
            return found
        for kind_dir in sorted(p for p in self.root.iterdir() if p.is_dir()):
            for entry in kind_dir.iterdir():
                manifest = entry / MANIFEST
                if entry.name.startswith(".") or not manifest.is_file():
                    continue
                try:
                    meta = json.loads(manifest.read_text("utf-8")).get("meta", {})
                    size = sum(p.stat().st_size for p in entry.iterdir() if p.is_file())
                    used = manifest.stat().st_mtime
                except (OSError, ValueError):
                    continue
                found.append(EntryInfo(kind_dir.name, entry.name, entry, size, used, meta))
        return sorted(found, key=lambda e: e.last_used, reverse=True)

    def evict(self, keep: Path | None = None) -> int:
        """Delete least recently used entries until the cache fits its size limit; returns how many."""
        entries = self.entries()
        total = sum(e.size for e in entries)
        removed = 0
        for entry in reversed(entries):
            if total <= self.max_bytes:
                break
            if keep is not None and entry.path == keep:
                continue
            shutil.rmtree(entry.path, ignore_errors=True)
            total -= entry.size
            removed += 1
        return removed

    def clear(self, kind: str | None = None) -> int:
        """Remove every entry (of one kind, if given), including leftovers of interrupted writes."""
        if not self.root.is_dir():
            return 0
        count = 0
        for kind_dir in [p for p in self.root.iterdir() if p.is_dir()]:
            if kind is not None and kind_dir.name != kind:
                continue
            count += sum(1 for e in kind_dir.iterdir() if e.is_dir() and not e.name.startswith("."))
            shutil.rmtree(kind_dir, ignore_errors=True)
        return count


def parse_size(text: str) -> int:
    """'500M', '8G', '1024' -> bytes."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    text = text.strip().upper().removesuffix("B")
    try:
        if text and text[-1] in units:
            return int(float(text[:-1]) * units[text[-1]])
        return int(text)
    except ValueError:
        raise BsbError(f"cannot read cache size {text!r}; write it like 500M or 8G", "bad_request") from None
