"""FLOPs of one preparation (and one click) per profile, so GPU time can be projected from a GPU's throughput.

Each profile's models are built from their REAL architectures with random weights (FLOPs do not depend on
weight values; nothing is downloaded): DINOv2 with registers -S/-B/-L/-g from transformers'
`Dinov2WithRegistersConfig`, SAM ViT-B/H through engine.models.sam.build_sam (segment-anything), SAM 2.1
and EdgeTAM from transformers' `Sam2Config` / `EdgeTamConfig`. torch's flop counter
(torch.utils.flop_counter.FlopCounterMode: matmuls, convolutions and attention, 2 FLOPs per multiply-add;
elementwise ops are not counted) runs ONE view of each model at the input size the engine feeds it: DINO at
the profile's `dino_input_size`, the SAM image encoder at its native square input (1024 px; the engine
resizes or pads every render to it), and the prompt decoder on one single-point prompt. Everything runs on
the meta device by default (shapes only, no arithmetic), so ViT-H and DINOv2-g cost nothing to count.
Attention is counted through sdpa's math backend: on the CPU, torch's fused attention kernel
(scaled_dot_product_attention, used by transformers' DINOv2 and SAM 2) is not in the counter's table, so a
plain count there leaves attention out (SAM 2.1-tiny: 207 instead of 293 GFLOPs, the figure
bench/models.py --encoders reports). The prompt decoder always runs on the CPU (its label indexing has
data-dependent shapes the meta device cannot follow).

A preparation = dino_views x DINO + sam_views x SAM encoder + prompts x prompt decoder, where prompts is
what iSeg's data stage asks for a mesh of `--vertices` vertices (default: Spot, 11.5k): click vertices
clip(click_fraction x V, min_clicks, max_clicks) x min(views_per_click, sam_views) single clicks, times
(1 + `--second-per-single`) for the second clicks (its default is the ratio counted on one oracle
preparation, SECOND_PER_SINGLE; the single-click formula gave 702 where that preparation asked 658). A click = DINO + SAM encoder on the photo + k prompts
(BSB re-segments every candidate). Prints a table, then one JSON line (keys: prepare_gflops {profile:
GFLOPs}, click_gflops, model_gflops_per_view {model: GFLOPs}, prompts_per_prepare, ...).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.iseg.train import ISegConfig  # noqa: E402
from engine.models.profiles import PROFILES, Profile  # noqa: E402
from engine.models.sam import SAM_SPECS, build_sam  # noqa: E402
from engine.pipeline import settings_for  # noqa: E402

# Published DINOv2-with-registers architectures: hidden size, layers, heads, SwiGLU MLP (the giant's).
DINO_ARCHS = {
    "facebook/dinov2-with-registers-small": (384, 12, 6, False),
    "facebook/dinov2-with-registers-base": (768, 12, 12, False),
    "facebook/dinov2-with-registers-large": (1024, 24, 16, False),
    "facebook/dinov2-with-registers-giant": (1536, 40, 24, True),
}
SPOT_VERTICES = 11_500
# Second-click prompts per single-click prompt in iSeg's data stage: 3863 / 658 measured on vase/367 under the
# fast profile's settings (24 SAM views, oracle segmenter; bench/views.py counts them). Up to 7 partners
# (second_positive + second_negative + neighbour_negative + confirm_positive) are asked per accepted click.
SECOND_PER_SINGLE = 5.9


def count_gflops(fn) -> float:
    """GFLOPs torch's flop counter sees while `fn` runs, attention included (module docstring)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        fn()
    return counter.get_total_flops() / 1e9


def dino_model(dino_id: str):
    """A random-weight DINOv2 of `dino_id`'s architecture (the tiny profile's own tiny config)."""
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    if dino_id not in DINO_ARCHS:
        from engine.models.tiny import tiny_dino_config

        return Dinov2WithRegistersModel(tiny_dino_config())
    hidden, layers, heads, swiglu = DINO_ARCHS[dino_id]
    return Dinov2WithRegistersModel(Dinov2WithRegistersConfig(
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, patch_size=14, image_size=518,
        num_register_tokens=4, use_swiglu_ffn=swiglu))


