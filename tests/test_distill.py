"""distill: recover planted per-vertex fields from their pooled renders on a real PSB mesh.

The teacher is an oracle built by construction: a known per-vertex field (smooth random functions
of position, or one-hot human part labels) is rendered with interp and pooled to a coarse grid, so
the distilled vertex features must come back close to the planted ones. Shuffling the targets across
views (the negative control) must break this, which shows the score can fail.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.cameras import sphere_views
from engine.distill import DistillConfig, distill, teacher_targets
from engine.errors import BsbError, Cancelled, ImageError
from engine.field import FeatureField, FieldConfig
from engine.interp import interpolate, pool_images, pool_views
from engine.mesh import load_mesh
from engine.raster import rasterize

N_VIEWS, RES, GRID, STEPS = 32, 64, (16, 16), 120


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The test fields are tiny: one thread is as fast, and immune to a busy shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def scene(shared_data):
    """PSB bird 243, rendered once at low resolution, with per-vertex majority labels of one annotator."""
    mesh = load_mesh(shared_data / "psb" / "bird" / "243.off")
    raster = rasterize(mesh.vertices, mesh.faces, sphere_views(N_VIEWS, "uniform", seed=0), RES)
    face_labels = np.loadtxt(shared_data / "psb" / "bird" / "243_seg" / "243_0.seg", dtype=np.int64)
    face_labels = face_labels[mesh.face_source] if mesh.face_source is not None else face_labels
    votes = np.zeros((mesh.num_vertices, face_labels.max() + 1))
    np.add.at(votes, (mesh.faces.ravel(), np.repeat(face_labels, 3)), 1)
    seen = np.zeros(mesh.num_vertices, bool)
    seen[mesh.faces[np.unique(raster.face_id[raster.face_id >= 0])].ravel()] = True
    return mesh, raster, votes.argmax(1), torch.from_numpy(seen)


def pooled_targets(mesh, raster, planted: torch.Tensor) -> torch.Tensor:
    """The oracle teacher: render the planted field and average it onto the grid, as DINO would."""
    images = interpolate(planted, torch.from_numpy(mesh.faces).long(), raster.face_id, raster.bary)
    return pool_images(pool_views(raster.face_id, GRID), images)


def mean_cosine(features: torch.Tensor, planted: torch.Tensor, seen: torch.Tensor) -> float:
    return F.cosine_similarity(features, planted, dim=1)[seen].mean().item()


def smooth_field(vertices: np.ndarray, dim: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    frequencies = torch.randn(3, dim, generator=g) * 2.0
    phases = torch.rand(dim, generator=g) * 2 * torch.pi
    return torch.sin(torch.from_numpy(vertices) @ frequencies + phases)


@pytest.mark.parametrize("head", ["linear", "tanh"])
def test_recovers_a_smooth_planted_field(scene, head):
    mesh, raster, _, seen = scene
    planted = smooth_field(mesh.vertices)
    targets = pooled_targets(mesh, raster, planted)
    assert targets.abs().max() > 0.95  # beyond what a tanh head reaches without the output scaling
    config = dataclasses.replace(FieldConfig.small(16), head=head)
    field, features = distill(mesh.vertices, mesh.faces, raster, targets, config, DistillConfig(steps=STEPS))
    assert isinstance(field, FeatureField) and features.shape == (mesh.num_vertices, 16)
    assert seen.float().mean() > 0.95
    assert mean_cosine(features, planted, seen) >= 0.9


def test_recovers_human_part_labels_and_fails_on_shuffled_targets(scene):
    mesh, raster, labels, seen = scene
    planted = F.one_hot(torch.from_numpy(labels)).float()
    targets = pooled_targets(mesh, raster, planted)
    config = FieldConfig.small(planted.shape[1])
    _, features = distill(mesh.vertices, mesh.faces, raster, targets, config, DistillConfig(steps=STEPS))
    score = mean_cosine(features, planted, seen)
    assert score >= 0.9
    assert (features.argmax(1) == torch.from_numpy(labels))[seen].float().mean() >= 0.9
    # Negative control: each view is given another view's targets.
    shuffled = targets[torch.roll(torch.arange(N_VIEWS), 1)]
    _, wrong = distill(mesh.vertices, mesh.faces, raster, shuffled, config, DistillConfig(steps=STEPS))
    assert mean_cosine(wrong, planted, seen) < score - 0.3


def test_same_seed_same_result_and_bounded_points_per_step(scene, monkeypatch):
    mesh, raster, _, _ = scene
    targets = torch.randn(N_VIEWS, 4, *GRID)
    sizes: list[int] = []
    original = FeatureField.forward_normalized

    def counting(self, points):
        if torch.is_grad_enabled():  # training steps; the final vertex evaluation runs without grad
            sizes.append(points.shape[0])
        return original(self, points)

    monkeypatch.setattr(FeatureField, "forward_normalized", counting)
    config = DistillConfig(steps=4, views_per_step=2, points_per_view=40, seed=3)
    _, first = distill(mesh.vertices, mesh.faces, raster, targets, FieldConfig.small(4), config)
    _, second = distill(mesh.vertices, mesh.faces, raster, targets, FieldConfig.small(4), config)
    assert torch.equal(first, second)
    # One evaluation per view and step, of at most max(budget, covered cells) points: never all
    # vertices, never all covered pixels.
    assert len(sizes) == 2 * 4 * 2 and max(sizes) <= max(40, GRID[0] * GRID[1])
    assert max(sizes) < min(int((view >= 0).sum()) for view in raster.face_id)
    _, other = distill(
        mesh.vertices, mesh.faces, raster, targets, FieldConfig.small(4), DistillConfig(steps=4, seed=4)
    )
    assert not torch.equal(first, other)


def test_on_step_sees_the_field_after_every_step(scene):
    """The hook a benchmark reads a quality-vs-steps curve from: called once per step with the live field."""
    from engine.distill import train_field
    from engine.field import evaluate_vertices

    mesh, raster, _, _ = scene
    targets = torch.randn(N_VIEWS, 4, *GRID)
    seen: list[tuple[int, torch.Tensor]] = []
    field = train_field(mesh.vertices, mesh.faces, raster, targets, FieldConfig.small(4),
                        DistillConfig(steps=3, points_per_view=64),
                        on_step=lambda step, f: seen.append((step, evaluate_vertices(f, mesh.vertices[:5]))))
    assert [s for s, _ in seen] == [1, 2, 3]
    assert not torch.equal(seen[0][1], seen[2][1])  # the field changes between steps
    assert torch.equal(seen[2][1], evaluate_vertices(field, mesh.vertices[:5]))


def test_progress_is_reported_and_cancel_stops_training(scene):
    mesh, raster, _, _ = scene
    targets = torch.randn(N_VIEWS, 4, *GRID)
    reports: list[tuple[float, str]] = []
    distill(
        mesh.vertices, mesh.faces, raster, targets, FieldConfig.small(4), DistillConfig(steps=3),
        progress=lambda f, m: reports.append((f, m)),
    )
    fractions = [f for f, _ in reports]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(reports) >= 3
    calls = []

    def cancel() -> bool:
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(Cancelled):
        distill(
            mesh.vertices, mesh.faces, raster, targets, FieldConfig.small(4), DistillConfig(steps=1000), cancel=cancel
        )
    assert len(calls) == 3


def test_bad_targets_are_reported(scene):
    mesh, raster, _, _ = scene
    with pytest.raises(BsbError, match="channels"):
        distill(mesh.vertices, mesh.faces, raster, torch.zeros(N_VIEWS, 3, *GRID), FieldConfig.small(4))
    with pytest.raises(BsbError, match="one map per rendered view"):
        distill(mesh.vertices, mesh.faces, raster, torch.zeros(2, 4, *GRID), FieldConfig.small(4))
    with pytest.raises(BsbError, match="views_per_step=0"):
        DistillConfig(views_per_step=0)


def test_teacher_targets_runs_in_batches():
    images = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    batches: list[int] = []

    def teacher(batch: np.ndarray) -> torch.Tensor:  # mean colour of each 4x4 block, channels first
        batches.append(len(batch))
        t = torch.from_numpy(batch).float().permute(0, 3, 1, 2)
        return F.avg_pool2d(t, 4)

    reports = []
    out = teacher_targets(teacher, images, batch=2, progress=lambda f, m: reports.append(f))
    assert batches == [2, 2, 1] and out.shape == (5, 3, 2, 2) and reports[-1] == 1.0
    assert torch.allclose(out[4, :, 1, 0], torch.from_numpy(images[4, 4:, :4].reshape(-1, 3).mean(0)).float())
    with pytest.raises(Cancelled):
        teacher_targets(teacher, images, cancel=lambda: True)
    with pytest.raises(ImageError):
        teacher_targets(teacher, images.astype(np.float32))
