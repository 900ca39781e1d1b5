"""XTTS engine on a tiny random-weight model (coqui's own classes, built offline)."""

from __future__ import annotations

import os
import platform
import threading
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("TTS")

from livekit.plugins.localtts.engines.base import (  # noqa: E402
    EngineError,
    EngineUnavailableError,
    SynthesisParams,
    VoiceError,
)
from livekit.plugins.localtts.engines.xtts import XTTSEngine, XTTSLatents, fit_text  # noqa: E402
from livekit.plugins.localtts.engines.xtts_decode import quantize_gpt_int8  # noqa: E402
from livekit.plugins.localtts.engines.xtts_vocoder import (  # noqa: E402
    frames_for_tokens,
    window_lengths,
)
from livekit.plugins.localtts.settings import Settings  # noqa: E402

from tests.concurrency import assert_cancel_stops_within_a_step  # noqa: E402
from tests.tiny_xtts import (  # noqa: E402
    build_xtts,
    make_test_clip,
    make_tiny_xtts_engine,
    write_xtts_checkpoint,
)

MAX_TOKENS = 24
HOP = 256


@pytest.fixture(scope="module")
def engine() -> XTTSEngine:
    return make_tiny_xtts_engine(max_tokens=MAX_TOKENS)


def _collect(engine: XTTSEngine, text: str = "Hello there, how are you?", **params) -> list:
    params.setdefault("seed", 0)
    return list(engine.stream(text, None, SynthesisParams(**params), threading.Event()))


def _snr_db(ref: np.ndarray, test: np.ndarray) -> float:
    assert len(ref) == len(test)
    return float(10 * np.log10(np.sum(ref**2) / max(np.sum((ref - test) ** 2), 1e-20)))


class _ForwardCounter:
    """Counts GPT trunk passes (its final layer norm ends each: one per generated token of a
    stream alone, one per batched step)."""

    def __init__(self, engine: XTTSEngine, on_call=None) -> None:
        self.calls = 0
        self._on_call = on_call
        self._handle = engine._model.gpt.gpt.ln_f.register_forward_hook(self._hook)

    def _hook(self, *_):
        self.calls += 1
        if self._on_call:
            self._on_call(self.calls)

    def remove(self) -> None:
        self._handle.remove()


def test_first_chunk_is_small_and_later_chunks_grow(engine: XTTSEngine) -> None:
    chunks = _collect(engine)
    sizes = [len(c) for c in chunks]
    assert (engine.first_chunk_tokens, engine.chunk_growth) == (4, 1.5)
    # chunks end after 4 tokens, 6 more (4 x 1.5), then 9 more, capped by the 24 generated;
    # each ends with its tokens' frames less the look-ahead held back (none at the end)
    ends = [frames_for_tokens(4) - 6, frames_for_tokens(10) - 6, frames_for_tokens(19) - 6,
            frames_for_tokens(24)]
    assert sizes == [n * HOP for n in np.diff([0, *ends])]
    assert sizes[0] < sizes[1] < sizes[2]  # the first small, later ones grow
    assert sum(sizes) == frames_for_tokens(MAX_TOKENS) * HOP  # nothing lost, nothing doubled
    assert all(c.dtype == np.float32 and np.all(np.isfinite(c)) for c in chunks)


def test_streamed_equals_one_pass_decoding_of_the_same_latents(engine: XTTSEngine) -> None:
    """The engine's windowed, crossfaded vocoding vs HiFiGAN over the whole utterance."""
    model = engine._model
    for speed in (1.0, 1.25):
        latents: list = []
        handle = model.gpt.final_norm.register_forward_hook(
            lambda m, i, o, seen=latents: seen.append(o)
        )
        try:
            streamed = np.concatenate(_collect(engine, speed=speed))
        finally:
            handle.remove()
        with torch.inference_mode():
            full = torch.stack(latents, dim=1)  # [1, T, d], one per generated token
            if speed != 1.0:
                full = torch.nn.functional.interpolate(
                    full.transpose(1, 2), scale_factor=1.0 / speed, mode="linear"
                ).transpose(1, 2)
            g = engine.default_voice.data.speaker_embedding
            one_pass = model.hifigan_decoder(full, g=g).reshape(-1).numpy()
        assert _snr_db(one_pass, streamed) >= 20.0


