"""`DIR/results.jsonl`: one line per finished asset, the last line of an id wins; what a rerun may skip.

An asset is done when a `done` record carries the same request hash and every file it lists is still
there. Records are appended (flushed and fsynced) only after the worker wrote the result files and its own
`DIR/<id>/record.json`; if the driver dies between the two, `adopt` finds the record.json on the rerun, so
nothing finished is ever computed twice. A line cut short by a kill is skipped when reading.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from engine.batch.worker import RECORD

RESULTS = "results.jsonl"


class Ledger:
    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / RESULTS
        self.records: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            self._read()

    def _read(self) -> None:
        with open(self.path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # the tail of a driver killed mid-write
                if isinstance(record, dict) and isinstance(record.get("id"), str):
                    self.records[record["id"]] = record

    def is_done(self, asset_id: str, request_hash: str) -> bool:
        return self._complete(self.records.get(asset_id), asset_id, request_hash)

    def adopt(self, asset_id: str, request_hash: str) -> bool:
        """Log a result the worker finished but a killed driver never logged; True if there was one."""
        try:
            record = json.loads((self.out_dir / asset_id / RECORD).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return False
        if not self._complete(record, asset_id, request_hash):
            return False
        self.append(record)
        return True

    def _complete(self, record: dict[str, Any] | None, asset_id: str, request_hash: str) -> bool:
        if not record or record.get("status") != "done" or record.get("request_hash") != request_hash:
            return False
        folder = self.out_dir / asset_id
        return all((folder / name).is_file() for name in record.get("files", []))

    def append(self, record: dict[str, Any]) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        line = json.dumps(record, sort_keys=True) + "\n"
        with open(self.path, "a+b") as fh:
            if fh.tell() > 0:  # a kill mid-line leaves no newline: start a fresh line
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":
                    line = "\n" + line
            fh.write(line.encode("utf-8"))
            fh.flush()
            os.fsync(fh.fileno())
        self.records[record["id"]] = record
