"""BSB engine: image-click to mesh-part correspondence, run outside Blender's process.

Imports torch, never bpy. Blender's add-on talks to it through `python -m engine serve`.
"""

__version__ = "0.1.0"
