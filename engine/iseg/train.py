"""Training the click decoder of one mesh from its rendered views: `train_iseg`.

1. Click vertices: farthest-point samples (`click_fraction` of the vertices, capped).
2. Click sites: the views where each is visible (see clicks.py), at most `views_per_click` per vertex.
3. Targets: the view segmenter's mask for each single click, then second clicks (a positive outside
   the first mask, a negative inside it) kept through the reference's filters, then third clicks on
   the accepted two-click answers (a negative on a neighbour the answer leaves out, a positive inside
   it): the click sets a user's corrections make, which the decoder must have seen to answer them.
4. Decoder: Adam on the BCE between the rendered per-vertex probability (barycentric interpolation
   through the raster's face_id/bary) and the mask, over covered pixels only (face_id >= 0). Each step
   uses `pixels_per_sample` random covered pixels of each sample's view: an unbiased estimate of the
   full-image loss at a fraction of the cost, and the decoder only runs on those pixels' vertices.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from engine.errors import BsbError, Cancelled
from engine.iseg.clicks import (ClickSites, accept_answered, accept_confirming, accept_second_clicks,
                                cap_views_per_vertex, find_click_sites, near, second_click_partners)
from engine.iseg.decoder import ClickDecoder, DecoderConfig
from engine.iseg.fps import farthest_point_sampling
from engine.iseg.model import ISegModel

Progress = Callable[[float, str], None] | None
Cancel = Callable[[], bool] | None


@dataclass(frozen=True)
class ISegConfig:
    """Defaults are sized for ~1-2 min of decoder training on 2 CPU cores (bench/iseg.py).

    click_fraction / min_clicks / max_clicks: FPS click vertices (reference: 3%, uncapped).
    views_per_click: views kept per click vertex (reference: 100 fresh views; we reuse the distillation
      views, so a handful is all there is).
    second_positive / second_negative: partners per single-click sample (reference: <= 5) outside the
      part (grow) / inside it (cut a sub-part; many are rejected when the teacher has no finer level).
    neighbour_negative: negatives on what the click's wider mask adds to the part (the correction a
      user makes when an answer spills into a neighbour); confirm_positive: positives elsewhere on the
      same part (the correction a user makes when an answer misses part of the part).
    third_negative / third_positive: third clicks per accepted two-click sample, a negative on what the
      first click's wider mask adds to the two-click answer / a positive inside that answer. Why: a
      user's second correction makes a three-click set; a decoder trained on one and two clicks only
      ignores the third (a negative after a confirming positive left a spill in place).
    seam_band / seam_share: a corrective partner (confirming positive, neighbour negative, third click)
      lies, with probability `seam_share`, within `seam_band` x the view side of a seam between the answer
      and a neighbour, and a growing positive never does. Why: distilled features blur across seams, so
      a click there is ambiguous to the decoder, and it is where corrections land (a missed strip at the
      part's edge, a spill over it); trained so, a positive by the selection's edge extends that part
      instead of adding the neighbour, and a negative across the seam wins over it.
    min_score / max_iou: second-click filters of the reference (first score, change of the mask).
    attn_dim / width / encoder_depth / head_depth: decoder size (see decoder.py).
    steps / batch_size / pixels_per_sample / lr: Adam schedule (cosine decay to 10% of lr).
    focus_fraction: share of each sample's pixels drawn inside its first mask | answer (see _draw_pixels).
    sample_shares: share of the batches drawn from each kind (single, grow, cut, neighbour, confirm,
      third), renormalised over the kinds present: corrections are few next to single clicks, yet the only
      ones that teach a correction; sub-part cuts (only from a teacher with finer levels) are fewer still
      and keep their own share.
    segment_batch: prompts per view-segmenter call.
    """

    click_fraction: float = 0.03
    min_clicks: int = 32
    max_clicks: int = 400
    views_per_click: int = 6
    second_positive: int = 1
    second_negative: int = 3
    neighbour_negative: int = 2
    confirm_positive: int = 1
    third_negative: int = 1
    third_positive: int = 1
    seam_band: float = 1 / 16
    seam_share: float = 0.5
    min_score: float = 0.4
    max_iou: float = 0.9
    attn_dim: int = 64
    width: int = 128
    encoder_depth: int = 3
    head_depth: int = 2
    steps: int = 800
    batch_size: int = 8
    pixels_per_sample: int = 512
    lr: float = 3e-3
    focus_fraction: float = 0.5
    sample_shares: tuple[float, ...] = (0.25, 0.1, 0.2, 0.15, 0.1, 0.2)
    segment_batch: int = 64


@dataclass
class ClickSamples:
    """Training samples: clicks (S, MAX_CLICKS) with a validity flag, their view and the mask over covered
    pixels."""

    view: np.ndarray      # (S,) int64
    clicks: np.ndarray    # (S, MAX_CLICKS) int64 vertex ids (unused columns repeat the last used one)
    positive: np.ndarray  # (S, MAX_CLICKS) bool
    valid: np.ndarray     # (S, MAX_CLICKS) bool
    kind: np.ndarray      # (S,) int8: SINGLE, GROW, CUT, NEIGHBOUR, CONFIRM or THIRD
    bits: np.ndarray      # (S, nbytes) uint8: packed mask over the view's covered pixels (row-major)
    focus: np.ndarray     # (S, nbytes) uint8: packed first mask | mask, where the clicks' answer lives
    focus_count: np.ndarray  # (S,) int64: covered pixels in the focus mask
    n_single: int
    n_second: int


def _covered(face_id: np.ndarray) -> list[np.ndarray]:
    """Flat indices of covered pixels, per view."""
    return [np.flatnonzero(face_id[b] >= 0) for b in range(face_id.shape[0])]


def _pack(masks: np.ndarray, views: np.ndarray, covered: list[np.ndarray], nbytes: int) -> np.ndarray:
    out = np.zeros((len(masks), nbytes), dtype=np.uint8)
    for i, (m, v) in enumerate(zip(masks, views)):
        packed = np.packbits(m.reshape(-1)[covered[v]])
        out[i, :len(packed)] = packed
    return out


def _step(progress: Progress, cancel: Cancel, fraction: float, message: str) -> None:
    if cancel is not None and cancel():
        raise Cancelled()
    if progress is not None:
        progress(fraction, message)


COARSE_TOLERANCE = 8.0  # pixel footprints from a vertex to its click pixel when no vertex is nearer than one

# Sample kinds: what the last click teaches (the batches hold each kind in `ISegConfig.sample_shares`).
# NEIGHBOUR: a negative on what the click's wider answer adds (its first answer is that wider mask).
SINGLE, GROW, CUT, NEIGHBOUR, CONFIRM, THIRD = 0, 1, 2, 3, 4, 5
MAX_CLICKS = 3  # clicks per training sample


def _pad(columns: np.ndarray) -> np.ndarray:
    """(S, k) -> (S, MAX_CLICKS), repeating the last column."""
    return np.concatenate([columns] + [columns[:, -1:]] * (MAX_CLICKS - columns.shape[1]), axis=1)


def _first_k(n: int, k: int) -> np.ndarray:
    """(n, MAX_CLICKS) validity of samples with k clicks."""
    return np.repeat((np.arange(MAX_CLICKS) < k)[None], n, axis=0)


def collect_samples(vertices: np.ndarray, faces: np.ndarray, raster, view_segmenter, config: ISegConfig,
                    rng: np.random.Generator, progress: Progress = None, cancel: Cancel = None) -> ClickSamples:
    """Steps 1-3: click vertices, their sites and the segmenter's masks for single and second clicks."""
    n_vertices = len(vertices)
    k = int(np.clip(round(config.click_fraction * n_vertices), min(config.min_clicks, n_vertices), config.max_clicks))
    click_vertices = farthest_point_sampling(vertices, k)
    sites = find_click_sites(vertices, faces, raster, click_vertices)
    if len(sites) == 0:  # a few large faces (one triangle, a quad): every vertex is a silhouette corner
        sites = find_click_sites(vertices, faces, raster, click_vertices, tolerance=COARSE_TOLERANCE)
    sites = cap_views_per_vertex(sites, config.views_per_click, rng)
    if len(sites) == 0:
        raise BsbError("no vertex of the mesh can be clicked in any rendered view: its faces cover too little "
                       "of the views; check that the mesh has visible faces (not only edges or points)", "bad_mesh")
    face_id = np.asarray(raster.face_id)
    covered = _covered(face_id)
    nbytes = (max(len(c) for c in covered) + 7) // 8

    masks, scores, wider = _segment(view_segmenter.segment_levels, sites.view, (sites.xy,), config.segment_batch,
                                    progress, cancel, 0.0, 0.3, "single clicks")
    keep = masks.reshape(len(masks), -1).any(1)
    n_single = int(keep.sum())
    views = [sites.view[keep]]
    clicks = [_pad(sites.vertex[keep, None])]
    positive = [np.ones((n_single, MAX_CLICKS), bool)]
    valid = [_first_k(n_single, 1)]
    kind = [np.full(n_single, SINGLE, np.int8)]
    bits = [_pack(masks[keep], sites.view[keep], covered, nbytes)]
    focus = [bits[0]]

    first, partner, sign, what = _second_click_pairs(sites, masks, scores, wider, vertices, config, rng)
    n_second = 0
    if len(first):
        pts = np.stack([sites.xy[first], sites.xy[partner]], axis=1)
        labels = np.stack([np.ones(len(first), np.int64), sign.astype(np.int64)], axis=1)
        masks2, _ = _segment(view_segmenter.segment_views, sites.view[first], (pts, labels), config.segment_batch,
                             progress, cancel, 0.3, 0.37, "second clicks")
        first_masks = np.where((what == NEIGHBOUR)[:, None, None], wider[first], masks[first])
        ok = np.where(what == CONFIRM,
                      accept_confirming(first_masks, scores[first], masks2, pts, config.min_score, config.max_iou),
                      accept_second_clicks(first_masks, scores[first], masks2, sign, pts, config.min_score,
                                           config.max_iou))
        first, partner, sign, masks2, first_masks, what = (a[ok] for a in (first, partner, sign, masks2, first_masks,
                                                                            what))
        n_second = int(ok.sum())
        views.append(sites.view[first])
        clicks.append(_pad(np.stack([sites.vertex[first], sites.vertex[partner]], axis=1)))
        positive.append(_pad(np.stack([np.ones(n_second, bool), sign], axis=1)))
        valid.append(_first_k(n_second, 2))
        kind.append(what)
        bits.append(_pack(masks2, sites.view[first], covered, nbytes))
        focus.append(_pack(masks2 | first_masks, sites.view[first], covered, nbytes))
        third = _third_clicks(view_segmenter, sites, first, partner, sign, masks2, wider, vertices, config, rng,
                              progress, cancel)
        if third is not None:
            s3, partner3, sign3, masks3 = third
            trio = np.stack([sites.vertex[first[s3]], sites.vertex[partner[s3]], sites.vertex[partner3]], axis=1)
            views.append(sites.view[first[s3]])
            clicks.append(trio)
            positive.append(np.stack([np.ones(len(s3), bool), sign[s3], sign3], axis=1))
            valid.append(_first_k(len(s3), 3))
            kind.append(np.full(len(s3), THIRD, np.int8))
            bits.append(_pack(masks3, sites.view[first[s3]], covered, nbytes))
            focus.append(_pack(masks3 | wider[first[s3]], sites.view[first[s3]], covered, nbytes))
            n_second += len(s3)
    if n_single + n_second == 0:
        raise BsbError("the view segmenter returned no mask for any training click; check the renders", "bad_mesh")
    focus_all = np.concatenate(focus)
    return ClickSamples(np.concatenate(views), np.concatenate(clicks), np.concatenate(positive),
                        np.concatenate(valid), np.concatenate(kind), np.concatenate(bits), focus_all,
                        _POPCOUNT[focus_all].sum(1, dtype=np.int64), n_single, n_second)


_POPCOUNT = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).sum(1).astype(np.int64)


