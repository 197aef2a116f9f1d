"""iSeg benchmark: oracle IoU on PSB meshes with a shipped profile (cpu unless --profile), corrective clicks,
per-click seconds at 50k vertices, decoder training seconds.

Oracle IoU: features are planted smooth random functions of position, distilled through engine.distill
(never the labels); the view segmenter is the rendered human segmentation (OracleViewSegmenter); the views,
their size and the iSeg settings are the shipped profile's (engine.pipeline.settings_for(--profile),
default cpu: 4 views at 256 px; fast and balanced: 24 at 512), with uniform views. Cost of the click data:
the prompts `train_iseg` asks of the view segmenter (one SAM decoder call each in a real preparation;
the oracle answers them for free) and the seconds of click data and of decoder training, per mesh. One positive click on random interior vertices, Otsu, then IoU against the vertex's
part (`iseg_true_click_iou`), and after each of 3 corrective clicks, each placed at the centre of the
largest wrong region as an interactive user would, on a vertex inside one labelled part, until the IoU
reaches 0.9 (`iseg_iou_after_corrections`, 0-3 clicks; `..._no_stop`: a user who keeps clicking). Also:
IoU at the fixed threshold 0.5 (calibration: BSB seeding thresholds there) and both region choices
(the clicked connected piece vs every piece the decoder selects).
Per-click time: a 50k-vertex sphere with random 256-d features and the default decoder (weights are
random: speed only). Training time: `train_decoder` with the default ISegConfig on cup 22.
Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import trimesh

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.cameras import sphere_views  # noqa: E402
from engine.iseg import ISegConfig, ISegModel, OracleViewSegmenter, select_vertices, train_iseg  # noqa: E402
import engine.iseg.train  # noqa: E402
from engine.iseg.decoder import ClickDecoder, DecoderConfig  # noqa: E402
from engine.iseg.evaluate import (STOP_IOU, corrected_ious, distilled_planted_features, interior_vertices,  # noqa: E402
                                  single_click_ious, vertex_labels)
from engine.iseg.train import collect_samples, train_decoder  # noqa: E402
from engine.mesh import load_mesh  # noqa: E402
from engine.pipeline import settings_for  # noqa: E402
from engine.raster import rasterize  # noqa: E402

PSB = ROOT.parent / "shared" / "eval" / "data" / "psb"
# (mesh, label file): airplane 61 with its semantic labels, where "wing" is two pieces of the mesh
QUICK = [("airplane/61", "airplane/61_lpsb_semantic.seg"), ("glasses/59", "glasses/59_seg/59_0.seg"),
         ("plier/202", "plier/202_seg/202_0.seg")]
FULL = QUICK + [("bearing/344", "bearing/344_seg/344_0.seg"), ("cup/22", "cup/22_seg/22_0.seg"),
                ("vase/368", "vase/368_seg/368_0.seg"), ("mech/323", "mech/323_seg/323_1.seg"),
                ("fourleg/382", "fourleg/382_seg/382_0.seg"), ("chair/101", "chair/101_seg/101_0.seg")]
CORRECTIONS = 3


def load(name: str, labels: str):
    mesh = load_mesh(PSB / f"{name}.off", up="y")
    return mesh, np.loadtxt(PSB / labels, dtype=np.int64)


class CountingSegmenter:
    """A view segmenter that counts the prompts asked of it: the cost a real SAM would charge per prompt."""

    def __init__(self, inner) -> None:
        self.inner, self.prompts = inner, 0

    def segment_levels(self, view_ids, points):
        self.prompts += len(view_ids)
        return self.inner.segment_levels(view_ids, points)

    def segment_views(self, view_ids, points, labels):
        self.prompts += len(view_ids)
        return self.inner.segment_views(view_ids, points, labels)


@contextmanager
def timed(seconds: dict, name: str):
    """Sum the seconds of every call to engine.iseg.train.`name` (what train_iseg calls) into seconds[name]."""
    fn = getattr(engine.iseg.train, name)

    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - t

    setattr(engine.iseg.train, name, wrapper)
    try:
        yield
    finally:
        setattr(engine.iseg.train, name, fn)


def oracle_case(name: str, label_file: str, clicks: int, overrides: dict | None = None, profile: str = "cpu") -> dict:
    """Train with the shipped `profile` settings (iSeg `overrides` win) on one mesh and score `clicks` random
    interior clicks."""
    settings = settings_for(profile)
    mesh, labels = load(name, label_file)
    raster = rasterize(mesh.vertices, mesh.faces, sphere_views(settings.sam_views, "uniform"), settings.sam_size)
    features = distilled_planted_features(mesh.vertices, mesh.faces, raster, dim=64, sigma=2.0, steps=300)
    segmenter, parts = CountingSegmenter(OracleViewSegmenter(labels, raster)), {}
    t = time.perf_counter()
    with timed(parts, "collect_samples"), timed(parts, "train_decoder"):
        model = train_iseg(mesh.vertices, mesh.faces, raster, features, segmenter,
                           ISegConfig(**{**settings.iseg, **(overrides or {})}))
    seconds = time.perf_counter() - t
    n = len(mesh.vertices)
    vlab = vertex_labels(mesh.faces, labels, n)
    inner = interior_vertices(mesh.faces, labels, n)
    picks = np.random.default_rng(7).choice(np.nonzero(inner)[0], clicks, replace=False)
    out = {"train_s": seconds, "data_s": parts["collect_samples"], "decoder_s": parts["train_decoder"],
           "prompts": segmenter.prompts}
    for connected, region in ((True, "one"), (False, "all")):
        out[f"otsu_{region}"] = single_click_ious(model, mesh.faces, vlab, picks, "otsu", connected)
        out[f"fixed_{region}"] = single_click_ious(model, mesh.faces, vlab, picks, "fixed", connected)
        out[f"corrections_{region}"] = np.array([corrected_ious(model, mesh.vertices, mesh.faces, vlab, int(v),
                                                                CORRECTIONS, connected=connected, clickable=inner)
                                                 for v in picks])
        out[f"nostop_{region}"] = np.array([corrected_ious(model, mesh.vertices, mesh.faces, vlab, int(v), CORRECTIONS,
                                                           connected=connected, clickable=inner, stop_iou=None)
                                            for v in picks])
    return out


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
    mesh, labels = load("cup/22", "cup/22_seg/22_0.seg")
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


def _mean_se(values: np.ndarray) -> tuple[float, float]:
    values = np.asarray(values, np.float64)
    return float(values.mean()), float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0


def main() -> None:
    from engine.iseg.postprocess import CONNECTED_DEFAULT

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 meshes x 8 clicks, short timing runs")
    parser.add_argument("--oracle-only", action="store_true", help="skip the timing rows")
    parser.add_argument("--profile", default="cpu", choices=("cpu", "fast", "balanced"),
                        help="whose views, view size and iSeg settings (default cpu)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=NUMBER",
                        help="override a numeric iSeg setting of the profile (a sweep point), e.g. steps=600")
    args = parser.parse_args()
    overrides = {k: float(v) if "." in v else int(v) for k, v in (item.split("=", 1) for item in args.set)}
    meshes = QUICK if args.quick else FULL
    clicks = 8 if args.quick else 16
    rows, cases = [], {}
    for name, label_file in meshes:
        case = oracle_case(name, label_file, clicks, overrides, args.profile)
        print(name, {k: np.round(np.mean(v, 0) if np.ndim(v) else v, 3).tolist() for k, v in case.items()},
              file=sys.stderr, flush=True)
        cases[name] = case
        region = "one" if CONNECTED_DEFAULT else "all"
        rows.append((f"{name}: IoU 1 click, Otsu / 0.5, one piece", f"{case['otsu_one'].mean():.3f}",
                     f"0.5: {case['fixed_one'].mean():.3f}; every piece: Otsu {case['otsu_all'].mean():.3f}, "
                     f"0.5 {case['fixed_all'].mean():.3f}; {case['prompts']} prompts, data "
                     f"{case['data_s']:.0f} s + train {case['decoder_s']:.0f} s"))
        rows.append((f"{name}: IoU after 0-{CORRECTIONS} corrective clicks",
                     f"{case['corrections_' + region].mean(0)[-1]:.3f}",
                     " ".join(f"{x:.3f}" for x in case["corrections_" + region].mean(0)) + f" ({region})"))
    pooled = {k: np.concatenate([c[k] for c in cases.values()]) for k in case if np.ndim(case[k])}
    region = "one" if CONNECTED_DEFAULT else "all"
    result = {}
    for key, label in (("otsu", "true_click_iou"), ("fixed", "true_click_iou_at_0_5")):
        for r in ("one", "all"):
            m, se = _mean_se(pooled[f"{key}_{r}"])
            rows.append((f"all meshes: IoU 1 click, {'Otsu' if key == 'otsu' else 'threshold 0.5'}, "
                         f"{'one piece' if r == 'one' else 'every piece'}", f"{m:.3f}", f"+- {se:.3f} (s.e.)"))
            if r == region:
                result[f"iseg_{label}"], result[f"iseg_{label}_se"] = round(m, 4), round(se, 4)
    for r in ("one", "all"):
        corr = pooled[f"corrections_{r}"]
        rows.append((f"all meshes: IoU after 0-{CORRECTIONS} corrective clicks, "
                     f"{'one piece' if r == 'one' else 'every piece'}", f"{corr.mean(0)[-1]:.3f}",
                     " ".join(f"{x:.3f}" for x in corr.mean(0))))
    nostop = pooled[f"nostop_{region}"]
    rows.append((f"all meshes: IoU after 0-{CORRECTIONS} corrective clicks, no stop at IoU {STOP_IOU}",
                 f"{nostop.mean(0)[-1]:.3f}", " ".join(f"{x:.3f}" for x in nostop.mean(0))))
    result["iseg_iou_after_corrections_no_stop"] = [round(float(x), 4) for x in nostop.mean(0)]
    corr = pooled[f"corrections_{region}"]
    result["iseg_iou_after_corrections"] = [round(float(x), 4) for x in corr.mean(0)]
    result["iseg_iou_after_corrections_se"] = [round(_mean_se(c)[1], 4) for c in corr.T]
    result["iseg_region_one_piece_iou"] = round(float(pooled["otsu_one"].mean()), 4)
    result["iseg_region_every_piece_iou"] = round(float(pooled["otsu_all"].mean()), 4)
    result["n_clicks"] = int(len(corr))
    if not args.oracle_only:
        n, first, per_click = click_seconds()
        rows.append((f"click at {n} vertices (select incl. Otsu + region)", f"{per_click:.3f} s", f"first {first:.2f} s"))
        train_s, n_samples, estimated = train_seconds(args.quick)
        rows.append(("decoder training, default config, cup 22", f"{train_s:.1f} s",
                     f"{n_samples} samples" + (" (extrapolated from 60 steps)" if estimated else "")))
        result.update(iseg_click_s_50k=round(per_click, 4), iseg_decoder_train_s=round(train_s, 2))
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'value':>8}  note")
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>8}  {note}")
    for key, out in (("train_s", "train_s_per_mesh"), ("data_s", "iseg_data_s_per_mesh"),
                     ("decoder_s", "iseg_decoder_s_per_mesh"), ("prompts", "prompts_per_mesh")):
        result[out] = round(float(np.mean([c[key] for c in cases.values()])), 1)
    settings = settings_for(args.profile)
    print(json.dumps({**result, "profile": args.profile, "sam_views": settings.sam_views,
                      "sam_size": settings.sam_size, "iseg": {**settings.iseg, **overrides}, "quick": bool(args.quick)}))


if __name__ == "__main__":
    main()
