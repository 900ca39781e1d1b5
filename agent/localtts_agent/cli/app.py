"""The `localtts` command line: say, serve, doctor, voices (one module per command)."""

from __future__ import annotations

import typer

from .doctor import doctor
from .say import say
from .serve import serve
from .voices import voices_app

app = typer.Typer(
    help="Self-hosted TTS for LiveKit agents.", no_args_is_help=True, add_completion=False
)
app.add_typer(voices_app, name="voices")
app.command()(serve)
app.command()(say)
app.command()(doctor)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
