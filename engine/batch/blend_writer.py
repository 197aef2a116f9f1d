"""`python -m engine.batch.blend_writer PARTS.npz OUT.blend`: bpy only (never torch), one .blend per call.

Builds the mesh with bulk foreach_set calls, writes each part with the add-on's `write_part` (vertex group
plus float attribute `bsb_<group>`), and saves. Exit code 4: bpy or the add-on cannot be imported.
"""

from __future__ import annotations

import sys

import numpy as np

EXIT_NO_BPY = 4  # engine.batch.blend reads it (not imported: that module pulls in the engine)


def build_object(bpy, name: str, vertices: np.ndarray, faces: np.ndarray):
    me = bpy.data.meshes.new(name)
    me.vertices.add(len(vertices))
    me.vertices.foreach_set("co", vertices.astype(np.float32).ravel())
    me.loops.add(faces.size)
    me.loops.foreach_set("vertex_index", faces.astype(np.int32).ravel())
    me.polygons.add(len(faces))
    me.polygons.foreach_set("loop_start", np.arange(0, faces.size, 3, dtype=np.int32))
    me.update(calc_edges=True)
    obj = bpy.data.objects.new(name, me)
    bpy.context.scene.collection.objects.link(obj)
    return obj


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m engine.batch.blend_writer PARTS.npz OUT.blend", file=sys.stderr)
        return 2
    try:
        import bpy
        from bsb_addon.meshio import write_part
    except ImportError as exc:
        print(f"--blend needs the bpy wheel and the add-on's source ({exc}); "
              'install it with: pip install -e ".[blender]" (from the repository checkout)', file=sys.stderr)
        return EXIT_NO_BPY
    data = np.load(argv[0])
    bpy.ops.wm.read_factory_settings(use_empty=True)
    obj = build_object(bpy, str(data["name"]), data["vertices"], data["faces"])
    for group, weights, mask in zip(data["names"], data["weights"], data["masks"]):
        write_part(obj, str(group), weights, mask)
    bpy.ops.wm.save_as_mainfile(filepath=argv[1])
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
