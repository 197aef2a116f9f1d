"""Per-view and per-click cost of each profile's 2D models (random weights of the REAL architectures).

Cost does not depend on weight values, so nothing is downloaded. The `gpu` profile is measured on this
machine's CPU too (there is no GPU here): read it as "what the paper's models cost without a GPU".
The machine is shared with other engineers, so every figure is noisy; the 1-minute load average is
printed alongside. `--quick` (< 60 s) times the SAM image encoder by parts (patch embedding + neck,
one windowed block, one global block) and extrapolates to the full depth; the full run times it whole.
Prints a table, then one JSON line: cpu_profile_encode_s (SAM + DINOv2 per view), cpu_profile_sam_click_ms,
gpu_profile_encode_s, and the model time of a preparation per profile.
`--decoders` (alone): CPU ms per prompt of the libraries' mask decoders against engine.models.prompt_decoder.
`--encoders` adds a per-view table of the lighter encoders (SAM 2.1 tiny/small and EdgeTAM through
engine.models.sam2, DINOv2-S/B) with GFLOPs from torch's flop counter, and the `fast` profile's preparation
of a mesh through the real pipeline (bench/prepare.py's stage clock; `--quick`: a few views and steps
scaled up stage by stage, labelled extrapolated). JSON keys: encoder_<name>_view_s / _gflops,
fast_prepare_s_<mesh>, fast_sam_views, fast_click_s (bench/prepare.py also gives fast_first_answer_s).
Quality of `fast` cannot be measured here: there are no real weights on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import prepare as bench_prepare  # noqa: E402  (bench/prepare.py: the stage clock and the Session driver)
from engine.models.dino import DinoFeatures  # noqa: E402
from engine.models.profiles import PROFILES, Profile  # noqa: E402
from engine.models.sam import SAM_SPECS, SamSegmenter, build_sam  # noqa: E402

# Published DINOv2-with-registers architectures (hidden size, layers, heads); patch 14, 4 registers.
DINO_ARCHS = {
    "facebook/dinov2-with-registers-small": (384, 12, 6),
    "facebook/dinov2-with-registers-base": (768, 12, 12),
    "facebook/dinov2-with-registers-large": (1024, 24, 16),
}



def timed(fn, reps: int) -> np.ndarray:
    """[wall, cpu] median seconds over `reps` runs after one warm-up.

    cpu = process CPU time / threads: on a busy shared machine it is closer to a quiet machine's wall
    time than the wall time is (it leaves out the time spent waiting for a core).
    """
    fn()
    runs = []
    for _ in range(reps):
        t, c = time.perf_counter(), time.process_time()
        fn()
        runs.append((time.perf_counter() - t, (time.process_time() - c) / torch.get_num_threads()))
    return np.median(np.array(runs), axis=0)


def dino_for(profile: Profile) -> DinoFeatures:
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    hidden, layers, heads = DINO_ARCHS[profile.dino_id]
    cfg = Dinov2WithRegistersConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                                    patch_size=14, image_size=518, num_register_tokens=4)
    return DinoFeatures(Dinov2WithRegistersModel(cfg), torch.device("cpu"), profile.dino_input_size,
                        random_weights=True)


def sam_encode_s(profile: Profile, image: np.ndarray, quick: bool, reps: int) -> tuple[np.ndarray, str]:
    """[wall, cpu] seconds per view for SAM's image encoder (whole, or extrapolated from its parts)."""
    spec = SAM_SPECS[profile.sam_type]
    if not quick:
        sam = SamSegmenter(build_sam(profile.sam_type), "bench", torch.device("cpu"))
        return timed(lambda: sam.encode(image[None]), reps), "measured"
    parts = []
    for depth, glob in ((0, ()), (1, ()), (2, (1,))):  # overhead; + a windowed block; + a global block
        sam = SamSegmenter(build_sam(replace(spec, depth=depth, global_attn=glob)), "bench", torch.device("cpu"))
        parts.append(timed(lambda: sam.encode(image[None]), reps))
    overhead = parts[0]
    windowed, global_ = np.maximum(parts[1] - parts[0], 0.0), np.maximum(parts[2] - parts[1], 0.0)
    n_global = len(spec.global_attn)
    return overhead + (spec.depth - n_global) * windowed + n_global * global_, "extrapolated"


