"""`python -m engine demo`: one click on a reference image of Spot the cow -> the matching part of the mesh.

The bundled assets (assets/) are Spot (K. Crane, public domain) and a reference image the engine rendered
itself, coloured and from a view that preparation never uses, with the click on the cow's head. The demo
first writes a contact sheet of the mesh's renders (needs no model), then loads the profile's models: with
real weights it writes the match; without them it stops with the model store's message and a hint for the
plumbing check (`--profile tiny`, random weights, labelled so in the output and the picture).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from engine.errors import ModelMissingError

ASSETS = Path(__file__).resolve().parents[1] / "assets"
SPEC = "demo.json"
REFERENCE_EYE = (1.3, 0.6, -1.3)  # front three-quarter view of Spot's head (Spot faces -Z, Y up)
REFERENCE_SIZE = (512, 384)  # (W, H): not square, so the image-frame handling is exercised


def _say(text: str) -> None:
    print(text, flush=True)


def make_reference(mesh) -> tuple[np.ndarray, tuple[float, float]]:
    """A coloured render of `mesh` (warm cream body, darker lower legs) and a click on the middle of the head.

    How the bundled `spot_reference.png` and the click in `demo.json` were made (see assets/README.md).
    """
    from engine.cameras import look_at
    from engine.raster import rasterize
    from engine.shading import shade_colors

    W, H = REFERENCE_SIZE
    raster = rasterize(mesh.vertices, mesh.faces, [look_at(np.array(REFERENCE_EYE))], W, H)
    v = mesh.vertices
    t = np.clip((v[:, 1] + 0.8) / 1.6, 0, 1)[:, None]
    colors = (1 - t) * np.array([0.55, 0.42, 0.32]) + t * np.array([0.98, 0.9, 0.78])
    rgb = shade_colors(raster, mesh.faces, colors)[0]
    face = raster.face_id[0]
    covered = face >= 0
    centre = np.zeros(face.shape + (3,), np.float32)
    centre[covered] = v[mesh.faces[face[covered]]].mean(axis=1)
    head = covered & (centre[..., 2] < -0.5) & (centre[..., 1] > 0.0)
    rows, cols = np.nonzero(head)
    mid = np.array([cols.mean(), rows.mean()])
    k = np.argmin((cols - mid[0]) ** 2 + (rows - mid[1]) ** 2)
    return rgb, (float(cols[k]) + 0.5, float(rows[k]) + 0.5)


def write_assets(folder: Path = ASSETS) -> None:
    """Regenerate the reference image and demo.json from assets/spot.obj."""
    from engine.mesh import load_mesh
    from engine.preview import save_png

    mesh = load_mesh(folder / "spot.obj", up="y")
    rgb, click = make_reference(mesh)
    save_png(folder / "spot_reference.png", rgb)
    spec = {"mesh": "spot.obj", "up": "y", "image": "spot_reference.png", "click": list(click), "part": "head"}
    (folder / SPEC).write_text(json.dumps(spec, indent=1) + "\n")


def _render_sheet(mesh, out: Path) -> Path:
    from engine.pipeline import render_views
    from engine.preview import contact_sheet, save_png

    _, _, images = render_views(mesh, 8, 192, "uniform")
    return save_png(out / "renders.png", contact_sheet(images, columns=4))


def run(args: argparse.Namespace) -> int:
    """The demo; returns the exit code (1 when the models are missing, after the render preview)."""
    from engine import results
    from engine.cli import _tqdm_progress
    from engine.images import load_image
    from engine.mesh import load_mesh
    from engine.pipeline import Session
    from engine.preview import save_png

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    spec = json.loads((ASSETS / SPEC).read_text())
    mesh = load_mesh(ASSETS / spec["mesh"], up=spec["up"])
    _say(f"mesh: {spec['mesh']} ({mesh.num_vertices} vertices, {mesh.num_faces} faces)")
    _say(f"render preview: {_render_sheet(mesh, out)}")

    session = Session(profile=args.profile, device=args.device, models_dir=args.models, cache_dir=args.cache,
                      offline=args.offline)
    _say(f"profile {session.profile} on {session.describe()['device_name']}")
    try:
        session.models
    except ModelMissingError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        print("hint: to check the plumbing without real weights, run `python -m engine demo --profile tiny` "
              "(tiny RANDOM-weight models: the output is not a real result)", file=sys.stderr)
        return 1
    if session.random_weights:
        _say(f"*** profile '{session.profile}': {results.RANDOM_NOTE} ***")

    image = load_image(ASSETS / spec["image"])
    click = tuple(spec["click"])
    bars = [_tqdm_progress(label) for label in ("prepare mesh", "image", "match")]
    try:
        prepared = session.prepare(mesh, progress=bars[0])
        pimage = session.set_image(image, progress=bars[1])
        match = session.match(prepared, pimage, [click], [1], progress=bars[2])
    finally:
        for bar in bars:
            bar.close()
    _say(f"prepared in {prepared.seconds:.1f}s{' (from the cache)' if prepared.cached else ''}")
    results.write_match_npz(out / "result.npz", match, mesh.num_vertices, image.original_size,
                            session.random_weights)
    results.write_colored_ply(out / "result.ply", mesh, match.vertex_mask)
    picture = results.match_preview(mesh, image.rgb, match, [(click[0], click[1], 1)], image.scale,
                                    session.random_weights)
    _say(f"click ({click[0]:.1f}, {click[1]:.1f}) on the {spec['part']}: {results.describe_match(match, mesh.num_vertices)}")
    _say(f"preview: {save_png(out / 'preview.png', picture)}")
    _say(f"result: {out / 'result.npz'}, coloured mesh: {out / 'result.ply'}")
    if session.random_weights:
        _say(f"*** {results.RANDOM_NOTE}: this run only shows that the pipeline works end to end ***")
    return 0


if __name__ == "__main__":
    write_assets()
