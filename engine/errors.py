"""Errors meant for people: each says what is wrong and what to do about it."""


class BsbError(Exception):
    """An error with a stable machine-readable code and a message for the user."""

    code = "error"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self)


class MeshError(BsbError):
    code = "bad_mesh"


class ImageError(BsbError):
    code = "bad_image"


class ModelMissingError(BsbError):
    code = "models_missing"


class ProtocolError(BsbError):
    code = "bad_request"


class NotFoundError(BsbError):
    code = "not_found"


class Cancelled(BsbError):
    code = "cancelled"

    def __init__(self, message: str = "cancelled by the user") -> None:
        super().__init__(message)


def os_reason(exc: OSError) -> str:
    """The human part of an OSError ('Permission denied'), whatever raised it."""
    return exc.strerror or str(exc) or type(exc).__name__


def io_error(exc: OSError, verb: str, what: str, path: object, hint: str, code: str = "not_found") -> BsbError:
    """An OSError as a message naming the path and what to do ("cannot read image file X: ...; ...")."""
    return BsbError(f"cannot {verb} {what} {path}: {os_reason(exc)}; {hint}", code)
