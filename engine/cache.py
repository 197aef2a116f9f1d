"""On-disk cache of expensive per-mesh and per-image work (distilled fields, iSeg decoder, embeddings).

An entry is a folder `ROOT/KIND/KEY/` holding data files, `manifest.json` (sizes and sha256 of every data
file) and `.bsb-entry`, a marker written before anything else. The marker is the cache's proof that a
folder is its own: nothing without it is ever used, evicted or deleted, so a cache root pointed at a folder
that holds other things (a typo, `BSB_CACHE_DIR=$HOME`) loses nothing.

An entry is written in a temporary sibling `.tmp-KEY-*` (whose marker names the writing process), fsynced,
then renamed into place; a rename onto an existing entry fails instead of replacing it, so concurrent
writers of one key cannot collide (the later one drops its copy: same key, same content). Entries leave
their key by a rename too (to `.bad-KEY-*`) before they are deleted, so a reader never sees half an entry.
A damaged entry (checksums) or one that its reader cannot load is moved aside and rebuilt. Leftovers of
killed writers are removed at start-up (`remove_leftovers`) and count toward the size limit until then.
The manifest's mtime is the entry's last use, which drives least-recently-used eviction.

Writing is best effort: a failed write (read-only or full disk) is a warning, never a lost result.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

import numpy as np

from engine import __version__
from engine.errors import BsbError

MANIFEST = "manifest.json"
MARKER = ".bsb-entry"
MARKER_TEXT = "bsb-cache-entry"
TMP_PREFIX = ".tmp-"
BAD_PREFIX = ".bad-"
DEFAULT_MAX_BYTES = 8 << 30
STALE_TMP_S = 6 * 3600  # a writer on another host (or an unknown one) is presumed dead after this

T = TypeVar("T")


def default_cache_dir() -> Path:
    """`$BSB_CACHE_DIR`, else `$XDG_CACHE_HOME/bsb/cache`, else `~/.cache/bsb/cache`."""
    if os.environ.get("BSB_CACHE_DIR"):
        return Path(os.environ["BSB_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "bsb" / "cache"


def default_cache_limit() -> int:
    """`$BSB_CACHE_LIMIT` (e.g. 500M, 20G), else 8 GiB."""
    text = os.environ.get("BSB_CACHE_LIMIT", "").strip()
    return parse_size(text, "BSB_CACHE_LIMIT") if text else DEFAULT_MAX_BYTES


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


def _folder_size(path: Path) -> int:
    total = 0
    try:
        for p in path.iterdir():
            try:
                total += p.stat().st_size if p.is_file() else 0
            except OSError:
                pass
    except OSError:  # renamed or removed by another process meanwhile
        pass
    return total


def _children(path: Path) -> list[Path]:
    try:
        return list(path.iterdir())
    except OSError:  # removed by another process meanwhile
        return []


def _marker(path: Path) -> dict[str, Any] | None:
    """The marker of a folder the cache wrote, or None when the folder is not provably ours."""
    try:
        data = json.loads((path / MARKER).read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == MARKER_TEXT else None


def _pid_alive(pid: int) -> bool:
    if os.name != "posix":
        return True  # no harmless liveness probe there (os.kill terminates): fall back to the age
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _writer_dead(marker: dict[str, Any], folder: Path) -> bool:
    """A temporary folder whose writer has gone: that process ended on this host, or it is very old."""
    try:
        age = time.time() - folder.stat().st_mtime
    except OSError:
        return False
    if marker.get("host") == socket.gethostname() and isinstance(marker.get("pid"), int):
        return marker["pid"] != os.getpid() and not _pid_alive(marker["pid"])
    return age > STALE_TMP_S


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}" + (f" ({exc.filename})" if exc.filename else "")
    return f"{type(exc).__name__}: {exc}"


def _valid_manifest(manifest: Any, kind: str, key: str) -> dict[str, dict[str, Any]]:
    """The manifest's file table, after checking its shape (it is data read from disk, not trusted)."""
    if not isinstance(manifest, dict) or manifest.get("kind") != kind or manifest.get("key") != key:
        raise ValueError("the manifest does not describe this entry")
    files = manifest.get("files")
    if not isinstance(files, dict) or not isinstance(manifest.get("meta", {}), dict):
        raise ValueError("the manifest's file table is malformed")
    for name, info in files.items():
        if (not isinstance(name, str) or Path(name).name != name or name.startswith(".") or name == MANIFEST
                or not isinstance(info, dict) or not isinstance(info.get("size"), int)
                or not isinstance(info.get("sha256"), str)):
            raise ValueError(f"the manifest lists a malformed file entry {name!r}")
    return files


