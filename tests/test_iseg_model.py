"""ISegModel: clicks, errors, chunking, save/load; training cancels promptly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.cameras import sphere_views
from engine.errors import BsbError
from engine.iseg import ISegConfig, ISegModel, OracleViewSegmenter, train_iseg
from engine.iseg import model as model_module
from engine.iseg.decoder import ClickDecoder, DecoderConfig
from engine.iseg.evaluate import planted_features
from engine.mesh import mesh_from_arrays
from engine.raster import rasterize
from engine.sample_meshes import chair


def random_model(n_vertices: int = 500, dim: int = 16, seed: int = 0) -> ISegModel:
    torch.manual_seed(seed)
    decoder = ClickDecoder(DecoderConfig(dim, attn_dim=8, width=16, encoder_depth=2, head_depth=2))
    return ISegModel(decoder, torch.randn(n_vertices, dim))


def test_predict_takes_any_number_of_clicks_and_vertex_zero_can_be_negative():
    model = random_model()
    for clicks in ([(3, True)], [(3, True), (0, False)], [(1, True), (2, True), (7, False), (9, False), (11, True)]):
        p = model.predict(clicks)
        assert p.shape == (500,) and p.dtype == np.float32 and np.all((p >= 0) & (p <= 1))
    # the clicks matter: a different click set gives a different answer
    assert not np.allclose(model.predict([(3, True)]), model.predict([(3, True), (0, False)]))
    # order of clicks does not matter (a softmax over the positives, a gate per negative)
    assert np.allclose(model.predict([(1, True), (7, False)]), model.predict([(7, False), (1, True)]), atol=1e-6)


def test_chunked_inference_matches_one_pass(monkeypatch):
    model = random_model()
    whole = model.predict([(5, True), (8, False)])
    monkeypatch.setattr(model_module, "CHUNK", 64)
    chunked = random_model().predict([(5, True), (8, False)])
    assert np.allclose(whole, chunked, atol=1e-6)


@pytest.mark.parametrize("clicks, words", [([], "no clicks"), ([(500, True)], "out of range"),
                                           ([(-1, True)], "out of range"), ([(4, False)], "negative")])
def test_bad_clicks_are_clear_errors(clicks, words):
    with pytest.raises(BsbError, match=words):
        random_model().predict(clicks)


def test_save_load_round_trip(tmp_path):
    model = random_model()
    model.save(tmp_path / "iseg.pt")
    again = ISegModel.load(tmp_path / "iseg.pt")
    clicks = [(10, True), (20, False)]
    assert np.array_equal(model.predict(clicks), again.predict(clicks))
    with pytest.raises(BsbError, match="does not exist"):
        ISegModel.load(tmp_path / "missing.pt")


def test_a_model_file_of_an_older_format_is_refused_with_prepare_again(tmp_path):
    random_model().save(tmp_path / "iseg.pt")
    blob = torch.load(tmp_path / "iseg.pt", weights_only=True)
    torch.save({**blob, "format": "bsb-iseg-1"}, tmp_path / "old.pt")
    with pytest.raises(BsbError, match="another engine version .*bsb-iseg-1.*prepare the mesh again"):
        ISegModel.load(tmp_path / "old.pt")


def test_cancel_stops_training():
    v, f, vlabels, _ = chair(subdivisions=0)
    mesh = mesh_from_arrays(v, f)
    raster = rasterize(mesh.vertices, mesh.faces, sphere_views(4), 48)
    feats = torch.from_numpy(planted_features(mesh.vertices, 8))
    from engine.errors import Cancelled
    with pytest.raises(Cancelled):
        train_iseg(mesh.vertices, mesh.faces, raster, feats, OracleViewSegmenter(vlabels[mesh.faces[:, 0]], raster),
                   ISegConfig(steps=10_000), cancel=lambda: True)
