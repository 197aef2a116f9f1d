"""Performance and accuracy report: runs every bench/*.py script and gathers their figures in one table.

Each script prints a table and, as its very last line, one JSON object; this collects those objects
(running the scripts one after the other with `--quick` when asked), lays the headline figures out by
topic, lists the expected figures no script provided, and writes out/report.md and out/report.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent

# (section, key, what it is); the keys the project's scripts are expected to emit.
EXPECTED: list[tuple[str, str, str]] = [
    ("Rasterization", "raster_224_50k_views_per_s", "views/s, 224 px, 50k faces (numba, CPU)"),
    ("Rasterization", "raster_512_50k_views_per_s", "views/s, 512 px, 50k faces (numba, CPU)"),
    ("Distillation", "distill_step_s_50k", "s per step, 50k vertices"),
    ("Distillation", "distill_step_s_1m", "s per step, 1M vertices"),
    ("Distillation", "distill_peak_mib_1m", "peak MiB, 1M vertices"),
    ("2D models", "cpu_profile_encode_s", "cpu profile: SAM + DINO encoding of one view, s"),
    ("2D models", "cpu_profile_sam_click_ms", "cpu profile: one SAM click, ms"),
    ("2D models", "gpu_profile_encode_s", "gpu profile: SAM + DINO encoding of one view, s"),
    ("iSeg", "iseg_oracle_mean_iou", "mean IoU against oracle segments"),
    ("iSeg", "iseg_click_s_50k", "s per click, 50k vertices"),
    ("iSeg", "iseg_decoder_train_s", "decoder training, s"),
    ("BSB matching", "match_click_s_cpu", "s per click after preparation (CPU)"),
    ("BSB matching", "match_extra_mib_6000x4000", "extra MiB matching a 6000x4000 photo"),
    ("Correspondence", "mode", "2D models used (oracle = planted, measures the matching logic only)"),
    ("Correspondence", "bsb_success", "BSB success rate"),
    ("Correspondence", "nn_success", "nearest-vertex success rate"),
    ("Correspondence", "random_success", "random-valid-candidate success rate"),
    ("Correspondence", "no_part_rejection_rate", "decal clicks answered 'no corresponding part'"),
    ("Correspondence", "bsb_false_rejection_rate", "true-part clicks BSB answered 'no corresponding part'"),
    ("Correspondence", "confidence_auroc_part_vs_decal", "BSB confidence separates part from decal clicks (AUROC)"),
    ("Correspondence", "cross_bsb_success", "cross-instance (airplanes) BSB success rate"),
    ("Correspondence", "cross_nn_success", "cross-instance nearest-vertex success rate"),
]
# Figures whose exact key is left to the scripts: grouped by a word in the key.
PATTERNS: list[tuple[str, str]] = [("Preparation", "prepare"), ("Preparation", "sam_encodings"),
                                   ("Memory", "mib"), ("Memory", "rss")]
SKIP_KEYS = {"per_category", "protocol", "planted", "note", "timings"}
# Run settings rather than figures: kept in report.json, left out of the table.
SETTINGS = {"seconds", "quick", "threads", "loadavg_1min", "random_weights", "iseg_included",
            "gpu_profile_measured_on", "meshes", "n_vertices"}


def last_json(stdout: str) -> tuple[dict | None, str | None]:
    """The JSON object on the last non-empty line (or, failing that, the last JSON line, with a warning)."""
    lines = [ln.strip() for ln in stdout.splitlines() if ln.strip()]
    for i, line in enumerate(reversed(lines)):
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                return value, None if i == 0 else "the JSON object is not the last line"
    return None, "no JSON object in the output"


def run_script(path: Path, quick: bool, timeout: float) -> dict:
    """Run one bench script; its status, wall time, figures and the tail of its output."""
    cmd = [sys.executable, str(path)] + (["--quick"] if quick else [])
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": f"timeout after {timeout:.0f} s", "seconds": timeout, "figures": {}}
    seconds = round(time.perf_counter() - start, 1)
    figures, problem = last_json(proc.stdout)
    status = "ok" if proc.returncode == 0 and figures is not None else f"exit {proc.returncode}"
    if problem:
        status += f" ({problem})"
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
    return {"status": status, "seconds": seconds, "figures": figures or {},
            "tail": tail if proc.returncode != 0 else []}


def fmt(value: object) -> str:
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def gather(results: dict[str, dict]) -> tuple[list[tuple[str, str, str, str, str]], list[str], dict]:
    """Rows (section, key, what, value, script), the missing expected keys, and all figures by key."""
    figures, source = {}, {}
    for script, r in results.items():
        label = script + (" (random weights)" if r["figures"].get("random_weights") else "")
        for key, value in r["figures"].items():
            if key not in SKIP_KEYS and key not in figures:
                figures[key], source[key] = value, label
    rows, used = [], set()
    for section, key, what in EXPECTED:
        if key in figures:
            rows.append((section, key, what, fmt(figures[key]), source[key]))
            used.add(key)
    missing = [key for _, key, _ in EXPECTED if key not in figures]
    for section, word in PATTERNS:
        for key in sorted(figures):
            if word in key and key not in used and isinstance(figures[key], (int, float)):
                rows.append((section, key, "", fmt(figures[key]), source[key]))
                used.add(key)
    for key in sorted(figures):
        if (key not in used and key not in SETTINGS and not key.startswith("n_")
                and isinstance(figures[key], (int, float)) and not isinstance(figures[key], bool)):
            rows.append(("Other", key, "", fmt(figures[key]), source[key]))
    return rows, missing, figures


def machine() -> dict:
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
            "cuda": torch.cuda.is_available(), "loadavg_1min": round(os.getloadavg()[0], 2),
            "platform": platform.platform()}


def markdown(rows, missing, results: dict[str, dict], info: dict, quick: bool) -> str:
    out = ["# Performance and accuracy report", "",
           f"{'Quick runs' if quick else 'Full runs'} of bench/*.py on {info['cpus']} CPUs "
           f"(CUDA: {info['cuda']}), torch {info['torch']}, load average {info['loadavg_1min']} at the end.", "",
           "| section | figure | value | meaning | script |", "|---|---|---|---|---|"]
    out += [f"| {s} | `{k}` | {v} | {w} | {src} |" for s, k, w, v, src in rows]
    out += ["", "| script | status | seconds |", "|---|---|---|"]
    out += [f"| {name} | {r['status']} | {r['seconds']} |" for name, r in results.items()]
    if missing:
        out += ["", "Missing (no script provided them): " + ", ".join(f"`{k}`" for k in missing)]
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="run every script with --quick")
    ap.add_argument("--only", nargs="*", default=None, help="script names to run (e.g. raster match)")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per script (default 300 quick, 3600 full)")
    ap.add_argument("--out", type=Path, default=ROOT / "out", help="folder for report.md and report.json")
    args = ap.parse_args()

    scripts = sorted(p for p in BENCH.glob("*.py") if p.name != Path(__file__).name and not p.name.startswith("_"))
    if args.only:
        scripts = [p for p in scripts if p.stem in args.only]
    timeout = args.timeout or (300.0 if args.quick else 3600.0)
    results = {}
    for path in scripts:
        print(f"running {path.name}{' --quick' if args.quick else ''} ...", file=sys.stderr, flush=True)
        results[path.stem] = run_script(path, args.quick, timeout)
        print(f"  {results[path.stem]['status']} in {results[path.stem]['seconds']} s", file=sys.stderr, flush=True)
        for line in results[path.stem].get("tail", []):
            print(f"    {line}", file=sys.stderr)

    rows, missing, figures = gather(results)
    info = machine()
    md = markdown(rows, missing, results, info, args.quick)
    report = {"quick": args.quick, "machine": info, "figures": figures, "missing": missing,
              "scripts": {k: {"status": r["status"], "seconds": r["seconds"], "figures": r["figures"]}
                          for k, r in results.items()}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.md").write_text(md)
    (args.out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    print(md)
    print(json.dumps({"figures": {k: figures[k] for k in figures if not isinstance(figures[k], (dict, list))},
                      "missing": missing, "failed": [k for k, r in results.items() if r["status"] != "ok"]}))


if __name__ == "__main__":
    main()
