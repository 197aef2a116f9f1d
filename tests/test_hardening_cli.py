"""Adversarial command lines of issue 13 (items 1, 8, 10, 12, 14, 16): each refused with one line and exit 1
before any expensive work; `cache clear` touches nothing that is not a cache entry. No engine runs here."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from engine.cache import Cache
from engine.cli import main
from engine.preview import save_png


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("hcli")
    trimesh.creation.box().export(root / "box.ply")
    save_png(root / "ref.png", np.full((40, 60, 3), 128, np.uint8))
    (root / "blocker").write_text("a file where a folder should be")
    return root


def _run(files, capsys, *argv):
    code = main([*argv, "--profile", "tiny", "--device", "cpu", "--models", str(files / "models"),
                 "--cache", str(files / "cache")])
    err = capsys.readouterr().err
    return code, err


@pytest.mark.parametrize("extra, words", [
    (["--pixel", "nan", "5"], "finite"),
    (["--pixel", "500", "5"], "outside the 60x40 image"),
    (["--pixel", "5", "5", "--min-confidence", "nan"], "min_confidence"),
    (["--box", "100", "100", "200", "200"], "entirely outside"),
    (["--pixel", "5", "5", "--out", "{blocker}/o.npz"], "cannot write --out"),
    (["--pixel", "5", "5", "--preview", "{blocker}/p.png"], "cannot write --preview"),
])
def test_match_refuses_bad_input_before_any_work(files, capsys, extra, words):
    extra = [e.replace("{blocker}", str(files / "blocker")) for e in extra]
    out = [] if "--out" in extra else ["--out", str(files / "o.npz")]
    code, err = _run(files, capsys, "match", str(files / "box.ply"), str(files / "ref.png"), *extra, *out)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1 and len(errors) == 1 and words in errors[0] and "Traceback" not in err
    assert not (files / "models").exists() and not (files / "cache").exists()  # nothing was loaded or run


def test_folders_and_unreadable_files_are_named(files, capsys):
    code, err = _run(files, capsys, "prepare", str(files))
    assert code == 1 and "is a folder, not a file" in err
    code, err = _run(files, capsys, "match", str(files / "box.ply"), "/proc/self/mem", "--pixel", "1", "1",
                     "--out", str(files / "o.npz"))
    assert code == 1 and "cannot read image file /proc/self/mem" in err and "Traceback" not in err


def test_cache_clear_leaves_foreign_folders_and_the_limit_is_settable(tmp_path, capsys, monkeypatch):
    (tmp_path / "Documents").mkdir()
    (tmp_path / "Documents" / "thesis.txt").write_text("years of work")
    (tmp_path / "mesh" / "abc").mkdir(parents=True)
    (tmp_path / "mesh" / "abc" / "data.bin").write_bytes(b"mine")
    Cache(tmp_path).put_arrays("mesh", "k1", {"x": np.zeros(10)})
    assert main(["cache", "list", "--cache", str(tmp_path)]) == 0
    assert "1 entries" in capsys.readouterr().out
    assert main(["cache", "clear", "--cache", str(tmp_path)]) == 0
    assert "removed 1 entries" in capsys.readouterr().out
    assert (tmp_path / "Documents" / "thesis.txt").exists() and (tmp_path / "mesh" / "abc" / "data.bin").exists()
    assert main(["cache", "list", "--cache", str(tmp_path), "--cache-limit", "lots"]) == 1
    assert "--cache-limit" in capsys.readouterr().err
    monkeypatch.setenv("BSB_CACHE_LIMIT", "-3")
    assert main(["cache", "list", "--cache", str(tmp_path)]) == 1
    assert "BSB_CACHE_LIMIT" in capsys.readouterr().err
