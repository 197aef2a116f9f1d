"""The demo's oracle run: the sample chair, oracle teachers, the settings shipped for a CPU; a seat click selects the seat."""

from __future__ import annotations

from engine import demo


def test_oracle_demo_selects_the_seat_and_says_oracle(tmp_path, tmp_path_factory, capsys):
    cache = tmp_path_factory.getbasetemp() / "oracle-e2e-cache"  # shared with tests/test_e2e.py
    assert demo.oracle_main(tmp_path / "out", cache) == 0
    said = capsys.readouterr().out
    assert said.count("ORACLE RUN") >= 2 and "the seat was selected" in said
    assert (tmp_path / "out" / "oracle_preview.png").stat().st_size > 1000
    run = demo.oracle_run(cache)  # prepared above: from the cache
    assert run.cached and run.winner_in_seat and run.seat_iou >= 0.5