def sam2_model(profile: Profile):
    """A random-weight transformers SAM 2.1 / EdgeTAM of the profile's published architecture."""
    from transformers import EdgeTamConfig, EdgeTamModel, Sam2Config, Sam2Model, TimmWrapperConfig

    if profile.sam_type == "edgetam":  # RepViT-M1 from timm; the config's default channel list fits it
        backbone = TimmWrapperConfig(architecture="repvit_m1", model_args={
            "in_chans": 3, "features_only": True, "out_indices": [0, 1, 2, 3]})
        return EdgeTamModel(EdgeTamConfig(vision_config=dict(backbone_config=backbone)))
    if profile.sam_type == "sam2.1-hiera-tiny":  # transformers' default Sam2Config is sam2.1-hiera-tiny
        return Sam2Model(Sam2Config())
    raise ValueError(f"no SAM 2 architecture for {profile.sam_type!r}")


def sam_costs(profile: Profile, device: str) -> tuple[str, float, float]:
    """(model name, encoder GFLOPs per view, prompt decoder GFLOPs per single-point prompt)."""
    dev = torch.device(device)
    if profile.sam_id:
        with dev:
            model = sam2_model(profile).eval().requires_grad_(False)
        size = int(model.config.prompt_encoder_config.image_size)
        x = torch.zeros(1, 3, size, size, device=dev)
        enc = count_gflops(lambda: model.get_image_embeddings(x))
        state = [torch.zeros(t.shape) for t in _empty_state(model, x)]
        model = _on_cpu(model)
        pts, labels = torch.zeros(1, 1, 1, 2), torch.ones(1, 1, 1, dtype=torch.long)
        dec = count_gflops(lambda: model(image_embeddings=state, input_points=pts, input_labels=labels,
                                         multimask_output=True))
        return profile.sam_type, enc, dec
    with dev:
        sam = build_sam(profile.sam_type).requires_grad_(False)
    size = SAM_SPECS[profile.sam_type].img_size
    x = torch.zeros(1, 3, size, size, device=dev)
    enc = count_gflops(lambda: sam.image_encoder(x))
    grid = size // 16
    emb = torch.zeros(1, 256, grid, grid)
    sam.prompt_encoder, sam.mask_decoder = _on_cpu(sam.prompt_encoder), _on_cpu(sam.mask_decoder)

    def prompt():
        sparse, dense = sam.prompt_encoder(points=(torch.zeros(1, 1, 2), torch.ones(1, 1, dtype=torch.long)),
                                           boxes=None, masks=None)
        sam.mask_decoder(image_embeddings=emb, image_pe=sam.prompt_encoder.get_dense_pe(),
                         sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=True)

    return f"sam_{profile.sam_type}", enc, count_gflops(prompt)


def _on_cpu(module: torch.nn.Module) -> torch.nn.Module:
    """`module` with real (uninitialised) CPU storage: the prompt path indexes by label values, which the
    meta device cannot (data-dependent shapes); its cost is small, so it always runs for real."""
    if next(module.parameters()).is_meta:
        module = module.to_empty(device="cpu")
        with torch.no_grad():
            for t in list(module.parameters()) + list(module.buffers()):
                t.zero_()
    return module.requires_grad_(False)


def _empty_state(model, x: torch.Tensor) -> list[torch.Tensor]:
    """The encoder's outputs (shapes only matter), outside the counter."""
    with torch.no_grad():
        return list(model.get_image_embeddings(x))


def dino_gflops(profile: Profile, device: str) -> tuple[str, float]:
    dev = torch.device(device)
    with dev:
        model = dino_model(profile.dino_id).eval().requires_grad_(False)
    size = profile.dino_input_size  # renders are square: the long side, a multiple of 14
    x = torch.zeros(1, 3, size, size, device=dev)
    name = profile.dino_id.rsplit("/", 1)[-1]
    return f"{name}@{size}", count_gflops(lambda: model(pixel_values=x))


