"""Match an image click to a mesh part without the UI, and save the result as a .blend.

    blender --background --python examples/headless_match.py -- \
        --mesh chair.obj --image chair.png --point 412 300 --group Seat \
        --engine-python ~/bsb-venv/bin/python --out chair_parts.blend

With an engine on another machine (`python -m engine serve --listen HOST:PORT` there), give
`--remote HOST:PORT` and the token in $BSB_REMOTE_TOKEN (or `--token`, visible to other local users).
Also runs with the bpy wheel: `python examples/headless_match.py -- ...`. Points are pixels of the
original image, top-left origin; `--negative X Y` adds "not this" clicks. The add-on is used as
installed (bl_ext.*.bsb_for_blender) or, failing that, from this repository's bsb_addon/ folder.

Output: one line for people, then one JSON line (always the last line, also on failure:
{"ok": false, "error": ..., "code": ...}). Exit codes, as the engine's CLI: 0 a part was found,
3 no corresponding part, 1 an error (bad input, engine missing or failed; nothing is saved), 2 usage.
Every input is checked before the engine starts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import bpy  # first: with the bpy wheel, importing bpy is what makes addon_utils importable
import addon_utils  # noqa: E402

EXIT_FOUND, EXIT_ERROR, EXIT_USAGE, EXIT_NO_PART = 0, 1, 2, 3
MESH_SUFFIXES = (".blend", ".obj", ".ply", ".stl")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".exr", ".bmp")


class UserError(Exception):
    """Bad input: reported as one line and a JSON line, exit code 1."""


def parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="headless_match.py", description=__doc__.splitlines()[0])
    ap.add_argument("--mesh", required=True, help=".blend, .obj, .ply or .stl")
    ap.add_argument("--object", default="", help="object name (default: the first mesh)")
    ap.add_argument("--image", required=True)
    ap.add_argument("--point", nargs=2, type=float, action="append", default=[], metavar=("X", "Y"))
    ap.add_argument("--negative", nargs=2, type=float, action="append", default=[], metavar=("X", "Y"))
    ap.add_argument("--group", default="BSB part")
    ap.add_argument("--material", action="store_true", help="assign a new material coloured from the image")
    ap.add_argument("--soft", action="store_true", help="write soft weights")
    ap.add_argument("--engine-python", default="", help="the engine venv's Python (else the preferences')")
    ap.add_argument("--profile", default="", choices=["", "auto", "fast", "balanced", "paper", "cpu", "gpu", "tiny"])
    ap.add_argument("--device", default="", choices=["", "auto", "cpu", "cuda", "mps"])
    ap.add_argument("--models", default="")
    ap.add_argument("--remote", default="", metavar="HOST:PORT", help="use a remote engine instead of a local one")
    ap.add_argument("--token", default=os.environ.get("BSB_REMOTE_TOKEN", ""),
                    help="the remote engine's token (default: $BSB_REMOTE_TOKEN)")
    ap.add_argument("--out", default="", help="save the .blend here")
    return ap.parse_args(argv[argv.index("--") + 1:] if "--" in argv else [])


def validate(args: argparse.Namespace) -> None:
    """Everything that can be wrong with the input, found before any engine work."""
    mesh, image = Path(args.mesh), Path(args.image)
    if mesh.suffix.lower() not in MESH_SUFFIXES:
        raise UserError(f"unsupported mesh format '{mesh.suffix}': use {', '.join(MESH_SUFFIXES)}")
    if not mesh.is_file():
        raise UserError(f"mesh file not found: {mesh}")
    if not image.is_file():
        raise UserError(f"image file not found: {image}")
    if image.suffix.lower() not in IMAGE_SUFFIXES:
        raise UserError(f"unsupported image format '{image.suffix}': use {', '.join(IMAGE_SUFFIXES)}")
    if not args.point:
        raise UserError("give at least one --point X Y (a pixel on the part, top-left origin)")
    width, height = image_size(image)
    for x, y in args.point + args.negative:
        if not (0 <= x <= width and 0 <= y <= height):
            raise UserError(f"point ({x:g}, {y:g}) is outside the {width}x{height} image; give original-image pixels")
    if not args.group.strip():
        raise UserError("--group is empty; give the vertex group a name")
    if args.remote:
        host, _, port = args.remote.rpartition(":")
        if not host or not port.isdigit():
            raise UserError(f"--remote must be HOST:PORT, got {args.remote!r}")
        if not args.token:
            raise UserError("--remote needs the engine's token: set BSB_REMOTE_TOKEN (or give --token)")
    if args.engine_python and not Path(args.engine_python).is_file():
        raise UserError(f"engine Python not found: {args.engine_python}")
    if args.out:
        out = Path(args.out).resolve()
        if out.suffix.lower() != ".blend":
            raise UserError(f"--out must end in .blend: {args.out}")
        if not out.parent.is_dir() or not os.access(out.parent, os.W_OK):
            raise UserError(f"cannot write {out}: its folder does not exist or is not writable")


def image_size(path: Path) -> tuple[int, int]:
    """Width and height, read by Blender (no extra dependency) without keeping the image."""
    try:
        image = bpy.data.images.load(str(path.resolve()), check_existing=False)
    except RuntimeError as exc:
        raise UserError(f"cannot read the image {path}: {exc}") from None
    try:
        width, height = image.size[:]
    finally:
        bpy.data.images.remove(image)
    if width == 0 or height == 0:
        raise UserError(f"cannot read the image {path} (no pixels)")
    return width, height


def enable_addon():
    """The installed extension if there is one, else this repository's copy."""
    for name in addon_utils.modules():
        if name.__name__.endswith(".bsb_for_blender"):
            return addon_utils.enable(name.__name__, default_set=True, handle_error=None)
    repo = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(repo))
    return addon_utils.enable("bsb_addon", default_set=True, handle_error=None)


