"""What BSB's click-time settings cost in quality: the end-to-end oracle benchmark per value of one knob.

Knobs: `max_prompts` (the cap on candidate pixels SAM re-segments; the shipped value is None, all) and `k`
(candidates; shipped 100). Every value answers the SAME part clicks on the SAME prepared meshes
(engine.evaluation.e2e, oracle teachers, the `fast` profile's shipped preparation; only the click-time
setting changes, so preparations are shared and cached), and the final part IoU is paired per click to the
shipped value's answer. Caveat: the oracle's masks are exact, so valid candidates mostly tie at IoU 1 and
the cap curve cannot see what ranking more candidates buys with real SAM. A real decoder's cost per prompt
is in bench/prepare.py and bench/models.py --decoders.
Prints a table, then one JSON line (keys: knob, e2e_part_iou_by_value, e2e_part_iou_minus_shipped_by_value
(+ _se), success_by_value, valid_pixels_median, valid_pixels_p90). `--quick`: 6 small meshes, 5 images x 2
clicks; full: 12 meshes, 10 x 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine.evaluation import e2e  # noqa: E402
from engine.evaluation.data import load_labelled  # noqa: E402
from engine.pipeline import settings_for  # noqa: E402
from views import FULL_MESHES, QUICK_MESHES  # noqa: E402  (the same meshes as the view-count curve)


SHIPPED = {"max_prompts": None, "k": 100}


def answers(name: str, knob: str, values: list[int | None], protocol: e2e.E2EProtocol, cache: Path | None
            ) -> list[dict]:
    lm = load_labelled(name)
    space = e2e.mesh_space(lm, protocol, settings_for("fast"), cache)
    prepared = space.prepare(lm)
    rows = []
    for pimage, t in e2e.image_trials(space, lm, protocol, decals=False):
        row = {}
        for value in values:
            p = replace(prepared, settings=replace(prepared.settings, **{knob: value}))
            r = space.session.match(p, pimage, [t.click], [1])
            row[value] = (e2e.vertex_iou(r.vertex_mask if r.found else None, lm.vertex_parts[:, t.part]),
                          r.found and e2e.strictly_inside(lm, r.winner_vertex, t.part))
            if value == SHIPPED[knob]:
                row["valid"] = len({c.pixel for c in r.candidates if c.valid})
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--knob", choices=sorted(SHIPPED), default="max_prompts")
    ap.add_argument("--values", type=int, nargs="*", default=None,
                    help="values besides the shipped one (default: caps 32 16 8; k 25 50 200)")
    ap.add_argument("--views", type=int, default=None, help="test images per mesh (default 5 quick, 10 full)")
    ap.add_argument("--clicks", type=int, default=2)
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "bsb-engine-e2e")
    args = ap.parse_args()
    shipped = SHIPPED[args.knob]
    others = args.values if args.values is not None else ([32, 16, 8] if args.knob == "max_prompts" else [25, 50, 200])
    values: list[int | None] = [shipped, *others]
    meshes = QUICK_MESHES if args.quick else FULL_MESHES
    protocol = e2e.E2EProtocol(meshes=meshes, views=args.views or (5 if args.quick else 10), clicks=args.clicks)
    rows = [r for name in meshes for r in answers(name, args.knob, values, protocol, args.cache)]
    base = np.array([r[shipped][0] for r in rows])
    out: dict = {"knob": args.knob, "e2e_part_iou_by_value": {}, "e2e_part_iou_minus_shipped_by_value": {},
                 "e2e_part_iou_minus_shipped_by_value_se": {}, "success_by_value": {}}
    print(f"{len(rows)} part clicks on {len(meshes)} meshes (oracle teachers, fast profile), knob {args.knob}")
    print(f"{'value':>6s} {'part IoU':>9s} {'vs shipped':>16s} {'success':>8s}")
    for value in values:
        iou = np.array([r[value][0] for r in rows])
        d = iou - base
        se = float(d.std(ddof=1) / np.sqrt(len(d)))
        ok = float(np.mean([r[value][1] for r in rows]))
        key = "all" if value is None else str(value)
        out["e2e_part_iou_by_value"][key] = float(iou.mean())
        out["e2e_part_iou_minus_shipped_by_value"][key] = float(d.mean())
        out["e2e_part_iou_minus_shipped_by_value_se"][key] = se
        out["success_by_value"][key] = ok
        print(f"{key:>6s} {iou.mean():9.3f} {d.mean():+8.3f} ± {se:5.3f} {100 * ok:7.1f}%")
    valid = np.array([r["valid"] for r in rows])
    out |= {"valid_pixels_median": float(np.median(valid)), "valid_pixels_p90": float(np.percentile(valid, 90)),
            "n_part_trials": len(rows), "meshes": list(meshes), "random_weights": False,
            "note": "oracle teachers: masks tie at IoU 1, so a cap curve cannot see what the IoU ranking buys with SAM"}
    print(f"distinct valid pixels per click (shipped value): median {out['valid_pixels_median']:.0f}, "
          f"90th percentile {out['valid_pixels_p90']:.0f}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
