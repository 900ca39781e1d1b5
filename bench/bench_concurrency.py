"""K streams at once through the plugin: batched scheduler vs one stream per step vs the code
before the scheduler (a git ref), in one run.

Every stream is a `localtts.TTS(engine=...).synthesize(text)` started at the same moment on
one engine, as K rooms of a worker (or K service callers) would. For each K:

- first audio p50 / p95: from the start to a stream's first audio frame;
- worst RTF after first audio: (last frame - first frame) / (audio after the first frame),
  the worst stream; above 1.0 a listener hears gaps;
- worst stall: how far the worst frame arrived behind a player that started at first audio
  (what a caller hears as a gap, before any jitter buffer);
- aggregate tokens/s and audio seconds made per second. XTTS: the tokens the GPT really
  generated in the run (rows through its final norm), since the plugin may speak the text as
  several pieces of up to `--tokens` each (random weights never stop): since issue 15 the new
  paths speak it as two pieces, the code before as one. Chatterbox: `--tokens` per stream.

Paths: "batched" (the engine's scheduler, streams' decode steps in one batch), "one per step"
(the same scheduler thread, batching off: `LOCALTTS_BATCHING=false`) and, with `--baseline
REF`, the plugin and engines of that commit (the lock-and-thread-pool path before the
scheduler), run in a subprocess from `git archive REF`.

    .venv/bin/python bench/bench_concurrency.py --engine xtts --baseline ea0946b
    .venv/bin/python bench/bench_concurrency.py --engine piper --baseline ea0946b
    .venv/bin/python bench/bench_concurrency.py --engine xtts --tiny --ks 1,2     # smoke
    python3 bench/bench_concurrency.py --engine chatterbox --device cuda --ks 1,4,16,32

XTTS: real v2 shapes with random weights, int8 GPT, on the CPU. Chatterbox: real shapes on
`--device` (CUDA when a GPU is lent; the CPU is not its host).
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# the code under test: this checkout, or a baseline tree (LOCALTTS_BENCH_ROOT) in a subprocess
CODE_ROOT = Path(os.environ.get("LOCALTTS_BENCH_ROOT", ROOT))
sys.path[:0] = [str(CODE_ROOT / "plugins"), str(CODE_ROOT)]

XTTS_TEXT = "The quick brown fox jumps over the lazy dog and then rests in the afternoon sun."
PIPER_TEXT = (
    "The weather today is sunny with a light breeze from the west. "
    "Tomorrow brings clouds, and perhaps some rain in the afternoon."
)
CHATTERBOX_TEXT = "Hello there, thanks for calling. How can I help you with your order?"


@dataclass
class StreamRun:
    first_audio_s: float
    rtf_after_first: float
    stall_s: float
    audio_s: float


@dataclass
class KRun:
    path: str
    k: int
    wall_s: float
    tokens: int  # generated in the run, all streams (0: not a token model)
    streams: list[StreamRun]
    # the scheduler thread's steps in the run by kind: [count, seconds] (empty: code
    # without the counters)
    steps: dict[str, list[float]] = field(default_factory=dict)

    def first(self, q: float) -> float:
        values = sorted(s.first_audio_s for s in self.streams)
        return values[min(len(values) - 1, round(q * (len(values) - 1)))]

    @property
    def worst_rtf(self) -> float:
        return max(s.rtf_after_first for s in self.streams)

    @property
    def worst_stall(self) -> float:
        return max(s.stall_s for s in self.streams)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s

    @property
    def audio_per_s(self) -> float:
        return sum(s.audio_s for s in self.streams) / self.wall_s


# -- measuring ---------------------------------------------------------------------------------


async def one_stream(tts: Any, text: str, started: float) -> StreamRun:
    arrivals: list[tuple[float, float]] = []  # (arrival, frame duration)
    if isinstance(tts, EngineOnly):
        await asyncio.to_thread(tts.speak, text, arrivals)
    else:
        async for ev in tts.synthesize(text):
            arrivals.append((time.perf_counter(), ev.frame.duration))
    return stream_run(arrivals, started)


class EngineOnly:
    """`engine.stream` from a thread per stream, for a machine without livekit-agents (a lent
    GPU: bench/engine_only.py); the plugin adds only its thread bridge on top."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def speak(self, text: str, arrivals: list[tuple[float, float]]) -> None:
        import threading

        from livekit.plugins.localtts.engines.base import SynthesisParams

        rate = self.engine.sample_rate
        for chunk in self.engine.stream(text, None, SynthesisParams(), threading.Event()):
            arrivals.append((time.perf_counter(), len(chunk) / rate))


