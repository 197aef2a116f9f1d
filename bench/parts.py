"""Parts benchmark: segment-all and text -> part, with oracle teachers, on the labelled PSB meshes.

Segment-all: for each labelled PSB mesh, an iSeg decoder trained against its rendered median human
segmentation (OracleViewSegmenter, planted features distilled through engine.distill: the labels never
enter the features), then `segment_all` with the SHIPPED settings. Scores (faces weighted by area):
class-agnostic best-match mIoU and Rand index against that annotation, and the same for the geometric
baseline (faces grown across edges below an angle, like Blender's face sets from normals) at the one
angle of 15/30/45/60 degrees that is best on average (the baseline's best case). Time per mesh after
preparation, plus the same pipeline at 50k vertices with a random-weight decoder (speed only).
Text -> part: airplanes 61/63/70 with semantic labels; an oracle detector (boxes of the named part's
pieces in each of the shipped views, misses and false boxes at --miss-rate/--false-rate) and an oracle
box segmenter (human segments inside the box) stand in for Grounding DINO and SAM; IoU per part name.
Prints a table, then one JSON line. `--quick`: 6 meshes and one airplane, a few minutes.
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

from engine.evaluation.data import list_meshes, load_labelled  # noqa: E402
from engine.iseg import ISegConfig, ISegModel  # noqa: E402
from engine.iseg.decoder import ClickDecoder, DecoderConfig  # noqa: E402
from engine.mesh import mesh_from_arrays  # noqa: E402
from engine.parts.geometric import faces_to_vertices, normal_regions  # noqa: E402
from engine.parts.graph import face_areas, vertex_areas  # noqa: E402
from engine.parts.metrics import best_match_miou, rand_index, vertex_to_face_labels  # noqa: E402
from engine.parts.oracle import OracleBoxSegmenter, OracleDetector, oracle_prepared  # noqa: E402
from engine.parts.segment_all import SegmentAllSettings, segment_all  # noqa: E402
from engine.parts.text import TextSettings, find_part, render_for_text  # noqa: E402
from engine.pipeline import PreparedMesh, PrepareSettings  # noqa: E402

QUICK = ["bird/243", "glasses/59", "bearing/344", "plier/202", "fish/227", "airplane/61"]
ANGLES = (15.0, 30.0, 45.0, 60.0)


def segment_all_scores(name: str, views: int, size: int, config: ISegConfig) -> dict:
    lm = load_labelled(name)
    mesh = lm.mesh
    prepared = oracle_prepared(mesh, lm.face_labels, views, size, config)
    t = time.perf_counter()
    parts, tree = segment_all(prepared, SegmentAllSettings())
    seconds = time.perf_counter() - t
    w = face_areas(mesh.vertices, mesh.faces)
    pred = vertex_to_face_labels(mesh.faces, parts.labels)
    out = {"name": name, "vertices": mesh.num_vertices, "gt_parts": lm.n_parts, "parts": parts.n_parts,
           "miou": best_match_miou(pred, lm.face_labels, w), "rand": rand_index(pred, lm.face_labels, w),
           "seconds": seconds, "prepare_s": prepared.seconds}
    for angle in ANGLES:
        geo = normal_regions(mesh.vertices, mesh.faces, angle)
        out[f"geo{angle:g}"] = (best_match_miou(geo, lm.face_labels, w), rand_index(geo, lm.face_labels, w),
                                len(np.unique(geo)))
    return out


def speed_50k(repeats: int = 2) -> float:
    """segment_all on a 50k-vertex sphere with a random-weight default-size decoder (speed only)."""
    sphere = trimesh.creation.uv_sphere(count=[250, 100])
    mesh = mesh_from_arrays(np.asarray(sphere.vertices, np.float32), np.asarray(sphere.faces), up="y")
    c = ISegConfig()
    torch.manual_seed(0)
    decoder = ClickDecoder(DecoderConfig(256, attn_dim=c.attn_dim, width=c.width, encoder_depth=c.encoder_depth,
                                         head_depth=c.head_depth))
    model = ISegModel(decoder, torch.randn(mesh.num_vertices, 256))
    prepared = PreparedMesh(mesh, torch.zeros((mesh.num_vertices, 0)), model.features, model, PrepareSettings(),
                            "speed", False, 0.0)
    model.predict([(0, True)])  # the per-mesh cache is part of preparation
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        segment_all(prepared, SegmentAllSettings())
        times.append(time.perf_counter() - t)
    return mesh.num_vertices, float(np.median(times))


def text_scores(name: str, views: int, size: int, config: ISegConfig, miss: float, false: float) -> list[dict]:
    human = load_labelled(name)
    semantic = load_labelled(name, semantic=True)
    mesh = human.mesh
    prepared = oracle_prepared(mesh, human.face_labels, views, size, config)
    settings = TextSettings()
    images, raster = render_for_text(mesh, settings)
    areas = vertex_areas(mesh.vertices, mesh.faces)
    vsem = faces_to_vertices(mesh.faces, semantic.face_labels, mesh.num_vertices)
    segmenter = OracleBoxSegmenter(raster.face_id, human.face_labels)
    rows = []
    for k, part in enumerate(semantic.part_names + ("propeller",)):
        present = k < len(semantic.part_names) and bool((semantic.face_labels == k).any())
        if k < len(semantic.part_names) and not present:
            continue
        detector = OracleDetector(raster.face_id, mesh.faces, semantic.face_labels, semantic.part_names,
                                  miss_rate=miss, false_rate=false, seed=k)
        t = time.perf_counter()
        found = find_part(prepared, images, raster.face_id, detector, segmenter, part, settings)
        seconds = time.perf_counter() - t
        gt = vsem == k
        iou = 0.0
        if found.found and present:
            iou = float((found.mask & gt) @ areas / ((found.mask | gt) @ areas))
        vote_iou = float((found.region & gt) @ areas / ((found.region | gt) @ areas)) if found.found and present else 0.0
        rows.append({"mesh": name, "part": part, "present": present, "found": found.found, "iou": iou,
                     "vote_iou": vote_iou, "seconds": seconds})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--miss-rate", type=float, default=0.2, help="oracle detector: share of true boxes dropped")
    parser.add_argument("--false-rate", type=float, default=0.2, help="oracle detector: false boxes per view")
    args = parser.parse_args()
    names = QUICK if args.quick else [e.name for e in list_meshes()]
    airplanes = ["airplane/61"] if args.quick else ["airplane/61", "airplane/63", "airplane/70"]
    views, size = (12, 96) if args.quick else (20, 128)
    config = ISegConfig(steps=200, batch_size=8, pixels_per_sample=256) if args.quick else ISegConfig()

    rows = []
    for name in names:
        r = segment_all_scores(name, views, size, config)
        rows.append(r)
        print(f"  {name}: {r['parts']} parts (human {r['gt_parts']}), mIoU {r['miou']:.3f}, RI {r['rand']:.3f}, "
              f"{r['seconds']:.2f} s", file=sys.stderr, flush=True)
    geo_means = {a: float(np.mean([r[f"geo{a:g}"][0] for r in rows])) for a in ANGLES}
    best_angle = max(geo_means, key=geo_means.get)
    n50k, s50k = speed_50k()
    text_rows = []
    for name in airplanes:
        text_rows += text_scores(name, views, size, config, args.miss_rate, args.false_rate)

    print(f"{'mesh':<16} {'V':>6} {'human':>5} {'parts':>5} {'mIoU':>6} {'RI':>6} {'geo mIoU':>8} {'geo RI':>6} "
          f"{'seg-all s':>9}")
    for r in rows:
        g = r[f"geo{best_angle:g}"]
        print(f"{r['name']:<16} {r['vertices']:>6} {r['gt_parts']:>5} {r['parts']:>5} {r['miou']:>6.3f} "
              f"{r['rand']:>6.3f} {g[0]:>8.3f} {g[1]:>6.3f} {r['seconds']:>9.2f}")
    print(f"geometric baseline angle {best_angle:g} deg (best mean of {', '.join(f'{a:g}' for a in ANGLES)})")
    print(f"segment-all at {n50k} vertices (random decoder, speed only): {s50k:.2f} s")
    print(f"\n{'text query':<28} {'found':>5} {'IoU':>6} {'votes IoU':>9} {'s':>6}")
    for t in text_rows:
        print(f"{t['mesh'] + ' ' + t['part']:<28} {str(t['found']):>5} {t['iou']:>6.3f} {t['vote_iou']:>9.3f} "
              f"{t['seconds']:>6.2f}")
    per_part = {}
    for t in text_rows:
        if t["present"]:
            per_part.setdefault(t["part"], []).append(t["iou"])
    absent = [t for t in text_rows if not t["present"]]
    result = {
        "all_parts_miou": round(float(np.mean([r["miou"] for r in rows])), 4),
        "all_parts_rand_index": round(float(np.mean([r["rand"] for r in rows])), 4),
        "geometric_baseline_miou": round(geo_means[best_angle], 4),
        "geometric_baseline_rand_index": round(float(np.mean([r[f"geo{best_angle:g}"][1] for r in rows])), 4),
        "geometric_baseline_angle": best_angle,
        "all_parts_s": round(float(np.mean([r["seconds"] for r in rows])), 3),
        "all_parts_s_50k": round(s50k, 3),
        "text_part_iou": {k: round(float(np.mean(v)), 4) for k, v in per_part.items()},
        "text_part_iou_mean": round(float(np.mean([t["iou"] for t in text_rows if t["present"]])), 4),
        "text_absent_not_found": round(float(np.mean([not t["found"] for t in absent])), 4) if absent else None,
        "text_query_s": round(float(np.mean([t["seconds"] for t in text_rows])), 3),
        "miss_rate": args.miss_rate, "false_rate": args.false_rate,
        "meshes": len(rows), "quick": bool(args.quick),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
