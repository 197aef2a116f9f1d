"""End-to-end cost of one mesh preparation and one click per profile, through the real pipeline.

TIMING ONLY, RANDOM WEIGHTS: the `cpu` profile's real architectures (DINOv2-B/14 with registers, SAM ViT-B)
and the `fast` profile's (DINOv2-S/14 with registers, EdgeTAM through transformers) are built with random
weights and injected in place of `load_profile_models` (cost does not depend on the
weight values; nothing is downloaded). The answers are meaningless; only the seconds are. Every stage of
`engine.pipeline._compute_mesh` is timed by wrapping the function the pipeline calls (render, DINO teacher,
SAM encoder, DINO/SAM distillation, iSeg click data, iSeg decoder training); a click is `set_image` once,
then `match` split into SAM decoder calls, iSeg and the rest (BSB matching). iSeg prompts are counted in
both view-segmenter methods (single clicks in `segment_levels`, multi-click prompts in `segment_views`).
Time to first answer (`first_answer`, engine.provisional): from the start of the preparation until the
provisional answer to one click on the DINO field (set_image + match), where the image is really encoded
(tiny, fast). Quick mode measures it too, at the profile's full settings (that preparation is stopped
once the answer is timed): extrapolating the DINO distillation from a few views overstates it.
The machine is shared: wall time is noisy, so process CPU time / threads sits next to it (closer to what a
quiet machine's wall time would be).
`--quick` (a few minutes on a loaded machine): the tiny profile end to end, plus the cpu and fast profiles
on a few views and steps, scaled up stage by stage to the real settings (labelled "extrapolated"; iSeg
data per single-click prompt, second clicks in the small run's proportion); the small run is done twice and
the second one scaled, the first one's extra seconds (numba loading the rasterizer, lazy imports: once per
process, not per view) added once to their stages. Full: the real profiles,
measured. `--profiles` picks among tiny, cpu, fast. Prints a table, then one JSON line (cpu_prepare_total_s,
cpu_click_s, sam_encodings_per_mesh, per stage ...; for fast the issue's keys fast_prepare_s_<mesh>,
fast_sam_views, fast_click_s, fast_first_answer_s, plus fast_<stage>_s).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import engine.distill  # noqa: E402
import engine.iseg.train  # noqa: E402
import engine.models.store  # noqa: E402
import engine.pipeline as pipeline  # noqa: E402
from engine.images import load_image  # noqa: E402
from engine.iseg.view_segmenters import SamViewSegmenter  # noqa: E402
from engine.mesh import Mesh, load_mesh  # noqa: E402
from engine.provisional import prepare_early  # noqa: E402

STAGES = ("render", "dino_teacher", "sam_encoder", "dino_distill", "sam_distill", "iseg_data", "iseg_train")
CLICK = ("set_image", "click_sam", "click_matching", "click_iseg", "click", "first_answer")


class Clock:
    """Wall and CPU seconds summed per label, plus counters (SAM encodings, iSeg prompts)."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self.t: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(2))
        self.n: dict[str, int] = defaultdict(int)

    @contextmanager
    def time(self, label: str):
        w, c = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.t[label] += (time.perf_counter() - w, (time.process_time() - c) / self.threads)

    def wrap(self, fn, label_of):
        def timed(*args, **kwargs):
            with self.time(label_of(*args, **kwargs)):
                return fn(*args, **kwargs)
        return timed


@contextmanager
def patched(obj, name: str, value):
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


