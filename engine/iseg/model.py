"""`ISegModel`: a mesh's vertex features plus its trained click decoder; the object the service keeps.

Why the features travel with the decoder: the decoder is trained per mesh on those exact features, so
one file (or object) is always a consistent pair.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from engine.errors import BsbError, NotFoundError
from engine.iseg.decoder import ClickDecoder, DecoderConfig, VertexCache

CHUNK = 65536  # vertices per forward pass at inference: bounds memory on big meshes
# Saved-file format; bumped when the decoder's state changes (2: negative clicks' gate). Older files are
# refused with "prepare again", and the mesh cache rebuilds such an entry.
FORMAT = "bsb-iseg-2"


class ISegModel:
    """Per-vertex features (V, C) + a `ClickDecoder`. `predict(clicks)` is one forward pass."""

    def __init__(self, decoder: ClickDecoder, features: torch.Tensor) -> None:
        self.decoder = decoder.eval()
        self.device = next(decoder.parameters()).device
        self.features = features.detach().to(self.device, torch.float32)
        self._cache: VertexCache | None = None

    @property
    def n_vertices(self) -> int:
        return int(self.features.shape[0])

    def _vertex_cache(self) -> VertexCache:
        """Click-independent tensors, computed on the first click and kept for the next ones."""
        if self._cache is None:
            with torch.inference_mode():
                parts = [self.decoder.precompute(self.features[i:i + CHUNK]) for i in range(0, self.n_vertices, CHUNK)]
                self._cache = VertexCache(*(torch.cat([getattr(p, k) for p in parts]) for k in ("embed", "query", "first")))
        return self._cache

    def check_clicks(self, clicks: list[tuple[int, bool]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Validated (vertex ids (C,) long, positive (C,) bool) tensors; BsbError on bad clicks."""
        if len(clicks) == 0:
            raise BsbError("no clicks given; click at least one vertex of the part you want", "bad_request")
        try:
            ids = [int(v) for v, _ in clicks]
            signs = [bool(p) for _, p in clicks]
        except (TypeError, ValueError) as exc:
            raise BsbError(f"clicks must be (vertex index, positive) pairs, got {clicks!r}", "bad_request") from exc
        bad = [v for v in ids if not 0 <= v < self.n_vertices]
        if bad:
            raise BsbError(f"click vertex {bad[0]} is out of range: this mesh has {self.n_vertices} vertices "
                           "(was the mesh edited after preparing it? prepare it again)", "bad_request")
        if not any(signs):
            raise BsbError("all clicks are negative; add at least one positive click on the part", "bad_request")
        return (torch.tensor(ids, dtype=torch.long, device=self.device),
                torch.tensor(signs, dtype=torch.bool, device=self.device))

    def predict(self, clicks: list[tuple[int, bool]]) -> np.ndarray:
        """Probability (V,) float32 that each vertex belongs to the part the clicks describe."""
        ids, positive = self.check_clicks(clicks)
        cache = self._vertex_cache()
        with torch.inference_mode():
            keys, values = self.decoder.click_terms(cache.embed[ids][None], positive[None])
            out = [torch.sigmoid(self.decoder.decode(cache.query[None, i:i + CHUNK], cache.first[None, i:i + CHUNK],
                                                     keys, values, positive[None]))[0]
                   for i in range(0, self.n_vertices, CHUNK)]
        return torch.cat(out).float().cpu().numpy()

    def save(self, path: str | Path) -> None:
        """One file with the decoder weights, its sizes and the features (loadable with weights_only)."""
        torch.save({"format": FORMAT, "config": self.decoder.config.to_dict(),
                    "state": {k: v.cpu() for k, v in self.decoder.state_dict().items()},
                    "features": self.features.cpu()}, str(path))

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> "ISegModel":
        path = Path(path)
        if not path.is_file():
            raise NotFoundError(f"iSeg model file {path} does not exist; prepare the mesh again")
        blob = torch.load(str(path), map_location="cpu", weights_only=True)
        if isinstance(blob, dict) and str(blob.get("format", "")).startswith("bsb-iseg-") and blob["format"] != FORMAT:
            raise BsbError(f"{path} is an iSeg model of another engine version ({blob['format']}, this one reads "
                           f"{FORMAT}); prepare the mesh again", "bad_request")
        if not isinstance(blob, dict) or blob.get("format") != FORMAT:
            raise BsbError(f"{path} is not an iSeg model saved by this engine; prepare the mesh again", "bad_request")
        decoder = ClickDecoder(DecoderConfig(**blob["config"]))
        decoder.load_state_dict(blob["state"])
        return cls(decoder.to(device), blob["features"])
