"""First-audio latency and RTF of the plugin path, side by side with the stock library call.

    .venv/bin/python bench/bench_latency.py --engine piper --runs 10

For Piper the stock call is `PiperVoice.synthesize(text)` (what a seed would call); the
ratio column is plugin / stock, so 1.00 means the plugin adds nothing. Runs alternate
between the two paths so machine noise hits both alike. XTTS and Chatterbox have their
own engine benches (bench_xtts.py, bench_chatterbox.py) with their stock paths.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from texts import TEXTS


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


async def plugin_run(tts, text: str) -> tuple[float, float, float]:
    t0 = time.perf_counter()
    first = None
    samples = 0
    async for ev in tts.synthesize(text):
        if first is None:
            first = time.perf_counter() - t0
        samples += ev.frame.samples_per_channel
    total = time.perf_counter() - t0
    return first or total, total, samples / tts.sample_rate


def piper_stock_run(voice, text: str) -> tuple[float, float, float]:
    t0 = time.perf_counter()
    first = None
    samples = 0
    for chunk in voice.synthesize(text):
        if first is None:
            first = time.perf_counter() - t0
        samples += len(chunk.audio_float_array)
    total = time.perf_counter() - t0
    return first or total, total, samples / voice.config.sample_rate


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--engine", default="piper", choices=["auto", "piper", "xtts", "chatterbox"]
    )
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    args = parser.parse_args()

    from livekit.plugins import localtts

    tts = localtts.TTS(engine=args.engine)
    await tts.warmup()
    stock: Callable[[str], tuple[float, float, float]] | None = None
    if tts.engine.name == "piper":
        from piper import PiperVoice

        piper_engine = tts.engine
        voice = PiperVoice.load(piper_engine.model_path, piper_engine.config_path)
        list(voice.synthesize("Warming up."))

        def stock(text: str) -> tuple[float, float, float]:
            return piper_stock_run(voice, text)

    rows = []
    for name, text in TEXTS.items():
        ours: list[tuple[float, float, float]] = []
        theirs: list[tuple[float, float, float]] = []
        for _ in range(args.runs):
            ours.append(await plugin_run(tts, text))
            if stock is not None:
                theirs.append(stock(text))
        for path, runs in (("plugin", ours), ("stock", theirs)):
            if not runs:
                continue
            firsts = [r[0] * 1000 for r in runs]
            rtfs = [r[1] / r[2] for r in runs]
            rows.append(
                {
                    "text": f"{name} ({len(text)} ch)",
                    "path": path,
                    "first_p50_ms": statistics.median(firsts),
                    "first_p95_ms": pct(firsts, 0.95),
                    "rtf_p50": statistics.median(rtfs),
                    "audio_s": runs[0][2],
                }
            )
        if theirs:
            ratio_first = rows[-2]["first_p50_ms"] / rows[-1]["first_p50_ms"]
            ratio_rtf = rows[-2]["rtf_p50"] / rows[-1]["rtf_p50"]
            rows[-2]["ratio_first"], rows[-2]["ratio_rtf"] = ratio_first, ratio_rtf

    engine = tts.engine.name
    print(
        f"engine={engine} runs={args.runs} python={platform.python_version()} "
        f"machine={platform.machine()} cpus={os.cpu_count()}"
    )
    print(
        "| text | path | first audio p50 (ms) | p95 (ms) | RTF p50 | audio (s) "
        "| plugin/stock first | plugin/stock RTF |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        rf = f"{r['ratio_first']:.2f}" if r.get("ratio_first") else ""
        rr = f"{r['ratio_rtf']:.2f}" if r.get("ratio_rtf") else ""
        print(
            f"| {r['text']} | {r['path']} | {r['first_p50_ms']:.1f} | {r['first_p95_ms']:.1f} "
            f"| {r['rtf_p50']:.3f} | {r['audio_s']:.2f} | {rf} | {rr} |"
        )
    if args.json:
        args.json.write_text(json.dumps({"engine": engine, "rows": rows}, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
