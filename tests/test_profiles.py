"""Profiles: what each one runs, which one a device gets, offline messages, and cache keys kept apart."""

from __future__ import annotations

import argparse
from types import SimpleNamespace

import pytest
import torch

from engine import pipeline
from engine.errors import ModelMissingError
from engine.models import store
from engine.models.commands import add_commands
from engine.models.profiles import PROFILES, get_profile, load_profile_models


@pytest.mark.parametrize("device,name", [("cpu", "fast"), ("mps", "fast"), ("cuda", "paper")])
def test_default_profile_by_device(device, name):
    assert pipeline.default_profile(torch.device(device)) == name


def test_auto_resolves_by_device_in_the_session_and_the_command_line():
    """The add-on's default is `auto` (no profile named): the engine picks by device, here the CPU's `fast`."""
    from bsb_addon.engine_client import EngineConfig, build_command
    from engine.cli import build_parser

    assert EngineConfig().profile == "auto"
    cmd = build_command(EngineConfig(python=__file__))
    args = build_parser().parse_args(cmd[cmd.index("serve"):])
    assert args.profile == "auto"
    assert pipeline.Session(profile=None, device="cpu", use_cache=False).profile == "fast"


def test_descriptions_are_distinct_and_state_models_views_and_cost():
    assert len({p.description for p in PROFILES.values()}) == len(PROFILES)
    for p in PROFILES.values():
        assert p.cost, p.name
        if not p.random_weights:
            assert f"on {p.sam_views} views" in p.description and f"on {p.dino_views}" in p.description, p.name


def test_profiles_state_their_models_and_views():
    fast, paper = get_profile("fast"), get_profile("paper")
    assert fast.sam_views >= 24 and fast.sam_id and fast.dino_id.endswith("-small")
    assert (paper.sam_type, paper.dino_id) == ("vit_h", "facebook/dinov2-with-registers-large")
    assert paper.sam_views == paper.dino_views == 1000 and not paper.sam_id
    for old in ("cpu", "gpu", "tiny", "balanced"):  # old names keep working
        assert get_profile(old).name == old
    for p in PROFILES.values():
        assert p.dino_id in p.summary() and str(p.sam_views) in p.summary()
        settings = pipeline.settings_for(p.name)
        assert settings.sam_views == p.sam_views  # (tiny trims its DINO views in the pipeline's extras)


def _ids(profile):
    """The model ids the loaders give a profile's models (what the cache key holds)."""
    sam = f"sam:{profile.sam_type}:{profile.sam_checkpoint}" if not profile.sam_id else f"x:{profile.sam_id}"
    return pipeline.Models(SimpleNamespace(model_id=profile.dino_id, random_weights=profile.random_weights),
                           SimpleNamespace(model_id=sam, random_weights=profile.random_weights), profile.name)


def test_a_cache_written_by_one_profile_is_never_read_by_another():
    from engine.mesh import mesh_from_arrays
    from engine.sample_meshes import mug

    v, f, _, _ = mug(0, 8)
    mesh = mesh_from_arrays(v, f)
    keys = {name: pipeline.mesh_cache_key(mesh, _ids(p), pipeline.settings_for(name)) for name, p in PROFILES.items()}
    assert len(set(keys.values())) == len(keys)


@pytest.mark.parametrize("name", ["fast", "balanced"])
def test_offline_missing_hf_weights_name_the_hub_id_and_the_command(tmp_path, monkeypatch, name):
    monkeypatch.setattr(store, "hf_cached", lambda hub_id: False)
    with pytest.raises(ModelMissingError) as err:
        load_profile_models(name, tmp_path, torch.device("cpu"), offline=True)
    msg = str(err.value)
    assert f"python -m engine models fetch {name}" in msg and get_profile(name).sam_id in msg
    assert "offline" in msg


def test_fetch_downloads_the_sam2_and_dino_folders(tmp_path, monkeypatch):
    fetched = []
    monkeypatch.setattr(store, "hf_cached", lambda hub_id: hub_id in fetched)
    monkeypatch.setattr(store, "_hf_download", lambda hub_id, profile: fetched.append(hub_id))
    fast = get_profile("fast")
    store.fetch_profile(fast, tmp_path, offline=False, progress=False)
    assert fetched == [fast.sam_id, fast.dino_id]
    store.fetch_profile(fast, tmp_path, offline=False, progress=False)  # present: nothing more
    assert len(fetched) == 2
    assert store.profile_status(fast, tmp_path) == {"dino": (True, f"Hugging Face cache: {fast.dino_id}"),
                                                     "sam": (True, f"Hugging Face cache: {fast.sam_id}")}


def test_models_list_and_doctor_show_models_views_and_cost(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command"))
    for argv in (["models", "list"], ["doctor"]):
        args = parser.parse_args([*argv, "--models", str(tmp_path)])
        assert args.func(args) == 0
        out = capsys.readouterr().out
        assert get_profile("fast").sam_id in out and "24 views" in out and "EdgeTAM ~" in out
