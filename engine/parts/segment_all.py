"""Split a whole prepared mesh into parts with its iSeg decoder: `propose` once, then `cut` at any granularity.

1. Proposals: one positive click at each of `n_seeds` farthest-point vertices (spread by surface, so
   small parts get a click too); each click's iSeg answer is thresholded (Otsu + the clicked connected
   region, as for a user's click).
2. Scores: *confidence* (mean probability inside the region minus mean probability outside: how
   clear-cut the decoder's answer is) times *agreement* (mean area-IoU between the region and the
   regions that the other seeds lying inside it produce: a real part gives the same answer wherever
   it is clicked; a region that changes with the click point is not one part). A confident region that
   holds no other seed gets probe clicks instead: one or two more clicks inside it, far from its seed
   (PROBE_QUANTILES of the distances, off its border), and its agreement is the best area-IoU of their
   regions with it (a real part answers ~0.9+; a click-shaped blob moves with the click). The decoder
   was trained on the views' segmenter masks, so agreement between clicks is agreement between the
   views it learned from.
3. Suppression: a proposal whose confidence is under `min_confidence` or whose agreement is under
   `min_agreement` is no part (a decoder that learned nothing still answers a click with a faint bump
   of probability around it; thresholding that bump yields click-shaped blobs, FPS cells that any
   segmentation metric rewards a little, so such answers must not become parts). The rest, sorted by
   score; one overlapping a kept region by more than `nms_iou` (area IoU) is dropped.
4. Finest partition: each vertex goes to the smallest kept region holding it (nested parts survive),
   else to the kept proposal with the highest probability, so every vertex is assigned; pieces under
   `min_area` of the surface join their neighbour.
5. Granularity: adjacent parts merge, most similar first (average linkage of the decoder's own
   cross-probabilities: does a click on A select B?). `cut(g)` keeps the merges whose similarity is at
   least g, so g = 1 is the finest partition, g = 0 one part per connected piece of the mesh, and the
   part count never decreases as g grows. Moving g needs no new decoder pass.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from engine.errors import BsbError, Cancelled
from engine.iseg.fps import farthest_point_sampling
from engine.iseg.postprocess import select_vertices
from engine.parts.graph import absorb_small, mesh_edges, vertex_areas

Progress = Callable[[float, str], None] | None
Cancel = Callable[[], bool] | None


@dataclass(frozen=True)
class SegmentAllSettings:
    """Shipped settings (bench/parts.py measures them). `n_seeds` bounds the cost: one decoder pass per
    seed (~0.15 s at 50k vertices on 2 cores), plus one or two probe passes per confident region holding
    no other seed (0-5 such regions on the quick bench meshes; at most 2 x n_seeds more passes).
    `min_area` is a share of the surface area.
    `min_confidence`: on the quick bench meshes, oracle-trained decoders answer most seeds with
    confidence 0.9+ and their worst proposals (IoU < 0.5 with any part) with 0.14-0.3; decoders trained
    on shuffled labels never exceed 0.12. 0.15 scored best of 0-0.2 on all six meshes.
    `min_agreement`: the small decoders that tests/test_parts_oracle.py trains on shuffled labels of the
    bird (18: 9 label shuffles x 1 and 2 threads) reach confidence 0.15-0.24; with the agreement of a
    seedless region taken as 1, 6 of 18 split the bird into 10-37 blobs scoring mIoU 0.26-0.36
    (baseline 0.17, the test allows 0.32). Their regions' agreements: 0-0.56, above that only regions
    of ~0.6% of the surface (0.7-0.95) and one of 0.75, each then the only region kept, so one part.
    The oracle decoders' seedless real parts probe 0.90-1.0. At 0.5 one shuffled decoder still scored
    0.28; 0.6-0.75 all gave the same oracle mIoU on the six bench meshes and the test bird and left
    every shuffled decoder one part; 0.65 is the middle of that range. It drops oracle proposals that
    straddle two parts (agreement 0.25-0.51: fish 0.83 -> 0.85 and 0.92 in two trainings, airplane
    0.72 -> 0.80 in one and 0.78 -> 0.77 in another, where the dropped region covered half a part),
    and on the test's small bird decoder a neck region that leaks into the body (0.87 -> 0.79-0.80)."""

    n_seeds: int = 24
    min_confidence: float = 0.15
    nms_iou: float = 0.5
    min_area: float = 0.005
    granularity: float = 0.5
    min_agreement: float = 0.65


