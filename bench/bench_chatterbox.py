"""Chatterbox: this engine (static KV cache, graphs on CUDA, streaming chunks) vs the stock
`ChatterboxTTS.generate` path, in one run, as ratios.

Random weights of the real shapes (nothing is downloaded): speed depends on shapes, not
values. Random weights almost never emit the stop token, so both paths are capped at
`--tokens` speech tokens (the stock path through a wrapper around `T3.inference` that
overrides its hard-coded max_new_tokens=1000), and both use `--cfm-steps`. The watermark is
off on both sides unless `--watermark` (Perth's first call JIT-compiles for ~20 s on CPU).

    python bench/bench_chatterbox.py                       # real size on this CPU
    python bench/bench_chatterbox.py --device cuda         # bf16 + compile + CUDA graph
    python bench/bench_chatterbox.py --device cuda --flow-dtype float16 --runs 5
    python bench/bench_chatterbox.py --tiny                # smoke run: 2-layer T3, seconds

Columns: first-chunk latency (stock: the whole utterance, it does not stream), T3 tokens per
second (decode; real time needs 25), RTF (wall time / audio duration). One stream at a time;
`bench_concurrency.py` measures many at once.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "plugins"), str(ROOT)]

# first: lets a GPU machine without livekit-agents import the engines (bench/engine_only.py)
import bench.engine_only  # noqa: E402, F401

# isort: split
import torch  # noqa: E402
from livekit.plugins.localtts.engines.base import SynthesisParams, VoiceClip  # noqa: E402
from livekit.plugins.localtts.engines.chatterbox import (  # noqa: E402
    SAMPLE_RATE,
    ChatterboxEngine,
    ChatterboxOptions,
)
from livekit.plugins.localtts.host import set_torch_threads  # noqa: E402

from bench.texts import SENTENCE  # noqa: E402
from tests.tiny_chatterbox import synthetic_voice, tiny_parts, tokenizer_json  # noqa: E402


@dataclass
class Run:
    first_chunk_s: float
    total_s: float
    audio_s: float
    tokens: int
    t3_tokens_per_s: float


def real_size_parts(seed: int = 0) -> dict[str, Any]:
    from chatterbox.models.s3gen import S3Gen
    from chatterbox.models.t3 import T3
    from chatterbox.models.t3.modules.t3_config import T3Config
    from chatterbox.models.tokenizers import EnTokenizer
    from chatterbox.models.voice_encoder import VoiceEncoder

    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "tokenizer.json"
        path.write_text(tokenizer_json(), encoding="utf-8")
        tokenizer = EnTokenizer(str(path))
    return {
        "t3": T3(T3Config.english_only()).eval(),
        "s3gen": S3Gen().eval(),
        "ve": VoiceEncoder().eval(),
        "tokenizer": tokenizer,
    }


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_stock(parts: dict[str, Any], conds: Any, args: argparse.Namespace) -> list[Run]:
    from chatterbox.tts import ChatterboxTTS

    tts = ChatterboxTTS(parts["t3"], parts["s3gen"], parts["ve"], parts["tokenizer"],
                        args.device, conds=conds)
    if not args.watermark:
        from perth import DummyWatermarker

        tts.watermarker = DummyWatermarker()
    inference = tts.t3.inference
    counters: dict[str, float] = {}

    def capped_inference(**kwargs: Any) -> Any:
        kwargs["max_new_tokens"] = args.tokens
        t0 = time.perf_counter()
        out = inference(**kwargs)
        sync(args.device)
        counters["t3_s"] = time.perf_counter() - t0
        counters["tokens"] = out.shape[-1]
        return out

    tts.t3.inference = capped_inference
    vocode = tts.s3gen.inference
    # same CFM step count on both sides (upstream's default is 10)
    tts.s3gen.inference = lambda **kw: vocode(**kw, n_cfm_timesteps=args.cfm_steps)
    runs = []
    try:
        for i in range(args.runs):
            torch.manual_seed(i)
            t0 = time.perf_counter()
            wav = tts.generate(SENTENCE)
            sync(args.device)
            total = time.perf_counter() - t0
            runs.append(Run(total, total, wav.shape[-1] / SAMPLE_RATE, int(counters["tokens"]),
                            counters["tokens"] / counters["t3_s"]))
    finally:
        del tts.t3.inference  # back to the class methods
        del tts.s3gen.inference
    return runs


def bench_engine(parts: dict[str, Any], conds: Any, args: argparse.Namespace) -> tuple[
    dict[str, list[Run]], dict[str, Any]
]:
    """Runs of the engine, one stream at a time."""
    options = ChatterboxOptions(
        device=args.device, max_new_tokens=args.tokens, n_cfm_timesteps=args.cfm_steps,
        watermark=args.watermark, warmup=True, first_chunk_tokens=args.first_chunk_tokens,
        flow_dtype=args.flow_dtype,
        compile_cache_dir=Path(tempfile.gettempdir()) / "localtts-bench-compile-cache",
    )
    engine = ChatterboxEngine(options=options, conds=conds, revision="bench-random", **parts)
    engine.load()
    results: dict[str, list[Run]] = {}
    for name in ("localtts",):
        runs = results[name] = []
        for i in range(args.runs):
            t0 = time.perf_counter()
            first = None
            samples = 0
            for chunk in engine.stream(
                SENTENCE, None, SynthesisParams(seed=i), threading.Event()
            ):
                if first is None:
                    first = time.perf_counter() - t0
                samples += len(chunk)
            total = time.perf_counter() - t0
            stats = engine.last_stats
            assert stats is not None and first is not None
            runs.append(Run(first, total, samples / SAMPLE_RATE, stats.tokens,
                            stats.t3_tokens_per_s))
    return results, engine.info().as_dict()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="2-layer T3 smoke run")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tokens", type=int, default=50, help="speech tokens per utterance")
    parser.add_argument("--cfm-steps", type=int, default=10)
    parser.add_argument("--first-chunk-tokens", type=int, default=12)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--voice-seconds", type=float, default=6.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--watermark", action="store_true")
    parser.add_argument("--flow-dtype", default="float32",
                        choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args()
    set_torch_threads(args.threads)

    t0 = time.perf_counter()
    parts = dict(tiny_parts()) if args.tiny else real_size_parts()
    build_s = time.perf_counter() - t0
    # conditioning computed by the engine once (fp32 parts), reused by both paths
    conditioner = ChatterboxEngine(
        options=ChatterboxOptions(device=args.device, warmup=False, watermark=False,
                                  t3_dtype="float32", compile=False, cuda_graph=False),
        revision="bench-random", **parts,
    )
    clip = VoiceClip("bench", synthetic_voice(args.voice_seconds), SAMPLE_RATE)
    conds = conditioner.condition(clip).data
    # stock first: the engine converts T3 to bf16 in place on CUDA
    stock = bench_stock(parts, conds, args)
    ours, info = bench_engine(parts, conds, args)
    columns = {"stock generate": stock} | ours

    def value(runs: list[Run], field: str) -> float:
        if field == "rtf":  # of the medians, as before
            return value(runs, "total_s") / max(value(runs, "audio_s"), 1e-9)
        return statistics.median(getattr(r, field) for r in runs)

    device_name = (torch.cuda.get_device_name(torch.device(args.device))
                   if args.device.startswith("cuda") else "cpu")
    print(f"\nChatterbox bench: {'tiny' if args.tiny else 'real-size'} random weights, "
          f"device={args.device} ({device_name}), torch {torch.__version__}, "
          f"threads={args.threads}, "
          f"tokens<={args.tokens}, CFM steps={args.cfm_steps}, voice {args.voice_seconds:.0f}s, "
          f"runs={args.runs}, build {build_s:.1f}s")
    print(f"engine: dtype={info['dtype']} flow={info['flow_dtype']} "
          f"kv_cache_slots={info['kv_cache_slots']} compiled={info['compiled']} "
          f"cuda_graph={info['cuda_graph']} first_chunk_tokens={args.first_chunk_tokens} "
          f"watermark={info['watermark']}")
    rows = [
        ("first chunk (s)", "first_chunk_s", False),
        ("T3 tokens/s", "t3_tokens_per_s", True),
        ("RTF", "rtf", False),
        ("total (s)", "total_s", False),
        ("audio (s)", "audio_s", None),
        ("tokens", "tokens", None),
    ]
    # speedup of each engine variant over stock: > 1 is better, < 1 is slower
    heads = list(columns) + [f"{name} speedup" for name in ours]
    print("\n| metric | " + " | ".join(heads) + " |")
    print("|---|" + "---:|" * len(heads))
    for label, field, higher_better in rows:
        values = [value(runs, field) for runs in columns.values()]
        cells = [f"{v:.3f}" for v in values]
        base = values[0]
        for v in values[1:]:
            speedup = None
            if higher_better is True and base > 0:
                speedup = v / base
            elif higher_better is False and v > 0:
                speedup = base / v
            cells.append("" if speedup is None
                         else f"{speedup:.2f}x" + (" (slower)" if speedup < 1 else ""))
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
