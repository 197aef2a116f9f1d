"""Correspondence success rate of BSB and its baselines on labelled meshes (the paper's protocol, adapted).

For every mesh: held-out views, a coloured and textured test image per view, clicks on random visible
vertices of ground-truth parts (success: the matched vertex lies in that part), one click per view on a
painted decal (success: "no corresponding part"), and cross-instance clicks between the semantic airplanes.

Modes: "real" uses the profile's SAM + DINOv2 weights through the engine's preparation; without weights
the run is "oracle": a ground-truth segmenter and planted features (engine.evaluation.oracle), which
measures the matching logic only. `--profile tiny` runs the real path on random weights ("plumbing").
"e2e" runs every trial through the engine's real preparation, BSB and iSeg seeding with ORACLE teachers
(engine.evaluation.e2e, oracle_models) and the settings shipped for a CPU (`fast`; `--profile` picks another) (`--set key=value` overrides
them, e.g. `--set sam_views=8 --set sam_steps=150 --set iseg.steps=400`, for quality-vs-seconds sweeps);
it also sweeps the oracle segmenter's error rate and the feature confusion. A long run splits over
processes: each takes disjoint `--meshes` with `--trials-out`, one also does the cross pairs and sweeps,
and `--merge FILES --merge-sweeps ITS_OUTPUT` summarises them together.
Prints a table, then one JSON line (keys: mode, bsb_success, ...; e2e: e2e_bsb_success, e2e_bsb_success_se,
...). `--quick`: 4 meshes, 2 views, one cross pair (under a minute in oracle mode); with e2e: 2 small meshes,
one cross pair and a one-mesh sweep (under 10 minutes on a quiet 2-core machine).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.errors import ModelMissingError  # noqa: E402
from engine.evaluation import correspondence as C  # noqa: E402
from engine.evaluation.data import list_meshes  # noqa: E402
from engine.evaluation.oracle import PlantedConfig  # noqa: E402

QUICK_MESHES = ("airplane/61", "chair/101", "human/1", "fourleg/382")
E2E_QUICK_MESHES = ("glasses/59", "bird/243")
E2E_SWEEP_MESHES = ("glasses/59", "bird/243", "plier/201", "chair/101")  # full run: a fixed, varied subset
PAIRS = tuple((a, b) for a in C.SEMANTIC_AIRPLANES for b in C.SEMANTIC_AIRPLANES if a != b)


def choose_models(args: argparse.Namespace) -> C.Models:
    """Real models when asked for or (auto) when the profile's weights are on disk; else the oracle."""
    if args.mode == "oracle":
        return C.OracleModels(PlantedConfig(), seed=args.seed)
    from engine.pipeline import Session

    session = Session(profile=args.profile, device=args.device, models_dir=args.models, cache_dir=args.cache,
                      offline=True)
    try:
        session.models  # noqa: B018 - loads the weights, or raises when they are missing
    except ModelMissingError as exc:
        if args.mode == "real":
            raise
        print(f"no weights for profile {session.profile} ({exc}); running in oracle mode", file=sys.stderr)
        return C.OracleModels(PlantedConfig(), seed=args.seed)
    return C.RealModels(session)


