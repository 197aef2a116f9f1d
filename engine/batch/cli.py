"""`python -m engine batch JOB.jsonl --out DIR`: the argparse front of the batch runner.

engine/cli.py calls `add_command(subparsers)`; the parser's `func` runs the job. Exit codes: 0 when every
asset is done, 1 when any failed (all others still ran; the table and results.jsonl say which and why).
Nothing heavy is imported until the command runs, so `--help` stays instant.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine.batch.job import __doc__ as JOB_FORMAT
from engine.models.profiles import PROFILES


def add_command(subparsers) -> None:
    p = subparsers.add_parser(
        "batch", help="annotate many meshes from a JSONL job on Ray (resumable)",
        description="Run every line of JOB.jsonl on Ray; rerunning skips what is done. Job format:\n"
                    + JOB_FORMAT.split("\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("job", type=Path, help="JSONL file, one task per line")
    p.add_argument("--out", type=Path, required=True,
                   help="output folder: <id>/ result files per asset and results.jsonl")
    p.add_argument("--ray", default=None, metavar="ADDRESS",
                   help="Ray cluster address (host:port or 'auto'); default: a local Ray started for the job")
    p.add_argument("--profile", choices=sorted(PROFILES), default=None,
                   help="model profile (default: gpu when the workers get GPUs, else cpu; tiny = random weights)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (cpu: never ask Ray for GPUs)")
    p.add_argument("--models", type=Path, default=None, help="models folder on the workers")
    p.add_argument("--cache", type=Path, default=None, help="feature cache folder on the workers")
    p.add_argument("--offline", action="store_true", default=None, help="never download model weights")
    p.add_argument("--preview", action="store_true", help="also write preview.png for every asset")
    p.add_argument("--blend", action="store_true",
                   help="also write <id>.blend (vertex group per part) through the bpy wheel")
    p.add_argument("--actors", type=int, default=None, help="model-holding workers (default: from the resources)")
    p.add_argument("--cpus-per-actor", type=float, default=None, help="default: 4 (CPU) or a share of the cores")
    p.add_argument("--gpus-per-actor", type=float, default=None, help="default: 1; 0.5 puts two actors on a GPU")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs, CI)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from engine.batch.job import load_job
    from engine.batch.ledger import RESULTS
    from engine.batch.progress import summary
    from engine.batch.runner import BatchOptions, import_ray, run_batch
    from engine.batch.worker import Outputs

    job = load_job(args.job)
    import_ray()  # say how to install Ray before anything else happens
    options = BatchOptions(out_dir=args.out, profile=args.profile, device=args.device, models=args.models,
                           cache=args.cache, offline=args.offline, outputs=Outputs(args.preview, args.blend),
                           ray_address=args.ray, actors=args.actors, cpus_per_actor=args.cpus_per_actor,
                           gpus_per_actor=args.gpus_per_actor, show_progress=not args.no_progress)
    if args.profile == "tiny":
        print("note: profile 'tiny' uses RANDOM weights: results are a plumbing check, not real answers",
              file=sys.stderr)
    report = run_batch(job, options)
    print(summary(report.records, len(report.skipped), report.wall_s), file=sys.stderr)
    done = sum(1 for r in report.records if r.get("status") == "done")
    print(f"batch: {done} done, {len(report.skipped)} already done, {len(report.failed)} failed "
          f"-> {args.out / RESULTS}")
    return 1 if report.failed else 0
