"""Chatterbox engine on CPU with a tiny random-weight model (tests/tiny_chatterbox.py).

CUDA-graph capture and replay is the one part CUDA alone runs. What CUDA hosts run by default
besides is exercised on the CPU below: the decode step under torch.compile(fullgraph=True)
(inductor's CPU backend), T3 in bfloat16 and the S3Gen flow in reduced precision.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("chatterbox")

from livekit.plugins.localtts.engines import availability  # noqa: E402
from livekit.plugins.localtts.engines.base import (  # noqa: E402
    EngineUnavailableError,
    SynthesisParams,
    VoiceClip,
    VoiceError,
)
from livekit.plugins.localtts.engines.chatterbox import (  # noqa: E402
    ChatterboxEngine,
    ChatterboxOptions,
)
from livekit.plugins.localtts.engines.chatterbox_s3gen import (  # noqa: E402
    SAMPLES_PER_TOKEN,
)
from livekit.plugins.localtts.engines.chatterbox_t3 import (  # noqa: E402
    SamplingParams,
    T3BatchDecoder,
    filter_logits,
)
from livekit.plugins.localtts.settings import Settings  # noqa: E402

from tests.concurrency import assert_cancel_stops_within_a_step, together  # noqa: E402
from tests.tiny_chatterbox import (  # noqa: E402
    make_tiny_chatterbox_engine,
    synthetic_voice,
    tiny_parts,
    write_tiny_checkpoint,
)

FIRST = 6
LOOKAHEAD = 3
TEXT = "Hello there, this is a test."


@pytest.fixture(scope="module", autouse=True)
def _threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def engine() -> ChatterboxEngine:
    # a 1 s voice (the engine's minimum): S3Gen renders the voice's prompt in every window,
    # 50 mel frames instead of 2 s's 100 (the tests compare audio, not voices)
    return make_tiny_chatterbox_engine(
        first_chunk_tokens=FIRST, lookahead_tokens=LOOKAHEAD, max_new_tokens=30,
        context_tokens=50, voice_seconds=1.0,
    )


def _first_chunk(engine: ChatterboxEngine, params: SynthesisParams) -> np.ndarray:
    cancel = threading.Event()
    stream = engine.stream(TEXT, None, params, cancel)
    first = next(stream)
    cancel.set()
    assert list(stream) == []
    return first


def _snr_db(reference: np.ndarray, other: np.ndarray) -> float:
    noise = np.sum((reference - other) ** 2)
    return float(10 * np.log10(np.sum(reference**2) / max(noise, 1e-20)))


FORCED_TOKENS = torch.randint(0, 6561, (20,), generator=torch.Generator().manual_seed(0)).tolist()


class _Owner:
    slot = -1


@torch.inference_mode()
def _teacher_forced_logits(decoder: T3BatchDecoder, embeds) -> torch.Tensor:
    """(1 + len(FORCED_TOKENS), 2, V) float logits of a stream in slot 0: the prefill's, then
    one decode step per forced token. Teacher forcing because in reduced precision a near-tie
    sample may flip, after which two free-running streams have nothing in common."""
    t3, device = decoder.t3, decoder.device
    out = [decoder._prefill_logits(0, embeds.to(decoder.dtype))]
    decoder._cache_pos[0] = embeds.shape[1]
    for i, token in enumerate(FORCED_TOKENS):
        x = t3.speech_emb(torch.tensor([token], device=device))
        x = x + t3.speech_pos_emb.emb(torch.tensor([i + 1], device=device))
        out.append(decoder._decode_logits(1, x.view(1, 1, -1).expand(2, 1, -1)))
        decoder._cache_pos[0] += 1
    return torch.stack(out).float()


@torch.inference_mode()
def _transformers_logits(t3, embeds) -> torch.Tensor:
    """The same teacher-forced logits from transformers' own Llama forward (DynamicCache):
    the reference the batched decoder's own attention, RoPE and masked cache must match."""
    from transformers import DynamicCache

    def run(x, past):
        out = t3.tfmr(inputs_embeds=x, past_key_values=past, use_cache=True)
        return t3.speech_head(out.last_hidden_state[:, -1])

    past = DynamicCache()
    out = [run(embeds, past)]
    for i, token in enumerate(FORCED_TOKENS):
        x = t3.speech_emb(torch.tensor([token], device=embeds.device))
        x = x + t3.speech_pos_emb.emb(torch.tensor([i + 1], device=embeds.device))
        out.append(run(x.view(1, 1, -1).expand(2, 1, -1), past))
    return torch.stack(out).float()


def _assert_logits_close(got: torch.Tensor, reference: torch.Tensor) -> None:
    assert got.shape == reference.shape == (len(FORCED_TOKENS) + 1, 2, 8194)
    scale = reference.abs().amax(dim=-1, keepdim=True)
    assert ((got - reference).abs() / scale).max() < 0.05  # bf16 gives ~0.004
    assert (got.argmax(dim=-1) == reference.argmax(dim=-1)).float().mean() >= 0.9


