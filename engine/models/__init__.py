"""The 2D models (DINOv2, SAM), where their weights live, and the speed/quality profiles.

Importing the package stays cheap (no torch): `python -m engine --help` builds its parser from
engine.models.commands.
"""

from __future__ import annotations


def autocast(device):
    """Half precision on GPUs (bf16 where supported); plain fp32 on CPU, where typical laptops gain nothing."""
    import torch

    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    if device.type == "mps":
        return torch.autocast("mps", dtype=torch.float16)
    return torch.autocast("cpu", enabled=False)