def stream_run(arrivals: list[tuple[float, float]], started: float) -> StreamRun:
    first_at, first_len = arrivals[0]
    audio = sum(d for _, d in arrivals)
    stall, before = 0.0, 0.0
    for at, duration in arrivals:
        stall = max(stall, at - (first_at + before))
        before += duration
    after = audio - first_len
    rtf = (arrivals[-1][0] - first_at) / after if after > 0 else 0.0
    return StreamRun(first_at - started, rtf, stall, audio)


class TokenCount:
    """Tokens an engine generated: XTTS's GPT passes each generated token's hidden state
    through `final_norm` once (this code and the code before the scheduler alike); other
    engines: `per_stream` tokens for each stream. Also the engine's scheduler steps by kind,
    where its scheduler counts them."""

    def __init__(self, engine: Any, per_stream: int) -> None:
        self.per_stream = per_stream
        self.scheduler = getattr(engine, "scheduler", None)
        self.rows: int | None = None
        model = getattr(engine, "_model", None)
        final_norm = getattr(getattr(model, "gpt", None), "final_norm", None)
        if final_norm is not None:
            self.rows = 0
            final_norm.register_forward_hook(self._count)

    def _count(self, _module: Any, _args: Any, out: Any) -> None:
        self.rows = (self.rows or 0) + (out.shape[0] if out.dim() == 2 else out.shape[:-1].numel())

    def since(self, before: int | None, k: int) -> int:
        return k * self.per_stream if self.rows is None or before is None else self.rows - before

    def steps(self) -> dict[str, list[float]]:
        """The scheduler's steps so far by kind: [count, seconds]."""
        seconds = getattr(self.scheduler, "step_seconds", None)
        if seconds is None:
            return {}
        return {kind: [self.scheduler.step_counts[kind], s] for kind, s in seconds.items()}


async def run_k(tts: Any, path: str, k: int, text: str, count: TokenCount) -> KRun:
    before, steps_before = count.rows, count.steps()
    started = time.perf_counter()
    streams = await asyncio.gather(*(one_stream(tts, text, started) for _ in range(k)))
    wall = time.perf_counter() - started
    steps = {}
    for kind, (n, seconds) in count.steps().items():
        n_before, seconds_before = steps_before.get(kind, [0, 0.0])
        if n > n_before:
            steps[kind] = [n - n_before, seconds - seconds_before]
    return KRun(path, k, wall, count.since(before, k), list(streams), steps)


# -- engines ------------------------------------------------------------------------------------


def build_engine(args: argparse.Namespace) -> tuple[Any, str, int]:
    """The engine (loaded, warm, with a default voice), the text, tokens per stream."""
    if args.engine == "piper":
        from livekit.plugins.localtts.engines.piper import PiperEngine

        engine = PiperEngine()
        engine.load()
        engine.warmup()
        return engine, PIPER_TEXT, 0
    from livekit.plugins.localtts.host import set_torch_threads

    set_torch_threads(args.threads)
    if args.engine == "xtts":
        from livekit.plugins.localtts.engines.xtts import XTTSEngine

        from tests.tiny_xtts import build_xtts, make_test_clip

        model = build_xtts("tiny" if args.tiny else "real")
        # passed only when given: a --baseline tree's engine may not know it
        options: dict[str, Any] = ({} if args.vocoder_window_step is None
                                   else {"vocoder_window_step": args.vocoder_window_step})
        # the CPU defaults of the product (int8 GPT; bf16 HiFiGAN where the CPU has native bf16;
        # channels-last HiFiGAN on x86 where the engine has it: a --baseline's may not)
        if "vocoder_channels_last" in inspect.signature(XTTSEngine).parameters:
            options["vocoder_channels_last"] = None
        engine = XTTSEngine.from_model(model, int8=False if args.fp32 else None,
                                       vocoder_bf16=None, max_tokens=args.tokens, **options)
        engine.load()
        engine.set_default_voice(engine.condition(make_test_clip("bench", seconds=6.0)))
        return engine, XTTS_TEXT, args.tokens
    from livekit.plugins.localtts.engines.base import VoiceClip
    from livekit.plugins.localtts.engines.chatterbox import ChatterboxEngine, ChatterboxOptions

    from tests.tiny_chatterbox import synthetic_voice, tiny_parts

    if args.tiny:
        parts = dict(tiny_parts())
    else:
        from bench.bench_chatterbox import real_size_parts

        parts = real_size_parts()
    options = ChatterboxOptions(
        device=args.device, max_new_tokens=args.tokens, n_cfm_timesteps=args.cfm_steps,
        watermark=False, warmup=False,
        compile_cache_dir=Path(tempfile.gettempdir()) / "localtts-bench-compile-cache",
    )
    engine = ChatterboxEngine(options=options, revision="bench-random", **parts)
    engine.load()
    clip = VoiceClip("bench", synthetic_voice(4.0), 24_000)
    engine.set_default_voice(engine.condition(clip))
    engine.warmup()
    return engine, CHATTERBOX_TEXT, args.tokens


