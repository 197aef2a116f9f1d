"""BSB for Blender: click a part of a reference image, get the matching mesh part as a vertex group.

Registration only; the work lives in the modules (see docs/ARCHITECTURE.md, "Blender").
"""

from __future__ import annotations

import bpy

from . import ops_engine, ops_part, ops_pick, overlay, panels, prefs, props, session

classes = (*props.classes, *prefs.classes, *ops_engine.classes, *ops_part.classes, *ops_pick.classes,
           *panels.classes)


@bpy.app.handlers.persistent
def _cancel_on_load(_dummy) -> None:
    """A new file invalidates the objects a running job would write into."""
    session.cancel_job()


def register() -> None:
    for cls in classes:
        bpy.utils.register_class(cls)
    props.register()
    overlay.register()
    bpy.app.handlers.load_pre.append(_cancel_on_load)


def unregister() -> None:
    if _cancel_on_load in bpy.app.handlers.load_pre:
        bpy.app.handlers.load_pre.remove(_cancel_on_load)
    session.shutdown_all()
    overlay.unregister()
    props.unregister()
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)
