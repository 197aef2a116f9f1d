"""What the person running a batch sees: a tqdm bar (done, failed, remaining, time left) and a final table.

Both go to stderr; stdout carries only the one-line summary, for scripts.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from typing import Any, TextIO


class Bar:
    """A bar over the assets this run computes (skipped ones are already done and do not skew the ETA)."""

    def __init__(self, total: int, skipped: int, enabled: bool = True, stream: TextIO | None = None) -> None:
        from tqdm import tqdm

        self.done = self.failed = 0
        self.total = total
        self._bar = tqdm(total=total, desc=f"batch ({skipped} already done)", unit="asset",
                         file=stream or sys.stderr, disable=not enabled, dynamic_ncols=True,
                         bar_format="{desc}: {n_fmt}/{total_fmt}|{bar}| {postfix} [{elapsed}<{remaining}]")
        self._show()

    def update(self, record: dict[str, Any]) -> None:
        if record.get("status") == "done":
            self.done += 1
        else:
            self.failed += 1
        self._show(refresh=False)
        self._bar.update(1)

    def _show(self, refresh: bool = True) -> None:
        self._bar.set_postfix_str(f"done {self.done}, failed {self.failed}, "
                                  f"remaining {self.total - self.done - self.failed}", refresh=refresh)

    def close(self) -> None:
        self._bar.close()


def summary(records: list[dict[str, Any]], skipped: int, wall_s: float) -> str:
    """The final table: counts, per-kind mean stage times of computed assets, then every failure."""
    done = [r for r in records if r.get("status") == "done"]
    failed = [r for r in records if r.get("status") != "done"]
    lines = [f"{'assets':<28}{len(records) + skipped:>8}",
             f"{'  skipped (already done)':<28}{skipped:>8}",
             f"{'  computed now: done':<28}{len(done):>8}",
             f"{'  computed now: failed':<28}{len(failed):>8}",
             f"{'wall time (s)':<28}{wall_s:>8.1f}"]
    if done and wall_s > 0:
        lines.append(f"{'assets per hour':<28}{3600 * len(done) / wall_s:>8.1f}")
    by_kind: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in done:
        by_kind[r["kind"]].append(r)
    if by_kind:
        stages = ("load_mesh", "models", "prepare", "set_image", "match", "segment", "write", "blend", "total")
        lines.append("")
        lines.append(f"{'kind':<10}{'n':>4}{'found':>7}" + "".join(f"{s:>10}" for s in stages) + "   (mean s)")
        for kind, rs in sorted(by_kind.items()):
            found = sum(1 for r in rs if r.get("found"))
            means = [sum(r["timings"].get(s, 0.0) for r in rs) / len(rs) for s in stages]
            lines.append(f"{kind:<10}{len(rs):>4}{found:>7}" + "".join(f"{m:>10.2f}" for m in means))
    if failed:
        lines.append("")
        lines.append("failures:")
        for r in failed:
            error = r.get("error") or {}
            lines.append(f"  {r['id']}: [{error.get('code', '?')}] {error.get('message', '')}")
    return "\n".join(lines)
