"""field: presets, Fourier encoding, output statistics, save/load, chunked vertex evaluation."""

from __future__ import annotations

import pytest
import torch

from engine.errors import BsbError, Cancelled, NotFoundError
from engine.field import FeatureField, FieldConfig, evaluate_vertices


def count_linear(field: FeatureField) -> int:
    return sum(isinstance(m, torch.nn.Linear) for m in field.modules())


def test_paper_presets_have_the_paper_shapes():
    dino = FieldConfig.paper_dino()
    assert (dino.width, dino.out_dim, 3 + 2 * dino.encoding_dim, dino.head) == (1024, 1024, 2051, "tanh")
    sam = FeatureField(FieldConfig.paper_sam())
    assert count_linear(sam) == 6
    # iSeg's SAM encoder: 463,616 weights in Linear layers + LayerNorms (memo iseg_bsb.md §2.4)
    assert sum(p.numel() for p in sam.parameters()) == 463_616
    assert sam(torch.zeros(5, 3)).shape == (5, 256)


def test_encoding_is_x_sin_cos_of_the_fourier_projection():
    field = FeatureField(FieldConfig.small(4), seed=3)
    x = torch.randn(7, 3)
    enc = field.encode(x)
    proj = 2 * torch.pi * (x @ field.fourier)
    assert enc.shape == (7, 3 + 2 * 64)
    assert torch.allclose(enc, torch.cat([x, proj.sin(), proj.cos()], 1))
    assert abs(field.fourier.std().item() - 3.0) < 0.5  # sigma of the small preset


def test_fourier_matrix_and_statistics_survive_save_and_load(tmp_path):
    field = FeatureField(FieldConfig.small(6), seed=11)
    field.fit_output_stats(torch.randn(100, 6) * 4 + 2)
    path = tmp_path / "field.pt"
    field.save(path)
    other = FeatureField(FieldConfig.small(6), seed=12)  # a different B by construction
    assert not torch.equal(other.fourier, field.fourier)
    loaded = FeatureField.load(path)
    assert loaded.config == field.config
    assert torch.equal(loaded.fourier, field.fourier)
    x = torch.randn(20, 3)
    assert torch.allclose(loaded(x), field(x))


@pytest.mark.parametrize("head", ["tanh", "linear"])
def test_output_statistics_make_targets_reachable(head):
    config = FieldConfig(width=16, depth=1, out_dim=3, encoding_dim=4, head=head)
    field = FeatureField(config)
    targets = torch.randn(500, 3) * torch.tensor([0.1, 3.0, 30.0]) + 5
    field.fit_output_stats(targets)
    normalized = field.normalize(targets)
    if head == "tanh":
        assert normalized.abs().max() <= 0.9 + 1e-5  # strictly inside tanh's range
    else:
        assert torch.allclose(normalized.std(0, unbiased=False), torch.ones(3), atol=1e-4)
    assert torch.allclose(normalized.mean(0), torch.zeros(3), atol=1e-4)
    x = torch.randn(4, 3)
    assert torch.allclose(field(x), field.forward_normalized(x) * field.out_scale + field.out_mean)


def test_evaluate_vertices_chunks_agree_with_one_pass():
    field = FeatureField(FieldConfig.small(5))
    vertices = torch.rand(1000, 3) * 2 - 1
    full = evaluate_vertices(field, vertices, chunk=4096)
    chunked = evaluate_vertices(field, vertices.numpy(), chunk=97)
    assert full.shape == (1000, 5) and not full.requires_grad
    assert torch.allclose(full, chunked, atol=1e-5)
    assert field.training  # the caller's mode is restored


def test_evaluate_vertices_can_be_cancelled():
    with pytest.raises(Cancelled):
        evaluate_vertices(FeatureField(FieldConfig.small(2)), torch.zeros(10, 3), chunk=4, cancel=lambda: True)


def test_bad_configs_and_files_are_reported(tmp_path):
    with pytest.raises(BsbError, match="head"):
        FieldConfig(head="relu")
    with pytest.raises(NotFoundError):
        FeatureField.load(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a field")
    with pytest.raises(BsbError, match="not a readable"):
        FeatureField.load(tmp_path / "junk.pt")
