"""Correspondence success rate of BSB and its baselines on labelled meshes (the paper's protocol, adapted).

For every mesh: held-out views, a coloured and textured test image per view, clicks on random visible
vertices of ground-truth parts (success: the matched vertex lies in that part), one click per view on a
painted decal (success: "no corresponding part"), and cross-instance clicks between the semantic airplanes.

Modes: "real" uses the profile's SAM + DINOv2 weights through the engine's preparation; without weights
the run is "oracle": a ground-truth segmenter and planted features (engine.evaluation.oracle), which
measures the matching logic only. `--profile tiny` runs the real path on random weights ("plumbing").
Prints a table, then one JSON line (keys: mode, bsb_success, nn_success, random_success,
no_part_rejection_rate, ...). `--quick`: 4 meshes, 2 views, one cross pair (under a minute in oracle mode).
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a small subset, under a minute in oracle mode")
    ap.add_argument("--mode", choices=("auto", "oracle", "real"), default="auto")
    ap.add_argument("--profile", default=None, help="cpu, gpu or tiny (default: by device)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--models", type=Path, default=None, help="models folder")
    ap.add_argument("--cache", type=Path, default=None, help="preparation cache folder")
    ap.add_argument("--meshes", nargs="*", default=None, help="names like airplane/61 (default: all labelled)")
    ap.add_argument("--views", type=int, default=None, help="held-out views per mesh")
    ap.add_argument("--clicks", type=int, default=None, help="part clicks per view (default 8 quick, 5 full)")
    ap.add_argument("--size", type=int, default=224, help="test image side")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--trials-out", type=Path, default=None, help="write every outcome as JSON lines here")
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

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