def _segment(call, view_ids, inputs, batch, progress, cancel, f0, f1, what):
    """`call(view_ids, *inputs)` in view-sorted batches (a SAM segmenter then switches embeddings rarely);
    its outputs, in the input order."""
    order = np.argsort(view_ids, kind="stable")
    outs = None
    for s in range(0, len(order), batch):
        _step(progress, cancel, f0 + (f1 - f0) * s / len(order), f"iSeg: segmenting {what} ({s}/{len(order)})")
        idx = order[s:s + batch]
        res = call(view_ids[idx], *(x[idx] for x in inputs))
        if outs is None:
            outs = [np.zeros((len(view_ids),) + r.shape[1:], dtype=r.dtype) for r in res]
        for o, r in zip(outs, res):
            o[idx] = r
    return outs


def _second_click_pairs(sites: ClickSites, masks, scores, wider, vertices, config: ISegConfig, rng):
    """(first site, partner site, positive?, kind) for every second-click prompt worth asking.

    Kinds: GROW, a positive outside the part; CUT, a negative inside it (a sub-part, when the teacher
    knows one); NEIGHBOUR, a negative on what the click's wider mask adds (a neighbour a too-large answer
    includes: the commonest correction); CONFIRM, a positive elsewhere on the same part.
    """
    first, partner, sign, what = [], [], [], []
    radius = _seam_radius(masks.shape[1:], config)
    for i in np.nonzero(scores >= config.min_score)[0]:
        outside = wider[i] & ~masks[i]
        for kind, positive, count, region in (
                (GROW, True, config.second_positive, ~masks[i] & ~near(masks[i], radius)),
                (CUT, False, config.second_negative, masks[i]),
                (NEIGHBOUR, False, config.neighbour_negative, _by_seam(outside, masks[i], radius, config, rng)),
                (CONFIRM, True, config.confirm_positive, _by_seam(masks[i], outside, radius, config, rng))):
            if count <= 0:
                continue
            for j in second_click_partners(sites, i, region, vertices, count, rng):
                first.append(i), partner.append(j), sign.append(positive), what.append(kind)
    return (np.asarray(first, np.int64), np.asarray(partner, np.int64), np.asarray(sign, bool),
            np.asarray(what, np.int8))


