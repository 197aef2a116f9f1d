"""The correspondence benchmark: the paper's click protocol on labelled meshes, and its metrics.

A trial is a click in a held-out view's image and the ground truth of what it should match:
- "part": a random visible vertex inside a ground-truth part, projected; success when the matched vertex
  belongs to that part (its incident faces carry the label).
- "decal": the middle of a texture-only decal; success when the method answers "no corresponding part".
- "cross": a click on an image of one airplane matched against another airplane's shape; success when
  the matched vertex carries the same semantic label (body, wing, stabilizer, rudder, engine), or, for a
  part the other airplane lacks (engines: only airplane 70 has them), when the answer is "no part".
Every method (BSB and the two baselines) answers every trial with the same 2D models and features.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Callable, Iterator, Protocol as TypingProtocol

import numpy as np

from engine.bsb import feature_grid, match, nearest_vertex, random_valid_candidate
from engine.bsb.interfaces import PromptSegmenter
from engine.bsb.regions import interior_pixel
from engine.evaluation.data import LabelledMesh, load_labelled
from engine.evaluation.oracle import OracleSegmenter, PlantedConfig, PlantedSpace
from engine.evaluation.scenes import Scene, evaluation_views, render_scene, visible_vertices

if TYPE_CHECKING:
    from engine.pipeline import Session

SEMANTIC_AIRPLANES = ("airplane/61", "airplane/63", "airplane/70")
METHODS = ("bsb", "nearest_vertex", "random_valid")
MODE_NOTES = {
    "oracle": "oracle 2D models + planted features: measures the matching logic, not SAM/DINOv2",
    "real": "real SAM and DINOv2 weights, features distilled by the engine's own preparation",
    "plumbing": "RANDOM-WEIGHT tiny models: a plumbing check, the numbers mean nothing",
}


@dataclass(frozen=True)
class Protocol:
    """Which meshes, how many held-out views and clicks, and the matching parameters."""

    meshes: tuple[str, ...] = ("airplane/61", "chair/101", "human/1")
    views: int = 3  # held-out views per mesh
    clicks: int = 5  # part clicks per view (plus one decal click when the view has a decal)
    cross_pairs: tuple[tuple[str, str], ...] = (("airplane/61", "airplane/63"),)  # (image mesh, shape mesh)
    size: int = 224  # image side in pixels
    k: int = 100  # BSB candidates
    min_part_pixels: int = 25  # parts smaller than this in a view are not clicked
    seed: int = 0


@dataclass(frozen=True)
class Trial:
    kind: str  # "part", "decal" or "cross"
    category: str
    image_mesh: str  # the mesh the image was rendered from
    shape_mesh: str  # the mesh whose vertices are matched
    view: int
    click: tuple[float, float]  # image pixels (x, y)
    part: int  # ground-truth label of the click (-1 for a decal)
    vertex: int  # the clicked vertex of image_mesh (-1 for a decal)


@dataclass(frozen=True)
class Outcome:
    trial: Trial
    method: str
    found: bool
    vertex: int | None
    confidence: float
    success: bool
    seconds: float


@dataclass(frozen=True)
class ImageModels:
    """What the matcher needs for one image: a prompt segmenter, the feature grid, working/original scale."""

    segmenter: PromptSegmenter
    grid: object  # engine.bsb.FeatureGrid
    scale: float = 1.0


class Models(TypingProtocol):
    """Where features and masks come from: planted/oracle (`mode="oracle"`) or real networks ("real")."""

    mode: str

    def vertex_features(self, lm: LabelledMesh, space: str) -> np.ndarray: ...

    def image_models(self, lm: LabelledMesh, scene: Scene, space: str, seed: int) -> ImageModels: ...


class OracleModels:
    """Planted DINO-like features and a ground-truth segmenter (see engine.evaluation.oracle).

    `space` names a feature space: each mesh has its own ("mesh:<name>"), and the semantic airplanes share
    one ("semantic") so that a wing of one airplane and a wing of another get the same direction.
    """

    mode = "oracle"

    def __init__(self, config: PlantedConfig = PlantedConfig(), seed: int = 0, edge_px: int = 2) -> None:
        self.config, self.seed, self.edge_px = config, seed, edge_px
        self._spaces: dict[str, PlantedSpace] = {}

    def _space(self, lm: LabelledMesh, space: str) -> PlantedSpace:
        if space not in self._spaces:
            n = 5 if space == "semantic" else lm.n_parts
            self._spaces[space] = PlantedSpace(n, self.config, _seed(self.seed, space))
        return self._spaces[space]

    def vertex_features(self, lm: LabelledMesh, space: str) -> np.ndarray:
        return self._space(lm, space).vertex_features(lm, _seed(self.seed, space, lm.name, "vertices"))

    def image_models(self, lm: LabelledMesh, scene: Scene, space: str, seed: int) -> ImageModels:
        grid = self._space(lm, space).image_features(scene, seed)
        return ImageModels(OracleSegmenter(scene.region_map(), self.edge_px), feature_grid(grid, scene.size))


class RealModels:
    """The profile's DINOv2 and SAM through the engine's own pipeline: prepare the mesh, encode the image.

    With the `tiny` profile (random weights) the mode is "plumbing": the numbers then mean nothing.
    """

    def __init__(self, session: "Session") -> None:
        self.session = session
        self.mode = "plumbing" if session.random_weights else "real"

    def vertex_features(self, lm: LabelledMesh, space: str) -> np.ndarray:
        return self.session.prepare(lm.mesh).dino.detach().cpu().numpy()

    def image_models(self, lm: LabelledMesh, scene: Scene, space: str, seed: int) -> ImageModels:
        from engine.images import image_from_array
        from engine.pipeline import _Segmenter

        prepared = self.session.set_image(image_from_array(scene.image))
        segmenter = _Segmenter(self.session.models.sam, prepared)
        grid = feature_grid(prepared.dino, segmenter.image_size)
        return ImageModels(segmenter, grid, prepared.image.scale)


def _seed(*parts: object) -> int:
    """A stable seed from names and numbers (Python's hash() changes between runs)."""
    return zlib.crc32("/".join(map(str, parts)).encode())


def click_trials(lm: LabelledMesh, scene: Scene, view: int, clicks: int, rng: np.random.Generator,
                 min_part_pixels: int, kind: str = "part", shape_mesh: str | None = None) -> list[Trial]:
    """`clicks` part clicks (uniform over the visible parts, then over their visible interior vertices)."""
    vertices, xy = visible_vertices(lm, scene.camera, scene.part_map, scene.depth)
    interior = lm.vertex_parts[vertices].sum(axis=1) == 1
    col = np.floor(xy[:, 0]).astype(int)
    row = np.floor(xy[:, 1]).astype(int)
    keep = interior & ~scene.decal[row, col]
    vertices, xy = vertices[keep], xy[keep]
    labels = np.argmax(lm.vertex_parts[vertices], axis=1)
    pixels = np.bincount(scene.part_map[scene.part_map >= 0], minlength=lm.n_parts)
    parts = [p for p in np.unique(labels) if pixels[p] >= min_part_pixels]
    trials = []
    for _ in range(clicks if parts else 0):
        part = int(rng.choice(parts))
        i = int(rng.choice(np.flatnonzero(labels == part)))
        trials.append(Trial(kind, lm.category, lm.name, shape_mesh or lm.name, view,
                            (float(xy[i, 0]), float(xy[i, 1])), part, int(vertices[i])))
    return trials


def decal_trial(lm: LabelledMesh, scene: Scene, view: int) -> list[Trial]:
    """A click deep inside the decal, if the view has one."""
    if not scene.decal.any():
        return []
    x, y = interior_pixel(scene.decal)
    return [Trial("decal", lm.category, lm.name, lm.name, view, (x + 0.5, y + 0.5), -1, -1)]


def is_success(trial: Trial, found: bool, vertex: int | None, shape: LabelledMesh) -> bool:
    """Whether an answer is right: for a decal, or a part the shape lacks (an engine on a jet without one),
    only "no part" is; otherwise the matched vertex must touch a face of the clicked part."""
    if trial.kind == "decal" or trial.part >= shape.n_parts or not shape.vertex_parts[:, trial.part].any():
        return not found
    if not found or vertex is None:
        return False
    return bool(shape.vertex_parts[vertex, trial.part])


def run_methods(trial: Trial, shape: LabelledMesh, image: ImageModels, vertex_features: np.ndarray, k: int,
                seed: int) -> list[Outcome]:
    """BSB and both baselines on one trial, with identical inputs."""
    args = (image.segmenter, image.grid, vertex_features, [trial.click], [1])
    calls: dict[str, Callable] = {
        "bsb": lambda: match(*args, k=k, scale=image.scale),
        "nearest_vertex": lambda: nearest_vertex(*args, k=k, scale=image.scale),
        "random_valid": lambda: random_valid_candidate(*args, k=k, scale=image.scale,
                                                       rng=np.random.default_rng(seed)),
    }
    outcomes = []
    for method, call in calls.items():
        t = time.perf_counter()
        r = call()
        outcomes.append(Outcome(trial, method, bool(r.found), r.winner_vertex, float(r.confidence),
                                is_success(trial, bool(r.found), r.winner_vertex, shape), time.perf_counter() - t))
    return outcomes


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Normalise once per mesh so the matcher does not copy the bank on every call."""
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def run(protocol: Protocol, models: Models, progress: Callable[[str], None] | None = None) -> Iterator[Outcome]:
    """Every trial of the protocol, each answered by every method.

    Clicks are drawn per (mesh, view) from their own seed, so a subset run repeats the full run's trials.
    """
    for name in protocol.meshes:
        lm = load_labelled(name)
        space = f"mesh:{name}"
        bank = unit_rows(models.vertex_features(lm, space))
        for v, cam in enumerate(evaluation_views(protocol.views, _seed(protocol.seed, name, "views"))):
            scene = render_scene(lm, cam, protocol.size, seed=_seed(protocol.seed, name, v))
            image = models.image_models(lm, scene, space, _seed(protocol.seed, name, v, "image"))
            rng = np.random.default_rng(_seed(protocol.seed, name, v, "clicks"))
            trials = click_trials(lm, scene, v, protocol.clicks, rng, protocol.min_part_pixels)
            for t in trials + decal_trial(lm, scene, v):
                yield from run_methods(t, lm, image, bank, protocol.k, _seed(protocol.seed, t))
        if progress:
            progress(f"{name}: done")
    for image_name, shape_name in protocol.cross_pairs:
        image_lm, shape_lm = load_labelled(image_name, semantic=True), load_labelled(shape_name, semantic=True)
        bank = unit_rows(models.vertex_features(shape_lm, "semantic"))
        for v, cam in enumerate(evaluation_views(protocol.views, _seed(protocol.seed, image_name, "cross"))):
            scene = render_scene(image_lm, cam, protocol.size, seed=_seed(protocol.seed, image_name, v, "cross"),
                                 decal_radius=0.0)
            image = models.image_models(image_lm, scene, "semantic", _seed(protocol.seed, image_name, shape_name, v))
            rng = np.random.default_rng(_seed(protocol.seed, image_name, shape_name, v, "clicks"))
            for t in click_trials(image_lm, scene, v, protocol.clicks, rng, protocol.min_part_pixels,
                                  kind="cross", shape_mesh=shape_name):
                yield from run_methods(t, shape_lm, image, bank, protocol.k, _seed(protocol.seed, t))
        if progress:
            progress(f"{image_name} -> {shape_name}: done")


def auroc(positive: np.ndarray, negative: np.ndarray) -> float | None:
    """P(score of a positive > score of a negative), ties counting half; None when a side is empty."""
    if len(positive) == 0 or len(negative) == 0:
        return None
    pos, neg = np.asarray(positive, float)[:, None], np.asarray(negative, float)[None, :]
    return float(((pos > neg).sum() + 0.5 * (pos == neg).sum()) / (pos.size * neg.size))


def _rate(values: list[bool]) -> float | None:
    return None if not values else float(np.mean(values))


@dataclass
class Summary:
    mode: str
    n_part_trials: int
    n_decal_trials: int
    n_cross_trials: int
    success: dict[str, float | None]  # method -> part-click success rate
    per_category: dict[str, dict[str, float | None]]  # category -> method -> success rate
    no_part_rejection: dict[str, float | None]  # method -> share of decal clicks answered "no part"
    false_rejection: dict[str, float | None]  # method -> share of part clicks answered "no part"
    cross_success: dict[str, float | None]  # method -> cross-instance success rate
    bsb_confidence: dict[str, float | None] = field(default_factory=dict)  # part vs decal separation
    seconds_per_match: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        """The flat record bench/correspondence.py prints last (the headline keys first)."""
        return {
            "mode": self.mode,
            "bsb_success": self.success["bsb"],
            "nn_success": self.success["nearest_vertex"],
            "random_success": self.success["random_valid"],
            "no_part_rejection_rate": self.no_part_rejection["bsb"],
            "bsb_false_rejection_rate": self.false_rejection["bsb"],
            "cross_bsb_success": self.cross_success["bsb"],
            "cross_nn_success": self.cross_success["nearest_vertex"],
            "cross_random_success": self.cross_success["random_valid"],
            "confidence_auroc_part_vs_decal": self.bsb_confidence.get("auroc"),
            "n_part_trials": self.n_part_trials,
            "n_decal_trials": self.n_decal_trials,
            "n_cross_trials": self.n_cross_trials,
            "per_category": self.per_category,
            "bsb_s_per_match": self.seconds_per_match.get("bsb"),
        }


def summarize(outcomes: list[Outcome], mode: str) -> Summary:
    """Success rates per method (overall, per category, cross-instance), rejection and confidence figures."""
    by = lambda kind, method: [o for o in outcomes if o.trial.kind == kind and o.method == method]  # noqa: E731
    categories = sorted({o.trial.category for o in outcomes if o.trial.kind == "part"})
    per_category = {c: {m: _rate([o.success for o in by("part", m) if o.trial.category == c]) for m in METHODS}
                    for c in categories}
    bsb_part, bsb_decal = by("part", "bsb"), by("decal", "bsb")
    score = lambda os: np.array([o.confidence if o.found else 0.0 for o in os])  # noqa: E731
    confidence = {
        "auroc": auroc(score(bsb_part), score(bsb_decal)),
        "mean_part": float(score(bsb_part).mean()) if bsb_part else None,
        "mean_decal": float(score(bsb_decal).mean()) if bsb_decal else None,
    }
    return Summary(
        mode=mode,
        n_part_trials=len(bsb_part),
        n_decal_trials=len(bsb_decal),
        n_cross_trials=len(by("cross", "bsb")),
        success={m: _rate([o.success for o in by("part", m)]) for m in METHODS},
        per_category=per_category,
        no_part_rejection={m: _rate([not o.found for o in by("decal", m)]) for m in METHODS},
        false_rejection={m: _rate([not o.found for o in by("part", m)]) for m in METHODS},
        cross_success={m: _rate([o.success for o in by("cross", m)]) for m in METHODS},
        bsb_confidence=confidence,
        seconds_per_match={m: float(np.mean([o.seconds for o in outcomes if o.method == m]))
                           for m in METHODS if any(o.method == m for o in outcomes)},
    )


def format_table(summary: Summary) -> str:
    """A plain-text table: methods as columns, one row per figure and per category."""
    def cell(v: float | None) -> str:
        return "   -  " if v is None else f"{100 * v:5.1f}%"

    head = f"{'':28s} {'BSB':>7s} {'nearest':>7s} {'random':>7s}"
    rows = [f"mode: {summary.mode}  ({MODE_NOTES.get(summary.mode, '')})", head, "-" * len(head)]

    def line(label: str, values: dict[str, float | None]) -> None:
        rows.append(f"{label:28s} " + " ".join(f"{cell(values.get(m)):>7s}" for m in METHODS))

    line(f"part success (n={summary.n_part_trials})", summary.success)
    if summary.n_part_trials:
        rows.append(f"  (binomial standard error at most {100 * 0.5 / np.sqrt(summary.n_part_trials):.1f} points)")
    for c, values in summary.per_category.items():
        line(f"  {c}", values)
    line(f"cross-instance (n={summary.n_cross_trials})", summary.cross_success)
    line(f"decal rejected (n={summary.n_decal_trials})", summary.no_part_rejection)
    line("part clicks rejected", summary.false_rejection)
    conf = summary.bsb_confidence
    if conf.get("auroc") is not None:
        rows.append(f"BSB confidence: part mean {conf['mean_part']:.2f}, decal mean {conf['mean_decal']:.2f}, "
                    f"AUROC part vs decal {conf['auroc']:.2f} (rejected = 0)")
    return "\n".join(rows)


def outcome_record(o: Outcome) -> dict:
    """One outcome as plain JSON (for per-trial logs)."""
    return {**asdict(o.trial), "method": o.method, "found": o.found, "vertex": o.vertex,
            "confidence": o.confidence, "success": o.success, "seconds": round(o.seconds, 4)}