def set_batching(engine: Any, on: bool, max_batch: int) -> None:
    """Switch the running engine's scheduler between batched and one stream per step."""
    engine.scheduler.batching = on
    engine.scheduler.max_batch = max_batch if on else 1


async def prepare(args: argparse.Namespace) -> tuple[Any, Any, str, TokenCount, dict]:
    """The engine, the TTS to speak through, the text, its token count, and facts."""
    import bench.engine_only

    started = time.perf_counter()
    engine, text, tokens = build_engine(args)
    setup_s = time.perf_counter() - started
    if bench.engine_only.ENGINE_ONLY:
        tts: Any = EngineOnly(engine)
    else:
        from livekit.plugins import localtts

        tts = localtts.TTS(engine=engine)
    info = {"setup_s": setup_s, "capacity": getattr(engine.info(), "capacity", None),
            "code": next(iter(sys.modules["livekit.plugins.localtts"].__path__)),
            "through": "engine.stream" if bench.engine_only.ENGINE_ONLY else "the plugin"}
    if hasattr(engine, "scheduler"):  # measure K streams, not the admission line past capacity
        engine.scheduler.admission.capacity = None
    return engine, tts, text, TokenCount(engine, tokens), info


class Baseline:
    """`args.baseline`'s code in a subprocess that keeps its engine loaded and runs one K
    when asked, so that its runs alternate with ours and machine noise hits both alike."""

    def __init__(self, args: argparse.Namespace) -> None:
        self._tmp = tempfile.TemporaryDirectory()
        archive = Path(self._tmp.name) / "code.tar"
        subprocess.run(
            ["git", "-C", str(ROOT), "archive", "-o", str(archive), args.baseline,
             "plugins", "tests", "bench"], check=True,
        )
        tree = Path(self._tmp.name) / "tree"
        with tarfile.open(archive) as tar:
            tar.extractall(tree, filter="data")
        argv = [sys.executable, str(Path(__file__).resolve()), "--worker", *sys.argv[1:]]
        self._process = subprocess.Popen(
            argv, env=dict(os.environ, LOCALTTS_BENCH_ROOT=str(tree)), text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )
        self.info: dict = {}

    def _ask(self, request: dict) -> dict:
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write(json.dumps(request) + "\n")
        self._process.stdin.flush()
        line = self._process.stdout.readline()
        if not line:
            raise RuntimeError(f"the baseline process exited ({self._process.wait()})")
        return dict(json.loads(line))

    def ready(self) -> None:
        self.info = self._ask({"ready": True})

    def run(self, k: int) -> KRun:
        r = self._ask({"k": k})
        return KRun(r["path"], r["k"], r["wall_s"], r["tokens"],
                    [StreamRun(**s) for s in r["streams"]], r.get("steps", {}))

    def close(self) -> None:
        if self._process.stdin is not None:
            self._process.stdin.close()
        self._process.wait(timeout=60)
        self._tmp.cleanup()