def _seam_radius(shape: tuple[int, ...], config: ISegConfig) -> int:
    return max(1, int(round(config.seam_band * max(shape))))


def _by_seam(region: np.ndarray, other: np.ndarray, radius: int, config: ISegConfig, rng) -> np.ndarray:
    """`region`, or with probability `seam_share` its pixels within `radius` of `other` (the seam band),
    when the band holds any."""
    if rng.random() >= config.seam_share:
        return region
    band = region & near(other, radius)
    return band if band.any() else region


def _third_clicks(view_segmenter, sites: ClickSites, first, partner, sign, masks2, wider, vertices,
                  config: ISegConfig, rng, progress: Progress, cancel: Cancel):
    """Third clicks on the accepted two-click samples `first`/`partner`/`sign` with answers `masks2`:
    (sample index, third site, positive?, three-click mask) for those the segmenter answers (every positive
    inside the mask, the negatives outside it), or None.

    Negatives go on what the first click's wider mask adds to the answer (a neighbour a spill reaches),
    positives inside the answer (a second confirmation); both leave the answer the user wants in place.
    """
    rows, partners, signs = [], [], []
    radius = _seam_radius(masks2.shape[1:], config)
    for s in range(len(first)):
        outside = wider[first[s]] & ~masks2[s]
        for positive, count, region in (
                (False, config.third_negative, _by_seam(outside, masks2[s], radius, config, rng)),
                (True, config.third_positive, _by_seam(masks2[s], outside, radius, config, rng))):
            if count <= 0:
                continue
            for j in second_click_partners(sites, int(first[s]), region, vertices, count + 1, rng):
                if sites.vertex[j] != sites.vertex[partner[s]] and count > 0:
                    rows.append(s), partners.append(j), signs.append(positive)
                    count -= 1
    if not rows:
        return None
    rows, partners, signs = np.asarray(rows, np.int64), np.asarray(partners, np.int64), np.asarray(signs, bool)
    pts = np.stack([sites.xy[first[rows]], sites.xy[partner[rows]], sites.xy[partners]], axis=1)
    labels = np.stack([np.ones(len(rows), bool), sign[rows], signs], axis=1)
    masks3, _ = _segment(view_segmenter.segment_views, sites.view[first[rows]], (pts, labels.astype(np.int64)),
                         config.segment_batch, progress, cancel, 0.37, 0.4, "third clicks")
    ok = accept_answered(masks3, pts, labels)
    return rows[ok], partners[ok], signs[ok], masks3[ok]


