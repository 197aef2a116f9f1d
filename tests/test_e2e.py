"""The engine end to end under oracle teachers: a broken stage must show in the final part IoU.

Two small meshes (the procedural sample chair and PSB bearing/344) go through `Session.prepare` with the
settings SHIPPED for a CPU (`default_profile`: `fast`) and oracle DINO/SAM (engine.evaluation.oracle_models);
held-out test images are matched by BSB through `Session.match` and seeded by the trained iSeg decoder. With the shipped
configuration the final 3D selection must overlap the clicked ground-truth part (mean IoU >= 0.6); with a
feature model that answers test images with shuffled part labels it must fall below 0.3. The shuffled
model changes only what test images look like, so both runs share one preparation per mesh.
"""

from __future__ import annotations

import numpy as np
import pytest

from engine.demo import ORACLE_SPACE, oracle_chair
from engine.evaluation.data import load_labelled
from engine.evaluation.e2e import E2EProtocol, Space, bsb_part_iou, mesh_trials
import torch

from engine.pipeline import default_profile, settings_for

PROTOCOL = E2EProtocol(views=2, clicks=3, cross_pairs=())


def oracle_cache(tmp_path_factory):
    """One cache for the session: the demo's oracle test prepares the same chair with the same models."""
    return tmp_path_factory.getbasetemp() / "oracle-e2e-cache"


@pytest.fixture(scope="module")
def spaces(tmp_path_factory, shared_data):
    cache = oracle_cache(tmp_path_factory)
    chair, bearing = oracle_chair(), load_labelled("bearing/344", root=shared_data)
    out = []
    for name, lm in ((ORACLE_SPACE, chair), (f"mesh:{bearing.name}", bearing)):
        space = Space(name, lm.n_parts, PROTOCOL, settings_for(default_profile(torch.device("cpu"))), cache)
        space.prepare(lm)
        out.append((space, lm))
    return out


def _iou(spaces, shuffle: bool) -> tuple[float, list[float]]:
    records, per_mesh = [], []
    for space, lm in spaces:
        run = space.variant(shuffle=True) if shuffle else space
        recs = list(mesh_trials(run, lm, PROTOCOL, decals=False))
        per_mesh.append(bsb_part_iou(recs))
        records += recs
    return bsb_part_iou(records), per_mesh


def test_shipped_configuration_selects_the_clicked_part(spaces):
    iou, per_mesh = _iou(spaces, shuffle=False)
    assert iou >= 0.6, np.round(per_mesh, 2)


def test_shuffled_label_features_break_the_final_selection(spaces):
    iou, per_mesh = _iou(spaces, shuffle=True)
    assert iou < 0.3, np.round(per_mesh, 2)