def parse_overrides(pairs: list[str]) -> dict:
    """`key=value` settings overrides (JSON values, else strings); `iseg.key=value` sets an iSeg option."""
    out: dict = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set expects key=value, got {pair!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        if key.startswith("iseg."):
            out.setdefault("iseg", {})[key[5:]] = value
        else:
            out[key] = value
    return out


def run_e2e(args: argparse.Namespace, start: float) -> None:
    """The end-to-end benchmark (engine.evaluation.e2e): a profile's shipped settings plus `--set` overrides."""
    from engine.evaluation import e2e
    import torch

    from engine.pipeline import default_profile, settings_for

    profile = args.profile or default_profile(torch.device("cpu"))
    overrides = parse_overrides(args.set or [])
    base = settings_for(profile)
    iseg = {**base.iseg, **overrides.pop("iseg", {})}
    settings = settings_for(profile, **overrides, iseg=iseg)
    meshes = tuple(args.meshes) if args.meshes else (E2E_QUICK_MESHES if args.quick else
                                                     tuple(e.name for e in list_meshes()))
    protocol = e2e.E2EProtocol(meshes=meshes, views=args.views or (2 if args.quick else 3),
                               clicks=args.clicks or (6 if args.quick else 5), cross_clicks=args.cross_clicks,
                               cross_pairs=() if args.no_cross else PAIRS[:1] if args.quick else PAIRS,
                               size=args.size, seed=args.seed)
    say = lambda m: print(f"[{time.perf_counter() - start:6.1f}s] {m}", file=sys.stderr, flush=True)  # noqa: E731
    cache = args.cache or Path.home() / ".cache" / "bsb-engine-e2e"
    if args.merge:  # summarise the trials of split runs; sweeps from one run's JSON line
        records, cross, cosines = e2e.load_records(args.merge)
        spaces: dict = {}
        last = json.loads(args.merge_sweeps.read_text().strip().splitlines()[-1]) if args.merge_sweeps else {}
        sweeps, sweep_meshes = last.get("sweeps", []), tuple(last.get("protocol", {}).get("sweep_meshes", ()))
        meshes = tuple(sorted({r.mesh for r in records}))
    else:
        last = {}
        records, cross, cosines, spaces = e2e.run(protocol, settings, cache, progress=say)
        sweep_meshes = tuple(m for m in (meshes[:1] if args.quick else E2E_SWEEP_MESHES) if m in spaces)
        sweeps = [] if args.no_sweep else e2e.run_sweeps(
            spaces, protocol, settings, cache, sweep_meshes, args.error_levels, args.confusion_levels, progress=say)
    figures = e2e.summarize(records, cross, cosines)
    if args.trials_out:
        args.trials_out.parent.mkdir(parents=True, exist_ok=True)
        args.trials_out.write_text("".join(json.dumps(asdict(r)) + "\n" for r in records + cross))
    fresh = [s for sp in spaces.values() for s in sp.prepare_seconds.values()]
    print(e2e.format_table(figures, sweeps))
    print(f"preparation: {len(fresh)} fresh, {sum(fresh) / max(len(fresh), 1):.1f}s each on average "
          f"(cached ones not counted)")
    record = {"mode": "e2e", **figures, "sweeps": sweeps, "note": e2e.NOTE, "random_weights": False,
              "profile": profile, "settings": settings.to_dict(), "overrides": parse_overrides(args.set or []),
              "prepare_s_mean": sum(fresh) / len(fresh) if fresh else None, "n_prepared_fresh": len(fresh),
              "protocol": {"views": protocol.views, "clicks": protocol.clicks,
                           "cross_pairs": len(protocol.cross_pairs), "cross_clicks": protocol.cross_clicks,
                           "seed": protocol.seed, **(last.get("protocol", {}) if args.merge else {}),
                           "meshes": len(meshes), "sweep_meshes": list(sweep_meshes), "merged": bool(args.merge)},
              "oracle": {"features": asdict(protocol.features), "segmenter": asdict(protocol.segmenter)},
              "seconds": round(time.perf_counter() - start, 1)}
    print(json.dumps(record))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a small subset, under a minute in oracle mode")
    ap.add_argument("--mode", choices=("auto", "oracle", "real", "e2e"), default="auto")
    ap.add_argument("--profile", default=None, help="cpu, gpu or tiny (default: by device)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--models", type=Path, default=None, help="models folder")
    ap.add_argument("--cache", type=Path, default=None, help="preparation cache folder")
    ap.add_argument("--meshes", nargs="*", default=None, help="names like airplane/61 (default: all labelled)")
    ap.add_argument("--views", type=int, default=None, help="held-out views per mesh")
    ap.add_argument("--clicks", type=int, default=None, help="part clicks per view (default 8 quick, 5 full)")
    ap.add_argument("--cross-clicks", type=int, default=None,
                    help="e2e: part clicks per cross-instance image (default: --clicks)")
    ap.add_argument("--size", type=int, default=224, help="test image side")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--trials-out", type=Path, default=None, help="write every outcome as JSON lines here")
    ap.add_argument("--set", action="append", metavar="KEY=VALUE", help="e2e: override a preparation setting")
    ap.add_argument("--merge", type=Path, nargs="*", default=None, metavar="TRIALS",
                    help="e2e: summarise these --trials-out files (runs split over disjoint meshes) instead of running")
    ap.add_argument("--merge-sweeps", type=Path, default=None, metavar="OUTPUT",
                    help="e2e with --merge: take the sweeps from this run's output (its last line is the JSON)")
    ap.add_argument("--no-sweep", action="store_true", help="e2e: skip the error-rate and confusion sweeps")
    ap.add_argument("--no-cross", action="store_true", help="e2e: skip the cross-instance airplanes")
    ap.add_argument("--error-levels", type=float, nargs="*", default=[0.0, 0.1, 0.3],
                    help="e2e: oracle segmenter error rates to sweep")
    ap.add_argument("--confusion-levels", type=float, nargs="*", default=[0.0, 0.5, 1.0],
                    help="e2e: feature confusion levels to sweep")
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.mode == "e2e":
        run_e2e(args, time.perf_counter())
        return

    meshes = tuple(args.meshes) if args.meshes else (QUICK_MESHES if args.quick else
                                                     tuple(e.name for e in list_meshes()))
    protocol = C.Protocol(meshes=meshes, views=args.views or (2 if args.quick else 3),
                          clicks=args.clicks or (8 if args.quick else 5),
                          cross_pairs=PAIRS[:1] if args.quick else PAIRS, size=args.size, seed=args.seed)
    start = time.perf_counter()
    models = choose_models(args)
    outcomes = list(C.run(protocol, models, progress=lambda m: print(f"[{time.perf_counter() - start:6.1f}s] {m}",
                                                                      file=sys.stderr, flush=True)))
    summary = C.summarize(outcomes, models.mode)
    if args.trials_out:
        args.trials_out.parent.mkdir(parents=True, exist_ok=True)
        args.trials_out.write_text("".join(json.dumps(C.outcome_record(o)) + "\n" for o in outcomes))
    print(C.format_table(summary))
    record = summary.to_json()
    record["random_weights"] = models.mode == "plumbing"
    record["note"] = C.MODE_NOTES[models.mode]
    record["protocol"] = {**asdict(protocol), "meshes": len(protocol.meshes)}
    if models.mode == "oracle":
        record["planted"] = asdict(models.config)
    record["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(record))


if __name__ == "__main__":
    main()