@contextmanager
def instrument(clock: Clock, models: pipeline.Models):
    """Wrap what `_compute_mesh` calls so each stage lands in `clock` (the pipeline itself is unchanged)."""
    sam = models.sam
    encode = sam.encode

    def counting_encode(images):
        clock.n["sam_encodings"] += len(images)
        return encode(images)

    distill_order = iter(["dino_distill", "sam_distill"] * 100)
    segment_views, segment_levels = SamViewSegmenter.segment_views, SamViewSegmenter.segment_levels

    def counting_levels(self, view_ids, points):  # every single click, whichever method issued it
        clock.n["iseg_prompts_single"] += len(view_ids)
        return segment_levels(self, view_ids, points)

    def counting_segment(self, view_ids, points, labels):  # single clicks delegate to segment_levels
        if np.asarray(points).shape[1] > 1:
            clock.n["iseg_prompts_second"] += len(view_ids)
        return segment_views(self, view_ids, points, labels)

    render_order = iter(["render_dino", "render_sam"] * 100)  # _compute_mesh renders the DINO views first

    def render_label(mesh, n, size, mode, *rest):
        label = next(render_order)
        clock.n[f"{label}_views"] += n
        return label

    with patched(sam, "encode", counting_encode), \
            patched(pipeline, "render_views", clock.wrap(pipeline.render_views, render_label)), \
            patched(engine.distill, "teacher_targets", clock.wrap(
                engine.distill.teacher_targets,
                lambda teacher, *a, **k: "sam_encoder" if teacher is counting_encode else "dino_teacher")), \
            patched(engine.distill, "distill", clock.wrap(engine.distill.distill, lambda *a, **k: next(distill_order))), \
            patched(engine.iseg.train, "collect_samples", clock.wrap(engine.iseg.train.collect_samples,
                                                                     lambda *a, **k: "iseg_data")), \
            patched(engine.iseg.train, "train_decoder", clock.wrap(engine.iseg.train.train_decoder,
                                                                   lambda *a, **k: "iseg_train")), \
            patched(SamViewSegmenter, "segment_views", counting_segment), \
            patched(SamViewSegmenter, "segment_levels", counting_levels):
        yield


def random_models(profile_name: str) -> pipeline.Models:
    """A profile's real architectures with random weights (timing only): `cpu` (segment-anything ViT-B) or
    `fast` (transformers EdgeTAM), each with its DINOv2."""
    from models import dino_for, sam2_arch  # bench/models.py

    from engine.models.profiles import PROFILES
    from engine.models.sam import SamSegmenter, build_sam
    from engine.models.sam2 import Sam2Segmenter

    profile = PROFILES[profile_name]
    if profile.sam_id:
        sam = Sam2Segmenter(sam2_arch(profile.sam_type), f"random-{profile.sam_type}", torch.device("cpu"),
                            random_weights=True)
    else:
        sam = SamSegmenter(build_sam(profile.sam_type), f"random-{profile.sam_type}", torch.device("cpu"),
                           random_weights=True)
    return pipeline.Models(dino_for(profile), sam, profile_name)


def run_profile(profile: str, mesh: Mesh, image, clock: Clock, models: pipeline.Models | None,
                settings: pipeline.PrepareSettings | None, models_dir: Path, fake_image_embedding: bool = False):
    """prepare_mesh then set_image + one match through a Session whose model loader is replaced."""
    session = pipeline.Session(profile, device="cpu", models_dir=models_dir, offline=True, settings=settings,
                               use_cache=False)
    loader = engine.models.store.load_profile_models
    if models is not None:  # inject random-weight models of the real architectures
        loader = lambda *a, **k: (models.dino, models.sam)  # noqa: E731
    with patched(engine.models.store, "load_profile_models", loader):
        loaded = session.models
    assert loaded.random_weights, "this bench must only ever run random-weight models"
    start = np.array([time.perf_counter(), time.process_time()])

    def first_answer(early: pipeline.PreparedMesh) -> None:  # the provisional answer, inside the preparation
        clock.t["dino_ready"] += (time.perf_counter() - start[0], (time.process_time() - start[1]) / clock.threads)
        with clock.time("first_click"):
            session.match(early, session.set_image(image), [click_point(image)], [1])

    with instrument(clock, loaded), clock.time("total"):
        prepared = prepare_early(session, mesh, first_answer) if not fake_image_embedding else session.prepare(mesh)
    if not fake_image_embedding:  # the provisional click is no part of the preparation's cost
        clock.t["total"] -= clock.t["first_click"]
        clock.n["sam_encodings"] -= 1
        clock.t["first_answer"] = clock.t["dino_ready"] + clock.t["first_click"]

    if fake_image_embedding:  # quick: set_image's SAM encode is extrapolated from the per-view encode
        with clock.time("set_image_dino"):
            dino = loaded.dino(image.rgb[None])[0]
        g = loaded.sam.grid
        ref = pipeline.PreparedImage(image, dino, torch.randn(256, g, g), "bench", False)
    else:
        with clock.time("set_image"):
            ref = session.set_image(image)
        clock.n["click_sam_encodings"] += 1
    predict, iseg_predict = loaded.sam.predict, prepared.iseg.predict
    point = click_point(image)
    with patched(loaded.sam, "predict", clock.wrap(predict, lambda *a, **k: "click_sam")), \
            patched(prepared.iseg, "predict", clock.wrap(iseg_predict, lambda *a, **k: "click_iseg")), \
            clock.time("click"):
        session.match(prepared, ref, [point], [1])
    clock.t["click_matching"] = clock.t["click"] - clock.t["click_sam"] - clock.t["click_iseg"]
    clock.t["render"] = clock.t["render_dino"] + clock.t["render_sam"]
    return prepared