def _bit(packed: torch.Tensor, rows: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """Bits `j (b, k)` of the packed masks `packed[rows] (b, nbytes)`, as uint8 0/1."""
    return (packed[rows[:, None], j >> 3] >> (7 - (j & 7)).to(torch.uint8)) & 1


def _draw_pixels(batch: torch.Tensor, counts: torch.Tensor, focus: torch.Tensor, m: int, m_focus: int,
                 generator: torch.Generator, device: torch.device, tries: int = 32) -> torch.Tensor:
    """(b, m) covered-pixel indices: `m - m_focus` uniform, `m_focus` inside each sample's focus mask.

    Why: the pixels a second click changes (the sub-part a negative cuts out) are a few percent of a
    view, so uniform pixels carry almost no signal about them; drawing part of the batch inside the
    first mask | the answer puts that signal in every step. Focus pixels come by rejection (first of
    `tries` uniform draws that lands in the focus; a uniform draw if none does); `pixel_weights`
    undoes the bias this puts on the loss.
    """
    b = len(batch)
    j = (torch.rand((b, m - m_focus), generator=generator).to(device) * counts[:, None]).long()
    if m_focus == 0:
        return j
    cand = (torch.rand((b, m_focus * tries), generator=generator).to(device) * counts[:, None]).long()
    hit = _bit(focus, batch, cand).reshape(b, m_focus, tries)
    first = hit.argmax(-1, keepdim=True)                     # 0 (a uniform draw) when nothing hits
    picked = torch.gather(cand.reshape(b, m_focus, tries), 2, first).squeeze(-1)
    return torch.cat([j, picked], 1)


def pixel_weights(in_focus: torch.Tensor, counts: torch.Tensor, focus_counts: torch.Tensor, focus_fraction: float,
                  tries: int = 32) -> torch.Tensor:
    """(b, m) importance weights that make the mean weighted loss over `_draw_pixels`' pixels an unbiased
    estimate of the mean loss over all covered pixels of each view.

    Why: half the pixels drawn inside the focus over-represent "in the part"; unweighted, a part that
    covers 10% of a view is trained as if it covered ~50%, which adds about +2.4 to every logit and
    shifts the 0.5 threshold (BSB seeding thresholds at a fixed 0.5). A focus slot lands on a given
    focus pixel with probability (1 - (1-r)^tries) / n_focus and on a given other pixel with
    (1-r)^tries / (n - n_focus), r = n_focus / n; the weight is uniform / actual probability.
    `in_focus (b, m)` marks the drawn pixels inside the focus, `counts`/`focus_counts (b,)` the sizes.
    """
    f = float(focus_fraction)
    n = counts.double()[:, None]
    nf = focus_counts.double()[:, None].clamp(max=n)
    miss = (1.0 - nf / n) ** tries
    inside = 1.0 / ((1 - f) + f * (1 - miss) * n / nf.clamp(min=1))
    outside = 1.0 / ((1 - f) + f * miss * n / (n - nf).clamp(min=1))
    return torch.where(in_focus.bool(), inside, outside).float()


def _sample_weights(kind: np.ndarray, shares) -> np.ndarray:
    """(S,) probabilities of drawing each sample: kind k gets `shares[k]` (renormalised over the kinds
    present), split evenly among its samples."""
    counts = np.bincount(kind, minlength=len(shares))
    share = np.where(counts > 0, np.asarray(shares, np.float64), 0.0)
    share = share / share.sum() if share.sum() > 0 else (counts > 0) / (counts > 0).sum()
    return share[kind] / counts[kind]


def train_decoder(faces: np.ndarray, raster, features: torch.Tensor, samples: ClickSamples, config: ISegConfig,
                  device: torch.device, generator: torch.Generator, progress: Progress = None,
                  cancel: Cancel = None) -> ClickDecoder:
    """Step 4: fit a fresh decoder to the samples (features stay fixed)."""
    decoder = ClickDecoder(DecoderConfig(features.shape[1], config.attn_dim, config.width, config.encoder_depth, config.head_depth)).to(device)
    decoder.set_normalisation(features)
    face_id = np.asarray(raster.face_id)
    covered = _covered(face_id)
    counts = torch.tensor([len(c) for c in covered], device=device)
    offsets = torch.tensor(np.concatenate([[0], np.cumsum([len(c) for c in covered])[:-1]]), device=device)
    flat_fid = np.concatenate([face_id[b].reshape(-1)[c] for b, c in enumerate(covered)])
    flat_bary = np.concatenate([np.asarray(raster.bary[b]).reshape(-1, 3)[c] for b, c in enumerate(covered)])
    corner_ids = torch.from_numpy(np.asarray(faces, np.int64)[flat_fid]).to(device)   # (T, 3)
    corner_w = torch.from_numpy(flat_bary.astype(np.float32)).to(device)               # (T, 3)
    bits = torch.from_numpy(samples.bits).to(device)
    focus = torch.from_numpy(samples.focus).to(device)
    views = torch.from_numpy(samples.view).to(device)
    clicks = torch.from_numpy(samples.clicks).to(device)
    positive = torch.from_numpy(samples.positive).to(device)
    valid = torch.from_numpy(samples.valid).to(device)
    n, b, m = len(samples.view), min(config.batch_size, len(samples.view)), config.pixels_per_sample
    m_focus = int(round(config.focus_fraction * m))
    opt = torch.optim.Adam(decoder.parameters(), lr=config.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.1 + 0.45 * (1 + math.cos(math.pi * min(s / max(config.steps, 1), 1.0))))
    focus_counts = torch.from_numpy(samples.focus_count).to(device)
    weight = torch.from_numpy(_sample_weights(samples.kind, config.sample_shares))
    last = time.monotonic()
    for step in range(config.steps):
        if cancel is not None and time.monotonic() - last > 0.5:
            _step(None, cancel, 0, "")
            last = time.monotonic()
        batch = torch.multinomial(weight, b, replacement=True, generator=generator).to(device)
        v = views[batch]
        j = _draw_pixels(batch, counts[v], focus, m, m_focus, generator, device)        # (b, m)
        t = offsets[v, None] + j
        target = _bit(bits, batch, j).float()
        w = pixel_weights(_bit(focus, batch, j), counts[v], focus_counts[batch], m_focus / m)
        # the encoder runs once per distinct vertex of the batch (pixels share vertices)
        needed, inverse = torch.unique(torch.cat([corner_ids[t].reshape(-1), clicks[batch].reshape(-1)]),
                                       return_inverse=True)
        cache = decoder.precompute(features[needed])
        rows, click_rows = inverse[:b * 3 * m].reshape(b, 3 * m), inverse[b * 3 * m:].reshape(b, -1)
        keys, values = decoder.click_terms(cache.embed[click_rows], positive[batch])
        logits = decoder.decode(cache.query[rows], cache.first[rows], keys, values, positive[batch], valid[batch])
        prob = (torch.sigmoid(logits).reshape(b, m, 3) * corner_w[t]).sum(-1)
        loss = (F.binary_cross_entropy(prob.clamp(1e-6, 1 - 1e-6), target, reduction="none") * w).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if progress is not None and (step % 25 == 0 or step == config.steps - 1):
            progress(0.4 + 0.6 * (step + 1) / config.steps, f"iSeg: training decoder, step {step + 1}/{config.steps}, "
                                                             f"loss {loss.item():.3f}")
    return decoder.eval()


def train_iseg(vertices, faces, raster, vertex_features: torch.Tensor, view_segmenter,
               config: ISegConfig | None = None, device: torch.device | str = "cpu", progress: Progress = None,
               cancel: Cancel = None, seed: int = 0) -> ISegModel:
    """The one call the pipeline uses: click data from `raster`'s views, then a trained `ISegModel`.

    `vertices (V,3)`/`faces (F,3)` are the mesh the raster was rendered from, `vertex_features (V,C)` its
    distilled features, `view_segmenter` answers prompts on those same views (see view_segmenters.py).
    """
    config = config or ISegConfig()
    device = torch.device(device)
    vertices = np.asarray(vertices, dtype=np.float32)
    faces = np.asarray(faces, dtype=np.int64)
    if vertex_features.ndim != 2 or vertex_features.shape[0] != len(vertices):
        raise BsbError(f"vertex features of shape {tuple(vertex_features.shape)} do not match {len(vertices)} "
                       "vertices; distill the features of this mesh first", "bad_array")
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    samples = collect_samples(vertices, faces, raster, view_segmenter, config, rng, progress, cancel)
    features = vertex_features.detach().to(device, torch.float32)
    decoder = train_decoder(faces, raster, features, samples, config, device, generator, progress, cancel)
    _step(progress, cancel, 1.0, f"iSeg: trained on {samples.n_single} single and {samples.n_second} second clicks")
    return ISegModel(decoder, features)
