"""Tiny randomly initialised DINOv2 and SAM, written to disk so tests go through the real loaders.

They have the real classes and interfaces but random weights: good for shapes, plumbing and caching,
meaningless as results. Everything built here is labelled `random_weights=True` by the loaders' callers.
"""

from __future__ import annotations

from pathlib import Path

import torch

from engine.models.sam import build_sam

TINY_DINO_DIR = "dinov2-tiny-random"
TINY_SAM_FILE = "sam_tiny_random.pth"


def tiny_dino_config(registers: bool = True):
    """A 2-layer, 32-wide DINOv2 (optionally with 2 register tokens), patch 14."""
    from transformers import Dinov2Config, Dinov2WithRegistersConfig

    common = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                  patch_size=14, image_size=56)
    if registers:
        return Dinov2WithRegistersConfig(num_register_tokens=2, **common)
    return Dinov2Config(**common)


def save_tiny_dino(folder: str | Path, registers: bool = True, seed: int = 0) -> Path:
    """Write config + safetensors with `save_pretrained`; returns the folder."""
    from transformers import Dinov2Model, Dinov2WithRegistersModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # keep the service's stderr log free of progress bars
    torch.manual_seed(seed)
    cls = Dinov2WithRegistersModel if registers else Dinov2Model
    model = cls(tiny_dino_config(registers))
    folder = Path(folder)
    model.save_pretrained(folder)
    return folder


def save_tiny_sam(path: str | Path, seed: int = 0) -> Path:
    """Write a state_dict checkpoint of the 'tiny' SAM spec (256 px input, 16x16 embedding grid)."""
    torch.manual_seed(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(build_sam("tiny").state_dict(), path)
    return path


def ensure_tiny_models(folder: str | Path) -> tuple[Path, Path]:
    """The tiny DINOv2 folder and SAM checkpoint under `folder`, written once (deterministic seed)."""
    folder = Path(folder)
    dino_dir, sam_path = folder / TINY_DINO_DIR, folder / TINY_SAM_FILE
    if not (dino_dir / "config.json").is_file():
        save_tiny_dino(dino_dir)
    if not sam_path.is_file():
        tmp = save_tiny_sam(sam_path.with_suffix(".tmp"))
        tmp.replace(sam_path)
    return dino_dir, sam_path
