"""What the SAM (or DINO) view count buys: the end-to-end oracle benchmark's final part IoU per setting.

Every point runs the engine's real preparation (renders -> oracle DINO/SAM teachers -> distilled fields ->
trained iSeg decoder; engine.evaluation.e2e, no cache, so every preparation is fresh and timed) with the
shipped `fast` profile's per-mesh settings (engine.pipeline.settings_for("fast")) and only `sam_views`
changed (uniform sampling, as the pipeline renders them), then answers part clicks on held-out test images
with BSB + iSeg seeding. Reported per view count: BSB's final part IoU and iSeg's IoU from the true clicked
vertex (mean and standard error over part trials, and over per-mesh means), and the preparation's wall and
CPU seconds. The teachers are oracles, so the seconds leave out the real encoders' cost per view (see
bench/flops.py and bench/models.py for that). One extra row runs the `cpu` profile's own settings (4 SAM
views at 256 px, 60 DINO views), the floor `fast` must reach.
The scenes and clicks depend only on the mesh and the seed, so every setting answers the SAME clicks:
the differences to the cpu row are paired per click, which cancels most of the (large) mesh-to-mesh spread.
Prints a table, then one JSON line (keys: e2e_part_iou_by_sam_views, iseg_true_click_iou_by_sam_views,
prepare_s_by_sam_views, cpu_profile_part_iou, e2e_part_iou_minus_cpu_profile_by_sam_views, ...); only
meshes with every setting measured count. `--quick`: 6 small meshes of 6 categories, 2 test views x 6
clicks each: ~60 CPU-s per point, 36 points (set OMP_NUM_THREADS=1 on a shared machine). `--results F`
appends each finished point to F and skips those already there, so runs can be split across processes
and resumed; `--summarize-only` tabulates F.
`--dino V[:S] ...` runs the DINO curve instead: the profile's settings with `dino_views` V (and `dino_steps`
S, else the profile's), `sam_views` kept; the paired differences are then to the profile's shipped DINO
point (list it among the points, e.g. `--dino 50:50 100:100 25:50` for `fast`), and the JSON keys read
`..._by_dino_views`, keyed "V:S" (e2e_part_iou_by_dino_views, iseg_true_click_iou_by_dino_views,
e2e_part_iou_minus_shipped_by_dino_views, prepare_cpu_s_by_dino_views, ...).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.evaluation import e2e  # noqa: E402
from engine.evaluation.data import load_labelled  # noqa: E402
from engine.pipeline import settings_for  # noqa: E402

# The smallest mesh of six different categories (1.7k-4.7k vertices), so a curve fits a shared 2-core VM.
QUICK_MESHES = ("bearing/341", "glasses/59", "bird/243", "vase/367", "plier/201", "human/1")
FULL_MESHES = QUICK_MESHES + ("airplane/61", "fish/227", "hand/192", "chair/101", "fourleg/382", "teddy/162")
SETTINGS = ("4", "8", "16", "24", "48", "cpu")  # SAM view counts under the profile's settings; cpu: its own


def count_prompts(sam, counts: dict) -> None:
    """Count the prompts iSeg's data stage asks of `sam` (single clicks use multimask, second clicks not)."""
    predict = sam.predict

    def counted(points=None, labels=None, boxes=None, mask_input=None, multimask: bool = True):
        counts["single" if multimask else "second"] += len(points) if points is not None else 1
        return predict(points, labels, boxes, mask_input, multimask)

    sam.predict = counted


def measure_point(settings, name: str, protocol: e2e.E2EProtocol) -> dict:
    """One mesh under `settings`: a fresh preparation (seconds, prompts) and its BSB part trials."""
    lm = load_labelled(name)
    space = e2e.mesh_space(lm, protocol, settings, cache_dir=None)
    prompts = {"single": 0, "second": 0}
    count_prompts(space.models.sam, prompts)
    c0 = time.process_time()
    space.prepare(lm)
    cpu = time.process_time() - c0
    prompts = dict(prompts)  # the preparation's; the clicks below prompt the same segmenter
    recs = [r for r in e2e.mesh_trials(space, lm, protocol, decals=False) if r.kind == "part" and r.method == "bsb"]
    return {"mesh": name, "bsb": [r.part_iou for r in recs], "true": [r.true_click_iou for r in recs],
            "prepare_s": space.prepare_seconds[name], "prepare_cpu_s": cpu, "prompts": prompts}


def paired(points: list[dict], reference: list[dict], key: str) -> tuple[float, float]:
    """Mean and SE of the per-trial IoU difference to `reference` (the same meshes, scenes and clicks)."""
    ref = {p["mesh"]: p[key] for p in reference}
    return e2e.mean_se(a - b for p in points for a, b in zip(p[key], ref[p["mesh"]], strict=True))


