"""Match all: every distinct region SAM finds on the image, each matched to the mesh by BSB."""

from __future__ import annotations

from engine.bsb.features import FeatureGrid
from engine.bsb.interfaces import Cancel, MaskChooser, Progress, PromptSegmenter, Seeding
from engine.bsb.matching import match
from engine.bsb.prompting import default_chooser
from engine.bsb.regions import automatic_regions, small_to_pixel
from engine.bsb.result import MatchResult
from engine.errors import Cancelled


def match_all(segmenter: PromptSegmenter, grid: FeatureGrid, vertex_features: object, *,
              seed: Seeding | None = None, k: int = 100, min_confidence: float | None = None,
              scale: float = 1.0, max_regions: int | None = None, points_per_side: int = 8,
              choose: MaskChooser | None = None, progress: Progress | None = None,
              cancel: Cancel | None = None) -> list[MatchResult]:
    """One BSB result per automatic region ("region 1", ...), clicked at the region's most interior pixel.

    Regions with no corresponding part are kept (found=False) so the UI can show what was skipped and why.
    """
    choose = choose or default_chooser()
    if progress:
        progress(0.0, "finding regions")
    regions = automatic_regions(segmenter, choose, grid.image_size, points_per_side=points_per_side,
                                max_regions=max_regions, cancel=cancel)
    W, H = grid.image_size
    results = []
    for i, region in enumerate(regions):
        if cancel is not None and cancel():
            raise Cancelled()
        if progress:
            progress(0.1 + 0.9 * i / len(regions), f"matching region {i + 1} of {len(regions)}")
        x, y = small_to_pixel(region, (H, W))
        r = match(segmenter, grid, vertex_features, [[(x + 0.5) / scale, (y + 0.5) / scale]], [1], seed=seed,
                  k=k, min_confidence=min_confidence, scale=scale, choose=choose, cancel=cancel)
        r.name = f"region {i + 1}"
        results.append(r)
    if progress:
        progress(1.0, f"{sum(r.found for r in results)} of {len(results)} regions matched")
    return results