def load_mesh(path: str, name: str):
    """Open a .blend, or import into the current file (never a factory reset: it would reset the user's
    preferences and add-ons). The object is the named one, else the first mesh the file/import brought."""
    suffix = Path(path).suffix.lower()
    if suffix == ".blend":
        bpy.ops.wm.open_mainfile(filepath=path)
        candidates = [o for o in bpy.data.objects if o.type == "MESH"]
    else:
        before = set(bpy.data.objects)
        importer = {".obj": bpy.ops.wm.obj_import, ".ply": bpy.ops.wm.ply_import, ".stl": bpy.ops.wm.stl_import}
        try:
            importer[suffix](filepath=path)
        except RuntimeError as exc:
            raise UserError(f"cannot import {path}: {str(exc).strip()}") from None
        candidates = [o for o in bpy.data.objects if o not in before and o.type == "MESH"]
    obj = bpy.data.objects.get(name) if name else (candidates[0] if candidates else None)
    if obj is None or obj.type != "MESH":
        raise UserError(f"no mesh object {'named ' + repr(name) + ' ' if name else ''}in {path}")
    return obj


def run(args: argparse.Namespace) -> dict:
    validate(args)
    obj = load_mesh(args.mesh, args.object)
    addon = enable_addon()
    prefs = bpy.context.preferences.addons[addon.__name__].preferences
    for key, value in (("engine_python", args.engine_python), ("models_dir", args.models)):
        if value:
            setattr(prefs, key, value)
    if args.profile:
        prefs.profile = args.profile.upper()
    if args.device:
        prefs.device = args.device.upper()
    if args.remote:
        prefs.engine_mode, prefs.remote_address, prefs.remote_token = "REMOTE", args.remote, args.token
    api = sys.modules[addon.__name__ + ".api"]
    points = args.point + args.negative
    labels = [1] * len(args.point) + [0] * len(args.negative)
    try:
        out = api.match(obj, str(Path(args.image).resolve()), points, labels, args.group, soft=args.soft,
                        material="NEW" if args.material else None,
                        progress=lambda f, m: print(f"  {100 * f:5.1f}% {m}", file=sys.stderr))
    finally:
        sys.modules[addon.__name__ + ".session"].release()
    if args.out:
        bpy.ops.wm.save_as_mainfile(filepath=str(Path(args.out).resolve()))
    return {"ok": True, "object": obj.name, "addon": addon.__name__, "out": args.out, **out}


def main() -> int:
    try:
        args = parse(sys.argv)
    except SystemExit as exc:  # argparse printed the usage
        code = int(exc.code or 0)
        if code:
            print(json.dumps({"ok": False, "code": "usage", "error": "bad command line (see usage above)"}))
        return code and EXIT_USAGE
    try:
        summary = run(args)
    except UserError as exc:
        return fail(str(exc), "bad_input")
    except Exception as exc:  # noqa: BLE001 - the add-on's errors carry a message for people and a code
        message = getattr(exc, "message", None) or f"internal error: {exc!r}"
        return fail(message.splitlines()[0], getattr(exc, "code", "internal"))
    where = f", saved {args.out}" if args.out else ""
    if summary["found"]:
        print(f"found '{summary['group']}': {summary['n_selected']} vertices ({summary['label']}){where}")
    else:
        print(f"no corresponding part: {summary['reason']}{where}")
    print(json.dumps(summary))
    return EXIT_FOUND if summary["found"] else EXIT_NO_PART


def fail(message: str, code: str) -> int:
    print(f"error: {message}")
    print(json.dumps({"ok": False, "code": code, "error": message}))
    return EXIT_ERROR


if __name__ == "__main__":
    raise SystemExit(main())
