"""The mesh feature field: an MLP on Fourier features of xyz that is distilled from 2D features.

Output statistics, decided here: the teacher's features (DINOv2 patch tokens after LayerNorm, SAM's
neck) are not bounded by 1, and a tanh head cannot produce |x| >= 1. So the field learns the targets
in a *normalised* space and undoes the normalisation on output: `forward(x) = head(mlp(x)) * scale +
mean`, with `mean`/`scale` per channel stored as buffers (saved with the weights). For the "linear"
head the scale is the targets' standard deviation (a plain standardisation, which also gives every
channel the same weight in the loss). For the "tanh" head (the paper's choice, kept for fidelity) the
scale is the largest deviation from the mean divided by 0.9, so every target lies in [-0.9, 0.9], inside
tanh's range and away from its flat tails. Callers always see features in the teacher's own space.
"""

from __future__ import annotations

import pickle
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from engine.errors import BsbError, Cancelled, NotFoundError

HEADS = ("tanh", "linear")
TANH_MARGIN = 0.9
FORMAT_VERSION = 1


@dataclass(frozen=True)
class FieldConfig:
    """Shape of a feature field. `depth` counts the hidden width->width blocks (the paper's 6 Linear
    layers are input + 4 hidden + output); `encoding_dim` counts Fourier frequencies, so the
    encoding [x, sin(2 pi xB), cos(2 pi xB)] has 3 + 2 * encoding_dim dims."""

    width: int = 256
    depth: int = 4
    out_dim: int = 256
    encoding_dim: int = 256
    sigma: float = 5.0
    head: str = "tanh"

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise BsbError(f"field head {self.head!r} is unknown; use one of {', '.join(HEADS)}", "bad_request")
        for name in ("width", "out_dim", "encoding_dim"):
            if int(getattr(self, name)) < 1:
                raise BsbError(f"field {name} must be at least 1, got {getattr(self, name)}", "bad_request")
        if self.depth < 0 or self.sigma <= 0:
            raise BsbError(f"field depth must be >= 0 and sigma > 0; got {self.depth}, {self.sigma}", "bad_request")

    @classmethod
    def paper_dino(cls) -> "FieldConfig":
        """BSB's DINOv2 field: 2048-d encoding, 6 Linear layers of width 1024, 1024 out, tanh."""
        return cls(width=1024, depth=4, out_dim=1024, encoding_dim=1024, sigma=5.0, head="tanh")

    @classmethod
    def paper_sam(cls) -> "FieldConfig":
        """iSeg's SAM field: 512-d encoding, 6 Linear layers of width 256, 256 out, tanh."""
        return cls(width=256, depth=4, out_dim=256, encoding_dim=256, sigma=5.0, head="tanh")

    @classmethod
    def small(cls, out_dim: int) -> "FieldConfig":
        """A few-second field for tests and plumbing checks."""
        return cls(width=128, depth=2, out_dim=out_dim, encoding_dim=64, sigma=3.0, head="linear")


class FeatureField(nn.Module):
    """xyz (unit-sphere frame) -> features in the teacher's space; see the module docstring."""

    def __init__(self, config: FieldConfig, seed: int = 0) -> None:
        super().__init__()
        self.config = config
        generator = torch.Generator().manual_seed(seed)
        # A buffer, so a reloaded field is the same function (the reference kept B out of the state_dict).
        self.register_buffer("fourier", torch.randn(3, config.encoding_dim, generator=generator) * config.sigma)
        self.register_buffer("out_mean", torch.zeros(config.out_dim))
        self.register_buffer("out_scale", torch.ones(config.out_dim))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            layers: list[nn.Module] = []
            in_dim = 3 + 2 * config.encoding_dim
            for _ in range(config.depth + 1):
                layers += [nn.Linear(in_dim, config.width), nn.ReLU(), nn.LayerNorm(config.width)]
                in_dim = config.width
            layers.append(nn.Linear(config.width, config.out_dim))
            if config.head == "tanh":
                layers.append(nn.Tanh())
            self.mlp = nn.Sequential(*layers)

    def encode(self, points: torch.Tensor) -> torch.Tensor:
        projected = 2 * torch.pi * (points @ self.fourier)
        return torch.cat([points, torch.sin(projected), torch.cos(projected)], dim=-1)

    def forward_normalized(self, points: torch.Tensor) -> torch.Tensor:
        """The raw head output; training compares it with `normalize(targets)`."""
        return self.mlp(self.encode(points))

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        return self.forward_normalized(points) * self.out_scale + self.out_mean

    def normalize(self, features: torch.Tensor) -> torch.Tensor:
        """Teacher-space features (..., D) into the head's space."""
        return (features - self.out_mean) / self.out_scale

    @torch.no_grad()
    def fit_output_stats(self, samples: torch.Tensor) -> None:
        """Set mean/scale from target samples `(N, D)` (e.g. all covered grid cells)."""
        if samples.dim() != 2 or samples.shape[1] != self.config.out_dim or samples.shape[0] == 0:
            raise BsbError(
                f"target samples must be (N>0, {self.config.out_dim}); got {tuple(samples.shape)}", "bad_array"
            )
        samples = samples.to(self.out_mean.device, torch.float32)
        mean = samples.mean(0)
        if self.config.head == "tanh":
            scale = (samples - mean).abs().amax(0) / TANH_MARGIN
        else:
            scale = samples.std(0, unbiased=False)
        self.out_mean.copy_(mean)
        self.out_scale.copy_(scale.clamp_min(1e-6))

    def save(self, path: str | Path) -> None:
        """Weights, Fourier matrix, output statistics and config in one file."""
        state = {k: v.detach().cpu() for k, v in self.state_dict().items()}
        torch.save({"format": FORMAT_VERSION, "config": asdict(self.config), "state_dict": state}, Path(path))

    @staticmethod
    def load(path: str | Path, device: torch.device | str = "cpu") -> "FeatureField":
        path = Path(path)
        if not path.is_file():
            raise NotFoundError(f"feature field file {path} does not exist; distil the mesh again")
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            field = FeatureField(FieldConfig(**blob["config"]))
            field.load_state_dict(blob["state_dict"])
        except (pickle.UnpicklingError, KeyError, TypeError, RuntimeError, EOFError, ValueError) as exc:
            raise BsbError(f"{path} is not a readable feature field ({exc}); delete it and distil again") from exc
        return field.to(device)


@torch.no_grad()
def evaluate_vertices(
    field: FeatureField,
    vertices,
    chunk: int = 65536,
    device: torch.device | str | None = None,
    cancel: Callable[[], bool] | None = None,
) -> torch.Tensor:
    """Field values at every vertex `(V,3)` -> `(V,D)` float32 on the CPU, `chunk` vertices at a time.

    The output is preallocated once, so the peak stays near one output plus one chunk's activations.
    The field is moved to `device` (default: where its parameters are).
    """
    device = torch.device(device) if device is not None else next(field.parameters()).device
    vertices = torch.as_tensor(vertices, dtype=torch.float32)
    if vertices.dim() != 2 or vertices.shape[1] != 3:
        raise BsbError(f"vertices must be (V,3); got {tuple(vertices.shape)}", "bad_array")
    was_training = field.training
    field.eval()
    field.to(device)
    out = torch.empty(vertices.shape[0], field.config.out_dim)
    try:
        for start in range(0, vertices.shape[0], chunk):
            if cancel is not None and cancel():
                raise Cancelled()
            part = vertices[start : start + chunk].to(device)
            out[start : start + part.shape[0]] = field(part).float().cpu()
    finally:
        field.train(was_training)  # a cancel must not leave the caller's field in eval mode
    return out
