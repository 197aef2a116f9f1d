"""Per-view and per-click cost of each profile's 2D models (random weights of the REAL architectures).

Cost does not depend on weight values, so nothing is downloaded. The `gpu` profile is measured on this
machine's CPU too (there is no GPU here): read it as "what the paper's models cost without a GPU".
The machine is shared with other engineers, so every figure is noisy; the 1-minute load average is
printed alongside. `--quick` (< 60 s) times the SAM image encoder by parts (patch embedding + neck,
one windowed block, one global block) and extrapolates to the full depth; the full run times it whole.
Prints a table, then one JSON line: cpu_profile_encode_s (SAM + DINOv2 per view), cpu_profile_sam_click_ms,
gpu_profile_encode_s, and the model time of a preparation per profile.
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="under a minute: fewer repetitions, SAM encoder by parts")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
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
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
