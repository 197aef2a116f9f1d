"""Pure pieces of the add-on (no bpy): names, sampling, modifier maps, masks, job folders, engine setup."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bsb_addon import engine_client as ec
from bsb_addon import env_setup, meshmath, paths, pixels


def test_fit_name_cuts_on_a_character_boundary_within_blender_limits():
    name = "Dossier " + "é" * 62  # 70 characters, 132 bytes
    fitted = meshmath.fit_name(name)
    assert len(fitted.encode()) <= 59 and name.startswith(fitted) and fitted.endswith("é")
    assert len(("bsb_" + fitted).encode()) <= 63
    assert meshmath.fit_name("  Seat ") == "Seat"


def test_next_free_name_never_reuses_a_taken_name():
    assert meshmath.next_free_name("Part", set()) == "Part 1"
    assert meshmath.next_free_name("Part", {"Part 1", "Part 2"}) == "Part 3"


def test_spread_sample_keeps_small_selections_and_spreads_big_ones():
    rng = np.random.default_rng(0)
    pos = rng.uniform(0, 1, (20_000, 3))
    small = np.array([5, 9, 11])
    assert np.array_equal(meshmath.spread_sample(small, pos, 256), small)
    chosen = meshmath.spread_sample(np.arange(20_000), pos, 256)
    assert len(chosen) == 256 and len(set(chosen.tolist())) == 256
    # Spread: every selected point lies near some chosen one (far better than the first 256 indices).
    d = np.min(np.linalg.norm(pos[::23, None] - pos[chosen][None], axis=2), axis=1)
    d_first = np.min(np.linalg.norm(pos[::23, None] - pos[:256][None], axis=2), axis=1)
    assert d.max() < d_first.max()


def test_modifier_copies_map_results_back_to_base_vertices():
    codes = np.array([1.1, 1.2, 1.3], np.float32)
    # Evaluated mesh: copies of 0,1,2, a mirrored copy of 1, and an interpolated vertex (codes blended).
    index = np.array([0, 1, 2, 1, 1], np.int32)
    code_e = np.array([1.1, 1.2, 1.3, 1.2, 1.25], np.float32)
    copies = meshmath.copies_of_base(code_e, index, codes)
    assert copies.tolist() == [0, 1, 2, 1, -1]
    mask_e = np.array([False, False, True, True, True])
    assert meshmath.to_base(mask_e, copies, 3).tolist() == [False, True, True]  # either mirrored side counts
    w = meshmath.to_base(np.array([0.1, 0.2, 0.9, 0.6, 1.0], np.float32), copies, 3)
    assert w.tolist() == pytest.approx([0.1, 0.6, 0.9])
    assert meshmath.first_copy(copies, 3).tolist() == [0, 1, 2]


def test_part_mask_round_trips_through_text():
    mask = np.random.default_rng(1).uniform(size=(37, 53)) > 0.5
    text = pixels.pack_mask(mask)
    assert np.array_equal(pixels.unpack_mask(text, 53, 37), mask)
    assert pixels.unpack_mask(text, 10, 10) is None and pixels.unpack_mask("", 53, 37) is None


def test_models_folder_is_the_cli_one_unless_chosen(monkeypatch, tmp_path):
    monkeypatch.delenv("BSB_MODELS_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    if sys.platform.startswith("linux"):
        assert paths.models_dir() == tmp_path / "cache" / "bsb" / "models"
    monkeypatch.setenv("BSB_MODELS_DIR", str(tmp_path / "m"))
    assert paths.models_dir() == tmp_path / "m" and paths.models_dir(str(tmp_path / "x")) == tmp_path / "x"
    assert "extensions" not in str(paths.venv_dir())


def test_job_pruning_keeps_other_live_processes_folders(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live_other = os.getppid()
    folders = {
        "dead": tmp_path / f"20260101000000-000000001-{dead.pid}-aaaaaaaa",
        "other": tmp_path / f"20260101000000-000000002-{live_other}-bbbbbbbb",
    }
    own = [tmp_path / f"20260101000001-{i:09d}-{os.getpid()}-cccccccc" for i in range(25)]
    for path in [*folders.values(), *own]:
        path.mkdir()
    for _ in range(3):  # other processes' folders survive any number of new requests
        paths.new_job_dir(tmp_path)
    left = {p.name for p in tmp_path.iterdir()}
    assert folders["other"].name in left and folders["dead"].name not in left
    assert sum(str(os.getpid()) in n for n in left) == paths.KEEP_OWN_JOBS + 1  # newest 20 + the new one


def _fake_base_python(tmp_path: Path, fail_at: str) -> Path:
    """A 'base Python' that makes a venv whose python fails at one pip step."""
    script = tmp_path / "base.sh"
    script.write_text(f"""#!/bin/sh
# called as: base.sh -m venv DIR
mkdir -p "$3/bin"
cat > "$3/bin/python" <<'EOS'
#!/bin/sh
case "$*" in *{fail_at}*) echo "no network"; exit 9;; esac
exit 0
EOS
chmod +x "$3/bin/python"
""")
    script.chmod(0o755)
    return script


def test_setup_steps_follow_the_variant_index_and_local_wheels(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "pyproject.toml").write_text('dependencies = ["torch==2.14.1", "torchvision==0.29.1", "numpy"]\n')
    steps = env_setup.setup_commands("py", tmp_path / "v", src, "CPU")
    torch = next(cmd for label, cmd in steps if label.startswith("installing torch"))
    assert "torch==2.14.1" in torch and env_setup.TORCH_INDEX["CPU"] in torch
    local = env_setup.setup_commands("py", tmp_path / "v", src, "CUDA", wheels_dir="/w")
    assert all("--no-index" in cmd for label, cmd in local[1:]) and not any("updating pip" == l for l, _ in local)
    mirror = env_setup.setup_commands("py", tmp_path / "v", src, "MPS", index_url="https://mirror/simple")
    assert all("https://mirror/simple" in cmd for _, cmd in mirror[1:])
    assert env_setup.default_variant("darwin") == "MPS"
    assert env_setup.default_variant("linux", has_nvidia=True) == "CUDA"
    assert env_setup.default_variant("linux", has_nvidia=False) == "CPU"


def test_failed_setup_removes_the_half_made_venv(tmp_path):
    src = tmp_path / "src"
    (src / "engine").mkdir(parents=True)
    (src / "pyproject.toml").write_text('dependencies = ["torch==2.14.1"]\n')
    venv = tmp_path / "venv"
    with pytest.raises(ec.EngineError, match="installing torch .* removed"):
        env_setup.run_setup(str(_fake_base_python(tmp_path, "torch")), venv, src, tmp_path / "log.txt")
    assert not venv.exists() and "no network" in (tmp_path / "log.txt").read_text()
    t0 = time.monotonic()
    assert env_setup.run_setup(str(_fake_base_python(tmp_path, "nothing-fails")), venv, src,
                               tmp_path / "log.txt").endswith("bin/python")
    assert venv.is_dir() and time.monotonic() - t0 < 20


def test_models_fetch_json_gives_a_plan_then_done(tmp_path, capsys):
    """The machine-readable fetch the Models section runs (tiny: built locally, nothing to download)."""
    import argparse

    from engine.models.commands import add_commands

    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["models", "fetch", "tiny", "--json", "--models", str(tmp_path)])
    assert args.func(args) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [e["event"] for e in events] == ["plan", "done"] and events[0]["files"] == []
