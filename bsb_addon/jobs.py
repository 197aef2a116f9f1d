"""Protocol sequences for one user action, and validation of what comes back (no bpy).

Each function runs synchronously against an EngineClient (headless, or on a worker thread in the UI)
and returns plain data with the arrays loaded and checked. Nothing is written into Blender here: the
caller writes only after a complete, validated result, so a failure at any step leaves the .blend as it was.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
import numpy as np

from . import meshmath
from .engine_client import CancelFn, EngineClient, EngineError, ProgressFn

# Vertex clicks sent per request: iSeg takes point prompts, and a few hundred spread over a selection
# carry what a 100k-vertex selection means while keeping the request line small (protocol limit 1 MiB).
MAX_VERTEX_CLICKS = 256


class ResultError(EngineError):
    """The engine answered, but the answer does not fit the mesh or image it was asked about."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "bad_result")


@dataclass
class MeshFiles:
    """The mesh as the engine sees it. With topology-changing modifiers that is the evaluated mesh, and
    `copies` maps each of its vertices to the base vertex it copies (-1: made by a modifier)."""

    vertices: str
    faces: str
    n_vertices: int
    name: str
    up: str = "z"
    copies: np.ndarray | None = None
    n_base: int = 0

    @property
    def base_count(self) -> int:
        return self.n_base if self.copies is not None else self.n_vertices

    def to_engine(self, base_vertices: np.ndarray) -> np.ndarray:
        """Base vertex indices -> the engine's (evaluated) indices; vertices without a copy are dropped."""
        base_vertices = np.asarray(base_vertices, dtype=np.int64)
        if self.copies is None:
            return base_vertices
        mapped = meshmath.first_copy(self.copies, self.n_base)[base_vertices]
        return mapped[mapped >= 0]

    def engine_clicks(self, clicks: list[tuple[int, bool]]) -> list[tuple[int, bool]]:
        """Map base-vertex clicks to the engine's mesh and spread each sign over at most MAX_VERTEX_CLICKS."""
        positions = np.load(self.vertices, allow_pickle=False)
        out: list[tuple[int, bool]] = []
        for sign in (True, False):
            chosen = self.to_engine(np.array([v for v, p in clicks if bool(p) == sign], np.int64))
            chosen = meshmath.spread_sample(np.unique(chosen), positions, MAX_VERTEX_CLICKS)
            out += [(int(v), sign) for v in chosen]
        return out


@dataclass
class PartResult:
    """A validated per-vertex result (match, refine or one region of match_all)."""

    found: bool
    weights: np.ndarray | None = None
    mask: np.ndarray | None = None
    part_mask: np.ndarray | None = None
    confidence: float = 0.0
    reason: str | None = None
    name: str = ""
    random_weights: bool = False
    image_size: tuple[int, int] = (0, 0)
    info: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    provisional: bool = False  # from the DINO field alone, while the engine still trains iSeg (replaced later)

    @property
    def n_selected(self) -> int:
        return int(self.mask.sum()) if self.mask is not None else 0


def provenance(client: EngineClient) -> dict:
    """What produced a result, from the engine's handshake: version, profile, device, model ids."""
    hello = client.hello
    out = {k: hello.get(k) for k in ("engine", "profile", "device", "random_weights")}
    out["models"] = hello.get("models") or client.models_of_profile()
    return out


def _steps(progress: ProgressFn | None, lo: float, hi: float) -> ProgressFn | None:
    """Map a step's own 0..1 progress into its slice of the whole action."""
    if progress is None:
        return None
    return lambda f, msg: progress(lo + (hi - lo) * min(max(f, 0.0), 1.0), msg)


