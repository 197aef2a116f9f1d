"""BSB for Blender: click a part of a reference image, get the matching mesh part as a vertex group.

Registration only; the work lives in the modules (see docs/ARCHITECTURE.md, "Blender").
"""

from __future__ import annotations

import bpy

from . import ops_engine, ops_models, ops_part, ops_parts, ops_pick, overlay, panels, prefs, props, session

classes = (*props.classes, *prefs.classes, *ops_engine.classes, *ops_models.classes, *ops_part.classes,
           *ops_parts.classes, *ops_pick.classes, *panels.classes)


@bpy.app.handlers.persistent
def _cancel_on_load(_dummy) -> None:
    """A new file invalidates the objects a running job would write into: cancel it, write nothing."""
    session.cancel_job("a file was loaded")


@bpy.app.handlers.persistent
def _after_load(_dummy) -> None:
    session.on_file_load()
    overlay.on_file_load()


def register() -> None:
    for cls in classes:
        bpy.utils.register_class(cls)
    props.register()
    overlay.register()
    bpy.app.handlers.load_pre.append(_cancel_on_load)
    bpy.app.handlers.load_post.append(_after_load)


def unregister() -> None:
    for handlers, fn in ((bpy.app.handlers.load_pre, _cancel_on_load), (bpy.app.handlers.load_post, _after_load)):
        if fn in handlers:
            handlers.remove(fn)
    ops_models.cancel_download(unregistering=True)
    session.shutdown_all()
    overlay.unregister()
    props.unregister()
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)
