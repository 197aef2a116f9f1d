"""CLI subcommands `segment-all`, `find-part` and `fetch-detector`; engine/cli.py calls `add_commands(sub)`.

Each parser sets `func` (run(args) -> exit code), the convention of engine.models.commands.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from engine.errors import BsbError


def add_commands(sub) -> None:
    from engine.cli import _common

    p = sub.add_parser("segment-all", help="split a whole mesh into parts (one label per vertex)")
    p.add_argument("mesh", type=Path)
    p.add_argument("--up", choices=("y", "z"), default="y")
    p.add_argument("--granularity", type=float, default=None,
                   help="0 coarse .. 1 fine (default: the shipped setting, 0.5)")
    p.add_argument("--out", type=Path, required=True, help="result .npz (labels, area, score, seed)")
    p.add_argument("--ply", type=Path, default=None, help="also write a PLY with one colour per part")
    _common(p)
    p.set_defaults(func=run_segment_all)

    p = sub.add_parser("find-part", help="select the mesh part named by a phrase (e.g. \"handle\")")
    p.add_argument("mesh", type=Path)
    p.add_argument("phrase")
    p.add_argument("--image", type=Path, default=None,
                   help="find the phrase in this reference image instead and match it with BSB (box query)")
    p.add_argument("--up", choices=("y", "z"), default="y")
    p.add_argument("--out", type=Path, required=True, help="result .npz (mask, weights, votes)")
    p.add_argument("--ply", type=Path, default=None, help="also write a PLY with the part coloured")
    _common(p)
    p.set_defaults(func=run_find_part)

    p = sub.add_parser("fetch-detector", help="download the profile's text detector (Grounding DINO)")
    p.add_argument("--profile", choices=("cpu", "gpu", "tiny"), default="cpu")
    p.add_argument("--models", type=Path, default=None)
    p.set_defaults(func=run_fetch_detector)


def _prepared(args: argparse.Namespace):
    from engine.cli import _load_prepared, _session, _warn_random

    state = _session(args)
    _warn_random(state)
    mesh, prepared = _load_prepared(state, args.mesh, args.up)
    return state, mesh, prepared


def run_segment_all(args: argparse.Namespace) -> int:
    import numpy as np

    from engine.parts.segment_all import SegmentAllSettings, cut, segment_all

    state, mesh, prepared = _prepared(args)
    parts, tree = segment_all(prepared, SegmentAllSettings())
    if args.granularity is not None:
        parts = cut(tree, args.granularity)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.out, labels=parts.labels, area=parts.area, score=parts.score, seed=parts.seed,
             granularity=parts.granularity, random_weights=state.random_weights)
    if args.ply is not None:
        write_parts_ply(args.ply, mesh, parts.labels)
    print(f"{parts.n_parts} parts over {mesh.num_vertices} vertices at granularity {parts.granularity:g} "
          f"({tree.seconds:.1f}s after preparation) -> {args.out}")
    return 0


def run_find_part(args: argparse.Namespace) -> int:
    import numpy as np

    from engine.cli import NoPart

    state, mesh, prepared = _prepared(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.image is not None:
        from engine import results
        from engine.images import load_image
        from engine.parts.text import find_in_image
        from engine.service.jobs import require_file

        image = state.set_image(load_image(require_file(args.image, "image")))
        found = find_in_image(state, prepared, image, args.phrase)
        if found.match is None:
            raise NoPart(found.reason)
        results.write_match_npz(args.out, found.match, mesh.num_vertices, image.image.original_size,
                                state.random_weights)
        mask = found.match.vertex_mask
        print(f"'{args.phrase}' box {[round(c, 1) for c in found.box]} (score {found.score:.2f}) -> "
              + results.describe_match(found.match, mesh.num_vertices))
    else:
        from engine.parts.text import find_part_in_session

        found = find_part_in_session(state, prepared, args.phrase)
        if found.found:
            np.savez(args.out, mask=found.mask, weights=found.weights, votes=found.votes.astype(np.float32),
                     clicks=np.asarray(found.clicks, np.int64), random_weights=state.random_weights)
        mask = found.mask
        print(f"'{args.phrase}': " + (f"{int(found.mask.sum())} of {mesh.num_vertices} vertices, "
                                      f"{found.support} views agree ({found.seconds:.1f}s)" if found.found
                                      else "not found"))
    if not found.found:
        raise NoPart(found.reason)
    if args.ply is not None and mask is not None:
        from engine.results import write_colored_ply

        write_colored_ply(args.ply, mesh, mask)
    return 0


def run_fetch_detector(args: argparse.Namespace) -> int:
    from engine.models.detector import fetch_detector, load_profile_detector

    if args.profile == "tiny":
        load_profile_detector("tiny", args.models)
    else:
        fetch_detector(args.profile)
    print(f"{args.profile}: text detector present")
    return 0


def part_colors(n: int):
    """(n, 3) uint8 distinct colours: golden-ratio hues, so neighbours in index differ strongly."""
    import colorsys

    import numpy as np

    return np.array([[int(255 * c) for c in colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.65, 0.95)]
                     for i in range(n)], np.uint8).reshape(-1, 3)


def write_parts_ply(path: Path, mesh, labels) -> None:
    """A binary PLY of the mesh in its source frame, each vertex coloured by its part."""
    import numpy as np

    if len(labels) != mesh.num_vertices:
        raise BsbError(f"{len(labels)} labels for a mesh of {mesh.num_vertices} vertices", "bad_array")
    colors = part_colors(int(np.max(labels)) + 1)[np.asarray(labels)]
    vertex = np.empty(mesh.num_vertices, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                                                ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    points = mesh.to_source(mesh.vertices).astype(np.float32)
    vertex["x"], vertex["y"], vertex["z"] = points[:, 0], points[:, 1], points[:, 2]
    vertex["red"], vertex["green"], vertex["blue"] = colors[:, 0], colors[:, 1], colors[:, 2]
    face = np.empty(mesh.num_faces, dtype=[("n", "u1"), ("v", "<i4", (3,))])
    face["n"], face["v"] = 3, mesh.faces
    header = (f"ply\nformat binary_little_endian 1.0\nelement vertex {mesh.num_vertices}\nproperty float x\n"
              "property float y\nproperty float z\nproperty uchar red\nproperty uchar green\nproperty uchar blue\n"
              f"element face {mesh.num_faces}\nproperty list uchar int vertex_indices\nend_header\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(header.encode("ascii"))
        fh.write(vertex.tobytes())
        fh.write(face.tobytes())
