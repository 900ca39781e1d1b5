"""`localtts say`: synthesize a text through the plugin, optionally into a WAV file."""

from __future__ import annotations

import asyncio
import json
import time
import wave
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .common import USAGE_EXIT, error_text, fail, plugin_settings

if TYPE_CHECKING:
    from livekit.plugins import localtts
    from livekit.plugins.localtts.voices import VoiceLibrary

EngineOpt = Annotated[
    str | None,
    typer.Option(
        "--engine", "-e", help="auto | chatterbox | xtts | piper [default: LOCALTTS_ENGINE or auto]"
    ),
]


def _build_tts(settings: localtts.Settings, engine: str | None, **options: Any) -> localtts.TTS:
    from livekit.plugins import localtts
    from livekit.plugins.localtts.tts import resolve_engine

    if engine is not None:  # checked here first, so an error names the flag, not the argument
        resolve_engine(engine, settings, source=f"--engine {engine}")  # type: ignore[arg-type]
    return localtts.TTS(engine=engine, settings=settings, **options)  # type: ignore[arg-type]


async def _default_voice(
    tts: localtts.TTS, library: VoiceLibrary, voice: str | None, settings: localtts.Settings
) -> str | None:
    """The voice to speak with: `--voice`, else LOCALTTS_VOICE. A default voice that cannot
    be used here is dropped with a warning (as the service and the worker do); an explicit
    `--voice` that cannot is an error."""
    if voice is not None or settings.voice is None:
        return voice
    from livekit.plugins.localtts.engines import VoiceError
    from livekit.plugins.localtts.voices import DatabaseUnavailableError

    try:
        await library.conditioning(settings.voice, tts.engine)
        return settings.voice
    except (VoiceError, DatabaseUnavailableError) as e:
        typer.echo(
            f"warning: LOCALTTS_VOICE={settings.voice!r} is ignored: {e}; speaking with the "
            f"{tts.engine.name} engine's own voice",
            err=True,
        )
        return None


async def _synthesize_to(
    tts: localtts.TTS, text: str, out: Path | None
) -> tuple[int, float | None]:
    """(samples, first audio ms) of `text`; with `out`, a WAV file that exists only once
    the whole text is in it (written beside it, then renamed)."""
    partial = out.with_name(f".{out.name}.partial") if out is not None else None
    writer = None
    samples = 0
    first_audio_ms: float | None = None
    t0 = time.perf_counter()
    try:
        if partial is not None:
            partial.parent.mkdir(parents=True, exist_ok=True)
            writer = wave.open(str(partial), "wb")
            writer.setnchannels(1)
            writer.setsampwidth(2)
            writer.setframerate(tts.sample_rate)
        async with tts.synthesize(text) as stream:
            async for ev in stream:
                if first_audio_ms is None:
                    first_audio_ms = (time.perf_counter() - t0) * 1000
                samples += ev.frame.samples_per_channel
                if writer is not None:
                    writer.writeframes(bytes(ev.frame.data))
        if writer is not None:
            writer.close()
            writer = None
            partial.replace(out)  # type: ignore[union-attr]
    finally:
        if writer is not None:
            writer.close()
        if partial is not None:
            partial.unlink(missing_ok=True)
    return samples, first_audio_ms


async def _say(
    text: str,
    engine: str | None,
    voice: str | None,
    out: Path | None,
    language: str | None,
    speed: float,
) -> dict[str, Any]:
    settings = plugin_settings()
    library = None
    if voice is not None or settings.voice is not None:
        from livekit.plugins.localtts.voices import VoiceLibrary

        library = VoiceLibrary.from_settings(settings)
        await library.start()
    try:
        t_load = time.perf_counter()
        tts = _build_tts(settings, engine, voice_library=library, language=language, speed=speed)
        await tts.warmup()
        load_ms = (time.perf_counter() - t_load) * 1000
        chosen = await _default_voice(tts, library, voice, settings) if library else None
        tts.update_options(voice=chosen)
        t0 = time.perf_counter()
        samples, first_audio_ms = await _synthesize_to(tts, text, out)
        total_ms = (time.perf_counter() - t0) * 1000
        audio_s = samples / tts.sample_rate
        return {
            "first_audio_ms": round(first_audio_ms, 1) if first_audio_ms is not None else None,
            "total_ms": round(total_ms, 1),
            "audio_s": round(audio_s, 3),
            "rtf": round(total_ms / 1000 / audio_s, 4) if audio_s else None,
            "engine": tts.engine.name,
            "sample_rate": tts.sample_rate,
            "voice": chosen,
            "load_ms": round(load_ms, 1),
            "out": str(out) if out else None,
        }
    finally:
        if library is not None:
            await library.aclose()


def say(
    text: Annotated[str, typer.Argument(help="what to say")],
    engine: EngineOpt = None,
    voice: Annotated[
        str | None,
        typer.Option(help="voice id from the voice library [default: LOCALTTS_VOICE]"),
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="write a WAV file")] = None,
    language: Annotated[str | None, typer.Option(help="language code, e.g. en")] = None,
    speed: Annotated[float, typer.Option(help="speaking rate, 1.0 = normal")] = 1.0,
) -> None:
    """Synthesize TEXT through the plugin; the last line printed is a JSON report."""
    from livekit.agents import APIError, APIStatusError
    from livekit.plugins.localtts import EngineError
    from livekit.plugins.localtts.voices import DatabaseUnavailableError

    try:
        report = asyncio.run(_say(text, engine, voice, out, language, speed))
    except (APIError, EngineError, DatabaseUnavailableError, ValueError, OSError) as e:
        usage = isinstance(e, ValueError) or (
            isinstance(e, APIStatusError) and 400 <= e.status_code < 500
        )
        fail(error_text(e), code=USAGE_EXIT if usage else 1)
    if out is not None:
        typer.echo(f"wrote {out} ({report['audio_s']} s at {report['sample_rate']} Hz)")
    typer.echo(json.dumps(report))
