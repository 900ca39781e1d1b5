"""`localtts say`: synthesize a text through the plugin, optionally into a WAV file."""

from __future__ import annotations

import asyncio
import json
import time
import wave
from pathlib import Path
from typing import Annotated, Any

import typer

EngineOpt = Annotated[str, typer.Option("--engine", "-e", help="auto | chatterbox | xtts | piper")]


async def _say(
    text: str, engine: str, voice: str | None, out: Path | None, language: str | None, speed: float
) -> dict[str, Any]:
    from livekit.plugins import localtts

    settings = localtts.get_settings()
    library = None
    if voice is not None:
        from livekit.plugins.localtts.voices import VoiceLibrary

        library = VoiceLibrary.from_settings(settings)
        await library.start()
    try:
        t_load = time.perf_counter()
        tts = localtts.TTS(
            engine=engine,  # type: ignore[arg-type]
            voice=voice,
            voice_library=library,
            language=language,
            speed=speed,
            settings=settings,
        )
        await tts.warmup()
        load_ms = (time.perf_counter() - t_load) * 1000

        writer = None
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            writer = wave.open(str(out), "wb")
            writer.setnchannels(1)
            writer.setsampwidth(2)
            writer.setframerate(tts.sample_rate)
        samples = 0
        first_audio_ms: float | None = None
        t0 = time.perf_counter()
        try:
            async with tts.synthesize(text) as stream:
                async for ev in stream:
                    if first_audio_ms is None:
                        first_audio_ms = (time.perf_counter() - t0) * 1000
                    samples += ev.frame.samples_per_channel
                    if writer is not None:
                        writer.writeframes(bytes(ev.frame.data))
        finally:
            if writer is not None:
                writer.close()
        total_ms = (time.perf_counter() - t0) * 1000
        audio_s = samples / tts.sample_rate
        return {
            "first_audio_ms": round(first_audio_ms, 1) if first_audio_ms is not None else None,
            "total_ms": round(total_ms, 1),
            "audio_s": round(audio_s, 3),
            "rtf": round(total_ms / 1000 / audio_s, 4) if audio_s else None,
            "engine": tts.engine.name,
            "sample_rate": tts.sample_rate,
            "voice": voice,
            "load_ms": round(load_ms, 1),
            "out": str(out) if out else None,
        }
    finally:
        if library is not None:
            await library.aclose()



def say(
    text: Annotated[str, typer.Argument(help="what to say")],
    engine: EngineOpt = "auto",
    voice: Annotated[str | None, typer.Option(help="voice id from the voice library")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="write a WAV file")] = None,
    language: Annotated[str | None, typer.Option(help="language code, e.g. en")] = None,
    speed: Annotated[float, typer.Option(help="speaking rate, 1.0 = normal")] = 1.0,
) -> None:
    """Synthesize TEXT through the plugin; the last line printed is a JSON report."""
    from livekit.agents import APIError
    from livekit.plugins.localtts import EngineError

    try:
        report = asyncio.run(_say(text, engine, voice, out, language, speed))
    except (APIError, EngineError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from e
    if out is not None:
        typer.echo(f"wrote {out} ({report['audio_s']} s at {report['sample_rate']} Hz)")
    typer.echo(json.dumps(report))