def click_ms(profile: Profile, reps: int) -> tuple[np.ndarray, np.ndarray]:
    """[wall, cpu] ms for one prompt, and per prompt in a batch of 16, on a cached render embedding."""
    # The prompt encoder and mask decoder are the same in every SAM: skip building the image encoder.
    spec = replace(SAM_SPECS[profile.sam_type], depth=0, global_attn=())
    sam = SamSegmenter(build_sam(spec), "bench", torch.device("cpu"))
    size = profile.sam_input_size
    sam.set_embedding(torch.randn(256, sam.grid, sam.grid), (size, size))
    rng = np.random.default_rng(0)
    one = timed(lambda: sam.predict(rng.uniform(0, size, (1, 1, 2)), np.ones((1, 1))), reps)
    many = timed(lambda: sam.predict(rng.uniform(0, size, (16, 1, 2)), np.ones((16, 1))), max(1, reps // 2))
    return one * 1000, many / 16 * 1000


def sam2_arch(name: str):
    """Random-weight transformers model of a published SAM 2.1 / EdgeTAM architecture (image path costs)."""
    from transformers import EdgeTamConfig, EdgeTamModel, Sam2Config, Sam2Model, TimmWrapperConfig

    if name == "edgetam":  # RepViT-M1 from timm, channels (48, 96, 192, 384) = the config's default list
        backbone = TimmWrapperConfig(architecture="repvit_m1", model_args={
            "in_chans": 3, "features_only": True, "out_indices": [0, 1, 2, 3]})
        return EdgeTamModel(EdgeTamConfig(vision_config=dict(backbone_config=backbone)))
    if name == "sam2.1_tiny":  # transformers' default Hiera config is sam2.1-hiera-tiny
        return Sam2Model(Sam2Config())
    if name == "sam2.1_small":
        hiera = dict(model_type="sam2_hiera_det_model", blocks_per_stage=[1, 2, 11, 2],
                     global_attention_blocks=[7, 10, 13])
        return Sam2Model(Sam2Config(vision_config=dict(backbone_config=hiera)))
    raise ValueError(name)


def gflops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def encoder_rows(reps: int, quick: bool) -> tuple[list, dict]:
    """Per-view cost of the lighter encoders beside SAM ViT-B, through the engine's own classes."""
    from engine.models.sam2 import Sam2Segmenter

    rng = np.random.default_rng(1)
    render = rng.integers(0, 256, (1, 512, 512, 3), dtype=np.uint8)
    rows, out = [], {}
    for name in ("edgetam", "sam2.1_tiny", "sam2.1_small"):
        seg = Sam2Segmenter(sam2_arch(name), "bench", torch.device("cpu"))
        t = timed(lambda: seg.encode(render), reps)
        seg.set_embedding(seg.encode(render)[0], (512, 512))
        click = timed(lambda: seg.predict(rng.uniform(0, 512, (1, 1, 2)), np.ones((1, 1))), 3 if quick else 5)
        flops = gflops(lambda: seg.encode(render))
        rows.append((name, t, flops, click * 1000))
        del seg
    vit_b, how = sam_encode_s(PROFILES["cpu"], render[0], quick, reps)
    rows.append((f"sam_vit_b ({how})", vit_b, 972.0, click_ms(PROFILES["cpu"], 3 if quick else 5)[0]))
    for dino_id, short in (("facebook/dinov2-with-registers-small", "dinov2_s"),
                           ("facebook/dinov2-with-registers-base", "dinov2_b")):
        dino = dino_for(replace(PROFILES["cpu"], dino_id=dino_id))
        img = rng.integers(0, 256, (1, 224, 224, 3), dtype=np.uint8)
        rows.append((short, timed(lambda: dino(img), reps), gflops(lambda: dino(img)), np.full(2, np.nan)))
    for name, t, flops, click in rows:
        key = name.split(" ")[0]
        out[f"encoder_{key}_view_s"] = round(float(t[0]), 3)
        out[f"encoder_{key}_view_cpu_s"] = round(float(t[1]), 3)
        out[f"encoder_{key}_gflops"] = round(float(flops), 1)
        if not np.isnan(click[0]):
            out[f"encoder_{key}_click_ms"] = round(float(click[0]), 1)
            out[f"encoder_{key}_click_cpu_ms"] = round(float(click[1]), 1)
    return rows, out


def fast_prepare(quick: bool, threads: int, mesh_path: Path, image_path: Path) -> tuple[dict, "object"]:
    """The `fast` profile's preparation and one click on a mesh, random weights of its real architectures."""
    import tempfile

    from engine import pipeline
    from engine.images import load_image
    from engine.mesh import load_mesh
    from engine.models.sam2 import Sam2Segmenter

    profile = PROFILES["fast"]
    mesh, image = load_mesh(mesh_path), load_image(image_path)
    models = pipeline.Models(dino_for(profile), Sam2Segmenter(sam2_arch(profile.sam_type), "random-edgetam",
                                                              torch.device("cpu"), random_weights=True), "fast")
    full = pipeline.settings_for("fast")
    with tempfile.TemporaryDirectory() as tmp:
        if quick:
            small = bench_prepare.small_settings(full)
            mini = bench_prepare.Clock(threads)
            bench_prepare.run_profile("fast", mesh, image, mini, models, small, Path(tmp))
            clock = bench_prepare.extrapolate(mini, small, full, mesh, threads)
            clock.t["set_image"] = mini.t["set_image"]  # measured whole here (SAM 2 states are not faked)
        else:
            clock = bench_prepare.Clock(threads)
            bench_prepare.run_profile("fast", mesh, image, clock, models, full, Path(tmp))
    tag = mesh_path.stem
    out = {f"fast_prepare_s_{tag}": round(float(clock.t["total"][0]), 1),
           f"fast_prepare_cpu_s_{tag}": round(float(clock.t["total"][1]), 1),
           "fast_prepare_measured": not quick, "fast_sam_views": full.sam_views, "fast_dino_views": full.dino_views,
           "fast_click_s": round(float(clock.t["click"][0]), 2),
           "fast_click_cpu_s": round(float(clock.t["click"][1]), 2),
           "fast_set_image_s": round(float(clock.t["set_image"][0]), 2), "fast_vertices": int(mesh.num_vertices)}
    for stage in bench_prepare.STAGES:
        out[f"fast_{stage}_s"] = round(float(clock.t[stage][0]), 2)
        out[f"fast_{stage}_cpu_s"] = round(float(clock.t[stage][1]), 2)
    return out, clock


def decoder_rows(n: int = 32, reps: int = 2) -> tuple[list, dict]:
    """CPU seconds per prompt of the libraries' mask decoders against engine.models.prompt_decoder (the
    image's share computed once per call; EdgeTAM's in the segmenter's prompt batches), n single-click
    prompts on one image, real architectures."""
    from engine.models.prompt_decoder import decode_sam1, decode_sam2, sam2_image
    from engine.models.sam2 import Sam2Segmenter, to_model_frame

    rng = np.random.default_rng(0)
    labels = torch.ones(n, 1, dtype=torch.int64)

    def cpu_per_prompt(fn) -> float:
        best = np.inf
        for _ in range(reps):
            start = time.process_time()
            fn()
            best = min(best, (time.process_time() - start) / n)
        return best

    seg = Sam2Segmenter(sam2_arch("edgetam"), "bench", torch.device("cpu"), random_weights=True)
    seg.set_embedding(torch.randn(seg.embedding_shape), (512, 512))
    pts = to_model_frame(torch.as_tensor(rng.uniform(0, 512, (n, 1, 2)), dtype=torch.float32), (512, 512), 1024)

    @torch.inference_mode()
    def edgetam_library():
        seg.model(image_embeddings=[t.expand(n, -1, -1, -1) for t in seg._state], input_points=pts[:, None],
                  input_labels=labels[:, None], multimask_output=True)

    sam = build_sam("vit_b").eval()
    emb = torch.randn(1, 256, 64, 64)
    pts1 = torch.as_tensor(rng.uniform(0, 1024, (n, 1, 2)), dtype=torch.float32)

    @torch.inference_mode()
    def sam1_library():
        sparse, dense = sam.prompt_encoder(points=(pts1, labels), boxes=None, masks=None)
        sam.mask_decoder(emb, sam.prompt_encoder.get_dense_pe(), sparse, dense, True)

    rows = [("edgetam", cpu_per_prompt(edgetam_library),
             cpu_per_prompt(lambda: [decode_sam2(seg.model, image, pts[s:s + b], labels[s:s + b], None, True)
                                     for image in [sam2_image(seg.model, list(seg._state))]
                                     for b in [seg.prompt_batch] for s in range(0, n, b)])),
            ("sam_vit_b", cpu_per_prompt(sam1_library),
             cpu_per_prompt(lambda: decode_sam1(sam, emb, pts1, labels, None, True)))]
    out = {}
    for name, library, shared in rows:
        out[f"decoder_{name}_library_cpu_ms"] = round(library * 1000, 1)
        out[f"decoder_{name}_shared_cpu_ms"] = round(shared * 1000, 1)
    return rows, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="under a minute: fewer repetitions, SAM encoder by parts")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--encoders", action="store_true",
                    help="also the lighter encoders (SAM 2.1, EdgeTAM, DINOv2-S/B) and the fast profile's preparation")
    root = Path(__file__).resolve().parents[1]
    ap.add_argument("--mesh", type=Path, default=root / "assets" / "spot.obj")
    ap.add_argument("--image", type=Path, default=root / "assets" / "spot_reference.png")
    ap.add_argument("--decoders", action="store_true",
                    help="only the mask decoders: the libraries' against the engine's shared one, CPU s per prompt")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.decoders:
        rows, result = decoder_rows()
        print(f"mask decoder, 32 single-click prompts on one image, {args.threads} threads, load "
              f"{os.getloadavg()[0]:.1f}: CPU ms per prompt (all threads)")
        for name, library, shared in rows:
            print(f"{name:10s} library {library * 1000:7.1f}  shared {shared * 1000:7.1f}  x{library / shared:.2f}")
        print(json.dumps({"threads": args.threads, "loadavg_1min": round(os.getloadavg()[0], 1), **result}))
        return 0
    reps = 1 if args.quick else 3
    rows, result = [], {"threads": args.threads, "quick": args.quick, "loadavg_1min": round(os.getloadavg()[0], 1),
                        "gpu_profile_measured_on": "cpu"}
    for name in ("cpu", "gpu"):
        profile = PROFILES[name]
        rng = np.random.default_rng(1)
        render = rng.integers(0, 256, (profile.sam_input_size, profile.sam_input_size, 3), dtype=np.uint8)
        dino = dino_for(profile)
        d_img = rng.integers(0, 256, (1, profile.dino_input_size, profile.dino_input_size, 3), dtype=np.uint8)
        dino_s = timed(lambda: dino(d_img), reps)
        del dino
        sam_s, how = sam_encode_s(profile, render, args.quick, reps)
        one_ms, batch_ms = click_ms(profile, 3 if args.quick else 5)
        prep = profile.sam_views * sam_s + profile.dino_views * dino_s
        for col, label in ((0, "wall"), (1, "cpu/thr")):
            rows.append((name, label, profile.dino_id.split("/")[-1], f"{profile.sam_type} ({how})", dino_s[col],
                         sam_s[col], one_ms[col], batch_ms[col], prep[col]))
        for key, val in (("encode_s", sam_s + dino_s), ("dino_view_s", dino_s), ("sam_view_s", sam_s),
                         ("sam_click_ms", one_ms), ("sam_click_batched_ms", batch_ms), ("prepare_model_s", prep)):
            result[f"{name}_profile_{key}"] = round(float(val[0]), 3)
            result[f"{name}_profile_{key}_cpu"] = round(float(val[1]), 3)
    print(f"2D model cost, fp32 CPU, {args.threads} threads, load average {result['loadavg_1min']} (shared machine: "
          "noisy; 'cpu/thr' rows = CPU time / threads, less load-sensitive); gpu profile measured on CPU")
    print(f"{'profile':8s} {'time':8s} {'dino':28s} {'sam':20s} {'dino s/view':>11s} {'sam s/view':>10s} "
          f"{'click ms':>8s} {'ms/prompt@16':>12s} {'prep model s':>12s}")
    for r in rows:
        print(f"{r[0]:8s} {r[1]:8s} {r[2]:28s} {r[3]:20s} {r[4]:11.3f} {r[5]:10.2f} {r[6]:8.1f} {r[7]:12.1f} "
              f"{r[8]:12.1f}")
    if args.encoders:
        enc_rows, enc = encoder_rows(reps, args.quick)
        result.update(enc)
        print(f"\nper view (SAM family: 512 px render -> 1024 px model; DINOv2: 224 px), {args.threads} threads")
        print(f"{'encoder':26s} {'wall s':>8s} {'cpu/thr s':>9s} {'GFLOPs':>8s} {'click ms':>9s} {'cpu/thr ms':>10s}")
        for name, t, flops, click in enc_rows:
            print(f"{name:26s} {t[0]:8.2f} {t[1]:9.2f} {flops:8.1f} {click[0]:9.1f} {click[1]:10.1f}")
        fast, clock = fast_prepare(args.quick, args.threads, args.mesh, args.image)
        result.update(fast)
        how = "extrapolated" if args.quick else "measured"
        print(f"\nfast profile on {args.mesh.name} ({fast['fast_vertices']} vertices), {how}, random weights:")
        for stage in (*bench_prepare.STAGES, "total", "set_image", "click"):
            print(f"  {stage:14s} wall {clock.t[stage][0]:7.1f} s   cpu/thr {clock.t[stage][1]:7.1f} s")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