class Cache:
    """Entries by (kind, key). `get`/`load` return a verified entry or None; `put` writes one atomically."""

    def __init__(self, root: Path | str | None = None, max_bytes: int | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()
        self.max_bytes = default_cache_limit() if max_bytes is None else int(max_bytes)
        self.warnings: list[str] = []

    def _dir(self, kind: str, key: str) -> Path:
        if not kind.isidentifier() or not key.isalnum():
            raise ValueError(f"bad cache kind/key {kind!r}/{key!r}")
        return self.root / kind / key

    def _warn(self, message: str) -> None:
        self.warnings.append(message)
        print(f"[cache] {message}", file=sys.stderr)

    def take_warnings(self) -> list[str]:
        """Warnings since the last call (a failed write, a discarded entry), for the caller to pass on."""
        out, self.warnings = self.warnings, []
        return out

    def _move_aside(self, path: Path) -> Path | None:
        """Take an entry off its key at once (rename), so no reader or writer sees it half deleted."""
        aside = path.parent / f"{BAD_PREFIX}{path.name}-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(path, aside)
        except OSError:
            return None  # already gone (evicted or discarded by another process)
        return aside

    def _discard(self, path: Path, reason: str, keep: bool = False) -> None:
        aside = self._move_aside(path)
        if aside is None:
            return
        if keep:
            self._warn(f"set aside unusable entry {path.parent.name}/{path.name} as {aside.name} ({reason}); "
                       "it will be rebuilt")
        else:
            print(f"[cache] discarding damaged entry {path.parent.name}/{path.name}: {reason}", file=sys.stderr)
            shutil.rmtree(aside, ignore_errors=True)

    def get(self, kind: str, key: str) -> tuple[Path, dict[str, Any]] | None:
        """The entry folder and its metadata, after checking every file against the manifest.

        A damaged entry is moved aside and deleted (and None returned) so the caller rebuilds it; a folder
        that is not provably the cache's own is left alone."""
        path = self._dir(kind, key)
        if not path.is_dir() or _marker(path) is None:
            return None
        try:
            manifest = json.loads((path / MANIFEST).read_text("utf-8"))
            for name, info in _valid_manifest(manifest, kind, key).items():
                file = path / name
                if file.stat().st_size != info["size"] or _sha256(file) != info["sha256"]:
                    raise ValueError(f"{name} does not match its checksum")
            meta = manifest.get("meta", {})
        except (OSError, ValueError) as exc:
            if path.is_dir():
                self._discard(path, _describe(exc))
            return None
        try:
            os.utime(path / MANIFEST)
        except OSError:
            pass
        return path, meta

    def load(self, kind: str, key: str, loader: Callable[[Path, dict[str, Any]], T]) -> T | None:
        """`loader(folder, meta)` on a verified entry; an entry that passes its checksums but cannot be
        loaded (a missing or foreign file, a pickle) is set aside and None returned, so it is rebuilt
        instead of failing every run."""
        found = self.get(kind, key)
        if found is None:
            return None
        path, meta = found
        try:
            return loader(path, meta)
        except Exception as exc:  # anything read from disk may be malformed in any way
            if path.is_dir():  # else it vanished under us (evicted by another process): a plain miss
                self._discard(path, _describe(exc), keep=True)
            return None

    def put(self, kind: str, key: str, write: Callable[[Path], None],
            meta: dict[str, Any] | None = None) -> Path | None:
        """Create an entry: `write(folder)` fills a fresh temporary folder, which then becomes the entry.

        Returns the entry, or None (with a warning) when it could not be stored: the caller keeps its
        result in memory either way."""
        final = self._dir(kind, key)
        tmp: Path | None = None
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = final.parent / f"{TMP_PREFIX}{key}-{uuid.uuid4().hex[:8]}"
            tmp.mkdir()
            marker = {"format": MARKER_TEXT, "kind": kind, "key": key, "pid": os.getpid(),
                      "host": socket.gethostname(), "created": time.time()}
            (tmp / MARKER).write_text(json.dumps(marker), "utf-8")
            write(tmp)
            files = {}
            for file in sorted(p for p in tmp.iterdir() if p.is_file() and not p.name.startswith(".")):
                _fsync_file(file)
                files[file.name] = {"size": file.stat().st_size, "sha256": _sha256(file)}
            manifest = {"format": MARKER_TEXT, "kind": kind, "key": key, "engine": __version__,
                        "created": time.time(), "files": files, "meta": meta or {}}
            with open(tmp / MANIFEST, "w", encoding="utf-8") as fh:
                json.dump(manifest, fh, indent=1, default=str)
                fh.flush()
                os.fsync(fh.fileno())
            _fsync_dir(tmp)
            try:
                os.rename(tmp, final)  # never replaces a non-empty folder: concurrent writers cannot collide
            except OSError:
                if not final.is_dir():
                    raise
                shutil.rmtree(tmp, ignore_errors=True)  # another writer stored this key first
            tmp = None
            _fsync_dir(final.parent)
        except Exception as exc:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            self._warn(f"could not store the {kind} result in the cache at {final.parent} ({_describe(exc)}); "
                       "it is kept for this session only")
            return None
        except BaseException:  # interrupted: leave nothing half written behind
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.evict(keep=final)
        return final

    def put_arrays(self, kind: str, key: str, arrays: dict[str, np.ndarray],
                   meta: dict[str, Any] | None = None) -> Path | None:
        def write(folder: Path) -> None:
            for name, array in arrays.items():
                np.save(folder / f"{name}.npy", np.ascontiguousarray(array), allow_pickle=False)
        return self.put(kind, key, write, meta)

    def get_arrays(self, kind: str, key: str,
                   names: tuple[str, ...] = ()) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
        """Every .npy of an entry (never unpickled); `names` must all be present, else the entry is set aside."""
        def read(path: Path, meta: dict[str, Any]):
            arrays = {p.stem: np.load(p, allow_pickle=False) for p in path.glob("*.npy")}
            missing = [n for n in names if n not in arrays]
            if missing:
                raise ValueError(f"missing {', '.join(missing)}")
            return arrays, meta
        return self.load(kind, key, read)

    def _kind_dirs(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        try:
            return sorted(p for p in self.root.iterdir() if p.is_dir() and p.name.isidentifier())
        except OSError:
            return []

    def entries(self) -> list[EntryInfo]:
        """Every entry of ours, most recently used first (damaged ones are listed; `get` weeds them out)."""
        found = []
        for kind_dir in self._kind_dirs():
            for entry in _children(kind_dir):
                if entry.name.startswith(".") or not entry.is_dir() or _marker(entry) is None:
                    continue
                try:
                    manifest = json.loads((entry / MANIFEST).read_text("utf-8"))
                    meta = manifest.get("meta", {}) if isinstance(manifest, dict) else {}
                    used = (entry / MANIFEST).stat().st_mtime
                except (OSError, ValueError):
                    meta, used = {}, 0.0  # damaged: listed as the oldest, so evicted first
                found.append(EntryInfo(kind_dir.name, entry.name, entry, _folder_size(entry), used,
                                       meta if isinstance(meta, dict) else {}))
        return sorted(found, key=lambda e: e.last_used, reverse=True)

    def leftovers(self) -> list[tuple[Path, bool]]:
        """Our temporary and set-aside folders, each with whether it may go (its writer is gone)."""
        found = []
        for kind_dir in self._kind_dirs():
            for folder in _children(kind_dir):
                if not folder.name.startswith((TMP_PREFIX, BAD_PREFIX)) or not folder.is_dir():
                    continue
                marker = _marker(folder)
                if marker is None:
                    continue
                found.append((folder, folder.name.startswith(BAD_PREFIX) or _writer_dead(marker, folder)))
        return found

    def remove_leftovers(self) -> int:
        """Delete temporary folders of killed writers and set-aside entries (run at start-up)."""
        removed = 0
        for folder, dead in self.leftovers():
            if dead:
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
        return removed

    def evict(self, keep: Path | None = None) -> int:
        """Delete least recently used entries until the cache, leftovers included, fits its size limit."""
        entries = self.entries()
        total = sum(e.size for e in entries) + sum(_folder_size(p) for p, _ in self.leftovers())
        removed = 0
        for entry in reversed(entries):
            if total <= self.max_bytes:
                break
            if keep is not None and entry.path == keep:
                continue
            aside = self._move_aside(entry.path)
            if aside is not None:
                shutil.rmtree(aside, ignore_errors=True)
                removed += 1
            total -= entry.size
        return removed

    def clear(self, kind: str | None = None) -> int:
        """Remove our entries (of one kind, if given) and our leftovers; anything else stays untouched."""
        count, touched = 0, set()
        for entry in self.entries():
            if kind is None or entry.kind == kind:
                aside = self._move_aside(entry.path)
                if aside is not None:
                    shutil.rmtree(aside, ignore_errors=True)
                    count += 1
                touched.add(entry.path.parent)
        for folder, dead in self.leftovers():
            if dead and (kind is None or folder.parent.name == kind):
                shutil.rmtree(folder, ignore_errors=True)
                touched.add(folder.parent)
        for kind_dir in touched:
            try:
                kind_dir.rmdir()  # a kind folder we emptied; never one we found empty
            except OSError:
                pass
        return count


def parse_size(text: str, what: str = "cache size") -> int:
    """'500M', '8G', '1024' -> bytes."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    clean = text.strip().upper().removesuffix("IB").removesuffix("B")
    try:
        value = float(clean[:-1]) * units[clean[-1]] if clean and clean[-1] in units else float(clean)
    except ValueError:
        value = float("nan")
    if not value >= 0 or value == float("inf"):
        raise BsbError(f"cannot read {what} {text!r}; write it like 500M or 8G", "bad_request")
    return int(value)
