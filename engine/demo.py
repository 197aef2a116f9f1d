"""`python -m engine demo`: one click on a reference image of Spot the cow -> the matching part of the mesh.

The bundled assets (assets/) are Spot (K. Crane, public domain) and a reference image the engine rendered
itself, coloured and from a view that preparation never uses, with the click on the cow's head. The demo
first writes a contact sheet of the mesh's renders (needs no model), then loads the profile's models: with
real weights it writes the match; without them it stops with the model store's message and a hint for the
plumbing check (`--profile tiny`, random weights, labelled so in the output and the picture).

`python -m engine.demo --oracle` is the ORACLE run: the procedural sample chair (engine.sample_meshes,
parts known by construction) prepared and matched through the real `Session` path with the settings
shipped for a CPU (`default_profile`: `fast`), but with oracle teachers (engine.evaluation.oracle_models) instead of SAM and DINOv2. It checks
that a click on the seat in a held-out image selects the seat; every output says it is an oracle run.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.errors import ModelMissingError

ASSETS = Path(__file__).resolve().parents[1] / "assets"
SPEC = "demo.json"
REFERENCE_EYE = (1.3, 0.6, -1.3)  # front three-quarter view of Spot's head (Spot faces -Z, Y up)
REFERENCE_SIZE = (512, 384)  # (W, H): not square, so the image-frame handling is exercised
ORACLE_NOTE = "ORACLE RUN: teachers answer from the chair's known parts, not SAM/DINOv2"
ORACLE_EYE = (0.9, 1.3, 1.5)  # front, above, a little to the side of the chair (internal frame, Y up)
ORACLE_SIZE = 256
ORACLE_SPACE = "sample:chair"


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


def oracle_chair():
    """The sample chair as a labelled mesh (engine.evaluation.data.LabelledMesh) and its part names."""
    from engine.evaluation.data import LabelledMesh
    from engine.mesh import mesh_from_arrays
    from engine.sample_meshes import chair

    v, f, labels, names = chair()
    mesh = mesh_from_arrays(v, f)  # Z-up, as Blender sends it; parts share no vertex
    return LabelledMesh("sample/chair", "chair", mesh, labels[mesh.faces[:, 0]].astype(np.int32), tuple(names))


@dataclass
class OracleRun:
    seat_iou: float  # final 3D selection vs the seat's vertices
    winner_in_seat: bool  # the BSB winner lies strictly inside the seat
    match: object  # engine.bsb.result.MatchResult
    click: tuple[float, float]
    prepare_seconds: float
    cached: bool

    @property
    def ok(self) -> bool:
        return self.winner_in_seat and self.seat_iou >= 0.5


def oracle_run(cache: Path | None, out: Path | None = None, progress=None) -> OracleRun:
    """Prepare the sample chair under oracle teachers (the settings shipped for a CPU), click the seat, check
    the answer."""
    from engine import results
    from engine.bsb.regions import interior_pixel
    from engine.cameras import look_at
    from engine.evaluation.e2e import strictly_inside, vertex_iou
    from engine.evaluation.oracle_models import Registry, oracle_models, register_renders, register_scene
    from engine.evaluation.scenes import render_scene
    from engine.images import image_from_array
    import torch

    from engine.pipeline import Session, default_profile, settings_for
    from engine.preview import save_png

    lm = oracle_chair()
    seat = lm.part_names.index("seat")
    registry = Registry(ORACLE_SPACE, lm.n_parts)
    profile = default_profile(torch.device("cpu"))
    session = Session(device="cpu", models=oracle_models(registry, profile=profile), settings=settings_for(profile),
                      cache_dir=cache, use_cache=cache is not None)
    register_renders(registry, lm, session.settings)
    scene = render_scene(lm, look_at(np.array(ORACLE_EYE)), ORACLE_SIZE, seed=0, decal_radius=0.0)
    register_scene(registry, lm, scene)
    x, y = interior_pixel(scene.part_map == seat)
    click = (float(x) + 0.5, float(y) + 0.5)
    prepared = session.prepare(lm.mesh, progress=progress)
    image = session.set_image(image_from_array(scene.image))
    match = session.match(prepared, image, [click], [1])
    run = OracleRun(vertex_iou(match.vertex_mask if match.found else None, lm.vertex_parts[:, seat]),
                    bool(match.found) and strictly_inside(lm, match.winner_vertex, seat), match, click,
                    prepared.seconds, prepared.cached)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        left = results.overlay(image.image.rgb, match.part_mask, match.object_mask, [(click[0], click[1], 1)])
        right = results.render_highlight(lm.mesh, match.vertex_mask)
        lines = [f"seat IoU {run.seat_iou:.2f}, winner inside the seat: {run.winner_in_seat}",
                 results.describe_match(match, lm.mesh.num_vertices)]
        save_png(out / "oracle_preview.png", results.titled([left, right], ORACLE_NOTE, lines))
        results.write_colored_ply(out / "oracle_result.ply", lm.mesh, match.vertex_mask)
    return run


def oracle_main(out: Path, cache: Path | None) -> int:
    """The oracle run from the command line; exit code 1 when the seat is not selected."""
    _say(f"*** {ORACLE_NOTE} ***")
    run = oracle_run(cache, out)
    _say(f"[oracle] prepared in {run.prepare_seconds:.1f}s{' (from the cache)' if run.cached else ''}")
    _say(f"[oracle] click ({run.click[0]:.1f}, {run.click[1]:.1f}) on the seat: seat IoU {run.seat_iou:.2f}, "
         f"winner vertex {run.match.winner_vertex} {'inside' if run.winner_in_seat else 'NOT inside'} the seat")
    _say(f"[oracle] preview: {out / 'oracle_preview.png'}, coloured mesh: {out / 'oracle_result.ply'}")
    _say(f"*** {'the seat was selected' if run.ok else 'FAILED: the seat was not selected'} ({ORACLE_NOTE}) ***")
    return 0 if run.ok else 1


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="regenerate the demo assets, or (--oracle) run the oracle demo")
    ap.add_argument("--oracle", action="store_true", help="the oracle run on the sample chair")
    ap.add_argument("--out", type=Path, default=Path("out/demo"))
    ap.add_argument("--cache", type=Path, default=None)
    cli = ap.parse_args()
    sys.exit(oracle_main(cli.out, cli.cache) if cli.oracle else write_assets())