async def serve_baseline(args: argparse.Namespace) -> None:
    """The baseline subprocess: answer `ready`, then one K per request, as JSON lines."""
    answers = os.fdopen(os.dup(1), "w")  # the protocol; anything else printed goes to stderr
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    _engine, tts, text, count, info = await prepare(args)
    for line in sys.stdin:
        request = json.loads(line)
        if request.get("ready"):
            await run_k(tts, "before", 2, text, count)  # untimed: first-call costs
            answer: dict = info
        else:
            answer = asdict(await run_k(tts, "before", request["k"], text, count))
        print(json.dumps(answer), file=answers, flush=True)


async def measure(args: argparse.Namespace, baseline: Baseline | None) -> tuple[list[KRun], dict]:
    """Every K on every path: batched, one stream per step, the baseline's code."""
    engine, tts, text, count, info = await prepare(args)
    if baseline is not None:
        await asyncio.to_thread(baseline.ready)  # it loaded while we did
    max_batch = engine.scheduler.max_batch
    paths = ["batched"] if args.skip_one_per_step else ["batched", "one per step"]
    for path in paths:  # once untimed per path: first-call costs of a batch size
        set_batching(engine, path == "batched", max_batch)
        await run_k(tts, path, 2, text, count)
    if baseline is not None:
        paths.append("before")
    runs: list[KRun] = []
    for k in args.ks:
        for path in paths:  # alternate, so machine noise hits every path alike
            if path == "before":
                assert baseline is not None
                runs.append(await asyncio.to_thread(baseline.run, k))
            else:
                set_batching(engine, path == "batched", max_batch)
                runs.append(await run_k(tts, path, k, text, count))
            print(f"  done: {path} K={k}", file=sys.stderr, flush=True)
    if hasattr(engine, "cost_model"):  # what a token costs, to explain the tokens/s
        info["cost"] = engine.cost_model(args.ks)
    return runs, info


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=["xtts", "piper", "chatterbox"], default="xtts")
    parser.add_argument("--ks", type=lambda s: [int(k) for k in s.split(",")],
                        default=[1, 2, 4, 8])
    parser.add_argument("--tokens", type=int, default=60, help="tokens per stream")
    parser.add_argument("--tiny", action="store_true", help="tiny models (smoke run)")
    parser.add_argument("--fp32", action="store_true", help="XTTS: fp32 GPT instead of int8")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--vocoder-window-step", type=int, default=None,
                        help="XTTS: HiFiGAN window lengths in steps of this (1: own lengths)")
    parser.add_argument("--device", default="cpu", help="chatterbox: cpu or cuda")
    parser.add_argument("--cfm-steps", type=int, default=10, help="chatterbox S3Gen steps")
    parser.add_argument("--skip-one-per-step", action="store_true",
                        help="leave out the one-stream-per-step path (shorter runs)")
    parser.add_argument("--baseline", default=None,
                        help="git ref of the code to compare with (e.g. ea0946b)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:  # the baseline subprocess
        asyncio.run(serve_baseline(args))
        return

    load_before = load_average()
    baseline = Baseline(args) if args.baseline else None
    try:
        runs, info = asyncio.run(measure(args, baseline))
    finally:
        if baseline is not None:
            baseline.close()
    before_info = baseline.info if baseline is not None else {}
    load_after = load_average()

    labels = {"batched": "batched", "one per step": "one stream per step",
              "before": f"before ({args.baseline})"}
    size = "tiny" if args.tiny else "real-size"
    detail = {"xtts": f"{size} XTTS-v2, {'fp32' if args.fp32 else 'int8'} GPT, "
                      f"{args.tokens} tokens/stream, {args.threads} threads, vocoder window "
                      f"step {args.vocoder_window_step or 'the engine default'}",
              "piper": "Piper joe-medium, two sentences/stream",
              "chatterbox": f"{size} Chatterbox on {args.device}, {args.tokens} tokens/stream, "
                            f"{args.cfm_steps} CFM steps"}[args.engine]
    print(f"\nconcurrency bench: {detail}, through {info['through']}; load average "
          f"{load_before} -> {load_after}; engine capacity (measured at warmup): "
          f"{info['capacity']}")
    print(f"code: {info['code']}" + (f"; baseline: {before_info.get('code')}" if before_info
                                     else ""))
    tokens = args.engine != "piper"
    print("\n| K | path | first audio p50 (s) | p95 (s) | worst RTF after first audio | "
          "worst stall (s) | " + ("tokens/s (all streams) | " if tokens else "")
          + "audio s per s |")
    print("|---:|---|---:|---:|---:|---:|" + ("---:|" if tokens else "") + "---:|")
    for k in args.ks:
        for r in (r for r in runs if r.k == k):
            cells = [str(k), labels[r.path], f"{r.first(0.5):.3f}", f"{r.first(0.95):.3f}",
                     f"{r.worst_rtf:.2f}", f"{r.worst_stall:.2f}"]
            if tokens:
                cells.append(f"{r.tokens_per_s:.1f}")
            cells.append(f"{r.audio_per_s:.2f}")
            print("| " + " | ".join(cells) + " |")
    per_k = {k: {r.path: r for r in runs if r.k == k} for k in args.ks}
    if 1 in per_k and "batched" in per_k[1]:
        one = per_k[1]["batched"]
        print("\nbatched, against K=1:")
        for k in args.ks[1:]:
            r = per_k[k]["batched"]
            line = (f"  K={k}: worst first audio {r.first(1.0):.3f} s, worst RTF "
                    f"{r.worst_rtf / one.worst_rtf:.2f}x K=1's")
            if tokens:
                line += f", aggregate tokens/s {r.tokens_per_s / one.tokens_per_s:.2f}x K=1's"
            else:
                line += f", worst first audio {r.first(1.0) / one.first(1.0):.2f}x K=1's"
            print(line)
    timed = [r for r in runs if r.steps]
    if timed:
        # where each run's wall time went on the scheduler thread: what bounds the ratios
        kinds = sorted({kind for r in timed for kind in r.steps})
        print("\nthe scheduler thread's time in each run (count x mean ms = seconds), and "
              "what was left of the wall time:")
        print("\n| K | path | wall (s) | " + " | ".join(kinds) + " | other (s) |")
        print("|---:|---|---:|" + "---:|" * len(kinds) + "---:|")
        for r in timed:
            cells = [f"{int(r.steps[kind][0])} x {1000 * r.steps[kind][1] / r.steps[kind][0]:.1f}"
                     f" = {r.steps[kind][1]:.2f}" if kind in r.steps else "-" for kind in kinds]
            other = r.wall_s - sum(s for _, s in r.steps.values())
            print(f"| {r.k} | {labels[r.path]} | {r.wall_s:.2f} | " + " | ".join(cells)
                  + f" | {other:.2f} |")
    if "cost" in info:
        cost = info["cost"]
        vocoder = cost["vocoder_s_per_token"]
        steps = {int(b): s for b, s in cost["decode_step_s"].items()}
        print(f"\nwhere a token's time goes (measured after the runs, on the scheduler thread): "
              f"vocoder {1000 * vocoder:.1f} ms per token and stream (not batched)")
        # the last column bounds the K>1 ratios whatever the vocoder costs: with vocoding
        # free, b streams make b tokens per step(b) against one per step(1)
        print("\n| batch | decode step (ms) | step per token (ms) | step + vocoder per token (ms) "
              "| tokens/s this allows | x batch 1 | x batch 1 with the vocoder free |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        ceiling = {b: b / (s + b * vocoder) for b, s in steps.items()}
        first = min(steps)
        for b, step in steps.items():
            print(f"| {b} | {1000 * step:.1f} | {1000 * step / b:.1f} | "
                  f"{1000 * (step / b + vocoder):.1f} | {ceiling[b]:.1f} | "
                  f"{ceiling[b] / ceiling[first]:.2f} | "
                  f"{(b / step) / (first / steps[first]):.2f} |")
    print(json.dumps({"runs": [
        {"path": r.path, "k": r.k, "p50": r.first(0.5), "p95": r.first(0.95),
         "rtf": r.worst_rtf, "stall": r.worst_stall, "tokens_per_s": r.tokens_per_s}
        for r in runs]}), file=sys.stderr)


if __name__ == "__main__":
    main()
