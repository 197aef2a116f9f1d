"""iSeg benchmark: oracle IoU on PSB meshes, per-click seconds at 50k vertices, decoder training seconds.

Oracle IoU: features are planted smooth random functions of position, distilled through engine.distill
(never the labels); the view segmenter is the rendered human segmentation (OracleViewSegmenter); one
positive click on random interior vertices, Otsu + connected region, IoU against the vertex's part.
Per-click time: a 50k-vertex sphere with random 256-d features and the default decoder (weights are
random: speed only). Training time: `train_decoder` with the default ISegConfig on cup 22.
Prints a table, then one JSON line. `--quick` keeps it under a minute on a quiet 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import trimesh

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.cameras import sphere_views  # noqa: E402
from engine.iseg import ISegConfig, ISegModel, OracleViewSegmenter, select_vertices, train_iseg  # noqa: E402
from engine.iseg.decoder import ClickDecoder, DecoderConfig  # noqa: E402
from engine.iseg.evaluate import (distilled_planted_features, interior_vertices, single_click_ious,  # noqa: E402
                                  vertex_labels)
from engine.iseg.train import collect_samples, train_decoder  # noqa: E402
from engine.mesh import load_mesh  # noqa: E402
from engine.raster import rasterize  # noqa: E402

PSB = ROOT.parent / "shared" / "eval" / "data" / "psb"
QUICK = [("bearing/344", "344_0"), ("glasses/59", "59_0"), ("plier/202", "202_0")]
FULL = QUICK + [("cup/22", "22_0"), ("vase/368", "368_0"), ("airplane/61", "61_0"), ("mech/323", "323_1")]


def load(name: str, seg: str):
    mesh = load_mesh(PSB / f"{name}.off", up="y")
    labels = np.loadtxt(PSB / name.split("/")[0] / f"{seg.split('_')[0]}_seg" / f"{seg}.seg", dtype=np.int64)
    return mesh, labels


def oracle_iou(name: str, seg: str, views: int, res: int, clicks: int, config: ISegConfig) -> tuple[float, float]:
    mesh, labels = load(name, seg)
    raster = rasterize(mesh.vertices, mesh.faces, sphere_views(views), res)
    features = distilled_planted_features(mesh.vertices, mesh.faces, raster, dim=64, sigma=2.0, steps=300)
    t = time.perf_counter()
    model = train_iseg(mesh.vertices, mesh.faces, raster, features, OracleViewSegmenter(labels, raster), config)
    seconds = time.perf_counter() - t
    n = len(mesh.vertices)
    vlab = vertex_labels(mesh.faces, labels, n)
    picks = np.random.default_rng(7).choice(np.nonzero(interior_vertices(mesh.faces, labels, n))[0], clicks, replace=False)
    return float(single_click_ious(model, mesh.faces, vlab, picks).mean()), seconds


def click_seconds(repeats: int = 5) -> tuple[int, float, float]:
    sphere = trimesh.creation.uv_sphere(count=[250, 100])
    faces = np.asarray(sphere.faces)
    n = len(sphere.vertices)
    torch.manual_seed(0)
    model = ISegModel(ClickDecoder(DecoderConfig(256, **_sizes(ISegConfig()))), torch.randn(n, 256))
    t = time.perf_counter()
    model.predict([(0, True)])                      # first click also builds the per-mesh cache
    first = time.perf_counter() - t
    times = []
    for k in range(repeats):
        clicks = [(int(k * 997 % n), True), (int(k * 7919 % n), False), (int(k * 31 % n), True)][: 1 + k % 3]
        t = time.perf_counter()
        select_vertices(model.predict(clicks), faces, clicks)
        times.append(time.perf_counter() - t)
    return n, first, float(np.median(times))


def _sizes(config: ISegConfig) -> dict:
    return dict(attn_dim=config.attn_dim, width=config.width, encoder_depth=config.encoder_depth,
                head_depth=config.head_depth)


def train_seconds(quick: bool) -> tuple[float, int, bool]:
    """Default-config decoder training on cup 22 (15k vertices, 40 views at 128 px)."""
    mesh, labels = load("cup/22", "22_0")
    views, res = (12, 96) if quick else (40, 128)
    raster = rasterize(mesh.vertices, mesh.faces, sphere_views(views), res)
    config = ISegConfig()
    samples = collect_samples(mesh.vertices, mesh.faces, raster, OracleViewSegmenter(labels, raster), config,
                              np.random.default_rng(0))
    features = torch.randn(len(mesh.vertices), 256)
    steps = 60 if quick else config.steps
    run = ISegConfig(**{**config.__dict__, "steps": steps})
    t = time.perf_counter()
    train_decoder(mesh.faces, raster, features, samples, run, torch.device("cpu"), torch.Generator().manual_seed(0))
    seconds = (time.perf_counter() - t) * config.steps / steps
    return seconds, len(samples.view), steps < config.steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    meshes = QUICK if args.quick else FULL
    views, res, clicks = (12, 96, 8) if args.quick else (20, 128, 15)
    config = ISegConfig(steps=200, batch_size=8, pixels_per_sample=256) if args.quick else ISegConfig()
    rows, ious = [], []
    for name, seg in meshes:
        score, seconds = oracle_iou(name, seg, views, res, clicks, config)
        ious.append(score)
        rows.append((f"oracle IoU {name} ({seg}), {clicks} clicks", f"{score:.3f}", f"train {seconds:.1f} s"))
    n, first, per_click = click_seconds()
    rows.append((f"click at {n} vertices (select incl. Otsu + region)", f"{per_click:.3f} s", f"first {first:.2f} s"))
    train_s, n_samples, estimated = train_seconds(args.quick)
    rows.append(("decoder training, default config, cup 22", f"{train_s:.1f} s",
                 f"{n_samples} samples" + (" (extrapolated from 60 steps)" if estimated else "")))
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'value':>10}  note")
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>10}  {note}")
    print(json.dumps({"iseg_oracle_mean_iou": round(float(np.mean(ious)), 4), "iseg_click_s_50k": round(per_click, 4),
                      "iseg_decoder_train_s": round(train_s, 2), "quick": bool(args.quick)}))


if __name__ == "__main__":
    main()
