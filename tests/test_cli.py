"""The command line (engine/cli.py) and the demo: exit codes, one-line errors, output files, cache commands.

Runs `main()` in-process on the tiny profile (random weights) with temporary models/cache folders.
"""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from engine.cli import main
from engine.sample_meshes import mug


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    v, f, _, _ = mug(0, 16)
    trimesh.Trimesh(v, f, process=False).export(root / "mug.ply")
    from engine.mesh import mesh_from_arrays
    from engine.pipeline import render_views
    from engine.preview import save_png

    _, _, renders = render_views(mesh_from_arrays(v, f), 1, 80, "uniform")
    save_png(root / "ref.png", renders[0])
    return root


def common(d):
    return ["--profile", "tiny", "--device", "cpu", "--models", str(d / "models"), "--cache", str(d / "cache")]


def one_line_error(capsys, *words):
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in "\n".join(err)
    for word in words:
        assert word in errors[0]


def test_usage_errors_exit_2(capsys):
    assert main([]) == 2
    assert main(["match", "mesh.obj"]) == 2
    assert main(["segment", "m.obj", "--click", "x", "--out", "o.npz"]) == 2
    assert main(["--version"]) == 0


def test_models_commands_are_wired(tmp_path, capsys):
    assert main(["models", "list", "--models", str(tmp_path)]) == 0
    assert "tiny" in capsys.readouterr().out


def test_user_errors_exit_1_with_one_line(dirs, capsys):
    assert main(["prepare", str(dirs / "missing.obj"), *common(dirs)]) == 1
    one_line_error(capsys, "missing.obj", "does not exist")
    assert main(["match", str(dirs / "mug.ply"), str(dirs / "ref.png"), "--out", str(dirs / "o.npz"), *common(dirs)]) == 1
    one_line_error(capsys, "--pixel")
    assert main(["segment", str(dirs / "mug.ply"), "--neg", "3", "--out", str(dirs / "o.npz"), *common(dirs)]) == 1
    one_line_error(capsys, "positive click")


def test_match_segment_and_cache_commands(dirs, capsys):
    out = dirs / "out"
    code = main(["match", str(dirs / "mug.ply"), str(dirs / "ref.png"), "--up", "z", "--pixel", "40.5", "40.5",
                 "--negative", "5", "5", "--out", str(out / "m.npz"), "--ply", str(out / "m.ply"),
                 "--preview", str(out / "m.png"), *common(dirs)])
    assert code in (0, 3)  # random weights: either answer is plumbing-correct
    data = np.load(out / "m.npz")
    n_vertices = len(trimesh.load(dirs / "mug.ply", process=False).vertices)
    assert data["weights"].shape == (n_vertices,) and data["part_mask"].shape == (80, 80)
    assert bool(data["random_weights"]) and bool(data["found"]) == (code == 0)
    assert (out / "m.ply").stat().st_size > 0 and (out / "m.png").stat().st_size > 1000
    assert "RANDOM weights" in capsys.readouterr().err

    # an impossible minimum confidence (IoU <= 1) always means "no corresponding part": exit 3
    code = main(["match", str(dirs / "mug.ply"), str(dirs / "ref.png"), "--up", "z", "--pixel", "40.5", "40.5",
                 "--min-confidence", "1.5", "--out", str(out / "none.npz"), *common(dirs)])
    assert code == 3 and not bool(np.load(out / "none.npz")["found"])
    assert "no corresponding part" in capsys.readouterr().err

    assert main(["segment", str(dirs / "mug.ply"), "--up", "z", "--click", "0", "--click", "-7", "--out",
                 str(out / "s.npz"), "--ply", str(out / "s.ply"), "--preview", str(out / "s.png"), *common(dirs)]) == 0
    seg = np.load(out / "s.npz")
    assert seg["mask"].shape == (n_vertices,) and seg["clicks"].tolist() == [[0, 1], [7, 0]]

    capsys.readouterr()
    assert main(["cache", "list", "--cache", str(dirs / "cache")]) == 0
    listing = capsys.readouterr().out
    assert "mesh" in listing and "image" in listing and "2 entries" in listing
    assert main(["cache", "clear", "--cache", str(dirs / "cache"), "--kind", "image"]) == 0
    assert "removed 1 entries" in capsys.readouterr().out
    assert main(["cache", "clear", "--cache", str(dirs / "cache")]) == 0
    assert main(["cache", "list", "--cache", str(dirs / "cache")]) == 0
    assert "0 entries" in capsys.readouterr().out


def test_demo_without_weights_stops_clearly_after_the_render_preview(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("BSB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = main(["demo", "--out", str(tmp_path / "demo"), "--profile", "cpu", "--device", "cpu",
                 "--models", str(tmp_path / "empty"), "--cache", str(tmp_path / "cache")])
    assert code == 1
    assert (tmp_path / "demo" / "renders.png").stat().st_size > 1000
    err = capsys.readouterr().err
    assert "error:" in err and "--profile tiny" in err and "Traceback" not in err


def test_demo_tiny_runs_end_to_end_and_says_random_weights(tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--profile", "tiny", "--device", "cpu",
                 "--models", str(tmp_path / "models"), "--cache", str(tmp_path / "cache")]) == 0
    said = capsys.readouterr().out
    assert said.count("RANDOM WEIGHTS") >= 2
    for name in ("renders.png", "preview.png", "result.npz", "result.ply"):
        assert (out / name).is_file()
    preview = np.asarray(Image.open(out / "preview.png"))
    assert (preview[:20, :, 0] > 150).any() and ((preview[:20, :, 0] > 150) & (preview[:20, :, 1] < 60)).any()  # red title
