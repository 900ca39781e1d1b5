"""`localtts voices ...`: manage the voice library (mounted in `cli.app`).

Changes go to PostgreSQL (DATABASE_URL, else the embedded server under the data directory)
and reach running workers through LISTEN/NOTIFY: no restart needed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from .common import error_text, fail, plugin_settings

voices_app = typer.Typer(
    help="Manage cloned voices (reference clips) in the voice library.", no_args_is_help=True
)

T = TypeVar("T")


def _run(action: Callable[[Any], Awaitable[T]]) -> T:
    """Run `action(library)` on a started library; errors become one line and exit 1."""
    from livekit.plugins.localtts.engines.base import VoiceError
    from livekit.plugins.localtts.voices import DatabaseUnavailableError, VoiceLibrary

    settings = plugin_settings()

    async def main() -> T:
        library = VoiceLibrary.from_settings(settings)
        await library.start()
        try:
            return await action(library)
        finally:
            await library.aclose()

    try:
        return asyncio.run(main())
    except (VoiceError, DatabaseUnavailableError, OSError) as e:
        fail(_explain(e))


def _explain(error: Exception) -> str:
    """The error's message, with how to do here what it asks for."""
    from livekit.plugins.localtts.voices import VoiceExistsError

    if isinstance(error, VoiceExistsError):
        return f"{error}: add --replace"
    return error_text(error)


@voices_app.command("add")
def add(
    voice_id: Annotated[
        str,
        typer.Argument(
            metavar="ID", help="voice id: printable text without /, stored NFKC-normalized"
        ),
    ],
    path: Annotated[Path, typer.Argument(help="reference clip: WAV, FLAC, OGG or MP3")],
    name: Annotated[str | None, typer.Option(help="display name")] = None,
    language: Annotated[str | None, typer.Option(help="language code, e.g. en")] = None,
    replace: Annotated[bool, typer.Option(help="overwrite a voice with this id")] = False,
) -> None:
    """Validate a reference clip and store it as voice ID."""

    async def action(library: Any) -> Any:
        data = _read(path)
        return await library.add(voice_id, data, name=name, language=language, replace=replace)

    info = _run(action)
    typer.echo(f"added {info.voice_id!r}: {info.duration:.1f} s at {info.sample_rate} Hz")


@voices_app.command("list")
def list_voices(
    as_json: Annotated[bool, typer.Option("--json", help="JSON output")] = False,
) -> None:
    """List every voice, from the database and the voices directory."""

    async def action(library: Any) -> tuple[list[Any], str, str, dict[str, str]]:
        return await library.list(), library.status, library.status_detail, library.problems

    voices, status, detail, problems = _run(action)
    if as_json:
        typer.echo(json.dumps([v.to_dict() for v in voices], indent=2, ensure_ascii=False))
    else:
        for v in voices:
            label = f" ({v.name})" if v.name else ""
            lang = f" [{v.language}]" if v.language else ""
            typer.echo(f"{v.voice_id}{label}{lang}  {v.duration:.1f} s  {v.source}")
        if not voices:
            typer.echo("no voices yet: localtts voices add ID PATH")
    for voice_id, why in problems.items():
        typer.echo(f"warning: directory voice {voice_id!r} skipped: {why}", err=True)
    if status != "ok":  # the list above is the directory's only: not every voice there is
        fail(detail)


@voices_app.command("rm")
def remove(voice_id: Annotated[str, typer.Argument(metavar="ID")]) -> None:
    """Remove voice ID from the database."""

    async def action(library: Any) -> None:
        await library.remove(voice_id)

    _run(action)
    typer.echo(f"removed {voice_id!r}")


@voices_app.command("import")
def import_dir(
    directory: Annotated[Path, typer.Argument(metavar="DIR", help="<id>.wav [+ <id>.json] files")],
    replace: Annotated[bool, typer.Option(help="overwrite voices that exist")] = False,
) -> None:
    """Add every clip of DIR: <voice_id>.wav, optional <voice_id>.json with name and language.

    A bad clip is reported and the others are still added."""
    from livekit.plugins.localtts.engines.base import VoiceError
    from livekit.plugins.localtts.voices.directory import AUDIO_SUFFIXES, read_sidecar

    if not directory.is_dir():
        fail(f"{directory} is not a directory")
    files = sorted(p for p in directory.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        fail(f"no audio files ({', '.join(AUDIO_SUFFIXES)}) in {directory}")

    async def action(library: Any) -> list[str]:
        failures: list[str] = []
        for path in files:
            try:
                meta = read_sidecar(path.with_suffix(".json"))
                info = await library.add(
                    path.stem,
                    _read(path),
                    name=meta.get("name"),
                    language=meta.get("language"),
                    replace=replace,
                )
            except (VoiceError, OSError, ValueError) as e:
                failures.append(path.name)
                typer.echo(f"skipped {path.name}: {_explain(e)}", err=True)
                continue
            typer.echo(f"added {info.voice_id!r}: {info.duration:.1f} s")
        return failures

    failures = _run(action)
    typer.echo(f"imported {len(files) - len(failures)} of {len(files)} clip(s)")
    if failures:
        raise typer.Exit(1)


def _read(path: Path) -> bytes:
    """The file's bytes; a file over the size bound is refused before it is read."""
    from livekit.plugins.localtts.voices.audio import MAX_AUDIO_BYTES, oversize

    try:
        size = path.stat().st_size
        if size > MAX_AUDIO_BYTES:
            raise OSError(oversize(size))
        return path.read_bytes()
    except OSError as e:
        raise OSError(f"cannot use {path}: {e.strerror or e}") from e