def _load(path: str | None, what: str) -> np.ndarray | None:
    if not path:
        return None
    p = Path(path)
    if not p.is_file():
        raise ResultError(f"The engine's {what} file {path} is missing; run the action again.")
    try:
        return np.load(p, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ResultError(f"The engine's {what} file {path} is unreadable ({exc}); run the action again.") from exc


def part_from_data(data: dict, mesh: "MeshFiles | int", random_weights: bool, image_size=(0, 0),
                   name: str = "") -> PartResult:
    """Load and check a match-shaped result: arrays must index exactly the engine's vertices; with
    modifiers they are then carried back to the base mesh's vertices."""
    n_vertices = mesh if isinstance(mesh, int) else mesh.n_vertices
    found = bool(data.get("found", True))
    part_mask = _load(data.get("part_mask"), "part mask")
    if part_mask is not None and part_mask.ndim != 2:
        raise ResultError(f"The engine's part mask has shape {part_mask.shape}, expected (H, W).")
    result = PartResult(
        found=found,
        part_mask=None if part_mask is None else part_mask.astype(bool),
        confidence=float(data.get("confidence") or 0.0),
        reason=data.get("reason"),
        name=str(data.get("name") or name),
        random_weights=random_weights,
        image_size=tuple(image_size),
        info={k: v for k, v in data.items() if not isinstance(v, (list, dict)) or k in ("winner_pixel", "timings")},
    )
    if not found:
        return result
    weights = _load(data.get("weights"), "weights")
    mask = _load(data.get("mask"), "vertex mask")
    if mask is None and weights is None:
        raise ResultError("The engine reported a part but sent neither weights nor a vertex mask.")
    if mask is None:
        mask = weights >= 0.5
    if weights is None:
        weights = mask.astype(np.float32)
    for arr, what in ((weights, "weights"), (mask, "vertex mask")):
        if arr.shape != (n_vertices,):
            raise ResultError(
                f"The engine's {what} has shape {arr.shape} but the mesh has {n_vertices} vertices; "
                "prepare the mesh again."
            )
    weights = weights.astype(np.float32)
    if not np.all(np.isfinite(weights)):
        raise ResultError("The engine's weights contain NaN or infinity; run the action again.")
    mask = mask.astype(bool)
    if not isinstance(mesh, int) and mesh.copies is not None:
        weights = meshmath.to_base(weights, mesh.copies, mesh.n_base)
        mask = meshmath.to_base(mask, mesh.copies, mesh.n_base)
    result.weights = weights
    result.mask = mask
    return result


def prepare(client: EngineClient, mesh: MeshFiles, progress: ProgressFn | None = None, cancel: CancelFn | None = None,
            on_event=None) -> dict:
    """`on_event(message)`: ask for an early prepare and get its progress messages (a provisional mesh id)."""
    early = {"early": True, "on_event": on_event} if on_event is not None else {}
    data = client.request(
        "prepare",
        progress=progress,
        cancel=cancel,
        mesh={"npy_vertices": mesh.vertices, "npy_faces": mesh.faces},
        up=mesh.up,
        name=mesh.name,
        **early,
    )
    if int(data.get("n_vertices", mesh.n_vertices)) != mesh.n_vertices:
        raise ResultError(
            f"The engine read {data.get('n_vertices')} vertices but the mesh has {mesh.n_vertices}; prepare again."
        )
    return data


def set_image(client: EngineClient, path: str, cancel: CancelFn | None = None) -> dict:
    return client.request("set_image", cancel=cancel, path=str(path))


def _check_points(points: list, width: int, height: int) -> None:
    for x, y in points:
        if not (0.0 <= x <= width and 0.0 <= y <= height):
            raise EngineError(
                f"The point ({x:.1f}, {y:.1f}) is outside the {width}x{height} image; click on the image.",
                "bad_request",
            )


def run_match(
    client: EngineClient,
    mesh: MeshFiles,
    image_path: str,
    job_dir: str,
    points: list[list[float]] | None = None,
    labels: list[int] | None = None,
    points_uv: list[tuple[float, float]] | None = None,
    box: list[float] | None = None,
    box_uv: tuple[float, float, float, float] | None = None,
    min_confidence: float | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    on_provisional=None,
) -> PartResult:
    """prepare -> set_image -> match. Clicks come as engine pixels or as normalised Blender view
    coordinates (`points_uv`, `box_uv`), converted here with the size the engine reports.
    `on_provisional(PartResult)`: while the engine prepares the mesh, it gets a provisional answer as soon
    as the engine can give one (its `provisional` is True); the returned result is the final one."""
    asked: list[str] = []

    def event(msg: dict) -> None:  # the engine's DINO field is ready: answer on it while iSeg trains
        if msg.get("provisional") and msg.get("mesh_id") and not asked:
            asked.append(msg["mesh_id"])
            on_provisional(_match_on(client, mesh, msg["mesh_id"], image_path, f"{job_dir}_provisional", points,
                                     labels, points_uv, box, box_uv, min_confidence, None, cancel))

    mesh_data = prepare(client, mesh, _steps(progress, 0.0, 0.3), cancel, event if on_provisional else None)
    return _match_on(client, mesh, mesh_data["mesh_id"], image_path, job_dir, points, labels, points_uv, box,
                     box_uv, min_confidence, _steps(progress, 0.3, 1.0), cancel)


def _match_on(client: EngineClient, mesh: MeshFiles, mesh_id: str, image_path: str, job_dir: str, points, labels,
              points_uv, box, box_uv, min_confidence, progress: ProgressFn | None, cancel: CancelFn | None
              ) -> PartResult:
    """set_image -> match on a prepared (or provisional) mesh id."""
    from . import pixels

    image = set_image(client, image_path, cancel)
    width, height = int(image["width"]), int(image["height"])
    if points_uv is not None:
        points = [list(pixels.view_to_pixel(u, v, width, height)) for u, v in points_uv]
    if box_uv is not None:
        box = pixels.box_to_pixels(*box_uv, width, height)
    points = points or []
    if not points and box is None:
        raise EngineError("Give at least one click or a box on the image.", "bad_request")
    _check_points(points, width, height)
    labels = [int(bool(lab)) for lab in (labels if labels is not None else [1] * len(points))]
    if len(labels) != len(points):
        raise EngineError(f"{len(points)} points but {len(labels)} labels; give one label per point.", "bad_request")
    fields: dict = {
        "mesh_id": mesh_id,
        "image_id": image["image_id"],
        "points": [[float(x), float(y)] for x, y in points],
        "labels": labels,
        "job_dir": str(job_dir),
    }
    if box is not None:
        fields["box"] = [float(b) for b in box]
    if min_confidence is not None:
        fields["min_confidence"] = float(min_confidence)
    Path(job_dir).mkdir(parents=True, exist_ok=True)
    data = client.request("match", progress=progress, cancel=cancel, **fields)
    result = part_from_data(data, mesh, client.random_weights, (width, height))
    result.provenance = provenance(client)
    result.provisional = bool(data.get("provisional", False))
    return result


def run_refine(
    client: EngineClient,
    mesh: MeshFiles,
    clicks: list[tuple[int, bool]],
    job_dir: str,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> PartResult:
    """prepare -> refine with vertex clicks (3D positive/negative; base-mesh indices, sent spread and mapped)."""
    for vertex, _ in clicks:
        if not 0 <= int(vertex) < mesh.base_count:
            raise EngineError(f"Vertex {vertex} is not on the mesh ({mesh.base_count} vertices).", "bad_request")
    sent = mesh.engine_clicks(clicks)
    if not any(p for _, p in sent):
        raise EngineError("None of the selected vertices is part of the evaluated mesh; select others.", "bad_request")
    mesh_data = prepare(client, mesh, _steps(progress, 0.0, 0.3), cancel)
    Path(job_dir).mkdir(parents=True, exist_ok=True)
    data = client.request(
        "refine",
        progress=_steps(progress, 0.3, 1.0),
        cancel=cancel,
        mesh_id=mesh_data["mesh_id"],
        clicks=[[int(v), bool(p)] for v, p in sent],
        job_dir=str(job_dir),
    )
    result = part_from_data({"found": True, **data}, mesh, client.random_weights)
    result.provenance = provenance(client)
    return result


def run_match_all(
    client: EngineClient,
    mesh: MeshFiles,
    image_path: str,
    job_dir: str,
    max_regions: int | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> list[PartResult]:
    mesh_data = prepare(client, mesh, _steps(progress, 0.0, 0.2), cancel)
    image = set_image(client, image_path, cancel)
    Path(job_dir).mkdir(parents=True, exist_ok=True)
    fields = {"mesh_id": mesh_data["mesh_id"], "image_id": image["image_id"], "job_dir": str(job_dir)}
    if max_regions:
        fields["max_regions"] = int(max_regions)
    data = client.request("match_all", progress=_steps(progress, 0.2, 1.0), cancel=cancel, **fields)
    size = (int(image["width"]), int(image["height"]))
    regions = [part_from_data(region, mesh, client.random_weights, size, name=f"region {i + 1}")
               for i, region in enumerate(data.get("regions", []))]
    for region in regions:
        region.provenance = provenance(client)
    return regions


def run_shape_to_image(
    client: EngineClient,
    mesh: MeshFiles,
    image_path: str,
    vertices: list[int],
    job_dir: str,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> dict:
    """3D selection -> where it is in the image: {'pixel', 'mask' (H, W) bool, 'confidence', 'size'}."""
    if not len(vertices):
        raise EngineError("Select some vertices of the part first (Edit Mode).", "bad_request")
    sent = [v for v, _ in mesh.engine_clicks([(int(v), True) for v in vertices])]
    if not sent:
        raise EngineError("None of the selected vertices is part of the evaluated mesh; select others.", "bad_request")
    mesh_data = prepare(client, mesh, _steps(progress, 0.0, 0.3), cancel)
    image = set_image(client, image_path, cancel)
    Path(job_dir).mkdir(parents=True, exist_ok=True)
    data = client.request(
        "shape_to_image",
        progress=_steps(progress, 0.3, 1.0),
        cancel=cancel,
        mesh_id=mesh_data["mesh_id"],
        image_id=image["image_id"],
        vertices=[int(v) for v in sent],
        job_dir=str(job_dir),
    )
    mask = _load(data.get("mask"), "image mask")
    size = (int(image["width"]), int(image["height"]))
    if mask is not None and mask.shape != (size[1], size[0]):
        raise ResultError(f"The engine's image mask has shape {mask.shape}, expected {(size[1], size[0])}.")
    return {
        "pixel": data.get("pixel"),
        "mask": None if mask is None else mask.astype(bool),
        "confidence": float(data.get("confidence") or 0.0),
        "size": size,
        "random_weights": client.random_weights,
    }

