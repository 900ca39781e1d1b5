"""XTTS's HiFiGAN windows over pieces of varied lengths: window lengths in steps of 16 frames
(`vocoder_window_step`, the default) vs every window its own length, in one run.

Real speech ends each piece at its own length, so a piece's last window is a length the
vocoder may not have run before, and oneDNN builds its convolution kernels per input shape
(docs/xtts.md). `bench_concurrency.py` cannot show this: random weights never stop, so every
piece there ends at `--tokens` and its windows repeat. Here each piece gets its own token
count (seeded, `--min-tokens`..`--max-tokens`), through the engine's real stream path
(`XTTSEngine`, int8 GPT, bf16 HiFiGAN where the CPU has it, warmed up as at start), and the
waveform decoder's calls are timed on the scheduler thread.

Each setting runs in its own process (oneDNN's kernel cache is per process), alternating
`--rounds` times (the order reversed every other round), so machine noise hits both alike.

    .venv/bin/python bench/bench_vocoder_windows.py
    .venv/bin/python bench/bench_vocoder_windows.py --tiny --pieces 4   # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "plugins"), str(ROOT)]

TEXT = "The quick brown fox jumps over the lazy dog."


def piece_tokens(args: argparse.Namespace) -> list[int]:
    import random

    rng = random.Random(args.seed)
    return [rng.randint(args.min_tokens, args.max_tokens) for _ in range(args.pieces)]


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """One setting in this process: warm the engine, then speak every piece, timing the
    decoder's calls."""
    from livekit.plugins.localtts.engines.base import SynthesisParams
    from livekit.plugins.localtts.engines.xtts import XTTSEngine
    from livekit.plugins.localtts.engines.xtts_stream import XTTSStreamWork
    from livekit.plugins.localtts.host import set_torch_threads

    from tests.tiny_xtts import build_xtts, make_test_clip

    set_torch_threads(args.threads)
    engine = XTTSEngine.from_model(build_xtts("tiny" if args.tiny else "real"), int8=None,
                                   vocoder_bf16=None, vocoder_channels_last=None,
                                   vocoder_window_step=args.step)
    engine.load()
    voice = engine.condition(make_test_clip("bench", seconds=6.0))
    decoder = engine.waveform_decoder()
    windows: list[float] = []
    started: list[float] = []
    decoder.register_forward_pre_hook(lambda *_: started.append(time.perf_counter()))
    decoder.register_forward_hook(
        lambda *_: windows.append(time.perf_counter() - started.pop())
    )
    sampling = engine._sampling(SynthesisParams(seed=0))
    tokens = piece_tokens(args)
    wall = time.perf_counter()
    for n in tokens:
        def work(n: int = n) -> XTTSStreamWork:
            return XTTSStreamWork(engine, [TEXT], "en", voice.data, sampling, 1.0, max_tokens=n)

        for _ in engine.scheduler.stream(work, threading.Event()):
            pass
    wall = time.perf_counter() - wall
    return {"step": args.step, "tokens": sum(tokens), "windows": windows, "wall_s": wall,
            "bf16": bool(engine.vocoder_bf16)}


def run_worker(args: argparse.Namespace, step: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", "--step", str(step), "--pieces",
           str(args.pieces), "--min-tokens", str(args.min_tokens), "--max-tokens",
           str(args.max_tokens), "--seed", str(args.seed), "--threads", str(args.threads)]
    if args.tiny:
        cmd.append("--tiny")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=lambda s: [int(x) for x in s.split(",")],
                        default=[16, 1], help="window steps to compare (1: own lengths)")
    parser.add_argument("--pieces", type=int, default=24)
    parser.add_argument("--min-tokens", type=int, default=6)
    parser.add_argument("--max-tokens", type=int, default=72)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tiny", action="store_true", help="tiny model (smoke run)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--step", type=int, default=16, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return

    load = os.getloadavg()[0]
    results: dict[int, list[dict[str, Any]]] = {s: [] for s in args.steps}
    for round_ in range(args.rounds):
        for step in args.steps if round_ % 2 == 0 else args.steps[::-1]:
            results[step].append(run_worker(args, step))
    tokens = piece_tokens(args)
    print(f"\nvocoder windows: {'tiny' if args.tiny else 'real-size'} XTTS-v2, "
          f"{len(tokens)} pieces of {min(tokens)}-{max(tokens)} tokens ({sum(tokens)} in all, "
          f"seed {args.seed}), {args.rounds} rounds, {args.threads} threads, bf16 HiFiGAN "
          f"{results[args.steps[0]][0]['bf16']}; load average {load:.2f} -> "
          f"{os.getloadavg()[0]:.2f}\n")
    print("| window step | vocoder ms per token | window p50 (ms) | p95 (ms) | max (ms) "
          "| windows | wall s per piece | of which not vocoding |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    per_token = {}
    for step, runs in results.items():
        windows = [w * 1000 for r in runs for w in r["windows"]]
        per_token[step] = sum(windows) / sum(r["tokens"] for r in runs)
        q = statistics.quantiles(windows, n=20)
        wall = statistics.mean(r["wall_s"] for r in runs) / len(tokens)
        rest = wall - sum(windows) / 1000 / len(runs) / len(tokens)
        print(f"| {step} | {per_token[step]:.1f} | {statistics.median(windows):.0f} | "
              f"{q[-1]:.0f} | {max(windows):.0f} | {len(windows) // len(runs)} | {wall:.2f} | "
              f"{rest:.2f} |")
    print("\nper run (in run order within each setting): " + "; ".join(
        f"step {step}: " + ", ".join(
            f"{r['wall_s']:.0f} s wall / {sum(r['windows']):.1f} s vocoding" for r in runs)
        for step, runs in results.items()))
    if len(args.steps) == 2:
        a, b = args.steps
        print(f"\nvocoder time per token, step {b} / step {a}: "
              f"{per_token[b] / per_token[a]:.2f}x")


if __name__ == "__main__":
    main()