# Where the probe clicks go (quantiles of the region's distances from its seed), in order. The best
# counts, and a second probe is clicked only when the first is below min_agreement: one probe alone can
# land where a real small part's answer differs (the test bird's 3%-of-the-surface part probed 0.20-0.36
# at 0.65 and 0.90-0.92 at 0.85; an airplane part 0.92 at 0.65 and 0.56 at 0.85).
PROBE_QUANTILES = (0.65, 0.85)


@dataclass
class Proposals:
    """The decoder's answers to the seed clicks (the expensive part)."""

    seeds: np.ndarray  # (K,) vertex ids
    prob: np.ndarray  # (K, V) float32
    masks: np.ndarray  # (K, V) bool, thresholded connected regions
    scores: np.ndarray  # (K,) confidence x agreement
    confidence: np.ndarray
    agreement: np.ndarray


@dataclass
class PartTree:
    """The finest partition and its merge sequence: everything `cut` needs."""

    fine: np.ndarray  # (V,) int64 finest part of each vertex
    merges: list[tuple[int, int, float]]  # (a, b, similarity) in merge order; a new node id is len(fine parts)+i
    n_fine: int
    areas: np.ndarray  # (V,) vertex areas
    fine_scores: np.ndarray  # (n_fine,) score of the proposal behind each finest part
    fine_seeds: np.ndarray  # (n_fine,) its seed vertex
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Parts:
    """One vertex labelling at one granularity."""

    labels: np.ndarray  # (V,) int32 part index, 0 = largest part
    n_parts: int
    area: np.ndarray  # (P,) share of the surface
    score: np.ndarray  # (P,) area-weighted proposal score
    seed: np.ndarray  # (P,) a representative vertex (the best-scoring seed inside)
    granularity: float


def _area_iou(masks: np.ndarray, areas: np.ndarray, i: int, others: np.ndarray) -> np.ndarray:
    inter = (masks[others] & masks[i]) @ areas
    union = (masks[others] | masks[i]) @ areas
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _probe_vertices(mask: np.ndarray, seed: int, vertices: np.ndarray, faces: np.ndarray) -> list[int]:
    """Vertices of the region far from its seed (PROBE_QUANTILES of the distances), off its border if it has
    an interior."""
    inside = mask[faces]
    border = np.zeros(len(mask), bool)
    border[faces[inside.any(1) & ~inside.all(1)]] = True
    interior = np.nonzero(mask & ~border)[0]
    cand = interior if interior.size >= 2 else np.nonzero(mask)[0]
    order = cand[np.argsort(np.linalg.norm(vertices[cand] - vertices[seed], axis=1), kind="stable")]
    return [int(order[int(round(q * (len(order) - 1)))]) for q in PROBE_QUANTILES]


def propose(iseg: Any, faces: np.ndarray, vertices: np.ndarray, settings: SegmentAllSettings = SegmentAllSettings(),
            progress: Progress = None, cancel: Cancel = None) -> Proposals:
    """Seed clicks at farthest-point vertices, their iSeg regions and scores (with probe clicks in each
    confident region that holds no other seed)."""
    areas = vertex_areas(vertices, faces)
    seeds = farthest_point_sampling(vertices, settings.n_seeds, start=int(np.argmin(vertices[:, 1])))
    prob = np.empty((len(seeds), len(vertices)), np.float32)
    masks = np.empty((len(seeds), len(vertices)), bool)
    for i, v in enumerate(seeds):
        if cancel is not None and cancel():
            raise Cancelled()
        prob[i] = iseg.predict([(int(v), True)])
        masks[i] = select_vertices(prob[i], faces, [(int(v), True)])
        if progress:
            progress((i + 1) / len(seeds), f"part proposal {i + 1}/{len(seeds)}")
    total = areas.sum()
    inside = masks @ areas
    p_in = np.divide((prob * masks) @ areas, inside, out=np.zeros(len(seeds)), where=inside > 0)
    p_out = np.divide((prob * ~masks) @ areas, total - inside, out=np.zeros(len(seeds)), where=total - inside > 0)
    confidence = np.clip(p_in - p_out, 0.0, 1.0)
    agreement = np.ones(len(seeds))
    for i in range(len(seeds)):
        others = np.nonzero(masks[i, seeds])[0]
        others = others[others != i]
        if others.size:
            agreement[i] = float(_area_iou(masks, areas, i, others).mean())
        elif confidence[i] >= settings.min_confidence and masks[i].any():
            agreement[i] = _probe_agreement(iseg, faces, vertices, masks[i], areas, int(seeds[i]),
                                            settings.min_agreement, cancel)
    return Proposals(seeds, prob, masks, confidence * agreement, confidence, agreement)


