"""CLI subcommands about models: `models list`, `models fetch PROFILE`, `doctor`.

engine/cli.py calls `add_commands(subparsers)`; each parser sets `func`, a `run(args) -> int`.
Output goes to stdout (these commands never run inside `serve`).
"""

from __future__ import annotations

import argparse
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
    p.set_defaults(func=run_list)
    p = verbs.add_parser("fetch", help="download a profile's weights (resumable, verified)")
    p.add_argument("profile", choices=sorted(PROFILES))
    _folder(p)
    p.add_argument("--offline", action="store_true", help="only check; never download")
    p.set_defaults(func=run_fetch)
    p = subparsers.add_parser("doctor", help="device, versions, memory and model weights: what works here")
    _folder(p)
    p.set_defaults(func=run_doctor)


def _folder(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", type=Path, default=None,
                   help="models folder (default: $BSB_MODELS_DIR or the user cache dir)")


def run_list(args: argparse.Namespace) -> int:
    from engine.models.store import models_dir, profile_status

    print(f"models folder: {models_dir(args.models)}")
    for profile in PROFILES.values():
        print(f"\n{profile.name}: {profile.description}\n  {profile.summary()}")
        for part, (present, where) in profile_status(profile, args.models).items():
            print(f"  {part:5s} {'present' if present else 'MISSING'}  {where}")
    return 0


def run_fetch(args: argparse.Namespace) -> int:
    from engine.models.store import fetch_profile, models_dir

    fetch_profile(PROFILES[args.profile], args.models, offline=True if args.offline else None)
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
