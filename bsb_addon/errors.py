"""Errors the add-on raises for bad input or stale data; the engine's own errors come from engine_client."""

from __future__ import annotations

from .engine_client import EngineError


class InputError(EngineError):
    """Something the user gave (object, image, clicks) cannot be used; the message says how to fix it."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "bad_input")


class ObjectChanged(EngineError):
    """The object was deleted, renamed or edited while the engine worked: its result no longer fits."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "object_changed")
