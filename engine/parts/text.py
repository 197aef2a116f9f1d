"""Text -> part: a phrase finds boxes in rendered views, SAM turns them into masks, the views vote on the
vertices, and the best-supported region seeds iSeg. Also text -> image region -> BSB box query.

Why votes over views: an open-vocabulary detector on renders of an untextured mesh misses and
hallucinates; one view's answer is weak evidence, agreement across views is strong. A vertex's vote is
the share of the views that see it in which it lies inside a mask. The region answer then comes from
the mesh's own iSeg decoder (one positive click at the region's deepest well-voted vertex, optionally a
negative click where the decoder's answer spreads over vertices no view voted for), so the part
follows the decoder's boundaries rather than the views' coarse boxes. No region with enough views
behind it is an honest "not found".

Interfaces (duck-typed, so oracles can stand in):
- detector: `detect(images (B,H,W,3) uint8, phrase) -> [(boxes (n,4) x0 y0 x1 y1, scores (n,))] per image`
- box segmenter: `segment_boxes(images, view, boxes (n,4)) -> (n,H,W) bool`
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from engine.errors import Cancelled
from engine.iseg.postprocess import select_vertices
from engine.parts.graph import label_pieces, mesh_edges, vertex_areas

UNVOTED = 0.1  # a vertex with a smaller vote is surface that (almost) no view put inside a mask

Progress = Callable[[float, str], None] | None
Cancel = Callable[[], bool] | None


@dataclass(frozen=True)
class TextSettings:
    """Shipped settings. `views`/`size`: renders the detector sees (uniform on the sphere); `vote`: least
    vote of a region's vertices; a region needs `min_views` views whose masks cover most of it, and at
    least `min_share` of the views that see it (scattered false boxes rarely agree on one place); besides
    the best-supported region, every other supported one with at least `min_piece` of its vote-weighted
    area joins the answer (a name often has several pieces: two wings). The decoder answers pieces of
    the region (`max_parts` clicks at most) until at most `uncovered` of its area is left; an iSeg answer
    whose area-IoU with its piece is under `min_agreement`, or with less than `min_precision` of its
    area on voted surface (vote >= UNVOTED), is replaced by that piece (bench/parts.py measures both)."""

    views: int = 8
    size: int = 384
    vote: float = 0.5
    min_views: int = 2
    min_share: float = 0.5
    min_agreement: float = 0.3
    min_precision: float = 0.6
    min_piece: float = 0.25
    max_parts: int = 4
    uncovered: float = 0.25


@dataclass
class TextPart:
    found: bool
    reason: str
    mask: np.ndarray | None  # (V,) bool, the answer
    weights: np.ndarray | None  # (V,) iSeg probability
    votes: np.ndarray  # (V,) share of the views seeing a vertex that put it in a mask
    region: np.ndarray | None  # (V,) bool, the best-supported voted region (before iSeg)
    clicks: list[tuple[int, bool]] = field(default_factory=list)
    support: int = 0  # views backing the region
    boxes: int = 0  # boxes the detector returned over all views
    seconds: float = 0.0
    source: str = ""  # "iseg": the decoder's parts; "votes": the voted region (decoder disagreed); "iseg+votes": both


class SamBoxSegmenter:
    """The profile's SAM: a box prompt -> one mask (SAM's single output is meant for unambiguous prompts)."""

    def __init__(self, sam: Any) -> None:
        self.sam = sam

    def segment_boxes(self, images: np.ndarray, view: int, boxes: np.ndarray) -> np.ndarray:
        self.sam.set_image(images[view])
        return self.sam.predict(boxes=np.asarray(boxes, np.float32), multimask=False).masks[:, 0]


def view_votes(face_id: np.ndarray, faces: np.ndarray, n_vertices: int, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(votes (V,), seen (V,)) from per-view masks (B, H, W) bool: a vertex's share of its pixels (over
    its faces) inside the mask, averaged over the views that see it; `seen` counts those views."""
    faces = np.asarray(faces, np.int64)
    total = np.zeros(n_vertices)
    seen = np.zeros(n_vertices)
    for b in range(len(face_id)):
        fid = face_id[b].reshape(-1)
        covered = fid >= 0
        pix = np.bincount(fid[covered], minlength=len(faces)).astype(np.float64)
        hit = np.bincount(fid[covered], weights=masks[b].reshape(-1)[covered], minlength=len(faces))
        vpix = np.zeros(n_vertices)
        vhit = np.zeros(n_vertices)
        for k in range(3):
            np.add.at(vpix, faces[:, k], pix)
            np.add.at(vhit, faces[:, k], hit)
        visible = vpix > 0
        total[visible] += vhit[visible] / vpix[visible]
        seen += visible
    return np.divide(total, seen, out=np.zeros(n_vertices), where=seen > 0), seen