def summarize(points: list[dict], reference: list[dict] | None) -> dict:
    """IoUs over all part trials and over per-mesh means, paired differences to `reference`, mean
    preparation seconds and prompts."""
    bsb = [x for p in points for x in p["bsb"]]
    true = [x for p in points for x in p["true"]]
    single = sum(p["prompts"]["single"] for p in points)
    return {"bsb": e2e.mean_se(bsb), "true_click": e2e.mean_se(true),
            "bsb_by_mesh": e2e.mean_se(float(np.mean(p["bsb"])) for p in points),
            "per_mesh": {p["mesh"]: float(np.mean(p["bsb"])) for p in points}, "n": len(bsb),
            "prepare_s": float(np.mean([p["prepare_s"] for p in points])),
            "prepare_cpu_s": float(np.mean([p["prepare_cpu_s"] for p in points])),
            "prompts": float(np.mean([p["prompts"]["single"] + p["prompts"]["second"] for p in points])),
            "second_per_single": sum(p["prompts"]["second"] for p in points) / max(single, 1),
            "bsb_minus_ref": paired(points, reference, "bsb") if reference else (None, None),
            "true_minus_ref": paired(points, reference, "true") if reference else (None, None)}


def fmt(pair) -> str:
    return f"{pair[0]:.3f} ± {pair[1]:.3f}"


