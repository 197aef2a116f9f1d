"""How failures reach people: a message in the panel plus the button that fixes it (main thread only)."""

from __future__ import annotations

import bpy

from .engine_client import EngineCancelled, EngineCrashed, EngineError, EngineMissing, ProtocolMismatch


def fix_for(error: Exception) -> str:
    """Which fix-it button the panel shows next to this error."""
    if isinstance(error, EngineCrashed):
        return "RESTART"
    if isinstance(error, EngineMissing):
        return "PREFS"
    if isinstance(error, ProtocolMismatch):
        return "SETUP"
    return "NONE"


def describe(error: Exception) -> str:
    if isinstance(error, EngineError):
        return error.message
    return f"Internal error: {error!r}. Please report it with the engine log."


def show_error(error: Exception) -> None:
    state = bpy.context.window_manager.bsb_job
    state.busy = False
    if isinstance(error, EngineCancelled):
        state.message, state.error, state.fix = "cancelled", "", "NONE"
        return
    state.error = describe(error)[:1000]
    state.fix = fix_for(error)
    if bpy.app.background:
        print(f"BSB: {state.error}")


def clear_error() -> None:
    state = bpy.context.window_manager.bsb_job
    state.error, state.fix = "", "NONE"
