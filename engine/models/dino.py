"""DINOv2 patch features whose grid covers exactly the input image.

Resize policy (deliberate deviation from the reference, which resizes the long side to 224 and zero-pads
to a square): we resize each side to a multiple of the patch size, the long side to `input_size` and the
short side to the nearest multiple of 14 (at least 14), and do NOT pad. DINOv2 interpolates its position
embeddings to any grid, so a non-square image gets a non-square grid whose cells tile the image exactly
(no black padding bleeding into the features through global attention, no cells to crop away). The price
is an aspect change of at most half a patch on the short side (<= 3 % at 224). Square renders are
unaffected and give the same (input_size/14)^2 grid as the reference.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from engine.errors import BsbError, ImageError, ModelMissingError
from engine.models import autocast

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DinoFeatures:
    """A transformers Dinov2Model / Dinov2WithRegistersModel as an image -> feature-grid function."""

    def __init__(self, model: torch.nn.Module, device: torch.device, input_size: int = 224,
                 model_id: str = "", random_weights: bool = False, batch_size: int = 8) -> None:
        cfg = model.config
        self.patch = int(cfg.patch_size)
        if input_size % self.patch or input_size < self.patch:
            raise BsbError(f"DINOv2 input_size must be a positive multiple of {self.patch}, got {input_size}",
                           "bad_request")
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.input_size = input_size
        self.dim = int(cfg.hidden_size)
        self.skip = 1 + int(getattr(cfg, "num_register_tokens", 0))  # CLS (+ registers) precede the patches
        self.model_id = model_id
        self.random_weights = random_weights
        self.batch_size = batch_size
        self._mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)

    def grid_size(self, H: int, W: int) -> tuple[int, int]:
        """Feature grid (rows, cols) for an H x W image: long side input_size/14, short side rounded."""
        long_cells = self.input_size // self.patch
        short = min(H, W) * long_cells / max(H, W)
        short_cells = max(1, int(round(short)))
        return (long_cells, short_cells) if H >= W else (short_cells, long_cells)

    @torch.inference_mode()
    def __call__(self, images: np.ndarray) -> torch.Tensor:
        """(B, H, W, 3) uint8 -> (B, D, h, w) float32 CPU: last-layer layer-normed patch tokens."""
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8 or 0 in images.shape:
            raise ImageError(f"expected (B, H, W, 3) uint8 images, got {images.shape} {images.dtype}")
        rows, cols = self.grid_size(*images.shape[1:3])
        out = []
        for start in range(0, len(images), self.batch_size):
            x = torch.from_numpy(np.array(images[start:start + self.batch_size], copy=True)).to(self.device)
            x = x.permute(0, 3, 1, 2).float() / 255.0
            size = (rows * self.patch, cols * self.patch)
            if tuple(x.shape[-2:]) != size:
                x = F.interpolate(x, size, mode="bilinear", align_corners=False, antialias=True)
            x = (x - self._mean) / self._std
            with autocast(self.device):
                tokens = self.model(pixel_values=x).last_hidden_state  # layer-normed by the model
            patches = tokens[:, self.skip:].float()
            out.append(patches.transpose(1, 2).reshape(len(x), self.dim, rows, cols).cpu())
        return torch.cat(out)


def upsample(grid: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear (B, D, h, w) -> (B, D, H, W); valid because the grid tiles the image exactly."""
    return F.interpolate(grid, size=tuple(size), mode="bilinear", align_corners=False)


def load_dino(source: str | Path, device: torch.device, input_size: int = 224, offline: bool = False,
              fetch_hint: str = "", random_weights: bool = False) -> DinoFeatures:
    """Load a DINOv2 checkpoint (hub id or local folder) with or without registers."""
    from transformers import AutoConfig, Dinov2Model, Dinov2WithRegistersModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # stderr belongs to the service's log, not to loading bars

    hint = f"; fetch it with `{fetch_hint}`" if fetch_hint else ""
    try:
        cfg = AutoConfig.from_pretrained(str(source), local_files_only=offline)
        cls = {"dinov2": Dinov2Model, "dinov2_with_registers": Dinov2WithRegistersModel}.get(cfg.model_type)
        if cls is None:
            raise BsbError(f"{source} is a {cfg.model_type!r} model, not DINOv2", "bad_request")
        model = cls.from_pretrained(str(source), local_files_only=offline)
    except (OSError, ValueError) as exc:  # transformers' way of saying "not in the cache / not reachable"
        raise ModelMissingError(f"DINOv2 weights {source} are not available ({str(exc).splitlines()[0]}){hint}") from None
    return DinoFeatures(model, device=device, input_size=input_size, model_id=str(source),
                        random_weights=random_weights)

