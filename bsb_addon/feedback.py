"""How failures reach people: a message in the panel plus the button that fixes it (main thread only)."""

from __future__ import annotations

import bpy

from .engine_client import (ConnectionLost, EngineCancelled, EngineCrashed, EngineError, EngineMissing,
                            ProtocolMismatch)


def fix_for(error: Exception) -> str:
    """Which fix-it button the panel shows next to this error."""
    if isinstance(error, ConnectionLost):
        return "RETRY"
    if isinstance(error, EngineCrashed) or getattr(error, "code", "") == "timeout":
        return "RESTART"
    if isinstance(error, EngineMissing) or getattr(error, "code", "") == "models_missing":
        return "PREFS"
    if isinstance(error, ProtocolMismatch):
        return "SETUP"
    return "NONE"


def describe(error: Exception) -> str:
    if isinstance(error, EngineError):
        return error.message
    return f"Internal error: {error!r}. Please report it with the engine log."


def wrap(text: str, width: int = 48, max_lines: int = 8) -> list[str]:
    """Panel labels do not wrap: cut the message into lines that fit a sidebar."""
    import textwrap

    lines = [ln for para in text.splitlines() for ln in (textwrap.wrap(para, width) or [""])]
    return lines[:max_lines - 1] + ["..."] if len(lines) > max_lines else lines


def show_error(error: Exception) -> None:
    state = bpy.context.window_manager.bsb_job
    state.busy = False
    if isinstance(error, EngineCancelled):
        state.message, state.error, state.fix = describe(error)[:200], "", "NONE"
        return
    text = describe(error)
    if getattr(error, "code", "") == "models_missing":
        text += "\nDownload the weights in the add-on preferences (Models)."
    state.error = text[:1000]
    state.fix = fix_for(error)
    from . import session

    if session.interactive():
        report("ERROR", state.error)
    else:
        print(f"BSB: {state.error}")


def report(level: str, message: str) -> None:
    """Status bar and Info log, also for jobs that end in a timer (no operator of their own to report)."""
    try:
        bpy.ops.bsb.report(level=level, message=message[:500])
    except (RuntimeError, AttributeError):
        print(f"BSB {level}: {message}")


def clear_error() -> None:
    state = bpy.context.window_manager.bsb_job
    state.error, state.fix = "", "NONE"
