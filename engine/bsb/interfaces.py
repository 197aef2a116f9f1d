"""The few things BSB calls on the 2D models and on iSeg, as Protocols.

Matching is pure array logic; these small interfaces let the real SAM/iSeg wrappers and the planted fakes
of the tests plug in unchanged.
"""

from __future__ import annotations

from typing import Callable, Protocol

import numpy as np


class MaskSetLike(Protocol):
    """What a prompt segmenter returns: 3 candidate masks per prompt and their predicted quality."""

    masks: object  # (N, 3, H, W) bool, numpy array or torch tensor
    scores: object  # (N, 3) float


class PromptSegmenter(Protocol):
    """SAM behind its prompt decoder, with the working image already set (`set_image`).

    Its masks have the working image's (H, W): the size the caller gives the feature grid.
    """

    def predict(self, points: np.ndarray | None, labels: np.ndarray | None, boxes: np.ndarray | None = None,
                mask_input: object | None = None) -> MaskSetLike:
        """points (N,P,2) float xy and labels (N,P) int (1 positive, 0 negative), boxes (N,4) xyxy or None."""
        ...


# (masks (N,3,H,W) bool, scores (N,3)) -> (object masks (N,H,W), part masks (N,H,W), part scores (N,)),
# chosen by area and score (SAM's output order is no guarantee).
MaskChooser = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]

# iSeg seeded with one positive click on the winning vertex -> (V,) probability of belonging to its part.
Seeding = Callable[[int], np.ndarray]

Progress = Callable[[float, str], None]
Cancel = Callable[[], bool]
