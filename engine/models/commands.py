"""CLI subcommands about models: `models list`, `models fetch PROFILE`, `doctor`.

engine/cli.py calls `add_commands(subparsers)`; each parser sets `func`, a `run(args) -> int`.
Output goes to stdout (these commands never run inside `serve`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

from engine.models.profiles import PROFILES


def add_commands(subparsers) -> None:
    """Add `models list|fetch` and `doctor` to the engine's argparse subparsers."""
    models = subparsers.add_parser("models", help="list or fetch model weights per profile")
    verbs = models.add_subparsers(dest="models_command", required=True)
    p = verbs.add_parser("list", help="profiles and whether their weights are present")
    _folder(p)
    p.add_argument("--json", action="store_true", help="one JSON object (files, sizes, presence) for programs")
    p.set_defaults(func=run_list)
    p = verbs.add_parser("fetch", help="download a profile's weights (resumable, verified)")
    p.add_argument("profile", choices=sorted(PROFILES))
    _folder(p)
    p.add_argument("--offline", action="store_true", help="only check; never download")
    p.add_argument("--json", action="store_true",
                   help="JSON lines for programs: the plan (files, sizes, paths to watch), then the outcome")
    p.set_defaults(func=run_fetch)
    p = subparsers.add_parser("doctor", help="device, versions, memory and model weights: what works here")
    _folder(p)
    p.set_defaults(func=run_doctor)


def _folder(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", type=Path, default=None,
                   help="models folder (default: $BSB_MODELS_DIR or the user cache dir)")


# Download sizes of the Hugging Face models (model.safetensors, rounded); the SAM sizes live in the store.
DINO_SIZES_MB = {"facebook/dinov2-with-registers-base": 347, "facebook/dinov2-with-registers-large": 1217}


def profile_files(profile, folder) -> list[dict]:
    """Each weight file of a profile: what it is, where it goes, its size, whether it is here."""
    from engine.models.store import SAM_CHECKPOINTS, profile_status

    status = profile_status(profile, folder)
    sam = SAM_CHECKPOINTS.get(profile.sam_type)
    return [
        {"part": "dino", "id": profile.dino_id, "present": status["dino"][0], "where": status["dino"][1],
         "size_mb": 0 if profile.random_weights else DINO_SIZES_MB.get(profile.dino_id, 0)},
        {"part": "sam", "id": profile.sam_checkpoint, "present": status["sam"][0], "where": status["sam"][1],
         "size_mb": 0 if profile.random_weights or sam is None else sam.size_mb},
    ]


def run_list(args: argparse.Namespace) -> int:
    from engine.models.store import models_dir, profile_status

    if args.json:
        print(json.dumps({"folder": str(models_dir(args.models)), "profiles": [
            {"name": p.name, "description": p.description, "random_weights": p.random_weights,
             "files": profile_files(p, args.models)} for p in PROFILES.values()]}))
        return 0
    print(f"models folder: {models_dir(args.models)}")
    for profile in PROFILES.values():
        print(f"\n{profile.name}: {profile.description}\n  {profile.summary()}")
        for part, (present, where) in profile_status(profile, args.models).items():
            print(f"  {part:5s} {'present' if present else 'MISSING'}  {where}")
    return 0


def run_fetch(args: argparse.Namespace) -> int:
    from engine.models.store import fetch_profile, models_dir

    profile = PROFILES[args.profile]
    if args.json:  # the file being written is <where>.part: a caller watches its size for progress
        missing = [f for f in profile_files(profile, args.models) if not f["present"]]
        print(json.dumps({"event": "plan", "profile": profile.name, "files": missing}), flush=True)
    fetch_profile(profile, args.models, offline=True if args.offline else None, progress=not args.json)
    if args.json:
        print(json.dumps({"event": "done", "profile": profile.name}), flush=True)
        return 0
    print(f"{args.profile}: all weights present in {models_dir(args.models)} / the Hugging Face cache")
    return 0


def run_doctor(args: argparse.Namespace) -> int:
    import torch

    from engine.device import describe_device, pick_device
    from engine.models.store import is_offline, models_dir, profile_status

    device = pick_device("auto")
    rows = [
        ("python", f"{platform.python_version()} ({sys.executable})"),
        ("torch", torch.__version__),
        ("CUDA", f"{torch.version.cuda} available" if torch.cuda.is_available()
         else f"not available (torch built for CUDA {torch.version.cuda})" if torch.version.cuda else "CPU-only torch"),
        ("device", f"{device} - {describe_device(device)}"),
        ("memory", _memory(device)),
        ("models folder", str(models_dir(args.models))),
        ("offline", "yes" if is_offline() else "no"),
        ("EXR images", "yes" if _has("OpenEXR") else "no (pip install OpenEXR)"),
    ]
    for profile in PROFILES.values():
        rows.append((f"{profile.name} profile", profile.summary()))
        for part, (present, where) in profile_status(profile, args.models).items():
            rows.append((f"{profile.name} {part}", f"{'present' if present else 'MISSING'}  {where}"))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


def _memory(device) -> str:
    """Free RAM (and GPU memory), best effort: an unknown figure is reported, not guessed."""
    parts = []
    try:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        parts.append(f"RAM {free / 2**30:.1f} GiB free of {total / 2**30:.1f} GiB")
    except (ValueError, OSError, AttributeError):
        parts.append("RAM unknown")
    if device.type == "cuda":
        import torch

        free, total = torch.cuda.mem_get_info(device)
        parts.append(f"GPU {free / 2**30:.1f} GiB free of {total / 2**30:.1f} GiB")
    return ", ".join(parts)


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None