def _probe_agreement(iseg: Any, faces: np.ndarray, vertices: np.ndarray, mask: np.ndarray, areas: np.ndarray,
                     seed: int, enough: float, cancel: Cancel) -> float:
    """Best area IoU between `mask` and the regions that probe clicks in it select; stops at the first
    probe reaching `enough` (most real parts need one decoder pass, blobs two)."""
    best = 0.0
    for v in _probe_vertices(mask, seed, vertices, faces):
        if cancel is not None and cancel():
            raise Cancelled()
        probe = select_vertices(iseg.predict([(v, True)]), faces, [(v, True)])
        best = max(best, float(_area_iou(np.stack([mask, probe]), areas, 0, np.array([1]))[0]))
        if best >= enough:
            break
    return best


def build_tree(proposals: Proposals, vertices: np.ndarray, faces: np.ndarray,
               settings: SegmentAllSettings = SegmentAllSettings()) -> PartTree:
    """Suppression, finest partition and the merge sequence (no decoder pass)."""
    start = time.perf_counter()
    areas = vertex_areas(vertices, faces)
    masks, prob = proposals.masks, proposals.prob
    kept: list[int] = []
    for i in np.argsort(-proposals.scores, kind="stable"):
        if (proposals.confidence[i] < settings.min_confidence or proposals.agreement[i] < settings.min_agreement
                or proposals.scores[i] <= 0 or not masks[i].any()):
            continue
        if kept and _area_iou(masks, areas, int(i), np.asarray(kept)).max() > settings.nms_iou:
            continue
        kept.append(int(i))
    if not kept:  # a decoder that answers nothing clear-cut: one part per connected piece of the mesh
        kept = [int(np.argmax(proposals.scores))]
    kept_arr = np.asarray(kept)
    size = masks[kept_arr] @ areas
    # smallest kept region holding each vertex; a vertex in none goes to the most probable proposal
    by_size = kept_arr[np.argsort(size, kind="stable")]
    holder = np.where(masks[by_size].any(0), by_size[masks[by_size].argmax(0)], kept_arr[prob[kept_arr].argmax(0)])
    edges = mesh_edges(faces)
    fine = absorb_small(holder, edges, areas, settings.min_area * areas.sum())
    n_fine = int(fine.max()) + 1
    # the proposal behind each finest part: the one most of its area came from
    source = np.zeros((n_fine, len(prob)))
    np.add.at(source, (fine, holder), areas)
    behind = source.argmax(1)
    similarity = _part_similarity(fine, n_fine, prob[behind], areas)
    merges = _merge_sequence(fine, n_fine, similarity, areas, edges)
    return PartTree(fine, merges, n_fine, areas, proposals.scores[behind], proposals.seeds[behind],
                    time.perf_counter() - start, {"kept": len(kept), "proposals": len(prob)})


def _part_similarity(fine: np.ndarray, n: int, prob: np.ndarray, areas: np.ndarray) -> np.ndarray:
    """(n, n) symmetric: mean over parts' areas of the probability that a click on one selects the other."""
    weight = np.zeros((n, len(fine)))
    weight[fine, np.arange(len(fine))] = areas
    weight /= np.maximum(weight.sum(1, keepdims=True), 1e-30)
    cross = prob @ weight.T  # [a, b]: part a's proposal, averaged over part b
    return 0.5 * (cross + cross.T)