class _Answered(Exception):
    """Stops a preparation once its provisional answer is timed."""


def measure_first_answer(profile: str, mesh: Mesh, image, models: pipeline.Models,
                         settings: pipeline.PrepareSettings, threads: int) -> np.ndarray:
    """Wall and CPU/threads seconds from the start of a real-settings preparation to the provisional answer
    of one click (the DINO stages at full size, set_image, match); the rest of the preparation is skipped."""
    session = pipeline.Session(profile, device="cpu", settings=settings, use_cache=False, models=models)
    start = np.array([time.perf_counter(), time.process_time()])
    took = np.zeros(2)

    def answer(early: pipeline.PreparedMesh) -> None:
        session.match(early, session.set_image(image), [click_point(image)], [1])
        took[:] = (time.perf_counter() - start[0], (time.process_time() - start[1]) / threads)
        raise _Answered()

    try:
        prepare_early(session, mesh, answer)
    except _Answered:
        pass
    return took


def click_point(image) -> tuple[float, float]:
    """A pixel on the object (the centroid of the opaque pixels, else the image centre), original frame."""
    if image.alpha is not None and image.alpha.any():
        ys, xs = np.nonzero(image.alpha)
        xy = np.array([xs.mean() + 0.5, ys.mean() + 0.5])
    else:
        xy = np.array([image.rgb.shape[1] / 2, image.rgb.shape[0] / 2])
    return tuple(float(v) for v in image.to_original(xy))


def full_single_prompts(mesh: Mesh, settings: pipeline.PrepareSettings) -> int:
    """How many single-click prompts the iSeg data stage of `settings` issues (cheap: no model runs)."""
    from engine.iseg import ISegConfig
    from engine.iseg.clicks import cap_views_per_vertex, find_click_sites
    from engine.iseg.fps import farthest_point_sampling

    config = ISegConfig(**settings.iseg)
    v = np.asarray(mesh.vertices, np.float32)
    _, raster, _ = pipeline.render_views(mesh, settings.sam_views, settings.sam_size, "uniform")
    k = int(np.clip(round(config.click_fraction * len(v)), min(config.min_clicks, len(v)), config.max_clicks))
    sites = find_click_sites(v, np.asarray(mesh.faces, np.int64), raster, farthest_point_sampling(v, k))
    return len(cap_views_per_vertex(sites, config.views_per_click, np.random.default_rng(0)))


