"""What every `localtts` command does the same way: settings read once, with an invalid
variable named in one line, and failures printed as one `error: ...` line with a non-zero
exit (2: a setting or argument to fix; 1: something failed)."""

from __future__ import annotations

from typing import TYPE_CHECKING, NoReturn

import typer

if TYPE_CHECKING:
    from livekit.plugins.localtts import Settings

USAGE_EXIT = 2  # what to fix is a setting or an argument (typer's own usage errors: 2 too)
FAILURE_EXIT = 1


def fail(message: str, *, code: int = FAILURE_EXIT) -> NoReturn:
    """Print `error: <message>` on stderr (one line per line of the message) and exit."""
    for line in message.splitlines() or [""]:
        typer.echo(f"error: {line}", err=True)
    raise typer.Exit(code)


def error_text(error: BaseException) -> str:
    """An error's message for a person: LiveKit's APIError prints as
    `message=..., status_code=..., retryable=...`; its `message` is what to show."""
    from livekit.agents import APIError

    if isinstance(error, APIError):
        return error.message
    return str(error) or type(error).__name__


def plugin_settings() -> Settings:
    """The plugin's settings, or exit naming the variable to fix."""
    from livekit.plugins.localtts import SettingsError, get_settings

    try:
        return get_settings()
    except SettingsError as e:
        fail(str(e), code=USAGE_EXIT)
