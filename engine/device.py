"""Choosing the torch device: CUDA, then MPS, then CPU, unless the user says otherwise."""

from __future__ import annotations

import torch

from engine.errors import BsbError

PREFERENCES = ("auto", "cuda", "mps", "cpu")


def pick_device(preference: str = "auto") -> torch.device:
    """The device to run on; a requested accelerator that is absent is an error, not a silent CPU."""
    preference = (preference or "auto").lower()
    if preference not in PREFERENCES:
        raise BsbError(f"unknown device {preference!r}; choose one of {', '.join(PREFERENCES)}", "bad_request")
    has_mps = bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()
    if preference == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if has_mps:
            return torch.device("mps")
        return torch.device("cpu")
    if preference == "cuda" and not torch.cuda.is_available():
        raise BsbError("device 'cuda' was requested but torch sees no CUDA GPU; use 'auto' or 'cpu'", "bad_request")
    if preference == "mps" and not has_mps:
        raise BsbError("device 'mps' was requested but this machine has no Apple GPU; use 'auto' or 'cpu'", "bad_request")
    return torch.device(preference)


def describe_device(device: torch.device) -> str:
    """A one-line human description, shown in the handshake and in `doctor`."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"CUDA GPU {props.name} ({props.total_memory / 2**30:.1f} GiB)"
    if device.type == "mps":
        return "Apple GPU (MPS)"
    return f"CPU ({torch.get_num_threads()} threads)"