# -- T3 decoding ---------------------------------------------------------------------------------


def test_filter_logits_matches_hf_processors() -> None:
    from transformers.generation.logits_process import (
        MinPLogitsWarper,
        RepetitionPenaltyLogitsProcessor,
        TopPLogitsWarper,
    )

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 500, generator=gen) * 0.5
    history = torch.tensor([[7, 7, 42, 499, 3]])
    seen = torch.zeros(1, 500, dtype=torch.bool)
    seen[0, history[0]] = True
    cfg, penalty, temperature, min_p, top_p = 0.5, 1.3, 0.7, 0.05, 0.9
    expected = logits[0:1] + cfg * (logits[0:1] - logits[1:2])
    expected = RepetitionPenaltyLogitsProcessor(penalty)(history, expected) / temperature
    expected = MinPLogitsWarper(min_p)(history, expected)
    expected = TopPLogitsWarper(top_p)(history, expected)
    got = filter_logits(
        logits, seen, cfg_weight=torch.tensor(cfg), repetition_penalty=torch.tensor(penalty),
        temperature=torch.tensor(temperature), min_p=torch.tensor(min_p),
        top_p=torch.tensor(top_p),
    )
    assert torch.equal(torch.isinf(got), torch.isinf(expected))
    finite = ~torch.isinf(expected)
    assert finite.sum() > 1
    torch.testing.assert_close(got[finite], expected[finite])


def test_decoders_match_stock_t3_inference(engine: ChatterboxEngine) -> None:
    """Near-greedy sampling: both cache kinds give exactly the stock loop's tokens."""
    import torch.nn.functional as F
    from chatterbox.models.t3.modules.cond_enc import T3Cond
    from chatterbox.tts import punc_norm

    t3, conds = engine._t3, engine.default_voice.data
    n = 24
    text = engine._tokenizer.text_to_tokens(punc_norm(TEXT))
    text = torch.cat([text, text])
    text = F.pad(F.pad(text, (1, 0), value=t3.hp.start_text_token), (0, 1),
                 value=t3.hp.stop_text_token)
    cond = T3Cond(
        speaker_emb=conds.t3.speaker_emb,
        cond_prompt_speech_tokens=conds.t3.cond_prompt_speech_tokens,
        emotion_adv=0.5 * torch.ones(1, 1, 1),
    )
    stock = t3.inference(
        t3_cond=cond, text_tokens=text, max_new_tokens=n, temperature=1e-3, cfg_weight=0.5,
        repetition_penalty=1.2, min_p=0.05, top_p=1.0,
    )[0].tolist()

    sampling = SamplingParams(temperature=1e-3, cfg_weight=0.5)
    embeds, _ = engine._prompt_embeds(TEXT, conds, 0.5)
    other, _ = engine._prompt_embeds("Someone else speaks meanwhile.", conds, 0.7)
    for slots, company in ((1, 0), (4, 3)):  # alone, and in a batch of four
        decoder = T3BatchDecoder(t3, slots=slots, max_cache_len=512)
        owners = [_Owner() for _ in range(company + 1)]
        for i, owner in enumerate(owners[:company]):
            decoder.start(owner, other, SamplingParams(), seed=i)
        decoder.start(owners[-1], embeds, sampling, seed=123)
        decoder.step(owners, len(stock) - 1)
        slot = owners[-1].slot
        assert decoder.tokens([(slot, 0, len(stock))]) == [stock], (slots, company)


# -- S3Gen pieces against upstream ---------------------------------------------------------------


def test_token2mel_matches_stock_flow(engine: ChatterboxEngine) -> None:
    streamer = engine._streamer
    voice = streamer.prepare(engine.default_voice.data.gen)
    gen = {k: v for k, v in engine.default_voice.data.gen.items()}
    gen["prompt_feat"] = voice.prompt_feat
    tokens = torch.randint(0, 6561, (1, 10), generator=torch.Generator().manual_seed(1))
    token_noise = torch.randn(1, 80, 20, generator=torch.Generator().manual_seed(2))
    torch.manual_seed(5)
    with torch.inference_mode():
        stock, _ = engine._s3gen.flow.inference(
            token=tokens, token_len=torch.tensor([10]), finalize=True, noised_mels=token_noise,
            n_timesteps=streamer.config.n_cfm_timesteps, **gen,
        )
        torch.manual_seed(5)
        full = torch.randn(1, 80, voice.prompt_feat.shape[1] + 20)
        ours = streamer.token2mel(voice, tokens, full[:, :, : voice.prompt_feat.shape[1]],
                                  token_noise)
    torch.testing.assert_close(ours, stock, rtol=1e-4, atol=1e-4)