def extrapolate(mini: Clock, small: pipeline.PrepareSettings, full: pipeline.PrepareSettings, mesh: Mesh,
                threads: int, cold: Clock) -> Clock:
    """Scale each stage of a small run to the full settings (linear in its own work count); `cold`, the same
    small run done first in the process, adds its one-off costs to each stage once, unscaled."""
    from engine.distill import DistillConfig
    from engine.iseg import ISegConfig

    def steps(s, n, views):
        return DistillConfig(steps=n, epochs=s.distill_epochs).total_steps(views)

    single_small = mini.n["iseg_prompts_single"]
    single_full = full_single_prompts(mesh, full)
    second_ratio = mini.n["iseg_prompts_second"] / max(1, single_small)
    factor = {
        "render_dino": full.dino_views / small.dino_views,
        "render_sam": full.sam_views / small.sam_views,
        "dino_teacher": full.dino_views / small.dino_views,
        "sam_encoder": full.sam_views / small.sam_views,
        "dino_distill": steps(full, full.dino_steps, full.dino_views) / steps(small, small.dino_steps, small.dino_views),
        "sam_distill": steps(full, full.sam_steps, full.sam_views) / steps(small, small.sam_steps, small.sam_views),
        "iseg_data": single_full / max(1, single_small),
        "iseg_train": ISegConfig(**full.iseg).steps / ISegConfig(**small.iseg).steps,
    }
    out = Clock(threads)
    for label, f in factor.items():
        out.t[label] = mini.t[label] * f + np.maximum(cold.t[label] - mini.t[label], 0.0)
    out.t["render"] = out.t["render_dino"] + out.t["render_sam"]
    cold_stages = sum(cold.t[k] for k in ("render_dino", "render_sam", *STAGES[1:]))
    out.t["total"] = sum(out.t[k] for k in ("render", *STAGES[1:])) + (cold.t["total"] - cold_stages)  # + glue
    per_view = mini.t["sam_encoder"] / small.sam_views
    out.t["set_image"] = mini.t["set_image_dino"] + per_view
    for k in ("click_sam", "click_iseg", "click_matching"):
        out.t[k] = mini.t[k]
    out.t["click"] = mini.t["click"]
    # time to first answer: the DINO stages at full size, then the provisional click as measured
    if mini.t["first_click"][0] > 0:
        out.t["first_answer"] = (out.t["render_dino"] + out.t["dino_teacher"] + out.t["dino_distill"]
                                 + mini.t["first_click"])
    out.n["sam_encodings"] = full.sam_views
    out.n["iseg_prompts_single"] = single_full
    out.n["iseg_prompts_second"] = int(round(single_full * second_ratio))
    return out


