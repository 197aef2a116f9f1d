"""The end-to-end benchmark: every click through the engine's real path under oracle teachers.

Per mesh, `Session.prepare` runs unchanged (renders -> oracle DINO/SAM -> distilled fields -> trained iSeg
decoder, cached) with the settings it is given (the shipped profile's by default); each test image goes
through `Session.set_image`. A part click is answered by BSB (`Session.match`) and by the two baselines
(nearest vertex, random valid candidate), each seeded by the same iSeg call. What counts:
- success: the winner lies strictly inside the clicked part (every incident face carries its label): a
  boundary vertex seeds iSeg on the wrong side as often as not, so touching the part is not enough;
- part IoU: the final 3D selection (iSeg seeded at the winner, weights >= 0.5) against the ground-truth
  part's vertices (0 when the method answers "no part");
- decal rejection / false rejection / AUROC of BSB's confidence (part clicks vs decal clicks);
- diagnostics that trace a drop to its stage: distillation fidelity (cosine of the distilled DINO vertex
  features to the oracle's render features), iSeg IoU from the true clicked vertex, BSB hit rate (a valid
  candidate strictly inside the part exists, so the IoU ranking could pick it).
Cross-instance trials click one semantic airplane's image and match against another's shape.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from engine.evaluation.correspondence import _seed, auroc, click_trials, decal_trial
from engine.evaluation.data import LabelledMesh, load_labelled
from engine.evaluation.oracle import PlantedConfig
from engine.evaluation.oracle_models import (Registry, SegmenterConfig, oracle_models, register_renders,
                                             register_scene)
from engine.evaluation.scenes import evaluation_views, render_scene

METHODS = ("bsb", "nearest_vertex", "random_valid")
NOTE = ("oracle teachers (answers from human part labels) through the engine's real preparation, "
        "BSB and iSeg: measures the engine, not SAM/DINOv2")


@dataclass(frozen=True)
class E2EProtocol:
    meshes: tuple[str, ...] = ("glasses/59", "bird/243")
    views: int = 3  # held-out test images per mesh
    clicks: int = 5  # part clicks per image (plus one decal click when the image has a decal)
    cross_clicks: int | None = None  # part clicks per cross-instance image (None: `clicks`)
    cross_pairs: tuple[tuple[str, str], ...] = (("airplane/61", "airplane/63"),)  # (image mesh, shape mesh)
    size: int = 224
    min_part_pixels: int = 25
    seed: int = 0
    features: PlantedConfig = PlantedConfig()
    segmenter: SegmenterConfig = SegmenterConfig()


@dataclass
class Record:
    """One method's answer to one trial, with the trial's stage diagnostics."""

    kind: str  # part, decal, cross
    category: str
    mesh: str  # shape mesh
    method: str
    found: bool
    vertex: int | None
    confidence: float
    success: bool
    part_iou: float | None  # None for decals
    true_click_iou: float | None = None  # iSeg from the true clicked vertex (part trials)
    hit: bool | None = None  # BSB: some valid candidate lies strictly inside the part
    distill_cosine: float | None = None  # of the shape mesh's preparation (part and decal trials)


def vertex_iou(mask: np.ndarray | None, truth: np.ndarray) -> float:
    if mask is None:
        return 0.0
    union = np.logical_or(mask, truth).sum()
    return float(np.logical_and(mask, truth).sum() / union) if union else 0.0


def strictly_inside(lm: LabelledMesh, vertex: int | None, part: int) -> bool:
    return vertex is not None and bool(lm.vertex_parts[vertex, part]) and int(lm.vertex_parts[vertex].sum()) == 1


class Space:
    """One label space (a mesh's labels, or the semantic airplanes): registry, oracle models, session.

    `variant` makes a space that shares this one's registry and prepared meshes but answers test images
    with other feature defects; valid because the photo-side defects never touch the renders.
    """

    def __init__(self, name: str, n_parts: int, protocol: E2EProtocol, settings, cache_dir: Path | None,
                 shuffle: bool = False, registry: Registry | None = None,
                 features: PlantedConfig | None = None) -> None:
        from engine.pipeline import Session

        self.protocol, self.settings, self.cache_dir = protocol, settings, cache_dir
        self.registry = registry or Registry(name, n_parts)
        self.models = oracle_models(self.registry, features or protocol.features, protocol.segmenter,
                                    seed=protocol.seed, shuffle=shuffle)
        self.session = Session(device="cpu", models=self.models, settings=settings, cache_dir=cache_dir,
                               use_cache=cache_dir is not None)
        self.prepared: dict[str, object] = {}
        self.prepare_seconds: dict[str, float] = {}  # fresh (uncached) preparations only

    def variant(self, features: PlantedConfig | None = None, shuffle: bool = False) -> "Space":
        other = Space(self.registry.space, self.registry.n_parts, self.protocol, self.settings, self.cache_dir,
                      shuffle=shuffle, registry=self.registry, features=features)
        other.prepared = self.prepared
        return other

    def prepare(self, lm: LabelledMesh):
        if lm.name not in self.prepared:
            register_renders(self.registry, lm, self.settings)
            p = self.session.prepare(lm.mesh)
            if not p.cached:
                self.prepare_seconds[lm.name] = p.seconds
            self.prepared[lm.name] = p
        return self.prepared[lm.name]

    def image(self, lm: LabelledMesh, scene):
        from engine.images import image_from_array

        register_scene(self.registry, lm, scene)
        return self.session.set_image(image_from_array(scene.image))


def answer(space: Space, shape: LabelledMesh, prepared, pimage, trial, rng_seed: int) -> list[Record]:
    """BSB through `Session.match` and both baselines with the same inputs and seeding."""
    from engine.bsb import nearest_vertex, random_valid_candidate
    from engine.pipeline import _bsb_inputs, _seed as seeding

    session, k = space.session, prepared.settings.k
    segmenter, grid = _bsb_inputs(prepared, pimage, space.models)
    args = (segmenter, grid, prepared.dino, [trial.click], [1])
    results = {
        "bsb": session.match(prepared, pimage, [trial.click], [1]),
        "nearest_vertex": nearest_vertex(*args, seed=seeding(prepared), k=k, scale=pimage.image.scale),
        "random_valid": random_valid_candidate(*args, seed=seeding(prepared), k=k, scale=pimage.image.scale,
                                               rng=np.random.default_rng(rng_seed)),
    }
    lacks = trial.kind != "decal" and (trial.part >= shape.n_parts or not shape.vertex_parts[:, trial.part].any())
    true_iou = hit = None
    if trial.kind == "part":
        true_mask = prepared.iseg.predict([(trial.vertex, True)]) >= 0.5
        true_iou = vertex_iou(true_mask, shape.vertex_parts[:, trial.part])
    out = []
    for method, r in results.items():
        found = bool(r.found)
        if trial.kind == "decal" or lacks:
            success, iou = not found, None
        else:
            success = found and strictly_inside(shape, r.winner_vertex, trial.part)
            iou = vertex_iou(r.vertex_mask if found else None, shape.vertex_parts[:, trial.part])
        if method == "bsb" and trial.kind != "decal" and not lacks:
            hit = any(c.valid and strictly_inside(shape, c.vertex, trial.part) for c in r.candidates)
        out.append(Record(trial.kind, trial.category, shape.name, method, found, r.winner_vertex,
                          float(r.confidence), success, iou, true_iou, hit if method == "bsb" else None))
    return out


def distill_cosine(space: Space, lm: LabelledMesh, prepared) -> float:
    """Mean cosine of the distilled DINO vertex features to the oracle's render feature of each vertex."""
    d = prepared.dino.detach().cpu().numpy()
    t = space.models.dino.vertex_truth(lm)
    cos = (d * t).sum(1) / np.maximum(np.linalg.norm(d, axis=1) * np.linalg.norm(t, axis=1), 1e-12)
    return float(cos.mean())


def image_trials(space: Space, lm: LabelledMesh, protocol: E2EProtocol, decals: bool = True):
    """(prepared test image, trial) for the part (and decal) clicks on held-out images of one mesh, drawn
    exactly as the planted benchmark does."""
    name = lm.name
    for v, cam in enumerate(evaluation_views(protocol.views, _seed(protocol.seed, name, "views"))):
        scene = render_scene(lm, cam, protocol.size, seed=_seed(protocol.seed, name, v))
        pimage = space.image(lm, scene)
        rng = np.random.default_rng(_seed(protocol.seed, name, v, "clicks"))
        trials = click_trials(lm, scene, v, protocol.clicks, rng, protocol.min_part_pixels)
        for t in trials + (decal_trial(lm, scene, v) if decals else []):
            yield pimage, t


def mesh_trials(space: Space, lm: LabelledMesh, protocol: E2EProtocol, decals: bool = True) -> Iterator[Record]:
    """Every method's answer to the trials of `image_trials`, each record with the mesh's distillation cosine."""
    prepared = space.prepare(lm)
    cosine = distill_cosine(space, lm, prepared)
    for pimage, t in image_trials(space, lm, protocol, decals):
        for record in answer(space, lm, prepared, pimage, t, _seed(protocol.seed, t)):
            record.distill_cosine = cosine
            yield record


def cross_trials(space: Space, image_name: str, shape_name: str, protocol: E2EProtocol) -> Iterator[Record]:
    image_lm, shape_lm = load_labelled(image_name, semantic=True), load_labelled(shape_name, semantic=True)
    prepared = space.prepare(shape_lm)
    for v, cam in enumerate(evaluation_views(protocol.views, _seed(protocol.seed, image_name, "cross"))):
        scene = render_scene(image_lm, cam, protocol.size, seed=_seed(protocol.seed, image_name, v, "cross"),
                             decal_radius=0.0)
        pimage = space.image(image_lm, scene)
        rng = np.random.default_rng(_seed(protocol.seed, image_name, shape_name, v, "clicks"))
        clicks = protocol.cross_clicks or protocol.clicks
        for t in click_trials(image_lm, scene, v, clicks, rng, protocol.min_part_pixels,
                              kind="cross", shape_mesh=shape_name):
            yield from answer(space, shape_lm, prepared, pimage, t, _seed(protocol.seed, t))


def mesh_space(lm: LabelledMesh, protocol: E2EProtocol, settings, cache_dir: Path | None, **kw) -> Space:
    return Space(f"mesh:{lm.name}", lm.n_parts, protocol, settings, cache_dir, **kw)


def load_records(paths) -> tuple[list[Record], list[Record], list[float]]:
    """(part and decal records, cross records, one distillation cosine per mesh) from `--trials-out` files,
    so one run can be split across processes (disjoint meshes) and summarised once."""
    import json

    records = [Record(**json.loads(line)) for p in paths for line in Path(p).read_text().splitlines() if line]
    own = [r for r in records if r.kind != "cross"]
    cosines = {r.mesh: r.distill_cosine for r in own if r.distill_cosine is not None}
    return own, [r for r in records if r.kind == "cross"], list(cosines.values())


def bsb_part_iou(records: list[Record]) -> float:
    """Mean final part IoU of BSB's part clicks."""
    return float(np.mean([r.part_iou for r in records if r.kind == "part" and r.method == "bsb"]))


# ----- figures ---------------------------------------------------------------------------------------

def rate(values) -> tuple[float | None, float | None]:
    """Mean and binomial standard error (trials treated as independent)."""
    x = np.asarray(list(values), float)
    if len(x) == 0:
        return None, None
    p = float(x.mean())
    return p, float(np.sqrt(max(p * (1 - p), 0.0) / len(x)))


def mean_se(values) -> tuple[float | None, float | None]:
    x = np.asarray(list(values), float)
    if len(x) == 0:
        return None, None
    return float(x.mean()), float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else 0.0


def auroc_se(a: float | None, n_pos: int, n_neg: int) -> float | None:
    """Hanley & McNeil's standard error of an AUROC."""
    if a is None:
        return None
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    var = (a * (1 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) / (n_pos * n_neg)
    return float(np.sqrt(max(var, 0.0)))


def paired_difference(records: list[Record], a: str, b: str) -> tuple[float | None, float | None]:
    """Success of method `a` minus method `b` on the same part trials, with its paired standard error."""
    ra = [r.success for r in records if r.kind == "part" and r.method == a]
    rb = [r.success for r in records if r.kind == "part" and r.method == b]
    return mean_se(np.asarray(ra, float) - np.asarray(rb, float)) if ra else (None, None)


def verdict(diff: float | None, se: float | None) -> str:
    if diff is None:
        return "no trials"
    if diff > 1.96 * se:
        return "BSB better"
    if diff < -1.96 * se:
        return "BSB worse"
    return "no clear difference"


def summarize(records: list[Record], cross: list[Record], cosines: list[float]) -> dict:
    """The benchmark's JSON figures (keys fixed by issue 11), each rate with its standard error."""
    def sel(kind, method, recs=records):
        return [r for r in recs if r.kind == kind and r.method == method]

    out: dict = {}

    def put(key, pair):
        out[key], out[key + "_se"] = pair

    part = {m: sel("part", m) for m in METHODS}
    decal = sel("decal", "bsb")
    put("e2e_bsb_success", rate(r.success for r in part["bsb"]))
    put("e2e_nn_success", rate(r.success for r in part["nearest_vertex"]))
    put("e2e_random_success", rate(r.success for r in part["random_valid"]))
    put("e2e_bsb_part_iou", mean_se(r.part_iou for r in part["bsb"]))
    put("e2e_nn_part_iou", mean_se(r.part_iou for r in part["nearest_vertex"]))
    put("e2e_random_part_iou", mean_se(r.part_iou for r in part["random_valid"]))
    put("e2e_decal_rejection", rate(not r.found for r in decal))
    put("e2e_false_rejection", rate(not r.found for r in part["bsb"]))
    score = lambda rs: np.array([r.confidence if r.found else 0.0 for r in rs])  # noqa: E731
    a = auroc(score(part["bsb"]), score(decal))
    out["e2e_auroc"], out["e2e_auroc_se"] = a, auroc_se(a, len(part["bsb"]), len(decal))
    put("e2e_cross_bsb_success", rate(r.success for r in sel("cross", "bsb", cross)))
    put("e2e_cross_nn_success", rate(r.success for r in sel("cross", "nearest_vertex", cross)))
    put("distill_cosine", mean_se(cosines))
    put("iseg_true_click_iou", mean_se(r.true_click_iou for r in part["bsb"]))
    put("bsb_hit_rate", rate(r.hit for r in part["bsb"]))
    put("bsb_minus_nn_success", paired_difference(records, "bsb", "nearest_vertex"))
    put("bsb_minus_random_success", paired_difference(records, "bsb", "random_valid"))
    out["n_part_trials"] = len(part["bsb"])
    out["n_decal_trials"] = len(decal)
    out["n_cross_trials"] = len(sel("cross", "bsb", cross))
    cats = sorted({r.category for r in part["bsb"]})
    out["per_category"] = {c: {m: rate(r.success for r in part[m] if r.category == c)[0] for m in METHODS}
                           | {"n": sum(r.category == c for r in part["bsb"])} for c in cats}
    return out


def sweep_row(label: str, level: float, records: list[Record]) -> dict:
    """One sweep level: success and part IoU per method, and whether BSB beats each baseline."""
    part = lambda m: [r for r in records if r.kind == "part" and r.method == m]  # noqa: E731
    row = {"sweep": label, "level": level, "n": len(part("bsb"))}
    for m in METHODS:
        row[f"{m}_success"] = rate(r.success for r in part(m))[0]
        row[f"{m}_part_iou"] = mean_se(r.part_iou for r in part(m))[0]
    for base in ("nearest_vertex", "random_valid"):
        d, se = paired_difference(records, "bsb", base)
        row[f"bsb_minus_{base}"], row[f"bsb_minus_{base}_se"] = d, se
        row[f"vs_{base}"] = verdict(d, se)
    decal = [r for r in records if r.kind == "decal" and r.method == "bsb"]
    row["decal_rejection"] = rate(not r.found for r in decal)[0]
    return row


def run_sweeps(base: dict[str, Space], protocol: E2EProtocol, settings, cache_dir: Path | None,
               meshes: tuple[str, ...], error_levels, confusion_levels,
               progress: Callable[[str], None] | None = None) -> list[dict]:
    """Segmenter error rate (re-prepares: the segmenter also teaches iSeg) and feature confusion (photo side
    only, so the base preparation is reused), on `meshes`."""
    rows = []
    for err in error_levels:
        proto = replace(protocol, segmenter=replace(protocol.segmenter, error_rate=float(err)))
        recs = []
        for name in meshes:
            lm = load_labelled(name)
            space = base[name] if err == protocol.segmenter.error_rate else mesh_space(lm, proto, settings, cache_dir)
            recs += list(mesh_trials(space, lm, proto))
        rows.append(sweep_row("segmenter_error_rate", float(err), recs))
        if progress:
            progress(f"sweep: segmenter error rate {err}")
    for conf in confusion_levels:
        recs = []
        for name in meshes:
            space = base[name] if conf == protocol.features.confusion else base[name].variant(
                replace(protocol.features, confusion=float(conf)))
            recs += list(mesh_trials(space, load_labelled(name), protocol))
        rows.append(sweep_row("feature_confusion", float(conf), recs))
        if progress:
            progress(f"sweep: feature confusion {conf}")
    return rows


def run(protocol: E2EProtocol, settings, cache_dir: Path | None, progress: Callable[[str], None] | None = None
        ) -> tuple[list[Record], list[Record], list[float], dict[str, Space]]:
    """Every part/decal trial of `protocol.meshes` and every cross trial; the spaces are kept for sweeps."""
    records, cosines, spaces = [], [], {}
    for name in protocol.meshes:
        lm = load_labelled(name)
        space = mesh_space(lm, protocol, settings, cache_dir)
        spaces[name] = space
        start = time.perf_counter()
        records += list(mesh_trials(space, lm, protocol))
        cosines.append(distill_cosine(space, lm, space.prepared[name]))
        if progress:
            progress(f"{name}: {time.perf_counter() - start:.0f}s (distill cosine {cosines[-1]:.2f})")
    cross = []
    if protocol.cross_pairs:
        semantic = Space("semantic", 5, protocol, settings, cache_dir)
        spaces["semantic"] = semantic
        for image_name, shape_name in protocol.cross_pairs:
            cross += list(cross_trials(semantic, image_name, shape_name, protocol))
            if progress:
                progress(f"{image_name} -> {shape_name}: done")
    return records, cross, cosines, spaces


def format_table(figures: dict, sweeps: list[dict]) -> str:
    def pct(key):
        v, se = figures.get(key), figures.get(key + "_se")
        return "   -   " if v is None else f"{100 * v:5.1f} ± {100 * se:4.1f}"

    def num(key):
        v, se = figures.get(key), figures.get(key + "_se")
        return "   -   " if v is None else f"{v:5.2f} ± {se:4.2f}"

    rows = [f"mode: e2e  ({NOTE})",
            f"part trials {figures['n_part_trials']}, decal {figures['n_decal_trials']}, "
            f"cross {figures['n_cross_trials']}  (± = one standard error)",
            f"{'':30s} {'BSB':>14s} {'nearest':>14s} {'random':>14s}",
            f"{'success (winner inside part)':30s} {pct('e2e_bsb_success'):>14s} {pct('e2e_nn_success'):>14s} "
            f"{pct('e2e_random_success'):>14s}",
            f"{'final part IoU':30s} {num('e2e_bsb_part_iou'):>14s} {num('e2e_nn_part_iou'):>14s} "
            f"{num('e2e_random_part_iou'):>14s}"]
    for c, v in figures["per_category"].items():
        rows.append(f"  {c + ' (n=' + str(v['n']) + ')':28s} " + " ".join(
            f"{'-' if v[m] is None else f'{100 * v[m]:.1f}':>14s}" for m in METHODS))
    rows += [f"{'cross-instance success':30s} {pct('e2e_cross_bsb_success'):>14s} {pct('e2e_cross_nn_success'):>14s}",
             f"BSB decal rejection {pct('e2e_decal_rejection')}, false rejection {pct('e2e_false_rejection')}, "
             f"AUROC {num('e2e_auroc')}",
             f"BSB - nearest {pct('bsb_minus_nn_success')} points, BSB - random {pct('bsb_minus_random_success')}",
             f"stages: distill cosine {num('distill_cosine')}, iSeg IoU from the true click "
             f"{num('iseg_true_click_iou')}, BSB hit rate {pct('bsb_hit_rate')}"]
    if sweeps:
        rows.append(f"{'sweep':22s} {'level':>5s} {'n':>4s} {'BSB':>6s} {'near':>6s} {'rand':>6s} {'IoU':>5s}  "
                    "vs nearest / vs random")
        for s in sweeps:
            rows.append(f"{s['sweep']:22s} {s['level']:5.2f} {s['n']:4d} "
                        + " ".join(f"{100 * (s[m + '_success'] or 0):6.1f}" for m in METHODS)
                        + f" {s['bsb_part_iou'] or 0:5.2f}  {s['vs_nearest_vertex']} / {s['vs_random_valid']}")
    return "\n".join(rows)