def test_excitation_and_hift_match_stock(engine: ChatterboxEngine) -> None:
    from torch.distributions.uniform import Uniform

    streamer = engine._streamer
    hift = engine._s3gen.mel2wav
    mel = torch.randn(1, 80, 12, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        torch.manual_seed(9)
        stock, _ = hift.inference(speech_feat=mel)
        f0 = streamer.f0(mel)
        n_harm = hift.m_source.l_sin_gen.harmonic_num + 1
        torch.manual_seed(9)  # replay upstream's draws: harmonic phases, then noise
        phase = Uniform(-np.pi, np.pi).sample((1, n_harm, 1))[0, :, 0]
        phase[0] = 0
        noise = torch.randn(1, n_harm, f0.shape[0])[0]
        source, _ = streamer.excitation(f0, torch.zeros(n_harm), phase, noise)
        ours = streamer.decode(mel, source)
    assert _snr_db(stock[0].numpy(), ours.numpy()) > 40


# -- streaming ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def streamed(engine: ChatterboxEngine) -> tuple[list[np.ndarray], object]:
    chunks = list(engine.stream(TEXT, None, SynthesisParams(seed=11), threading.Event()))
    return chunks, engine.last_stats


def test_first_chunk_after_configured_tokens_and_chunks_grow(streamed) -> None:
    chunks, stats = streamed
    assert stats.tokens_at_first_chunk == FIRST
    assert len(chunks[0]) == (FIRST - LOOKAHEAD) * SAMPLES_PER_TOKEN
    sizes = stats.chunk_tokens
    assert len(sizes) >= 3 and sizes[1] > sizes[0] and sizes[2] > sizes[1]
    assert [len(c) for c in chunks] == [n * SAMPLES_PER_TOKEN for n in sizes]
    assert all(c.dtype == np.float32 and np.all(np.abs(c) <= 1.0) for c in chunks)


def test_streamed_close_to_one_pass_and_last_chunk_kept(engine, streamed) -> None:
    chunks, stats = streamed
    tokens = stats.speech_tokens
    # the whole utterance is there: every speech token, the last chunk included
    assert sum(stats.chunk_tokens) == len(tokens) > 0
    streamer = engine._streamer
    one = streamer.open(streamer.prepare(engine.default_voice.data.gen), seed=11)
    one.add(tokens)
    reference = one.finish()
    audio = np.concatenate(chunks)
    assert audio.shape == reference.shape
    assert np.sqrt(np.mean(reference**2)) > 1e-3
    assert _snr_db(reference, audio) >= 20
    # 20 ms silence + fade at the utterance start only
    assert np.all(audio[: SAMPLES_PER_TOKEN // 2] == 0)
    assert np.any(chunks[1][: SAMPLES_PER_TOKEN // 2] != 0)


def test_seed_reproducible(engine: ChatterboxEngine) -> None:
    a = _first_chunk(engine, SynthesisParams(seed=3))
    b = _first_chunk(engine, SynthesisParams(seed=3))
    c = _first_chunk(engine, SynthesisParams(seed=4, temperature=1.0, exaggeration=0.9))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


class _StepCounter:
    """Counts the decoder's batched steps (one host call, however many tokens)."""

    def __init__(self, engine: ChatterboxEngine, monkeypatch) -> None:
        self.calls = 0
        decoder = engine._decoder
        step = decoder.step

        def counted(owners, n: int = 1) -> None:
            self.calls += 1
            step(owners, n)

        monkeypatch.setattr(decoder, "step", counted)


def _assert_cancel_stops_within_a_step(engine: ChatterboxEngine, monkeypatch) -> None:
    counter = _StepCounter(engine, monkeypatch)
    cancel = threading.Event()
    stream = engine.stream(TEXT, None, SynthesisParams(seed=1), cancel)
    assert_cancel_stops_within_a_step(stream, cancel, lambda: counter.calls, engine.scheduler)
    assert engine.last_stats.cancelled
    assert engine._decoder.free_slots == engine._decoder.slots  # its slot is free again
    assert len(_first_chunk(engine, SynthesisParams(seed=2))) > 0


def test_cancel_stops_within_a_step_and_engine_stays_usable(engine, monkeypatch) -> None:
    _assert_cancel_stops_within_a_step(engine, monkeypatch)


def test_a_stream_waiting_for_a_slot_gives_up_when_cancelled(engine) -> None:
    one_slot = make_tiny_chatterbox_engine(
        with_default_voice=False, max_streams=1, first_chunk_tokens=FIRST,
        lookahead_tokens=LOOKAHEAD, max_new_tokens=30, context_tokens=50,
    )
    one_slot.set_default_voice(engine.default_voice)
    holder = one_slot.stream(TEXT, None, SynthesisParams(seed=1), threading.Event())
    next(holder)  # holds the only KV cache slot
    waiting_cancel = threading.Event()
    result: list[list[np.ndarray]] = []
    waiter = threading.Thread(
        target=lambda: result.append(
            list(one_slot.stream(TEXT, None, SynthesisParams(), waiting_cancel))
        )
    )
    waiter.start()
    time.sleep(0.3)
    assert one_slot.scheduler.active_streams == 2  # the second waits for the slot
    waiting_cancel.set()
    waiter.join(timeout=10)
    assert not waiter.is_alive() and result == [[]]
    holder.close()  # frees the slot
    assert len(_first_chunk(one_slot, SynthesisParams(seed=2))) > 0


# -- many streams at once -------------------------------------------------------------------------

BATCH_TEXTS = {1: TEXT, 2: "Another voice speaks at once.", 3: "And a third one."}


def _stats_by_seed(monkeypatch) -> dict[int, object]:
    from livekit.plugins.localtts.engines.chatterbox_stream import ChatterboxStreamWork

    stats: dict[int, object] = {}
    close = ChatterboxStreamWork.close

    def recording_close(self) -> None:
        close(self)
        stats[self.seed] = self.stats

    monkeypatch.setattr(ChatterboxStreamWork, "close", recording_close)
    return stats


def _speak(engine: ChatterboxEngine, seed: int, cancel: threading.Event | None = None
           ) -> np.ndarray:
    chunks = list(engine.stream(BATCH_TEXTS[seed], None, SynthesisParams(seed=seed),
                                cancel or threading.Event()))
    return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)


@pytest.fixture(scope="module")
def alone(engine: ChatterboxEngine) -> dict[int, tuple[np.ndarray, list[int]]]:
    out = {}
    for seed in BATCH_TEXTS:
        audio = _speak(engine, seed)
        out[seed] = (audio, list(engine.last_stats.speech_tokens))
    return out


def test_seeded_streams_are_the_same_alone_and_in_a_batch(engine, alone, monkeypatch) -> None:
    stats = _stats_by_seed(monkeypatch)
    batches: list[int] = []
    step = engine._decoder.step
    monkeypatch.setattr(engine._decoder, "step",
                        lambda owners, n=1: (batches.append(len(owners)), step(owners, n)))
    results = together({seed: (lambda s=seed: _speak(engine, s)) for seed in BATCH_TEXTS})
    assert max(batches) == 3  # the three streams really decoded in one step
    for seed, (audio, tokens) in alone.items():
        assert stats[seed].speech_tokens == tokens and len(tokens) > FIRST
        # fp32 rows of a batch round differently in the last bit than a row alone: the same
        # tokens, and S3Gen renders them per stream: audio equal to float32 precision
        np.testing.assert_allclose(results[seed], audio, rtol=0, atol=1e-4)


def test_cancelling_one_stream_leaves_the_others_unchanged(engine, alone) -> None:
    cancel = threading.Event()

    def cancel_after_first_chunk() -> np.ndarray:
        stream = engine.stream(BATCH_TEXTS[2], None, SynthesisParams(seed=2), cancel)
        first = next(stream)
        cancel.set()
        return np.concatenate([first, *stream])

    results = together({1: lambda: _speak(engine, 1), 2: cancel_after_first_chunk,
                        3: lambda: _speak(engine, 3)})
    assert len(results[2]) < len(alone[2][0])
    for seed in (1, 3):
        np.testing.assert_allclose(results[seed], alone[seed][0], rtol=0, atol=1e-4)
    assert engine._decoder.free_slots == engine._decoder.slots


def test_a_failure_in_one_stream_fails_only_that_stream(engine, alone, monkeypatch) -> None:
    from livekit.plugins.localtts.engines.chatterbox_stream import ChatterboxStreamWork

    emit = ChatterboxStreamWork.emit

    def failing_emit(self) -> np.ndarray | None:
        if self.seed == 2 and self.stats.first_chunk_s is not None:
            raise RuntimeError("S3Gen failed for stream two")
        return emit(self)

    monkeypatch.setattr(ChatterboxStreamWork, "emit", failing_emit)
    results = together({seed: (lambda s=seed: _speak(engine, s)) for seed in BATCH_TEXTS})
    assert isinstance(results[2], RuntimeError) and "stream two" in str(results[2])
    for seed in (1, 3):
        np.testing.assert_allclose(results[seed], alone[seed][0], rtol=0, atol=1e-4)
    assert engine._decoder.free_slots == engine._decoder.slots  # its slot was freed


def test_only_the_scheduler_thread_computes(engine, monkeypatch) -> None:
    threads: set[int] = set()
    handles = [
        module.register_forward_pre_hook(lambda *_: threads.add(threading.get_ident()))
        for module in (engine._t3.speech_head, engine._s3gen.flow, engine._s3gen.mel2wav,
                       engine._ve)
    ]
    try:
        engine.condition(VoiceClip("c", synthetic_voice(2.0), 24_000))
        together({caller: (lambda: _speak(engine, 3)) for caller in (1, 2)})
    finally:
        for handle in handles:
            handle.remove()
    assert threads == {engine.scheduler.thread_ident} != {threading.get_ident()}


# -- voices -------------------------------------------------------------------------------------


def test_conditioning_roundtrip_and_bad_input(engine: ChatterboxEngine) -> None:
    clip = VoiceClip(voice_id="v1", audio=synthetic_voice(1.5, 16_000, seed=2), sample_rate=16_000)
    conditioning = engine.condition(clip)
    data = engine.dump_conditioning(conditioning)
    assert isinstance(data, bytes)
    loaded = engine.load_conditioning("v1", data)
    assert loaded.model_revision == conditioning.model_revision == "tiny-random"
    a, b = conditioning.data, loaded.data
    for key, value in a.t3.__dict__.items():
        if torch.is_tensor(value):
            torch.testing.assert_close(getattr(b.t3, key), value, rtol=0, atol=0)
    for key, value in a.gen.items():
        if torch.is_tensor(value):
            torch.testing.assert_close(b.gen[key], value, rtol=0, atol=0)
    cancel = threading.Event()
    stream = engine.stream("Hi.", loaded, SynthesisParams(seed=0), cancel)
    assert len(next(stream)) > 0
    stream.close()

    with pytest.raises(VoiceError):
        engine.load_conditioning("bad", b"not a torch file")
    with pytest.raises(VoiceError):
        engine.condition(VoiceClip("short", np.zeros(8000, np.float32) + 0.1, 16_000))
    with pytest.raises(VoiceError):
        engine.condition(VoiceClip("silent", np.zeros(48_000, np.float32), 24_000))


def test_no_default_voice_is_a_clear_error() -> None:
    bare = make_tiny_chatterbox_engine(with_default_voice=False)
    with pytest.raises(VoiceError, match=r"conds\.pt"):
        next(bare.stream(TEXT, None, SynthesisParams(), threading.Event()))


def test_cpu_info_reports_fp32_without_graphs(engine: ChatterboxEngine) -> None:
    info = engine.info()
    assert info.device == "cpu"
    assert info.dtype == "float32"
    assert info.details["kv_cache_slots"] == 4  # the CPU default
    assert info.details["compiled"] is False and info.details["cuda_graph"] is False
    assert "cuda-graph" not in info.optimizations
    assert info.default_voice == "default"


# -- what CUDA hosts run by default, exercised on the CPU ----------------------------------------


def test_compiled_decode_step_gives_the_eager_tokens(engine, tmp_path, monkeypatch) -> None:
    """The decode step compiled with fullgraph (no graph break: the trace a CUDA host compiles
    and then captures) samples exactly the eager tokens, and fills the persistent cache."""
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    cache = tmp_path / "compile-cache"
    # one slot: the load compiles the step for one batch size (bucket 1, what a stream alone
    # runs), not for every bucket up to the CPU's 4 slots. A one-layer T3: inductor's CPU
    # code for a step costs ~40 s a layer on 2 cores, and one layer holds every op of it
    options = dict(first_chunk_tokens=FIRST, lookahead_tokens=LOOKAHEAD, max_new_tokens=30,
                   context_tokens=50, max_streams=1, t3_layers=1, with_default_voice=False)
    compiled = make_tiny_chatterbox_engine(compile=True, compile_cache_dir=cache, **options)
    eager = make_tiny_chatterbox_engine(**options)  # the same T3 (shared), not compiled
    for one in (compiled, eager):
        one.set_default_voice(engine.default_voice)
    info = compiled.info()
    assert info.details["compiled"] is True and "torch-compile" in info.optimizations
    assert info.details["cuda_graph"] is False
    assert info.details["compile_cache_dir"] == str(cache.resolve())
    assert any(p.is_file() for p in cache.rglob("*"))  # compiled at load, not by a request

    params = SynthesisParams(seed=5, temperature=0.9)
    audio = np.concatenate(list(compiled.stream(TEXT, None, params, threading.Event())))
    tokens = compiled.last_stats.speech_tokens
    eager_audio = np.concatenate(list(eager.stream(TEXT, None, params, threading.Event())))
    assert not eager.info().details["compiled"]
    assert len(tokens) > FIRST and tokens == eager.last_stats.speech_tokens
    np.testing.assert_allclose(audio, eager_audio, atol=1e-4)


def test_reduced_precision_t3_and_flow(engine) -> None:
    """T3 in bfloat16: the batched decoder (own attention, RoPE, masked fixed-length cache)
    gives the logits of transformers' own forward in the same precision; the flow in
    fp16 stays close to fp32; an engine set to both streams and reports it."""
    low = make_tiny_chatterbox_engine(
        with_default_voice=False, private=True, t3_dtype="bfloat16", flow_dtype="float16",
        first_chunk_tokens=FIRST, lookahead_tokens=LOOKAHEAD, max_new_tokens=30,
    )
    low.set_default_voice(engine.default_voice)
    info = low.info()
    assert (info.dtype, info.details["flow_dtype"], info.details["vocoder_dtype"]) == (
        "bfloat16", "float16", "float32"
    )
    assert "t3-bfloat16" in info.optimizations

    embeds, _ = low._prompt_embeds(TEXT, low.default_voice.data, 0.5)
    assert embeds.dtype == torch.bfloat16
    ours = _teacher_forced_logits(T3BatchDecoder(low._t3, slots=2, max_cache_len=512), embeds)
    _assert_logits_close(ours, _transformers_logits(low._t3, embeds))

    chunks = list(low.stream(TEXT, None, SynthesisParams(seed=2), threading.Event()))
    assert sum(low.last_stats.chunk_tokens) == len(low.last_stats.speech_tokens) > FIRST
    audio = np.concatenate(chunks)
    assert np.all(np.isfinite(audio)) and np.sqrt(np.mean(audio**2)) > 1e-3

    # same tokens through the fp32 flow and the fp16 one
    def one_pass(streamer) -> np.ndarray:
        stream = streamer.open(streamer.prepare(engine.default_voice.data.gen), seed=2)
        stream.add(low.last_stats.speech_tokens)
        return stream.finish()

    assert _snr_db(one_pass(engine._streamer), one_pass(low._streamer)) >= 30


# -- CUDA (skipped without a GPU; a lent GPU machine runs them: docs/benchmarks.md) ---------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def cuda_engine(engine: ChatterboxEngine) -> ChatterboxEngine:
    """The tiny model on CUDA with the CUDA defaults: bf16 (fp16) T3, the decode step compiled
    and captured as a CUDA graph, warmup at load."""
    gpu = make_tiny_chatterbox_engine(
        with_default_voice=False, private=True, device="cuda", warmup=True,
        first_chunk_tokens=FIRST, lookahead_tokens=LOOKAHEAD, max_new_tokens=30,
        context_tokens=50,
    )
    gpu.set_default_voice(engine.default_voice)
    return gpu


@needs_cuda
def test_cuda_defaults_are_on_and_reported(cuda_engine: ChatterboxEngine) -> None:
    info = cuda_engine.info()
    assert info.device.startswith("cuda")
    assert info.dtype == ("bfloat16" if torch.cuda.is_bf16_supported() else "float16")
    assert info.details["compiled"] is True and info.details["cuda_graph"] is True
    assert info.details["kv_cache_slots"] == 16 and info.details["warmup_s"] is not None
    assert {"static-kv-cache", "torch-compile", "cuda-graph"} <= set(info.optimizations)


@needs_cuda
def test_cuda_graph_replays_the_compiled_step(cuda_engine: ChatterboxEngine) -> None:
    """Replaying the captured graphs (one per batch size) samples what launching the compiled
    step does, and the compiled step's logits are the eager ones and transformers' ones."""
    t3 = cuda_engine._t3
    embeds, _ = cuda_engine._prompt_embeds(TEXT, cuda_engine.default_voice.data, 0.5)
    captured = cuda_engine._decoder
    assert captured.captured_buckets == [1, 2, 4, 8, 16]
    launched = T3BatchDecoder(t3, slots=captured.slots, max_cache_len=captured.max_cache_len,
                              compile_step=True)
    launched.capture((1, 2))  # compiles, captures nothing
    assert captured.graph_captured and not launched.graph_captured
    near_greedy = SamplingParams(temperature=1e-3)
    tokens = []
    for decoder in (captured, launched):
        owners = [_Owner(), _Owner()]
        for i, owner in enumerate(owners):
            decoder.start(owner, embeds, near_greedy, seed=9 + i)
        decoder.step(owners, 25)
        tokens.append(decoder.tokens([(o.slot, 0, 26) for o in owners]))
        for owner in owners:
            decoder.release(owner)
    assert tokens[0] == tokens[1]

    compiled = _teacher_forced_logits(launched, embeds)
    eager = _teacher_forced_logits(T3BatchDecoder(t3, slots=1, max_cache_len=512), embeds)
    _assert_logits_close(compiled, eager)
    _assert_logits_close(compiled, _transformers_logits(t3, embeds))


@needs_cuda
def test_cuda_stream_chunks_close_to_one_pass_and_seeded(cuda_engine: ChatterboxEngine) -> None:
    params = SynthesisParams(seed=11)
    chunks = list(cuda_engine.stream(TEXT, None, params, threading.Event()))
    stats = cuda_engine.last_stats
    assert stats.tokens_at_first_chunk == FIRST
    assert [len(c) for c in chunks] == [n * SAMPLES_PER_TOKEN for n in stats.chunk_tokens]
    assert sum(stats.chunk_tokens) == len(stats.speech_tokens) > FIRST
    streamer = cuda_engine._streamer
    one = streamer.open(streamer.prepare(cuda_engine.default_voice.data.gen), seed=11)
    one.add(stats.speech_tokens)
    audio = np.concatenate(chunks)
    assert _snr_db(one.finish(), audio) >= 20
    # the graph's noise is a function of the seed: the same seed gives the same utterance
    again = np.concatenate(list(cuda_engine.stream(TEXT, None, params, threading.Event())))
    assert cuda_engine.last_stats.speech_tokens == stats.speech_tokens
    assert _snr_db(audio, again) >= 50  # cuDNN may reorder sums; nothing more


@needs_cuda
def test_cuda_cancel_stops_within_a_step(cuda_engine: ChatterboxEngine, monkeypatch) -> None:
    _assert_cancel_stops_within_a_step(cuda_engine, monkeypatch)


# -- loading --------------------------------------------------------------------------------------


def test_loads_a_checkpoint_directory(tmp_path_factory) -> None:
    directory = write_tiny_checkpoint(tmp_path_factory.mktemp("tiny-chatterbox"))
    settings = Settings(chatterbox_model=str(directory), device="cpu")
    assert ChatterboxEngine.availability(settings) is None
    engine = ChatterboxEngine(
        model=directory,
        options=ChatterboxOptions(device="cpu", warmup=False, watermark=False,
                                  n_cfm_timesteps=2, max_new_tokens=20,
                                  first_chunk_tokens=FIRST),
    )
    engine.load()
    info = engine.info()
    assert info.default_voice == "conds.pt"
    assert info.model_revision is not None and info.model_revision.startswith("local-")
    # same weights as the in-memory tiny model
    src = tiny_parts()["t3"].state_dict()
    for key, value in engine._t3.state_dict().items():
        torch.testing.assert_close(value, src[key])
    assert len(_first_chunk(engine, SynthesisParams(seed=0))) == (FIRST - 3) * SAMPLES_PER_TOKEN


def test_missing_weights_are_reported_offline(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    started = time.monotonic()
    settings = Settings(chatterbox_model="ResembleAI/chatterbox", device="cpu")
    message = availability("chatterbox", settings)
    assert message is not None and "t3_cfg.safetensors" in message
    assert "LOCALTTS_CHATTERBOX_MODEL" in message
    with pytest.raises(EngineUnavailableError, match=r"s3gen\.safetensors"):
        ChatterboxEngine.from_settings(settings).load()
    # even allow_download fails fast (offline), with the reason
    allowed = Settings(chatterbox_model="ResembleAI/chatterbox", allow_download=True, device="cpu")
    with pytest.raises(EngineUnavailableError, match="ResembleAI/chatterbox"):
        ChatterboxEngine.from_settings(allowed).load()
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "tokenizer.json").write_text("{}")
    message = ChatterboxEngine.availability(Settings(chatterbox_model=str(partial)))
    assert message is not None
    named_missing = message.split(" missing from")[0]
    assert "ve.safetensors" in named_missing and "tokenizer.json" not in named_missing
    message = ChatterboxEngine.availability(Settings(chatterbox_model=str(tmp_path / "nope")))
    assert message is not None and "does not exist" in message
    assert time.monotonic() - started < 30


def test_chatterbox_fulfils_the_engine_contract(engine: ChatterboxEngine) -> None:
    import json

    from livekit.plugins.localtts.engines.base import (
        Engine,
        EngineInfo,
        KVCacheOverflowError,
        VoiceConditioning,
    )

    assert isinstance(engine, Engine)
    assert engine.min_reference_seconds == 1.0
    # S3Gen reads 10 s and T3's prompt 6 s, but the voice encoder reads the whole clip
    assert engine.max_reference_seconds is None
    assert engine.max_piece_chars("en") == engine.options.max_text_tokens - 1
    info = engine.info()
    assert isinstance(info, EngineInfo) and info.loaded
    assert json.loads(json.dumps(info.as_dict()))["kv_cache_slots"] == 4
    with pytest.raises(VoiceError, match="conditioned for"):
        engine.set_default_voice(VoiceConditioning("x", "xtts", "r", object()))
    with pytest.raises(ValueError, match="host selection"):
        ChatterboxOptions(device="auto")
    # a prompt the cache cannot hold is the engine's fault, not a ValueError (a 400)
    embeds, _ = engine._prompt_embeds(TEXT, engine.default_voice.data, 0.5)
    small = T3BatchDecoder(engine._t3, slots=1, max_cache_len=embeds.shape[1])
    with pytest.raises(KVCacheOverflowError) as overflow:
        small.start(_Owner(), embeds, SamplingParams(), seed=0)
    assert not isinstance(overflow.value, ValueError)


def test_speech_word_clock_follows_the_text_position() -> None:
    """Words start at the first speech token whose attended text token reaches them; noisy
    jumps (back, or far ahead) are ignored; speech token k is at k * 40 ms."""
    from livekit.plugins.localtts.engines.chatterbox_words import (
        SpeechWordClock,
        text_token_words,
    )

    # "Hi there you." as tokens: H i [SPACE] t h e r e [SPACE] y o u .
    tokens = ["H", "i", "[SPACE]", "t", "h", "e", "r", "e", "[SPACE]", "y", "o", "u", "."]
    token_words = text_token_words(tokens, "[SPACE]")
    assert token_words == [0, 0, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2]
    clock = SpeechWordClock(token_words, text_start=10, words=3, seconds_per_token=0.04)
    # positions per speech token (prompt positions; text token t is at 10 + t): -1 unknown,
    # a jump 11 tokens ahead and one before the text are noise
    clock.add([-1, 10, 11, 11, 22, 12, 13, 14, 14, 15, 16, 17, 9, 18, 19, 20])
    first = clock.words_until(4)  # audio of tokens [0, 4): only "Hi" has started
    assert [(w.word, w.start_s) for w in first] == [(0, 0.0)]
    assert first[0].end_s == pytest.approx(5 * 0.04)  # "there" is known to start at token 5
    rest = clock.words_until(16, final=True)
    assert [(w.word, round(w.start_s, 2)) for w in rest] == [(1, 0.2), (2, 0.52)]
    assert rest[-1].end_s == pytest.approx(16 * 0.04)


@pytest.fixture()
def aligned(engine: ChatterboxEngine):
    """The engine's decoder reading two heads of the tiny model (a full-size T3 reads
    upstream's three; the tiny one lacks their layers)."""
    decoder = engine._decoder
    assert decoder.aligned_heads == ()
    decoder.aligned_heads = ((1, 0), (1, 3))
    yield engine
    decoder.aligned_heads = ()


def _timed(engine: ChatterboxEngine, seed: int) -> list[np.ndarray]:
    return list(engine.stream(BATCH_TEXTS[seed], None, SynthesisParams(seed=seed),
                              threading.Event()))


def test_aligned_heads_time_every_word(aligned: ChatterboxEngine, monkeypatch) -> None:
    """With aligned heads the decoder records a text position per token, and the engine
    yields every word of the text, in order, each in the chunk its audio starts in (or
    before), at a multiple of a speech token (40 ms)."""
    from livekit.plugins.localtts.engines import TimedChunk

    engine = aligned
    stats = _stats_by_seed(monkeypatch)
    chunks = _timed(engine, 1)
    assert len(chunks) > 1 and all(isinstance(c, TimedChunk) for c in chunks)
    words = [w for c in chunks for w in c.words]
    assert [w.word for w in words] == list(range(len(TEXT.split())))
    starts = [w.start_s for w in words]
    assert starts == sorted(starts) and starts[0] == 0.0
    token_s = SAMPLES_PER_TOKEN / engine.sample_rate
    assert all(abs(s / token_s - round(s / token_s)) < 1e-6 for s in starts)
    chunk_ends = np.cumsum([len(c) for c in chunks]) / engine.sample_rate
    for chunk_end, chunk in zip(chunk_ends, chunks, strict=True):
        assert all(w.start_s <= chunk_end + 1e-9 for w in chunk.words)
    assert words[-1].end_s == pytest.approx(len(stats[1].speech_tokens) * token_s)


def test_text_positions_are_the_same_alone_and_in_a_batch(aligned, monkeypatch) -> None:
    """Each slot reads its own text: a stream's positions (hence word times) do not change
    when other streams share its steps, and every position lies in its text's span."""
    engine = aligned
    read = engine._decoder.read
    positions: dict[int, list[int]] = {}

    def recording_read(ranges):
        out = read(ranges)
        for (slot, _, _), (_, pos) in zip(ranges, out, strict=True):
            owner = engine._decoder.owners[slot]
            positions.setdefault(owner.seed, []).extend(pos)
        return out

    monkeypatch.setattr(engine._decoder, "read", recording_read)
    alone_words = {}
    for seed in (1, 2):
        chunks = _timed(engine, seed)
        alone_words[seed] = [(w.word, w.start_s) for c in chunks for w in c.words]
    alone_positions = dict(positions)
    positions.clear()
    together_chunks = together({seed: (lambda s=seed: _timed(engine, s)) for seed in (1, 2)})
    for seed in (1, 2):
        assert positions[seed] == alone_positions[seed]
        got = [(w.word, w.start_s) for c in together_chunks[seed] for w in c.words]
        assert got == alone_words[seed]
        recorded = [p for p in positions[seed] if p >= 0]
        assert len(recorded) >= len(positions[seed]) - 1  # all but the prefill's token
        ids = engine._tokenizer.text_to_tokens(BATCH_TEXTS[seed]).shape[1]
        assert max(recorded) - min(recorded) <= ids + 1
