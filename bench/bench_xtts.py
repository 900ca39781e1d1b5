"""XTTS-v2 on the CPU: this engine vs coqui's stock streaming vs the naive full-utterance path.

Random weights of the real v2 shapes (nothing is downloaded): speed depends on shapes, not
values. Random weights rarely emit the stop token, so it is ruled out and every path
generates exactly `--tokens` tokens. One run prints one table:

    python bench/bench_xtts.py                 # real size, fp32 (+ int8 with --int8)
    python bench/bench_xtts.py --int8 --iterations 3
    python bench/bench_xtts.py --tiny          # smoke test: 2-layer GPT, seconds

Columns: first chunk latency, GPT tokens per second over the whole utterance (real time
needs 21.5), RTF (compute time / audio duration), and ratios against stock streaming.
The last two rows run the last configuration in turn through `engine.stream` and through
the plugin (`localtts.TTS(engine=...).synthesize`, first audio frame): the plugin's figure
is what users get, and the one to quote.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "plugins"), str(ROOT)]

import numpy as np  # noqa: E402
import torch  # noqa: E402
from livekit.plugins.localtts.engines.base import SynthesisParams  # noqa: E402
from livekit.plugins.localtts.engines.xtts import XTTSEngine  # noqa: E402
from livekit.plugins.localtts.engines.xtts_decode import quantize_gpt_int8  # noqa: E402
from livekit.plugins.localtts.engines.xtts_vocoder import cpu_has_fast_bf16  # noqa: E402
from livekit.plugins.localtts.host import performance_cores, set_torch_threads  # noqa: E402

from tests.tiny_xtts import build_xtts, make_test_clip  # noqa: E402

# one clause: the engine and the stock paths then generate the same number of tokens
TEXT = "The quick brown fox jumps over the lazy dog and then rests in the afternoon sun."
SAMPLE_RATE = 24000
TOKENS_PER_SECOND_REALTIME = 21.5


@dataclass
class Run:
    first_chunk_s: float
    total_s: float
    audio_s: float
    tokens: int


@dataclass
class Row:
    name: str
    runs: list[Run]

    def __post_init__(self) -> None:  # progress: real-size runs take minutes
        print(f"  done: {self.name}", file=sys.stderr, flush=True)

    def median(self, field: str) -> float:
        return statistics.median(getattr(r, field) for r in self.runs)

    @property
    def tokens_per_s(self) -> float:
        return statistics.median(r.tokens / r.total_s for r in self.runs)

    @property
    def rtf(self) -> float:
        return statistics.median(r.total_s / r.audio_s for r in self.runs)


def timed(chunks: Callable[[], Iterator[np.ndarray]], tokens: int) -> Run:
    start = time.perf_counter()
    first = None
    samples = 0
    for chunk in chunks():
        if first is None:
            first = time.perf_counter() - start
        samples += len(chunk)
    total = time.perf_counter() - start
    return Run(first or total, total, samples / SAMPLE_RATE, tokens)


def plugin_timed(loop: asyncio.AbstractEventLoop, tts: Any, tokens: int) -> Run:
    """The same text through the plugin (`localtts.TTS(engine=...).synthesize`): what an
    AgentSession or the service gets, timed to its first audio frame."""
    from bench.bench_latency import plugin_run

    first, total, audio_s = loop.run_until_complete(plugin_run(tts, TEXT))
    return Run(first, total, audio_s, tokens)


def alternating(names: list[str], paths: list[Callable[[], Run]], iterations: int) -> list[Row]:
    """Rows of paths run in turn, so machine noise hits each alike."""
    runs: list[list[Run]] = [[] for _ in paths]
    for _ in range(iterations):
        for path, out in zip(paths, runs, strict=True):
            out.append(path())
    return [Row(name, out) for name, out in zip(names, runs, strict=True)]


def stock_stream(model, voice, tokens: int) -> Iterator[np.ndarray]:
    for chunk in model.inference_stream(
        TEXT, "en", voice.gpt_cond_latent, voice.speaker_embedding,
        stream_chunk_size=20, max_new_tokens=tokens,
    ):
        yield chunk.cpu().numpy()


def naive_full(model, voice, tokens: int) -> Iterator[np.ndarray]:
    out = model.inference(
        TEXT, "en", voice.gpt_cond_latent, voice.speaker_embedding, max_new_tokens=tokens
    )
    yield np.asarray(out["wav"])


def engine_stream(engine: XTTSEngine, voice, tokens: int) -> Iterator[np.ndarray]:
    engine.max_tokens = tokens
    yield from engine.stream(TEXT, voice, SynthesisParams(), threading.Event())


def vocoder_bf16_snr(model, frames: int = 120) -> float:
    """The same random HiFiGAN input decoded in fp32 and under CPU bf16 autocast."""
    gen = torch.Generator().manual_seed(0)
    decoder = model.hifigan_decoder.waveform_decoder
    x = torch.randn(1, decoder.conv_pre.in_channels, frames, generator=gen)
    g = torch.randn(1, decoder.cond_layer.in_channels, 1, generator=gen)
    with torch.inference_mode():
        ref = decoder(x, g=g)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = decoder(x, g=g).float()
    return float(10 * torch.log10(ref.pow(2).sum() / (ref - out).pow(2).sum()))


def closeness(fp32_model, int8_model, voice, steps: int = 64) -> dict[str, float]:
    """Teacher-forced: the same prefix and codes through both GPTs; compare latents,
    next-token choices and the audio HiFiGAN makes of the latents."""
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        codes = torch.randint(0, 1024, (1, steps), generator=gen)
        text = torch.IntTensor(fp32_model.tokenizer.encode(TEXT.lower(), lang="en"))[None]
        outs = []
        for model in (fp32_model, int8_model):
            gpt = model.gpt
            text_emb = gpt.text_embedding(text) + gpt.text_pos_embedding(text)
            mel_emb = gpt.mel_embedding(codes) + gpt.mel_pos_embedding(codes)
            emb = torch.cat([voice.gpt_cond_latent, text_emb, mel_emb], dim=1)
            hidden = gpt.final_norm(gpt.gpt(inputs_embeds=emb).last_hidden_state[:, -steps:])
            outs.append((hidden, gpt.mel_head(hidden)))
        (ha, la), (hb, lb) = outs
        wa = fp32_model.hifigan_decoder(ha, g=voice.speaker_embedding).reshape(-1)
        wb = fp32_model.hifigan_decoder(hb, g=voice.speaker_embedding).reshape(-1)
    return {
        "latent_rel_err": float((ha - hb).norm() / ha.norm()),
        "top1_agree": float((la.argmax(-1) == lb.argmax(-1)).float().mean()),
        "audio_snr_db": float(10 * torch.log10(wa.pow(2).sum() / (wa - wb).pow(2).sum())),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="2-layer GPT (smoke test)")
    parser.add_argument("--tokens", type=int, default=None, help="GPT tokens per utterance")
    parser.add_argument("--iterations", type=int, default=1)
    parser.add_argument("--int8", action="store_true", help="also run the int8 GPT")
    parser.add_argument("--threads", type=int, default=None, help="default: performance cores")
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--skip-stock", action="store_true",
                        help="no stock rows (ratios then against the first row)")
    args = parser.parse_args()
    tokens = args.tokens or (40 if args.tiny else 100)
    threads = args.threads or performance_cores()
    set_torch_threads(threads)

    t0 = time.perf_counter()
    model = build_xtts("tiny" if args.tiny else "real")
    build_s = time.perf_counter() - t0
    reference = build_xtts("tiny" if args.tiny else "real") if args.int8 else None
    engine = XTTSEngine.from_model(model, max_tokens=tokens)

    # stock paths first: the engine folds HiFiGAN's weight_norm when it loads
    rows: list[Row] = []
    voice_clip = make_test_clip("bench", seconds=6.0)
    with torch.inference_mode():
        wav = torch.from_numpy(voice_clip.audio)[None]
        import torchaudio.functional as AF

        wav = AF.resample(wav, 24000, 22050)
        stock_voice = type("V", (), {})()
        stock_voice.gpt_cond_latent = model.get_gpt_cond_latents(wav, 22050, length=6)
        stock_voice.speaker_embedding = model.get_speaker_embedding(wav, 22050)
    if not args.skip_stock:
        list(stock_stream(model, stock_voice, 5))  # warm up
        rows.append(Row("stock inference_stream(20)", [
            timed(lambda: stock_stream(model, stock_voice, tokens), tokens)
            for _ in range(args.iterations)
        ]))
    if not args.skip_naive:
        rows.append(Row("naive model.inference()", [
            timed(lambda: naive_full(model, stock_voice, tokens), tokens)
            for _ in range(args.iterations)
        ]))

    t0 = time.perf_counter()
    engine.load()
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    voice = engine.condition(voice_clip)
    condition_s = time.perf_counter() - t0
    rows.append(Row("this engine fp32", [
        timed(lambda: engine_stream(engine, voice, tokens), tokens)
        for _ in range(args.iterations)
    ]))

    quality: dict[str, float] = {}
    if args.int8:
        t0 = time.perf_counter()
        quantize_gpt_int8(model)
        quant_s = time.perf_counter() - t0
        engine.int8 = True
        list(engine_stream(engine, voice, 8))  # warm the quantized kernels
        rows.append(Row("this engine int8", [
            timed(lambda: engine_stream(engine, voice, tokens), tokens)
            for _ in range(args.iterations)
        ]))
        if not args.skip_stock:
            rows.append(Row("stock inference_stream(20) int8", [
                timed(lambda: stock_stream(model, stock_voice, tokens), tokens)
                for _ in range(args.iterations)
            ]))
        quality = closeness(reference, model, voice.data)
        quality["quantize_s"] = quant_s
        if cpu_has_fast_bf16():  # the CPU default where the CPU has native bf16
            engine.vocoder_bf16 = True
            list(engine_stream(engine, voice, 8))
            rows.append(Row("this engine int8 + bf16 HiFiGAN", [
                timed(lambda: engine_stream(engine, voice, tokens), tokens)
                for _ in range(args.iterations)
            ]))
            quality["vocoder_bf16_snr_db"] = vocoder_bf16_snr(model)
        # HiFiGAN's 1-D convolutions as channels-last 2-D ones (the CPU default on x86), on
        # top of the row before: a new decoder copy, warmed like the rows before
        engine.vocoder_channels_last = True
        engine._vocoder_decoder = None  # made again by waveform_decoder()
        list(engine_stream(engine, voice, 8))
        rows.append(Row("  + channels-last HiFiGAN", [
            timed(lambda: engine_stream(engine, voice, tokens), tokens)
            for _ in range(args.iterations)
        ]))

    # the product's path: the same engine (last configuration) through the plugin, in turn
    # with engine.stream, so that the table shows what the plugin adds
    from livekit.plugins import localtts

    engine.set_default_voice(voice)
    tts = localtts.TTS(engine=engine)
    loop = asyncio.new_event_loop()
    plugin_timed(loop, tts, tokens)  # untimed: the plugin's first-call costs
    engine_row, plugin_row = alternating(
        ["  the same, engine.stream", "  the same, through the plugin"],
        [lambda: timed(lambda: engine_stream(engine, None, tokens), tokens),
         lambda: plugin_timed(loop, tts, tokens)],
        args.iterations,
    )
    rows += [engine_row, plugin_row]
    loop.close()

    size = "tiny (2x256)" if args.tiny else "real v2 shapes (30x1024), random weights"
    print(f"\nXTTS-v2 bench: {size}; {tokens} tokens/utterance; {args.iterations} iteration(s);"
          f" {threads} torch threads; build {build_s:.1f} s, engine load+warmup {load_s:.1f} s,"
          f" conditioning {condition_s:.2f} s")
    print(f"engine: first chunk {engine.first_chunk_tokens} tokens, chunks up to "
          f"{engine.chunk_tokens}, context {engine.context_frames} / lookahead "
          f"{engine.lookahead_frames} / crossfade {engine.crossfade_frames} frames\n")
    header = (f"{'path':34} {'first chunk s':>13} {'tokens/s':>9} {'RTF':>6} "
              f"{'first-chunk speedup':>20} {'tokens/s ratio':>15}")
    print(header)
    print("-" * len(header))
    stock = rows[0]  # the ratios' reference: stock streaming, or the first row measured
    for row in rows:
        print(f"{row.name:34} {row.median('first_chunk_s'):13.3f} {row.tokens_per_s:9.1f} "
              f"{row.rtf:6.2f} {stock.median('first_chunk_s') / row.median('first_chunk_s'):19.2f}x"
              f" {row.tokens_per_s / stock.tokens_per_s:14.2f}x")
    print(f"\nthrough the plugin: first audio {plugin_row.median('first_chunk_s'):.3f} s vs "
          f"{engine_row.median('first_chunk_s'):.3f} s from engine.stream "
          f"({plugin_row.median('first_chunk_s') / engine_row.median('first_chunk_s'):.2f}x)")
    print(f"real time needs {TOKENS_PER_SECOND_REALTIME} tokens/s; goals on 2 cores: "
          "first chunk <= 0.8 s, >= 22 tokens/s")
    if quality:
        print("int8 vs fp32 (teacher-forced, {} codes): latent rel. error {:.4f}, next-token "
              "agreement {:.1%}, vocoded-latent SNR {:.1f} dB; quantization took {:.1f} s".format(
                  64, quality["latent_rel_err"], quality["top1_agree"],
                  quality["audio_snr_db"], quality["quantize_s"]))
    if "vocoder_bf16_snr_db" in quality:
        snr = quality["vocoder_bf16_snr_db"]
        print(f"bf16 vs fp32 HiFiGAN on the same frames: SNR {snr:.1f} dB")


if __name__ == "__main__":
    main()