def _merge_sequence(fine: np.ndarray, n: int, similarity: np.ndarray, areas: np.ndarray,
                    edges: np.ndarray) -> list[tuple[int, int, float]]:
    """Greedy average-linkage merges of adjacent parts, most similar first."""
    a, b = fine[edges[:, 0]], fine[edges[:, 1]]
    adjacent = np.zeros((n, n), bool)
    adjacent[a, b] = adjacent[b, a] = True
    np.fill_diagonal(adjacent, False)
    size = np.bincount(fine, weights=areas, minlength=n).astype(np.float64)
    sim = similarity.copy()
    alive = np.ones(n, bool)
    node = np.arange(n)  # the tree node each slot currently is
    merges: list[tuple[int, int, float]] = []
    while True:
        cand = np.where(adjacent & alive[:, None] & alive[None, :], sim, -np.inf)
        flat = int(np.argmax(cand))
        i, j = divmod(flat, n)
        if not np.isfinite(cand[i, j]):
            break
        merges.append((int(node[i]), int(node[j]), float(sim[i, j])))
        wi, wj = size[i], size[j]
        sim[i] = sim[:, i] = (wi * sim[i] + wj * sim[j]) / (wi + wj)
        adjacent[i] |= adjacent[j]
        adjacent[:, i] = adjacent[i]
        adjacent[i, i] = False
        size[i] += wj
        alive[j] = False
        node[i] = n + len(merges) - 1
    return merges


def cut(tree: PartTree, granularity: float) -> Parts:
    """The labelling at `granularity` in [0, 1]: the merges (in order) with similarity >= granularity."""
    if not 0.0 <= granularity <= 1.0:
        raise BsbError(f"granularity must lie in [0, 1] (0 coarse, 1 fine), got {granularity}", "bad_request")
    n = tree.n_fine
    parent = np.arange(n + len(tree.merges))
    for k, (a, b, s) in enumerate(tree.merges):
        if s < granularity:
            break  # a prefix of the sequence, so the part count is monotone in granularity
        parent[a] = parent[b] = n + k
    root = np.arange(n)
    for _ in range(len(tree.merges) + 1):
        nxt = parent[root]
        if np.array_equal(nxt, root):
            break
        root = nxt
    part_of_fine = root
    labels = part_of_fine[tree.fine]
    area = np.bincount(labels, weights=tree.areas, minlength=int(labels.max()) + 1)
    present = np.nonzero(area > 0)[0]
    order = present[np.argsort(-area[present], kind="stable")]
    remap = np.full(len(area), -1)
    remap[order] = np.arange(len(order))
    labels = remap[labels].astype(np.int32)
    fine_part = remap[part_of_fine]
    total = tree.areas.sum()
    fine_area = np.bincount(tree.fine, weights=tree.areas, minlength=n)
    p = len(order)
    score = np.bincount(fine_part, weights=fine_area * tree.fine_scores, minlength=p) / np.maximum(
        np.bincount(fine_part, weights=fine_area, minlength=p), 1e-30)
    seed = np.zeros(p, np.int64)
    best = np.full(p, -np.inf)
    for f in range(n):
        if tree.fine_scores[f] > best[fine_part[f]]:
            best[fine_part[f]] = tree.fine_scores[f]
            seed[fine_part[f]] = tree.fine_seeds[f]
    return Parts(labels, p, area[order] / total, score, seed, float(granularity))


def segment_all(prepared: Any, settings: SegmentAllSettings = SegmentAllSettings(), progress: Progress = None,
                cancel: Cancel = None) -> tuple[Parts, PartTree]:
    """Parts of a `pipeline.PreparedMesh` at `settings.granularity`, and the tree to re-cut it cheaply."""
    mesh = prepared.mesh
    start = time.perf_counter()
    proposals = propose(prepared.iseg, mesh.faces, mesh.vertices, settings, progress, cancel)
    tree = build_tree(proposals, mesh.vertices, mesh.faces, settings)
    tree.seconds = time.perf_counter() - start
    return cut(tree, settings.granularity), tree
