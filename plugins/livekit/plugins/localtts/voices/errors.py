"""Errors of the voice library beyond those every engine shares (engines/base.py)."""

from __future__ import annotations

from ..engines.base import VoiceError


class VoiceExistsError(VoiceError):
    """A voice with this id exists already; the caller may ask to replace it.

    The message says "replace it explicitly" and no more: how (an argument, a CLI flag, a
    form field) is for whoever shows it to add."""


class DatabaseUnavailableError(RuntimeError):
    """The voice database cannot be reached: directory voices still work, changes do not.

    Not a VoiceError: the request was fine, the service is degraded (HTTP 503, not 4xx).
    """


def brief_error(error: BaseException | None) -> str:
    """"TypeName: first line of the message", for logs and messages."""
    if error is None:
        return "unknown error"
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