def small_settings(full: pipeline.PrepareSettings) -> pipeline.PrepareSettings:
    iseg = dict(full.iseg, steps=10, min_clicks=24, max_clicks=24)  # iSeg data is scaled per SAM prompt
    return replace(full, dino_views=4, sam_views=1, dino_steps=8, sam_steps=8, iseg=iseg)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="under a minute: tiny end to end + cpu extrapolated")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mesh", type=Path, default=ROOT / "assets" / "spot.obj")
    ap.add_argument("--image", type=Path, default=ROOT / "assets" / "spot_reference.png")
    ap.add_argument("--profiles", type=lambda s: s.split(","), default=["tiny", "cpu", "fast"],
                    help="comma-separated, of tiny,cpu,fast (default: all three)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)  # the same random weights every run: a click's valid candidates (its SAM prompts) too
    mesh, image = load_mesh(args.mesh), load_image(args.image)
    result = {"random_weights": True, "quick": args.quick, "threads": args.threads,
              "mesh": args.mesh.name, "vertices": int(mesh.num_vertices),
              "loadavg_1min": round(os.getloadavg()[0], 1)}
    runs: list[tuple[str, str, Clock]] = []
    with tempfile.TemporaryDirectory() as tmp:
        if "tiny" in args.profiles:
            tiny = Clock(args.threads)
            run_profile("tiny", mesh, image, tiny, None, None, Path(tmp))
            runs.append(("tiny", "measured", tiny))
        for name in (p for p in ("cpu", "fast") if p in args.profiles):
            models, full = random_models(name), pipeline.settings_for(name)
            if args.quick:
                small = small_settings(full)
                cold, mini = Clock(args.threads), Clock(args.threads)
                # SAM 1's image embedding is faked and extrapolated; SAM 2's packed state is encoded whole.
                # The first run pays the process's one-off costs (numba loading the rasterizer, lazy imports):
                # the second is scaled up, and what the first took more is added once.
                for c in (cold, mini):
                    run_profile(name, mesh, image, c, models, small, Path(tmp), fake_image_embedding=name == "cpu")
                clock = extrapolate(mini, small, full, mesh, args.threads, cold)
                if name != "cpu":
                    clock.t["set_image"] = mini.t["set_image"]
                    clock.t["first_answer"] = measure_first_answer(name, mesh, image, models, full, args.threads)
                    clock.n["first_answer_measured"] = 1
                runs.append((name, "extrapolated", clock))
            else:
                clock = Clock(args.threads)
                run_profile(name, mesh, image, clock, models, full, Path(tmp))
                runs.append((name, "measured", clock))
            clock.n["sam_views"] = full.sam_views
            del models

    print(f"TIMING ONLY, RANDOM WEIGHTS (real architectures): mesh {args.mesh.name} ({mesh.num_vertices} vertices), "
          f"{args.threads} threads, load {result['loadavg_1min']}; 'cpu/thr' = process CPU s / threads")
    print(f"{'profile':8s} {'how':13s} " + " ".join(f"{s:>12s}" for s in (*STAGES, "total")))
    for name, how, c in runs:
        for col, what in ((0, "wall s"), (1, "cpu/thr s")):
            print(f"{name:8s} {how[:6] + ' ' + what:13s} " + " ".join(f"{c.t[s][col]:12.1f}" for s in (*STAGES, "total")))
    print(f"{'profile':8s} {'how':13s} " + " ".join(f"{s:>14s}" for s in CLICK) + "  sam_enc/mesh  iseg prompts")
    for name, how, c in runs:
        for col, what in ((0, "wall s"), (1, "cpu/thr s")):
            print(f"{name:8s} {how[:6] + ' ' + what:13s} " + " ".join(f"{c.t[s][col]:14.2f}" for s in CLICK)
                  + f"  {c.n['sam_encodings']:12d}  {c.n['iseg_prompts_single']}+{c.n['iseg_prompts_second']}")
    for name, how, c in runs:
        result[f"{name}_measured"] = how == "measured"
        result[f"{name}_prepare_total_s"] = round(float(c.t["total"][0]), 2)
        result[f"{name}_prepare_total_cpu_s"] = round(float(c.t["total"][1]), 2)
        for s in STAGES + CLICK:
            result[f"{name}_{s}_s"] = round(float(c.t[s][0]), 3)
            result[f"{name}_{s}_cpu_s"] = round(float(c.t[s][1]), 3)
        result[f"{name}_click_s"] = round(float(c.t["click"][0]), 3)
        result[f"{name}_sam_encodings_per_mesh"] = c.n["sam_encodings"]
        result[f"{name}_iseg_prompts"] = c.n["iseg_prompts_single"] + c.n["iseg_prompts_second"]
    if "cpu_sam_encodings_per_mesh" in result:
        result["sam_encodings_per_mesh"] = result["cpu_sam_encodings_per_mesh"]
    for name, how, c in runs:  # the keys for the fast profile
        if name == "fast":
            result[f"fast_prepare_s_{args.mesh.stem}"] = result["fast_prepare_total_s"]
            result["fast_sam_views"] = c.n["sam_views"]
            result["fast_first_answer_s"] = round(float(c.t["first_answer"][0]), 2)
            result["fast_first_answer_cpu_s"] = round(float(c.t["first_answer"][1]), 2)
            result["fast_first_answer_measured"] = how == "measured" or bool(c.n["first_answer_measured"])
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