def prompts_per_prepare(profile: str, vertices: int, second_per_single: float) -> int:
    """Prompts iSeg's data stage asks for on a mesh of `vertices` vertices (engine.iseg.train.collect_samples)."""
    settings = settings_for(profile)
    c = ISegConfig(**settings.iseg)
    clicks = int(min(max(round(c.click_fraction * vertices), min(c.min_clicks, vertices)), c.max_clicks))
    single = clicks * min(c.views_per_click, settings.sam_views)
    return int(round(single * (1 + second_per_single)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profiles", default=",".join(PROFILES), help="comma-separated profile names")
    ap.add_argument("--device", default="meta", help="meta (shapes only, instant) or cpu (runs every model)")
    ap.add_argument("--vertices", type=int, default=SPOT_VERTICES, help="mesh size the prompt count is for")
    ap.add_argument("--second-per-single", type=float, default=SECOND_PER_SINGLE,
                    help="second-click prompts per single-click prompt in iSeg's data stage")
    ap.add_argument("--giant", action="store_true", help="also count DINOv2-g (no profile uses it)")
    args = ap.parse_args()
    start = time.perf_counter()
    torch.manual_seed(0)
    per_model: dict[str, float] = {}
    per_prompt: dict[str, float] = {}
    rows, prepare, click, prompts = [], {}, {}, {}
    for name in args.profiles.split(","):
        p = PROFILES[name]
        s = settings_for(name)
        dname, dino = dino_gflops(p, args.device)
        sname, enc, dec = sam_costs(p, args.device)
        per_model[dname], per_model[sname] = round(dino, 2), round(enc, 2)
        per_prompt[sname] = round(dec, 3)
        n_prompts = prompts_per_prepare(name, args.vertices, args.second_per_single)
        parts = (s.dino_views * dino, s.sam_views * enc, n_prompts * dec)
        prepare[name] = round(sum(parts), 1)
        click[name] = round(dino + enc + s.k * dec, 1)
        prompts[name] = n_prompts
        rows.append((name, dname, dino, s.dino_views, sname, enc, s.sam_views, dec, n_prompts, parts, s.k))
    giant = None
    if args.giant:
        giant = dino_gflops(replace(PROFILES["paper"], dino_id="facebook/dinov2-with-registers-giant"), args.device)
        per_model[giant[0]] = round(giant[1], 2)

    print(f"GFLOPs (torch flop counter, 2 per multiply-add, device {args.device}); prompts for a "
          f"{args.vertices}-vertex mesh, {args.second_per_single:g} second-click prompt per single click")
    print(f"{'profile':9s} {'DINO model':30s} {'GF/view':>8s} {'views':>5s} {'SAM model':18s} {'GF/view':>8s} "
          f"{'views':>5s} {'GF/prompt':>9s} {'prompts':>7s} {'DINO GF':>9s} {'SAM GF':>9s} {'prompt GF':>9s} "
          f"{'total GF':>9s} {'click GF':>9s}")
    for name, dname, dino, dv, sname, enc, sv, dec, n, parts, k in rows:
        print(f"{name:9s} {dname:30s} {dino:8.3f} {dv:5d} {sname:18s} {enc:8.1f} {sv:5d} {dec:9.3f} {n:7d} "
              f"{parts[0]:9.0f} {parts[1]:9.0f} {parts[2]:9.0f} {prepare[name]:9.0f} {click[name]:9.1f}")
    if giant:
        print(f"DINOv2-g/14 with registers @224: {giant[1]:.1f} GFLOPs per view (no profile uses it)")
    print(json.dumps({"prepare_gflops": prepare, "click_gflops": click, "model_gflops_per_view": per_model,
                      "prompt_gflops": per_prompt, "prompts_per_prepare": prompts, "vertices": args.vertices,
                      "second_per_single": args.second_per_single, "device": args.device,
                      "seconds": round(time.perf_counter() - start, 1)}))


if __name__ == "__main__":
    main()