def test_an_utterance_of_one_token_at_a_faster_speed_is_no_audio_not_an_error(
    engine: XTTSEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stop token first (one latent) at speed 1.25 is no frame at all (coqui's floor):
    the piece ends without audio instead of failing, and the next request speaks."""
    monkeypatch.setattr(engine, "max_tokens", 1)  # generation ends after one token
    assert _collect(engine, speed=1.25) == []
    monkeypatch.undo()
    audio = np.concatenate(_collect(engine, speed=1.25))
    assert audio.size == frames_for_tokens(MAX_TOKENS, 1.25) * HOP


def test_own_loop_samples_exactly_like_coquis_generator(engine: XTTSEngine) -> None:
    model = engine._model
    sampling = engine._sampling(SynthesisParams())
    voice = engine.default_voice.data
    ours: list[int] = []
    original = torch.multinomial

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        ours.append(int(out))
        return out

    torch.manual_seed(123)
    torch.multinomial = spy
    try:
        list(engine.stream("hello world", None, SynthesisParams(), threading.Event()))
    finally:
        torch.multinomial = original
    torch.manual_seed(123)
    with torch.inference_mode():
        text = torch.IntTensor(model.tokenizer.encode("hello world", lang="en")).unsqueeze(0)
        fake = model.gpt.compute_embeddings(voice.gpt_cond_latent, text)
        stock = model.gpt.get_generator(
            fake_inputs=fake, top_k=sampling.top_k, top_p=sampling.top_p,
            temperature=sampling.temperature, do_sample=True, num_beams=1,
            num_return_sequences=1, repetition_penalty=sampling.repetition_penalty,
            output_hidden_states=True, return_dict_in_generate=True,
            max_new_tokens=MAX_TOKENS,
        )
        theirs = [int(token) for token, _ in stock]
    assert ours == theirs[: len(ours)] and len(ours) == MAX_TOKENS


def test_cancel_between_chunks_stops_at_once_and_next_request_works(engine: XTTSEngine) -> None:
    cancel = threading.Event()
    counter = _ForwardCounter(engine)
    try:
        stream = engine.stream("Hello there, how are you?", None, SynthesisParams(seed=0), cancel)
        assert_cancel_stops_within_a_step(
            stream, cancel, lambda: counter.calls, engine.scheduler
        )
    finally:
        counter.remove()
    assert sum(len(c) for c in _collect(engine)) == frames_for_tokens(MAX_TOKENS) * HOP


def test_cancel_mid_chunk_stops_within_one_step(engine: XTTSEngine) -> None:
    cancel = threading.Event()

    def cancel_on_third(calls: int) -> None:  # as if another thread cancelled now
        if calls == 3:
            cancel.set()

    counter = _ForwardCounter(engine, on_call=cancel_on_third)
    try:
        chunks = list(engine.stream("Hello there.", None, SynthesisParams(seed=0), cancel))
    finally:
        counter.remove()
    assert chunks == [] and counter.calls == 3
    assert _collect(engine)


def test_concurrent_streams_share_one_engine(engine: XTTSEngine) -> None:
    results: dict[int, int] = {}

    def run(i: int) -> None:
        results[i] = sum(len(c) for c in _collect(engine, f"Stream number {i}.", seed=i))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == {i: frames_for_tokens(MAX_TOKENS) * HOP for i in range(2)}


def test_conditioning_round_trips_through_bytes(engine: XTTSEngine) -> None:
    voice = engine.condition(make_test_clip("alice"))
    latents = voice.data
    assert latents.gpt_cond_latent.shape == (1, 32, engine._model.gpt.model_dim)
    assert latents.speaker_embedding.shape == (1, 512, 1)
    restored = engine.load_conditioning("alice", engine.dump_conditioning(voice))
    assert restored.voice_id == "alice" and restored.model_revision == engine.model_revision
    assert torch.equal(restored.data.gpt_cond_latent, latents.gpt_cond_latent)
    assert torch.equal(restored.data.speaker_embedding, latents.speaker_embedding)
    params = SynthesisParams(seed=7)
    a = np.concatenate(list(engine.stream("Hi.", voice, params, threading.Event())))
    b = np.concatenate(list(engine.stream("Hi.", restored, params, threading.Event())))
    np.testing.assert_array_equal(a, b)


def test_bad_conditioning_and_clips_are_clear_errors(engine: XTTSEngine) -> None:
    with pytest.raises(VoiceError, match="unreadable"):
        engine.load_conditioning("x", b"not an npz")
    wrong = XTTSLatents(torch.zeros(1, 32, 7), torch.zeros(1, 512, 1))
    bad = engine.dump_conditioning(
        type(engine.default_voice)("x", "xtts", engine.model_revision, wrong)
    )
    with pytest.raises(VoiceError, match="shapes"):
        engine.load_conditioning("x", bad)
    clip = make_test_clip("short", seconds=0.2)
    with pytest.raises(VoiceError, match="at least"):
        engine.condition(clip)
    silent = type(clip)("silent", np.zeros(48000, dtype=np.float32), 24000)
    with pytest.raises(VoiceError, match="silent"):
        engine.condition(silent)
    assert _collect(engine)  # still works


def test_long_text_is_cut_under_the_limits(engine: XTTSEngine) -> None:
    """The plugin hands pieces within `max_piece_chars`; a direct caller's longer text is
    cut to the model's limits here (no first-clause rule: that is the plugin's)."""
    sentence = "This sentence keeps going, with clauses and numbers like 42 and 1999; "
    text = sentence * 30 + "and " + "word " * 300 + "end."
    tokenizer = engine._model.tokenizer
    assert engine.max_piece_chars("en") == tokenizer.char_limits["en"] == 250
    assert engine.max_piece_chars("ja") == tokenizer.char_limits["ja"]
    pieces = engine._pieces(text, "en")
    assert len(pieces) > 5
    assert all(len(p) <= tokenizer.char_limits["en"] for p in pieces)
    assert all(len(tokenizer.encode(p.lower(), lang="en")) < 402 for p in pieces)
    # a piece within the limits is one run, however many clauses it has
    within = "Tomorrow brings clouds, and perhaps some rain. Then sun."
    assert engine._pieces(within, "en") == [within]
    # a tokenizer far more verbose than characters: pieces are halved until they fit
    halved = fit_text(text, max_chars=250, token_count=lambda p: 10 * len(p), max_tokens=402)
    assert all(10 * len(p) < 402 for p in halved)
    engine.max_tokens = 1  # one token per piece: every piece is encoded and spoken
    try:
        chunks = list(engine.stream(text, None, SynthesisParams(seed=0), threading.Event()))
    finally:
        engine.max_tokens = MAX_TOKENS
    assert len(chunks) == len(pieces)


def test_language_and_voice_errors(engine: XTTSEngine) -> None:
    assert _collect(engine, "Hola, ¿qué tal?", language="es-ES")
    with pytest.raises(EngineError, match="does not speak"):
        _collect(engine, language="xx")
    saved = engine.default_voice
    engine.set_default_voice(None)
    try:
        with pytest.raises(VoiceError, match="reference voice"):
            _collect(engine)
    finally:
        engine.set_default_voice(saved)


def test_int8_gpt_stays_close_to_fp32() -> None:
    fp32 = build_xtts("tiny", seed=1)
    int8 = build_xtts("tiny", seed=1)
    converted = quantize_gpt_int8(int8)
    assert converted == 4 * fp32.gpt.layers  # c_attn, attn c_proj, c_fc, mlp c_proj
    gen = torch.Generator().manual_seed(0)
    emb = torch.randn(1, 60, fp32.gpt.model_dim, generator=gen)
    with torch.inference_mode():
        a = fp32.gpt.gpt(inputs_embeds=emb).last_hidden_state
        b = int8.gpt.gpt(inputs_embeds=emb).last_hidden_state
        la = fp32.gpt.mel_head(fp32.gpt.final_norm(a))
        lb = int8.gpt.mel_head(int8.gpt.final_norm(b))
    rel = float((a - b).norm() / a.norm())
    top1 = float((la.argmax(-1) == lb.argmax(-1)).float().mean())
    assert rel < 0.05 and top1 > 0.9, (rel, top1)
    engine = XTTSEngine.from_model(int8, int8=True, max_tokens=8)
    engine.load()
    info = engine.info()
    assert info.details["int8"] and "int8 dynamic GPT" in info.optimizations
    voice = engine.condition(make_test_clip())
    assert list(engine.stream("Hi.", voice, SynthesisParams(seed=0), threading.Event()))


def test_channels_last_hifigan_is_the_x86_default_and_the_same_audio() -> None:
    """`vocoder_channels_last` (auto: on for x86 CPUs) runs HiFiGAN as channels-last 2-D
    convolutions: a seeded stream's audio is the plain engine's to float rounding (fp32)."""
    nn = torch.nn
    auto = XTTSEngine.from_model(build_xtts("tiny"), vocoder_channels_last=None, max_tokens=8)
    auto.load()
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    assert auto.info().details["vocoder_channels_last"] is x86
    assert ("HiFiGAN as channels-last 2-D convolutions" in auto.info().optimizations) is x86

    audio = {}
    for channels_last in (True, False):
        engine = XTTSEngine.from_model(build_xtts("tiny"), vocoder_channels_last=channels_last,
                                       max_tokens=12)
        engine.load()
        decoder = engine.waveform_decoder()
        assert decoder is engine.waveform_decoder()  # made once
        assert any(isinstance(m, nn.Conv2d) for m in decoder.modules()) is channels_last
        assert engine.info().details["vocoder_channels_last"] is channels_last
        voice = engine.condition(make_test_clip("same"))
        audio[channels_last] = np.concatenate(list(engine.stream(
            "Hello there.", voice, SynthesisParams(seed=3), threading.Event())))
    assert audio[True].size == audio[False].size > 0
    noise = float(np.sum((audio[True] - audio[False]) ** 2))
    assert 10 * np.log10(float(np.sum(audio[False] ** 2)) / max(noise, 1e-20)) >= 100.0


# -- loading from disk, offline ---------------------------------------------------------


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("TTS_HOME", str(tmp_path / "tts"))
    return tmp_path


def _settings(model: str) -> Settings:
    return Settings(xtts_model=model, _env_file=None)


def test_missing_directory_is_a_clear_error(offline: Path) -> None:
    settings = _settings(str(offline / "nowhere"))
    with pytest.raises(EngineUnavailableError, match="not found"):
        XTTSEngine.from_settings(settings)
    assert "not found" in (XTTSEngine.availability(settings) or "")


def test_directory_missing_files_names_them(offline: Path) -> None:
    directory = offline / "partial"
    directory.mkdir()
    (directory / "config.json").write_text("{}")
    message = XTTSEngine.availability(_settings(str(directory))) or ""
    assert "model.pth" in message and "vocab.json" in message and "config.json" not in message


def test_hub_id_not_in_cache_is_a_clear_error(offline: Path) -> None:
    for model in ("someone/not-cached", "coqui/XTTS-v2"):
        settings = _settings(model)
        with pytest.raises(EngineUnavailableError, match="not in the local Hugging Face cache"):
            XTTSEngine.from_settings(settings)
        assert "LOCALTTS_XTTS_MODEL" in (XTTSEngine.availability(settings) or "")


def test_loads_a_checkpoint_directory_with_its_speakers(offline: Path) -> None:
    directory = write_xtts_checkpoint(offline / "ckpt", speaker="Ana Florence")
    settings = _settings(str(directory))
    assert XTTSEngine.availability(settings) is None
    engine = XTTSEngine.from_settings(settings)
    engine.max_tokens = 8
    engine.load()
    assert engine.default_voice is not None and engine.default_voice.voice_id == "Ana Florence"
    assert engine.model_revision.startswith("local-")
    assert engine.device == "cpu"  # "auto" in the settings: decided by the host table
    chunks = list(engine.stream("Hi there.", None, SynthesisParams(seed=0), threading.Event()))
    assert sum(len(c) for c in chunks) > 0
    assert os.environ["HF_HUB_OFFLINE"] == "1"


async def test_unsupported_language_is_a_400_through_the_plugin(engine: XTTSEngine) -> None:
    from livekit.agents import APIStatusError
    from livekit.plugins import localtts

    tts = localtts.TTS(engine=engine, language="xx")
    with pytest.raises(APIStatusError, match="does not speak") as info:
        async for _ev in tts.synthesize("Hello there."):
            pass
    assert info.value.status_code == 400 and not info.value.retryable
    tts.update_options(language="en")
    assert [ev async for ev in tts.synthesize("Hello there.")]


def test_warmup_runs_the_vocoder_over_every_stepped_window_length() -> None:
    """A stream's later windows are multiples of `vocoder_window_step` frames long; warmup
    runs HiFiGAN over each of them once, so no caller pays the first run of a length."""
    model = build_xtts("tiny")
    engine = XTTSEngine.from_model(model)  # no token cap: chunks up to 24 tokens
    lengths: list[int] = []
    handle = model.hifigan_decoder.waveform_decoder.register_forward_pre_hook(
        lambda _m, args: lengths.append(args[0].shape[-1])
    )
    try:
        engine.load()  # loads and warms up
    finally:
        handle.remove()
    assert engine.waveform_decoder() is model.hifigan_decoder.waveform_decoder  # fp32 here
    expected = window_lengths(chunk_tokens=24, context=16, lookahead=6, step=16)
    assert len(expected) == 7  # 32 ... 128 frames (test_xtts_windows)
    assert set(expected) <= set(lengths)
    # with a token cap, only the windows its chunks can have
    capped = XTTSEngine.from_model(model, max_tokens=8)
    lengths.clear()
    handle = model.hifigan_decoder.waveform_decoder.register_forward_pre_hook(
        lambda _m, args: lengths.append(args[0].shape[-1])
    )
    try:
        capped.load()
    finally:
        handle.remove()
    assert set(window_lengths(chunk_tokens=8, context=16, lookahead=6, step=16)) <= set(lengths)
    assert 128 not in lengths
    assert engine.info().details["vocoder_window_step"] == 16


def test_a_failed_warmup_is_run_again() -> None:
    engine = XTTSEngine.from_model(build_xtts("tiny"), max_tokens=8)
    warm = engine._warm
    calls: list[int] = []

    def warm_failing_once() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("out of memory while warming up")
        warm()

    engine._warm = warm_failing_once  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="warming up"):
        engine.warmup()
    counter = _ForwardCounter(engine)
    try:
        engine.warmup()  # the retry really runs the model
        assert len(calls) == 2 and counter.calls > 0
        steps = counter.calls
        engine.warmup()  # and once warm, never again
        engine.load()
        assert len(calls) == 2 and counter.calls == steps
    finally:
        counter.remove()


async def test_a_mid_reply_sentence_is_one_model_run(engine: XTTSEngine) -> None:
    """The plugin splits text once (the first clause of a reply early, then sentences); the
    engine speaks each piece it is handed as one run, however many clauses it has."""
    from livekit.plugins import localtts

    prefills: list[int] = []

    def count_prefill(_module, args) -> None:
        if args[0].shape[1] > 1:  # a prompt, not one decoded token
            prefills.append(args[0].shape[1])

    handle = engine._model.gpt.gpt.ln_f.register_forward_pre_hook(count_prefill)
    try:
        tts = localtts.TTS(engine=engine, seed=0)
        text = "Hello there, my friend. Tomorrow brings clouds, and perhaps some rain later."
        frames = [ev.frame async for ev in tts.synthesize(text)]
    finally:
        handle.remove()
    assert frames
    # "Hello there, my friend." then the whole second sentence: two runs, not three
    assert len(prefills) == 2, prefills


def test_xtts_fulfils_the_engine_contract(engine: XTTSEngine) -> None:
    import json

    from livekit.plugins.localtts.engines.base import Engine, EngineInfo, VoiceConditioning

    assert isinstance(engine, Engine)
    assert engine.min_reference_seconds == 0.5
    # coqui's max_ref_len: `condition` crops the clip to it, so nobody needs to hand more
    assert engine.max_reference_seconds == float(engine._model.config.max_ref_len)
    info = engine.info()
    assert isinstance(info, EngineInfo) and info.loaded and info.device == "cpu"
    assert info.default_voice == "default" and info.model_revision == engine.model_revision
    assert json.loads(json.dumps(info.as_dict()))["int8"] is False
    with pytest.raises(VoiceError, match="conditioned for"):
        engine.set_default_voice(VoiceConditioning("c", "chatterbox", "r", object()))
    with pytest.raises(ValueError, match="host selection"):
        XTTSEngine.from_model(engine._model, device="auto")


async def test_aligned_transcript_through_the_plugin(engine: XTTSEngine) -> None:
    """XTTS gives no word timings: the plugin times each piece exactly (its audio's start)
    and spreads its words by an estimate; the timed text is the input, exactly."""
    from livekit.agents.types import USERDATA_TIMED_TRANSCRIPT
    from livekit.plugins import localtts

    tts = localtts.TTS(engine=engine, seed=0)
    assert tts.capabilities.aligned_transcript
    text = "Hello there, my friend. Tomorrow brings **clouds**, and rain."
    timed, arrived, at = [], [], 0.0
    async for ev in tts.synthesize(text):
        for t in ev.frame.userdata.get(USERDATA_TIMED_TRANSCRIPT, []):
            timed.append(t)
            arrived.append(at)
        at += ev.frame.duration
    assert "".join(timed) == text
    starts = [t.start_time for t in timed]
    assert starts == sorted(starts) and starts[-1] <= at
    # no word arrives after its audio began
    assert all(a <= s + 0.011 for a, s in zip(arrived, starts, strict=True))
