"""Speed/quality profiles: which DINOv2 and SAM to run and how many rendered views each sees.

Cost figures (2-core x86-64 VM, fp32; research memo cpu_render_models.md, bench/models.py, bench/sweep.py):
DINOv2 -S/-B/-L 60 ms / 0.2-0.3 s / 0.8-1 s per 224^2 view; SAM ViT-B image encoder ~8-15 s per view
(SAM always runs at its native 1024 px, whatever the render size); one SAM prompt ~0.15 s on a cached
embedding. Choices:
- `cpu`: DINOv2-B/14 with registers and SAM ViT-B (the lightest published SAM; MobileSAM-style encoders
  are not on PyPI with loadable weights). SAM runs at its native input size (real weights are only
  trustworthy there). Views and steps are chosen from measured quality-vs-seconds curves (bench/sweep.py
  --quick: oracle teachers on PSB fourleg/382, CPU seconds on this VM plus 15 s per SAM view, 0.3 s per
  DINO view and ~0.15 s per SAM prompt):
  * SAM views, uniform on the sphere: single-click iSeg IoU 0.70 with 2 views, 0.94 with 4, 0.95 with 8
    at ~3 extra minutes: 4 views. SAM field steps (set in engine.pipeline._EXTRA): held-out R^2 -0.26 at 3
    steps (the old epochs rule), 0.88 at 25, 0.96 at 50, 0.97 at 100: 50 steps (iSeg IoU 0.59 -> 0.94).
  * DINO views 60 (30 views reach the same held-out R^2 at 50 steps, 0.96; a DINO view costs only
    ~0.3 s and coverage of occluded regions was not measured, so 60 stay), field steps 100: held-out R^2 0.96 / vertex cosine 0.88 at 50 steps, 0.99 / 0.94 at 100.
  * iSeg keeps 200 click vertices and 300 decoder steps (not swept yet); its SAM prompts (~1100, ~3 min)
    are now the largest share of a preparation. A click ranks every valid BSB candidate (no prompt cap).
- `gpu`: the paper's models (DINOv2-L/14 with registers, SAM ViT-H) with many views and the reference's
  step counts and sizes (engine.pipeline._EXTRA); SAM views are capped at 200 because each embedding is
  4 MB (fp32) and ViT-H costs ~0.2-0.5 s/view on a laptop GPU.
- `tiny`: random weights, tiny architectures; for tests and plumbing checks only, never a result.
- EdgeTAM's Hugging Face id: `yonigozlan/EdgeTAM-hf`, the checkpoint that transformers itself names for
  EdgeTamModel (its configuration docstrings and its EdgeTAM integration tests load it). `facebook/EdgeTAM`
  holds the original-format checkpoint for Meta's own code; its transformers weights sit only in an
  unmerged pull request (refs/pr/1), so it is not loadable by EdgeTamModel from the main branch.
- `fast` (default on CPU and Apple MPS, engine.pipeline.default_profile): EdgeTAM, the lightest SAM 2-class
  encoder in transformers (RepViT image encoder), ~4.5x cheaper per view than SAM 2.1-tiny and ~18x cheaper
  than SAM ViT-B here (CPU time, bench/models.py --quick --encoders), which buys 24 SAM views instead of `cpu`'s 4; DINOv2-S/14 with
  registers (~60 ms per 224^2 view) on 50 DINO views with 50 field steps (engine.pipeline._FAST_EXTRA), chosen
  from the end-to-end oracle curve (`bench/views.py --quick --dino 100:100 101:100 50:100 25:100 50:50 25:50`,
  6 PSB meshes, 72 part clicks; BSB part IoU paired per click to the earlier 100 views x 100 steps, 0.687):
  101 views (a null change) +0.022 +- 0.031, 50 views +0.008 +- 0.030, 25 views +0.008 +- 0.036, 50 views x 50 steps
  +0.040 +- 0.044, 25 x 50 -0.009 +- 0.039; iSeg's true-click IoU does not depend on DINO (0.903 at every
  point). 50 x 50 halves the DINO teacher and distillation (~30-40 CPU-s per thread off the first answer);
  25 x 50 is also within noise but the oracle's part-constant features may flatter so few real DINOv2 views.
- `balanced`: SAM 2.1-tiny and DINOv2-B/14 with registers, 24 SAM views: SAM 2.1's own weights at about
  a quarter of ViT-B's cost per view (CPU time), for when a few more minutes are acceptable.
- `paper` (default on CUDA): the reference's models and view counts (1000 renders at 224 px for both
  distillations, iseg_bsb.md); 1000 SAM embeddings hold ~4 GB of host RAM.
- `cpu` and `gpu` keep their meaning (SAM ViT-B on few views; the paper's models with capped views), so a
  script naming them computes what it did before and their caches stay valid; they are the middle profiles.
Quality of `fast`/`balanced` against `cpu` cannot be measured without real weights (none can be downloaded
here); their view counts follow the issue's floor of 24 SAM views, not a measured curve.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from engine.errors import BsbError

if TYPE_CHECKING:
    import torch

    from engine.models.dino import DinoFeatures
    from engine.models.sam import SamSegmenter


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    dino_id: str  # Hugging Face hub id (tiny: a folder written by engine.models.tiny)
    dino_input_size: int  # long side fed to DINOv2, multiple of 14
    sam_type: str  # key of engine.models.sam.SAM_SPECS
    sam_checkpoint: str  # file name inside the models folder
    dino_views: int  # rendered views distilled into per-vertex DINO features
    sam_views: int  # rendered views whose SAM embeddings train iSeg
    sam_input_size: int  # side of the renders SAM sees (SAM resizes them to its native input)
    field_width: int  # feature-field MLP width
    field_depth: int  # hidden blocks
    distill_epochs: int
    random_weights: bool = False
    # transformers SAM 2.1 / EdgeTAM (hub id or folder); empty: segment-anything's `sam_checkpoint` file
    sam_id: str = ""
    cost: str = ""  # measured cost, shown by `models list` and `doctor`

    def summary(self) -> str:
        """Models, view counts and cost in one line, for `models list` and `doctor`."""
        sam = self.sam_id or f"SAM {self.sam_type} ({self.sam_checkpoint})"
        text = (f"DINO {self.dino_id} @{self.dino_input_size}px x {self.dino_views} views; "
                f"{sam} x {self.sam_views} views @{self.sam_input_size}px")
        return f"{text}; {self.cost}" if self.cost else text


# Per-view model cost on the 2-core VM (python bench/models.py --quick; random weights of the real
# architectures, fp32, "cpu/thr" = CPU time / threads, a shared and noisy machine).
PROFILE_COSTS: dict[str, str] = {
    "fast": "EdgeTAM ~0.5 s (39 GFLOPs) + DINOv2-S ~0.1 s per view; Spot prepares in ~53-81 s on 2 quiet cores "
            "(median of 3 runs 62 s; iSeg click data ~16 of it, ~460 prompts at ~30 ms; bench/prepare.py --quick, "
            "extrapolated), first provisional answer after ~13 s (measured)",
    "balanced": "SAM 2.1-tiny ~3.3 s (207 GFLOPs) + DINOv2-B ~0.3-1 s per view on 2 CPU cores",
    "paper": "SAM ViT-H ~6 TFLOPs per view: minutes on a GPU, hours on a CPU",
    "gpu": "SAM ViT-H + DINOv2-L ~55 s per view on 2 CPU cores (bench/models.py): minutes on a GPU",
    "cpu": "Spot prepares in ~141 s on 2 CPU cores (SAM ViT-B 74 s of it, bench/prepare.py)",
    "tiny": "seconds per mesh",
}

PROFILES: dict[str, Profile] = {
    "gpu": Profile(
        name="gpu", description="GPU, capped views: SAM ViT-H on 200 views + DINOv2-L/14 with registers on 1000 "
                                "(the paper's models at 512 px SAM renders; `paper` is the CUDA default)",
        dino_id="facebook/dinov2-with-registers-large", dino_input_size=224,
        sam_type="vit_h", sam_checkpoint="sam_vit_h_4b8939.pth",
        dino_views=1000, sam_views=200, sam_input_size=512,
        field_width=1024, field_depth=4, distill_epochs=3, cost=PROFILE_COSTS["gpu"]),
    "cpu": Profile(
        name="cpu", description="CPU, the earlier default: SAM ViT-B on 4 views + DINOv2-B/14 with registers on 60",
        dino_id="facebook/dinov2-with-registers-base", dino_input_size=224,
        sam_type="vit_b", sam_checkpoint="sam_vit_b_01ec64.pth",
        dino_views=60, sam_views=4, sam_input_size=256,
        field_width=256, field_depth=3, distill_epochs=3, cost=PROFILE_COSTS["cpu"]),
    "tiny": Profile(
        name="tiny", description="RANDOM WEIGHTS, tiny SAM + DINOv2 on a few views: tests and plumbing only, "
                                 "results are meaningless",
        dino_id="dinov2-tiny-random", dino_input_size=56,
        sam_type="tiny", sam_checkpoint="sam_tiny_random.pth",
        dino_views=8, sam_views=4, sam_input_size=64,
        field_width=32, field_depth=1, distill_epochs=1, random_weights=True, cost=PROFILE_COSTS["tiny"]),
    "fast": Profile(
        name="fast", description="CPU / Apple default: EdgeTAM on 24 views + DINOv2-S/14 with registers on 50",
        dino_id="facebook/dinov2-with-registers-small", dino_input_size=224,
        sam_type="edgetam", sam_checkpoint="", sam_id="yonigozlan/EdgeTAM-hf",
        dino_views=50, sam_views=24, sam_input_size=512,
        field_width=256, field_depth=3, distill_epochs=3,
        cost=PROFILE_COSTS["fast"]),
    "balanced": Profile(
        name="balanced", description="CPU, more time: SAM 2.1-tiny on 24 views + DINOv2-B/14 with registers on 100",
        dino_id="facebook/dinov2-with-registers-base", dino_input_size=224,
        sam_type="sam2.1-hiera-tiny", sam_checkpoint="", sam_id="facebook/sam2.1-hiera-tiny",
        dino_views=100, sam_views=24, sam_input_size=512,
        field_width=256, field_depth=3, distill_epochs=3,
        cost=PROFILE_COSTS["balanced"]),
    "paper": Profile(
        name="paper", description="CUDA default, the reference: SAM ViT-H on 1000 views + DINOv2-L/14 with registers "
                                  "on 1000",
        dino_id="facebook/dinov2-with-registers-large", dino_input_size=224,
        sam_type="vit_h", sam_checkpoint="sam_vit_h_4b8939.pth",
        dino_views=1000, sam_views=1000, sam_input_size=224,
        field_width=1024, field_depth=4, distill_epochs=3,
        cost=PROFILE_COSTS["paper"]),
}


def get_profile(name: str) -> Profile:
    """The named profile; an unknown name is the user's error."""
    try:
        return PROFILES[name]
    except KeyError:
        raise BsbError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}", "bad_request") from None


def load_profile_models(profile: Profile | str, models_dir: str | Path | None = None,
                        device: "torch.device | None" = None, offline: bool | None = None
                        ) -> "tuple[DinoFeatures, SamSegmenter]":
    """The profile's (DinoFeatures, SamSegmenter); see engine.models.store.load_profile_models."""
    from engine.models.store import load_profile_models as load

    return load(get_profile(profile) if isinstance(profile, str) else profile, models_dir, device, offline)
