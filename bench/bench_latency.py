"""First-audio latency and RTF of the plugin path, side by side with the stock library call.

    .venv/bin/python bench/bench_latency.py --engine piper --runs 10

For Piper the stock call is `PiperVoice.synthesize(text)` (what a seed would call); the
ratio column is plugin / stock, so 1.00 means the plugin adds nothing. With a voice that
splits at its decoder, the plugin also runs with a sentence per ONNX call ("one call":
`PiperEngine(decoder_windows=False)`), what the windows are measured against. Runs alternate
between the two paths so machine noise hits both alike. XTTS and Chatterbox have their
own engine benches (bench_xtts.py, bench_chatterbox.py) with their stock paths.

With Piper it then measures replies whose first sentence is short, long or a run-on
(`texts.FIRST_SENTENCES`), against the naive Piper plugin behind LiveKit's `StreamAdapter`
(`naive_piper.py`) in the same run: first audio of `synthesize()`, and of `stream()` fed
like an LLM (a word every `--word-gap-ms`); the word start times of `synthesize()`'s aligned
transcript against pocketsphinx forced alignment of the audio it gave; and how well pocketsphinx
understands the plugin's audio (first piece joined to the rest) against Piper's unsplit
synthesis of the same text (word error rate, mean over `--asr-runs`). `--sweep 2 3 4 5 6`
repeats first audio and word error for those `first_piece_min_words`.
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

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(Path(__file__).parent), str(ROOT / "plugins"), str(ROOT)]
from texts import FIRST_SENTENCES, TEXTS  # noqa: E402


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


async def stream_first_audio(tts, text: str, word_gap_s: float) -> float:
    """First audio of `tts.stream()` fed `text` word by word, as an LLM streams a reply."""
    stream = tts.stream()
    tokens = [w if i == 0 else " " + w for i, w in enumerate(text.split(" "))]

    async def llm() -> None:
        for token in tokens:
            stream.push_text(token)
            await asyncio.sleep(word_gap_s)
        stream.flush()
        stream.end_input()

    t0 = time.perf_counter()
    feeding = asyncio.create_task(llm())
    first = None
    async for _ev in stream:
        if first is None:
            first = time.perf_counter() - t0
    await feeding
    await stream.aclose()
    return first if first is not None else float("nan")


async def first_audio_only(tts, text: str) -> float:
    return (await plugin_run(tts, text))[0]


def median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000


async def first_sentence_rows(tts, naive, runs: int, word_gap_s: float,
                              one_call=None) -> list[dict]:
    """First audio, ours and naive (and ours with a sentence per ONNX call), for each
    first-sentence kind; runs alternate."""
    rows = []
    for name, text in FIRST_SENTENCES.items():
        first_sentence = text.split(". ")[0]
        timings: dict[str, list[float]] = {
            k: [] for k in ("syn", "syn_one_call", "syn_naive", "st", "st_naive")}
        for _ in range(runs):
            timings["syn"].append(await first_audio_only(tts, text))
            if one_call is not None:
                timings["syn_one_call"].append(await first_audio_only(one_call, text))
            timings["syn_naive"].append(await first_audio_only(naive, text))
            timings["st"].append(await stream_first_audio(tts, text, word_gap_s))
            timings["st_naive"].append(await stream_first_audio(naive, text, word_gap_s))
        row = {"text": f"{name} ({len(first_sentence)} ch)"}
        row.update({k: median_ms(v) for k, v in timings.items() if v})
        rows.append(row)
    return rows


async def word_timing_errors(tts, texts: list[str]) -> tuple[list[float], int]:
    """|word start in the aligned transcript - forced alignment's| over every word of
    `texts`, as a caller of `tts.synthesize()` gets them (pieces joined), and how many words
    came without a time."""
    from tests.livekit_helpers import hear
    from tests.speech_check import align_words

    errors, untimed = [], 0
    for text in texts:
        heard = await hear(tts.synthesize(text))
        if heard.text != text:
            raise RuntimeError(f"the transcript is not the input: {heard.text!r}")
        untimed += len(text.split()) - len(heard.timed)
        reference = align_words(heard.audio, tts.sample_rate, text)
        if len(reference) != len(heard.timed):
            raise RuntimeError(f"forced alignment lost words of {text!r}")
        errors += [
            abs(t.start_time - ref) for (t, _), (_, ref) in zip(heard.timed, reference, strict=True)
        ]
    return errors, untimed


async def word_errors(tts, voice, text: str, runs: int) -> tuple[float, float]:
    """Mean word error rate of the plugin's audio and of Piper's unsplit synthesis."""
    import numpy as np

    from tests.livekit_helpers import frames_to_float
    from tests.speech_check import recognize, spoken_words, word_error_rate

    reference = spoken_words(text)
    ours, unsplit = [], []
    for _ in range(runs):
        frames = [ev.frame async for ev in tts.synthesize(text)]
        ours.append(word_error_rate(reference, recognize(frames_to_float(frames), tts.sample_rate)))
        audio = np.concatenate([c.audio_float_array for c in voice.synthesize(text)])
        unsplit.append(word_error_rate(reference, recognize(audio, voice.config.sample_rate)))
    return statistics.mean(ours), statistics.mean(unsplit)


async def sweep_min_words(
    engine, voice, values: list[int], runs: int, asr_runs: int, gap: float
) -> list[dict]:
    """First audio and word error for each `first_piece_min_words`, on the replies whose
    first sentence gets cut (long, run-on). The settings take turns within every run, so
    the machine's load falls on all of them alike; the unsplit reference is shared."""
    from livekit.plugins import localtts
    from livekit.plugins.localtts.text import split_text

    texts = [FIRST_SENTENCES["long first sentence"], FIRST_SENTENCES["run-on first sentence"]]
    ttses = {
        words: localtts.TTS(
            engine=engine,
            settings=localtts.Settings(first_piece_min_words=words),  # type: ignore[call-arg]
        )
        for words in values
    }
    syn: dict[int, list[float]] = {w: [] for w in values}
    st: dict[int, list[float]] = {w: [] for w in values}
    wer: dict[int, list[float]] = {w: [] for w in values}
    unsplit: list[float] = []
    for _ in range(runs):
        for words, tts in ttses.items():
            for text in texts:
                syn[words].append(await first_audio_only(tts, text))
                st[words].append(await stream_first_audio(tts, text, gap))
    for _ in range(asr_runs):
        for words, tts in ttses.items():
            for text in texts:
                ours, reference = await word_errors(tts, voice, text, 1)
                wer[words].append(ours)
                unsplit.append(reference)
    print(
        f"\nfirst_piece_min_words sweep (long and run-on replies, medians of {2 * runs} first "
        f"audios, word error means of {2 * asr_runs}; unsplit Piper: "
        f"{statistics.mean(unsplit):.3f})"
    )
    print("| min words | first piece (synthesize) | synthesize() (ms) | stream() (ms) | WER |")
    print("|---:|---|---:|---:|---:|")
    rows = []
    for words in values:
        first = " / ".join(f'"{split_text(t, first_piece_min_words=words)[0].text}"' for t in texts)
        row = {"min_words": words, "first_pieces": first, "syn_ms": median_ms(syn[words]),
               "stream_ms": median_ms(st[words]), "wer": statistics.mean(wer[words])}  # fmt: skip
        rows.append(row)
        print(f"| {words} | {first} | {row['syn_ms']:.0f} | {row['stream_ms']:.0f} "
              f"| {row['wer']:.3f} |")  # fmt: skip
    return rows


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--engine", default="piper", choices=["auto", "piper", "xtts", "chatterbox"]
    )
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--word-gap-ms", type=float, default=20.0)
    parser.add_argument("--asr-runs", type=int, default=3)
    parser.add_argument("--sweep", type=int, nargs="*", default=[], metavar="MIN_WORDS")
    parser.add_argument("--skip-stock", action="store_true", help="skip the first table")
    parser.add_argument(
        "--first-audio-only", action="store_true", help="skip word timing and word error"
    )
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    args = parser.parse_args()

    from livekit.plugins import localtts

    tts = localtts.TTS(engine=args.engine)
    await tts.warmup()
    stock: Callable[[str], tuple[float, float, float]] | None = None
    one_call = None  # Piper: the plugin with a sentence per ONNX call (no decoder windows)
    if tts.engine.name == "piper":
        from livekit.plugins.localtts.engines.piper import PiperEngine
        from piper import PiperVoice

        piper_engine = tts.engine
        if getattr(piper_engine, "_split", None) is not None:
            one_call = localtts.TTS(engine=PiperEngine(decoder_windows=False))
            await one_call.warmup()
        voice = PiperVoice.load(piper_engine.model_path, piper_engine.config_path)
        list(voice.synthesize("Warming up."))

        def stock(text: str) -> tuple[float, float, float]:
            return piper_stock_run(voice, text)

    rows = []
    for name, text in TEXTS.items() if not args.skip_stock else ():
        ours: list[tuple[float, float, float]] = []
        ours_one_call: list[tuple[float, float, float]] = []
        theirs: list[tuple[float, float, float]] = []
        for _ in range(args.runs):
            ours.append(await plugin_run(tts, text))
            if one_call is not None:
                ours_one_call.append(await plugin_run(one_call, text))
            if stock is not None:
                theirs.append(stock(text))
        paths = (("plugin, one call per sentence", ours_one_call), ("plugin", ours),
                 ("stock", theirs))
        for path, runs in paths:
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
            for row in rows[-3 if ours_one_call else -2 : -1]:
                row["ratio_first"] = row["first_p50_ms"] / rows[-1]["first_p50_ms"]
                row["ratio_rtf"] = row["rtf_p50"] / rows[-1]["rtf_p50"]

    engine = tts.engine.name
    print(
        f"engine={engine} runs={args.runs} python={platform.python_version()} "
        f"machine={platform.machine()} cpus={os.cpu_count()} load={os.getloadavg()[0]:.1f}"
    )
    if rows:
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
    results: dict = {"engine": engine, "rows": rows}
    if engine == "piper":
        from naive_piper import naive_stream_adapter

        naive = naive_stream_adapter(piper_engine.model_path, piper_engine.config_path)
        await first_audio_only(naive, "Warming up.")
        gap = args.word_gap_ms / 1000
        first = await first_sentence_rows(tts, naive, args.runs, gap, one_call)
        print(
            f"\nFirst audio (ms, median of {args.runs}); stream() fed a word every "
            f"{args.word_gap_ms:g} ms; naive = Piper behind LiveKit's StreamAdapter; one call "
            f"= ours with a sentence per ONNX call (no decoder windows)"
        )
        print("| reply | synthesize() ours | one call | naive | stream() ours | naive "
              "| ours/naive stream |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for r in first:
            one = f"{r['syn_one_call']:.0f}" if "syn_one_call" in r else ""
            print(
                f"| {r['text']} | {r['syn']:.0f} | {one} | {r['syn_naive']:.0f} | {r['st']:.0f} "
                f"| {r['st_naive']:.0f} | {r['st'] / r['st_naive']:.2f} |"
            )
        if args.first_audio_only:
            results["first_audio"] = first
            if args.json:
                args.json.write_text(json.dumps(results, indent=2))
            return
        texts = [*FIRST_SENTENCES.values(), *TEXTS.values()]
        errors, untimed = await word_timing_errors(tts, texts)
        print(
            f"\nWord starts of synthesize()'s aligned transcript vs pocketsphinx forced "
            f"alignment of its audio ({len(errors)} words, {untimed} without a time): median "
            f"{median_ms(errors):.0f} ms, p90 {pct(errors, 0.9) * 1000:.0f} ms, "
            f"max {max(errors) * 1000:.0f} ms"
        )
        print(f"\nWord error rate (pocketsphinx, mean of {args.asr_runs}): ours vs unsplit Piper")
        print("| reply | first piece | ours | unsplit |")
        print("|---|---|---:|---:|")
        wers = []
        for name, text in FIRST_SENTENCES.items():
            from livekit.plugins.localtts.text import split_text

            piece = split_text(
                text,
                first_clause_min_chars=tts._opts.first_clause_min_chars,
                first_piece_min_words=tts._opts.first_piece_min_words,
            )[0].text
            ours_wer, unsplit_wer = await word_errors(tts, voice, text, args.asr_runs)
            wers.append({"text": name, "ours": ours_wer, "unsplit": unsplit_wer})
            print(f"| {name} | {piece} | {ours_wer:.3f} | {unsplit_wer:.3f} |")
        results.update(first_audio=first, word_start_errors_s=errors, word_error_rates=wers)
        if args.sweep:
            results["sweep"] = await sweep_min_words(
                piper_engine, voice, args.sweep, args.runs, args.asr_runs, gap
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