def dino_curve(profile: str, points: list[str]) -> tuple[dict, str]:
    """Settings per DINO point ("V" or "V:S") keyed by "V:S", plus the key of the profile's shipped point
    (the reference every difference is paired against, where it is one of the points)."""
    base = settings_for(profile)
    shipped = f"{base.dino_views}:{base.dino_steps}"
    keys = [p if ":" in p else f"{p}:{base.dino_steps}" for p in points]
    return {k: settings_for(profile, dino_views=int(k.split(":")[0]), dino_steps=int(k.split(":")[1]))
            for k in keys}, shipped


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="6 small meshes, 2 test views x 6 clicks")
    ap.add_argument("--meshes", nargs="*", default=None, help="names like airplane/61")
    ap.add_argument("--sam-views", nargs="*", default=list(SETTINGS),
                    help="view counts, and `cpu` for the cpu profile's own settings, in the order they run")
    ap.add_argument("--dino", nargs="*", default=None, metavar="V[:S]",
                    help="run the DINO curve instead: dino_views V (and dino_steps S) per point")
    ap.add_argument("--profile", default="fast", help="whose per-mesh settings the curve uses")
    ap.add_argument("--by-setting", action="store_true",
                    help="run every mesh of one setting before the next (default: every setting of one mesh)")
    ap.add_argument("--views", type=int, default=None, help="held-out test images per mesh")
    ap.add_argument("--clicks", type=int, default=None, help="part clicks per test image")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--results", type=Path, default=None,
                    help="JSON lines of finished points: appended to, and points already there are skipped")
    ap.add_argument("--summarize-only", action="store_true", help="only tabulate --results (whole meshes)")
    args = ap.parse_args()
    meshes = tuple(args.meshes) if args.meshes else QUICK_MESHES if args.quick else FULL_MESHES
    protocol = e2e.E2EProtocol(meshes=meshes, views=args.views or (2 if args.quick else 3),
                               clicks=args.clicks or (6 if args.quick else 5), cross_pairs=(), seed=args.seed)
    start = time.perf_counter()
    say = lambda m: print(f"[{time.perf_counter() - start:6.0f}s] {m}", file=sys.stderr, flush=True)  # noqa: E731
    if args.dino is not None:  # labels "dino_views=V,dino_steps=S" keep these rows apart from the SAM curve's
        curve, ref_key = dino_curve(args.profile, args.dino)
        settings = {f"dino_views={k.replace(':', ',dino_steps=')}": s for k, s in curve.items()}
        key_of = dict(zip(settings, curve))
        reference, ref_name, axis = f"dino_views={ref_key.replace(':', ',dino_steps=')}", "shipped", "dino_views"
    else:
        settings = {n: settings_for("cpu") if n == "cpu" else settings_for(args.profile, sam_views=int(n))
                    for n in args.sam_views}
        key_of = {n: int(n) for n in settings if n != "cpu"}
        reference, ref_name, axis = "cpu", "cpu", "sam_views"
    done = [json.loads(line) for line in args.results.read_text().splitlines()] if (
        args.results and args.results.is_file()) else []
    order = [(m, label) for label in settings for m in meshes] if args.by_setting else [
        (m, label) for m in meshes for label in settings]  # mesh by mesh: a cut-short run has whole curves
    for name, label in order if not args.summarize_only else ():
        if not any(d["mesh"] == name and d["setting"] == label for d in done):
            point = {"setting": label, **measure_point(settings[label], name, protocol)}
            done.append(point)
            if args.results:
                with args.results.open("a") as f:
                    f.write(json.dumps(point) + "\n")
            say(f"{label} {name}: prepare {point['prepare_s']:.0f}s wall, BSB IoU {np.mean(point['bsb']):.2f}, "
                f"true-click IoU {np.mean(point['true']):.2f} ({len(point['bsb'])} clicks)")
    got = {label: [d for d in done if d["setting"] == label and d["mesh"] in meshes] for label in settings}
    meshes = tuple(m for m in meshes if all(any(d["mesh"] == m for d in got[label]) for label in settings))
    if not meshes:
        raise SystemExit("no mesh has every setting measured yet")
    whole = {label: [d for d in got[label] if d["mesh"] in meshes] for label in settings}
    summary = {label: summarize(whole[label], whole.get(reference)) for label in settings}
    rows = {key_of[k]: v for k, v in summary.items() if k in key_of}
    rows = dict(sorted(rows.items())) if axis == "sam_views" else rows
    cpu_row = summary.get("cpu")

    base = settings_for(args.profile)
    kept = f"sam_views {base.sam_views}" if axis == "dino_views" else f"dino_views {base.dino_views}"
    print(f"e2e oracle benchmark, {args.profile} profile settings ({kept}, sam_size "
          f"{base.sam_size}, sam_steps {base.sam_steps}, iSeg {base.iseg}) with {axis} varied; "
          f"{len(meshes)} meshes, {protocol.views} test views x {protocol.clicks} clicks; ± = one SE over trials "
          f"[over per-mesh means]; X - {ref_name}: paired per-click difference to the {reference} row")
    print(f"{'setting':>31s} {'n':>4s} {'BSB part IoU':>14s} {'[by mesh]':>14s} {'iSeg true click':>16s} "
          f"{'prepare s':>10s} {'cpu s':>7s} {'prompts':>8s} {'BSB - ' + ref_name:>14s} {'true - ' + ref_name:>14s}")
    labelled = [(label, summary[label]) for label in settings if label in key_of] if axis == "dino_views" else (
        [(f"sam_views={n}", r) for n, r in rows.items()] + ([("cpu profile (4)", cpu_row)] if cpu_row else []))
    for label, r in labelled:
        print(f"{label:>31s} {r['n']:4d} {fmt(r['bsb']):>14s} {fmt(r['bsb_by_mesh']):>14s} "
              f"{fmt(r['true_click']):>16s} {r['prepare_s']:10.1f} {r['prepare_cpu_s']:7.1f} {r['prompts']:8.0f} "
              f"{fmt(r['bsb_minus_ref']) if r['bsb_minus_ref'][0] is not None else '-':>14s} "
              f"{fmt(r['true_minus_ref']) if r['true_minus_ref'][0] is not None else '-':>14s}")
    print("per mesh BSB IoU: " + "; ".join(
        f"{label}: " + ", ".join(f"{m} {v:.2f}" for m, v in r["per_mesh"].items()) for label, r in labelled))
    minus = "cpu_profile" if axis == "sam_views" else "shipped"
    record = {
        f"e2e_part_iou_by_{axis}": {n: list(r["bsb"]) for n, r in rows.items()},
        f"e2e_part_iou_by_{axis}_mesh_se": {n: list(r["bsb_by_mesh"]) for n, r in rows.items()},
        f"prompts_by_{axis}": {n: round(r["prompts"]) for n, r in rows.items()},
        f"second_per_single_by_{axis}": {n: round(r["second_per_single"], 2) for n, r in rows.items()},
        f"iseg_true_click_iou_by_{axis}": {n: list(r["true_click"]) for n, r in rows.items()},
        f"e2e_part_iou_minus_{minus}_by_{axis}": {n: list(r["bsb_minus_ref"]) for n, r in rows.items()},
        f"iseg_true_click_iou_minus_{minus}_by_{axis}": {n: list(r["true_minus_ref"]) for n, r in rows.items()},
        f"prepare_s_by_{axis}": {n: round(r["prepare_s"], 1) for n, r in rows.items()},
        f"prepare_cpu_s_by_{axis}": {n: round(r["prepare_cpu_s"], 1) for n, r in rows.items()},
        "cpu_profile_part_iou": list(cpu_row["bsb"]) if cpu_row else None,
        "cpu_profile_true_click_iou": list(cpu_row["true_click"]) if cpu_row else None,
        "cpu_profile_prepare_s": round(cpu_row["prepare_s"], 1) if cpu_row else None,
        "profile": args.profile, "settings": base.to_dict(), "meshes": list(meshes),
        "n_part_trials": next(iter(rows.values()))["n"] if rows else 0,
        "protocol": {"views": protocol.views, "clicks": protocol.clicks, "seed": protocol.seed},
        "note": e2e.NOTE + "; preparation seconds exclude the real encoders' per-view cost",
        "seconds": round(time.perf_counter() - start, 1)}
    print(json.dumps(record))


if __name__ == "__main__":
    main()
