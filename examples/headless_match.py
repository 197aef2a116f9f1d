"""Match an image click to a mesh part without the UI, and save the result as a .blend.

    blender --background --python examples/headless_match.py -- \
        --mesh chair.obj --image chair.png --point 412 300 --group Seat \
        --engine-python ~/bsb-venv/bin/python --out chair_parts.blend

Also runs with the bpy wheel: `python examples/headless_match.py -- ...`. Points are pixels of the
original image, top-left origin; `--negative X Y` adds "not this" clicks. The last line printed is a
JSON summary. The add-on is used as installed (bl_ext.*.bsb_for_blender) or, failing that, from this
repository's bsb_addon/ folder.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import bpy  # first: with the bpy wheel, importing bpy is what makes addon_utils importable
import addon_utils  # noqa: E402


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
    ap.add_argument("--profile", default="", choices=["", "cpu", "gpu", "tiny"])
    ap.add_argument("--device", default="", choices=["", "auto", "cpu", "cuda", "mps"])
    ap.add_argument("--models", default="")
    ap.add_argument("--out", default="", help="save the .blend here")
    return ap.parse_args(argv[argv.index("--") + 1:] if "--" in argv else [])


def enable_addon():
    """The installed extension if there is one, else this repository's copy."""
    for name in addon_utils.modules():
        if name.__name__.endswith(".bsb_for_blender"):
            return addon_utils.enable(name.__name__, default_set=True, handle_error=None)
    repo = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(repo))
    return addon_utils.enable("bsb_addon", default_set=True, handle_error=None)


def load_mesh(path: str, name: str):
    suffix = Path(path).suffix.lower()
    if suffix == ".blend":
        bpy.ops.wm.open_mainfile(filepath=path)
    else:
        bpy.ops.wm.read_factory_settings(use_empty=True)
        importer = {".obj": bpy.ops.wm.obj_import, ".ply": bpy.ops.wm.ply_import, ".stl": bpy.ops.wm.stl_import}
        if suffix not in importer:
            raise SystemExit(f"unsupported mesh format {suffix}: use .blend, .obj, .ply or .stl")
        importer[suffix](filepath=path)
    meshes = [o for o in bpy.data.objects if o.type == "MESH"]
    obj = bpy.data.objects.get(name) if name else (meshes[0] if meshes else None)
    if obj is None:
        raise SystemExit(f"no mesh object {'named ' + name if name else ''} in {path}")
    return obj


def main() -> int:
    args = parse(sys.argv)
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
    api = sys.modules[addon.__name__ + ".api"]
    points = args.point + args.negative
    labels = [1] * len(args.point) + [0] * len(args.negative)
    out = api.match(obj, args.image, points, labels, args.group, soft=args.soft,
                    material="NEW" if args.material else None,
                    progress=lambda f, m: print(f"  {100 * f:5.1f}% {m}", file=sys.stderr))
    if args.out:
        bpy.ops.wm.save_as_mainfile(filepath=str(Path(args.out).resolve()))
    sys.modules[addon.__name__ + ".session"].release()
    print(json.dumps({"object": obj.name, "addon": addon.__name__, **out}))
    return 0 if out["found"] else 2


if __name__ == "__main__":
    raise SystemExit(main())