def _depth(region: np.ndarray, edges: np.ndarray, max_layers: int = 64) -> np.ndarray:
    """(V,) edge-hops from each region vertex to the region's border (0 outside), capped."""
    depth = np.zeros(len(region), np.int64)
    inside = region.copy()
    for _ in range(max_layers):
        if not inside.any():
            break
        depth[inside] += 1
        border = np.zeros(len(region), bool)
        a, b = edges[:, 0], edges[:, 1]
        cut = inside[a] != inside[b]
        border[a[cut]] = True
        border[b[cut]] = True
        inside &= ~border
    return depth


def _iou(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> float:
    union = (a | b) @ w
    return float((a & b) @ w / union) if union > 0 else 0.0


def find_part(prepared: Any, images: np.ndarray, face_id: np.ndarray, detector: Any, segmenter: Any, phrase: str,
              settings: TextSettings = TextSettings(), progress: Progress = None, cancel: Cancel = None) -> TextPart:
    """The mesh part named `phrase`, from renders `images` whose raster is `face_id (B, H, W)`."""
    start = time.perf_counter()
    mesh = prepared.mesh
    n = mesh.num_vertices
    masks = np.zeros(face_id.shape, bool)
    n_boxes = 0
    detections = detector.detect(images, phrase)
    for b, (boxes, _scores) in enumerate(detections):
        if cancel is not None and cancel():
            raise Cancelled()
        if len(boxes):
            n_boxes += len(boxes)
            masks[b] = np.any(segmenter.segment_boxes(images, b, boxes), axis=0)
        if progress:
            progress(0.8 * (b + 1) / len(detections), f"view {b + 1}/{len(detections)}: {len(boxes)} boxes")
    votes, seen = view_votes(face_id, mesh.faces, n, masks)

    def not_found(reason: str) -> TextPart:
        return TextPart(False, reason, None, None, votes, None, boxes=n_boxes, seconds=time.perf_counter() - start)

    if n_boxes == 0:
        return not_found(f"no view shows a '{phrase}' (the detector found no box)")
    edges = mesh_edges(mesh.faces)
    areas = vertex_areas(mesh.vertices, mesh.faces)
    voted = votes >= settings.vote
    if not voted.any():
        return not_found(f"the views disagree about '{phrase}': no surface is inside their masks in most views")
    pieces = label_pieces(voted.astype(np.int64), edges)
    pieces = np.where(voted, pieces, -1)
    ids = np.unique(pieces[voted])
    weight = np.array([(areas * votes)[pieces == i].sum() for i in ids])
    order = np.argsort(-weight, kind="stable")
    region = np.zeros(n, bool)
    support = 0
    for rank, i in enumerate(order):
        if weight[i] < settings.min_piece * weight[order[0]]:
            break
        piece = pieces == ids[i]
        backing, sees = _support(face_id, masks, mesh.faces, areas, piece)
        if backing < max(settings.min_views, settings.min_share * sees):
            if rank == 0:
                return not_found(f"only {backing} of the {sees} views that see the best '{phrase}' region support it")
            continue
        region |= piece
        support = max(support, backing)
    if progress:
        progress(0.85, "seeding iSeg")
    mask, weights, clicks, source = _cover(prepared.iseg, mesh.faces, edges, areas, votes, seen, region, settings)
    if progress:
        progress(1.0, "done")
    return TextPart(True, "", mask, weights, votes, region, clicks, support, n_boxes, time.perf_counter() - start,
                    source)


def _support(face_id: np.ndarray, masks: np.ndarray, faces: np.ndarray, areas: np.ndarray,
             piece: np.ndarray) -> tuple[int, int]:
    """(views backing `piece`, views seeing it): a view sees it when a quarter of its area is visible, and
    backs it when most of that visible area lies inside the view's mask."""
    backing = sees = 0
    total = areas[piece].sum()
    for b in range(len(face_id)):
        v_b, s_b = view_votes(face_id[b:b + 1], faces, len(areas), masks[b:b + 1])
        vis = piece & (s_b > 0)
        if areas[vis].sum() >= 0.25 * total:
            sees += 1
            backing += int((v_b[vis] * areas[vis]).sum() >= 0.5 * areas[vis].sum())
    return backing, sees


def _answer(iseg: Any, faces: np.ndarray, edges: np.ndarray, areas: np.ndarray, votes: np.ndarray, seen: np.ndarray,
            target: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[tuple[int, bool]]]:
    """The decoder's part for one connected voted piece `target`: a click at its deepest well-voted vertex,
    then a corrective negative where the answer covers surface no view voted for, if that fits better."""
    seed = int(np.argmax(np.where(target, _depth(target, edges) * votes, -1.0)))
    clicks = [(seed, True)]
    weights = np.asarray(iseg.predict(clicks), np.float32)
    mask = select_vertices(weights, faces, clicks)
    unvoted = mask & (votes < UNVOTED) & (seen >= 2)
    if unvoted.any():
        neg = int(np.argmax(np.where(unvoted, _depth(unvoted, edges), -1)))
        clicks2 = clicks + [(neg, False)]
        weights2 = np.asarray(iseg.predict(clicks2), np.float32)
        mask2 = select_vertices(weights2, faces, clicks2)
        if _iou(mask2, target, areas) > _iou(mask, target, areas):
            clicks, weights, mask = clicks2, weights2, mask2
    return mask, weights, clicks


def _cover(iseg: Any, faces: np.ndarray, edges: np.ndarray, areas: np.ndarray, votes: np.ndarray, seen: np.ndarray,
           region: np.ndarray, settings: TextSettings) -> tuple[np.ndarray, np.ndarray, list[tuple[int, bool]], str]:
    """Decoder parts that together cover the voted `region` (the union of the supported pieces).

    Why several: a name often covers several parts of the decoder (both wings, both stabilizers; the
    voted surface of two wings joins across the body), and one click selects one of them. Each round
    answers the largest uncovered connected piece of the region, until at most `settings.uncovered` of
    it is left or `settings.max_parts` rounds ran. A decoder answer whose area-IoU with its piece is
    under `min_agreement`, or with less than `min_precision` of its area on surface some views voted for
    (the decoder's part is bigger than the named one: a rudder click that takes the tail), is replaced
    by the piece.
    """
    mask = np.zeros(len(region), bool)
    weights = np.zeros(len(region), np.float32)
    clicks: list[tuple[int, bool]] = []
    sources = set()
    total = areas[region].sum()
    for _ in range(settings.max_parts):
        left = region & ~mask
        if areas[left].sum() <= settings.uncovered * total:
            break
        pieces = np.where(left, label_pieces(left.astype(np.int64), edges), -1)
        ids = np.unique(pieces[left])
        size = np.array([areas[pieces == i].sum() for i in ids])
        target = pieces == ids[int(np.argmax(size))]
        answer, w, c = _answer(iseg, faces, edges, areas, votes, seen, target)
        source = "iseg"
        precision = (answer & (votes >= UNVOTED)) @ areas / max(answer @ areas, 1e-30)
        if _iou(answer, target, areas) < settings.min_agreement or precision < settings.min_precision:
            answer, source = target, "votes"
        mask |= answer
        weights = np.maximum(weights, w)
        clicks += c
        sources.add(source)
    return mask, weights, clicks, "+".join(sorted(sources))


def render_for_text(mesh: Any, settings: TextSettings = TextSettings()):
    """Uniform views of the mesh, shaded as the teachers see them: (images (B,H,W,3) uint8, raster)."""
    from engine.pipeline import render_views

    _, raster, images = render_views(mesh, settings.views, settings.size, "uniform")
    return images, raster


def find_part_in_session(session: Any, prepared: Any, phrase: str, detector: Any = None,
                         settings: TextSettings = TextSettings(), progress: Progress = None,
                         cancel: Cancel = None) -> TextPart:
    """`find_part` with the session's SAM and the profile's detector (loaded on first use)."""
    detector = detector or load_session_detector(session)
    images, raster = render_for_text(prepared.mesh, settings)
    return find_part(prepared, images, raster.face_id, detector, SamBoxSegmenter(session.models.sam), phrase,
                     settings, progress, cancel)


def load_session_detector(session: Any):
    from engine.models.detector import load_profile_detector

    return load_profile_detector(session.profile, session.models_dir, session.device, session.offline)


@dataclass
class ImageText:
    found: bool
    reason: str
    box: list[float] | None  # original-image pixels
    score: float
    match: Any  # the BSB MatchResult of the box query (None when no box)


def find_in_image(session: Any, prepared: Any, image: Any, phrase: str, detector: Any = None,
                  progress: Progress = None, cancel: Cancel = None) -> ImageText:
    """The phrase's best box in the reference image (a `pipeline.PreparedImage`), sent to BSB as a box query."""
    detector = detector or load_session_detector(session)
    boxes, scores = detector.detect(image.image.rgb[None], phrase)[0]
    if len(boxes) == 0:
        return ImageText(False, f"no '{phrase}' found in the reference image", None, 0.0, None)
    best = int(np.argmax(scores))
    box = (np.asarray(boxes[best], np.float64) / image.image.scale).tolist()  # working -> original pixels
    match = session.match(prepared, image, [], [], box=box, progress=progress, cancel=cancel)
    reason = "" if match.found else (match.reason or "BSB found no corresponding part for the box")
    return ImageText(bool(match.found), reason, box, float(scores[best]), match)
