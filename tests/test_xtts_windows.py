"""XTTS's windowed vocoder (engines/xtts_vocoder.py) on a tiny random-weight model: what a
listener hears at the joins between chunks, the frame arithmetic the engine's chunk sizes
rest on, and the CPU speed-ups that must not change the audio.

Everything goes through `WindowVocoder.push`, the vocoder's one entry, against coqui's own
HiFiGAN run over the whole utterance at once.
"""

from __future__ import annotations

import copy
import functools

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("TTS")

from livekit.plugins.localtts.engines.xtts_vocoder import (  # noqa: E402
    HOP,
    WindowVocoder,
    channels_last_2d,
    fold_weight_norm,
    frames_for_tokens,
    window_lengths,
)
from livekit.plugins.localtts.host import set_torch_threads  # noqa: E402

from tests.tiny_xtts import build_xtts  # noqa: E402

SCHEDULE = (1, 2, 5, 7)  # tokens per push: a first push too short to emit, then growing


@functools.cache
def _tiny_model() -> object:
    """Built once per process: `tests/mutation.sh xtts_vocoder` forks a test run per mutant
    from the process that built it, and a rebuild per mutant would cost most of the run."""
    set_torch_threads(1)  # as every tiny-model test runs (host.py owns the thread count)
    return build_xtts("tiny")


@pytest.fixture(scope="module")
def model() -> object:
    return _tiny_model()


@pytest.fixture(scope="module")
def speaker() -> torch.Tensor:
    return torch.randn(1, 512, 1, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def latents(model: object) -> torch.Tensor:
    return torch.randn(1, 20, model.gpt.model_dim, generator=torch.Generator().manual_seed(3))  # type: ignore[attr-defined]


def _snr_db(ref: np.ndarray, test: np.ndarray) -> float:
    assert len(ref) == len(test)
    return float(10 * np.log10(np.sum(ref**2) / max(np.sum((ref - test) ** 2), 1e-20)))


def _stream(
    vocoder: WindowVocoder, latents: torch.Tensor, schedule: tuple[int, ...] = SCHEDULE
) -> list[np.ndarray]:
    parts, n = [], 0
    with torch.inference_mode():
        for step in schedule:
            n = min(latents.shape[1], n + step)
            parts.append(vocoder.push(latents[:, :n], final=False))
        parts.append(vocoder.push(latents, final=True))
    return parts


def _vocoder(model: object, speaker: torch.Tensor, **kw: object) -> WindowVocoder:
    args: dict = {"length_scale": 1.0, "context": 16, "lookahead": 6, "crossfade": 3} | kw
    return WindowVocoder(model, speaker, **args)


def test_streamed_audio_is_the_one_pass_audio(model, speaker, latents) -> None:  # type: ignore[no-untyped-def]
    """16 frames of left context and 6 held back: the chunks, joined, are the utterance
    vocoded at once to within 60 dB (without context ~51 dB, without look-ahead ~32 dB, and
    clicks at every join)."""
    with torch.inference_mode():
        one_pass = model.hifigan_decoder(latents, g=speaker).reshape(-1).numpy()
    parts = _stream(_vocoder(model, speaker), latents)
    assert parts[0].size == 0 and parts[0].dtype == np.float32  # 1 token: nothing final yet
    streamed = np.concatenate(parts)
    assert streamed.dtype == np.float32 and streamed.size == one_pass.size
    assert _snr_db(one_pass, streamed) >= 60.0
    # at each join the step between two samples is the one-pass audio's step
    joins = np.cumsum([p.size for p in parts])[1:-1]
    steps = np.abs(np.diff(streamed)[joins - 1] - np.diff(one_pass)[joins - 1])
    assert steps.max() < 0.005, steps


def test_window_lengths_come_in_steps_made_up_with_left_context(model, speaker, latents) -> None:  # type: ignore[no-untyped-def]
    """With `window_step` 16, a window that starts past the piece's first frame is a multiple
    of 16 frames long (a length the engine's warmup ran: oneDNN builds kernels per length),
    made up with more left context: still the one-pass audio to within 60 dB."""
    with torch.inference_mode():
        one_pass = model.hifigan_decoder(latents, g=speaker).reshape(-1).numpy()
    decoder = model.hifigan_decoder.waveform_decoder
    runs: dict[int, list[int]] = {1: [], 16: []}
    for step, lengths in runs.items():
        handle = decoder.register_forward_pre_hook(
            lambda _m, args, seen=lengths: seen.append(args[0].shape[-1])
        )
        # a WindowVocoder's own default: every window its own length
        kw = {"window_step": step} if step != 1 else {}
        try:
            streamed = np.concatenate(_stream(_vocoder(model, speaker, **kw), latents))
        finally:
            handle.remove()
        assert streamed.size == one_pass.size and _snr_db(one_pass, streamed) >= 60.0
    # pushes at 3, 8, 15 and 20 tokens = 13, 34, 65, 87 frames: the first two windows start
    # at frame 0 (their own length); the others, 53 and 44 frames, grow to 64 and 48
    assert runs == {1: [13, 34, 53, 44], 16: [13, 34, 64, 48]}
    assert set(runs[16][2:]) <= set(
        window_lengths(chunk_tokens=max(SCHEDULE), context=16, lookahead=6, step=16)
    )


def test_a_faster_voice_streams_as_its_one_pass_audio(model, speaker, latents) -> None:  # type: ignore[no-untyped-def]
    """speed 1.25: the latents are stretched (linearly, as coqui's decoder does) before
    vocoding, in every window alike."""
    scale = 1.0 / 1.25
    with torch.inference_mode():
        stretched = torch.nn.functional.interpolate(
            latents.transpose(1, 2), scale_factor=scale, mode="linear"
        ).transpose(1, 2)
        one_pass = model.hifigan_decoder(stretched, g=speaker).reshape(-1).numpy()
    # the first push, one token stretched by 0.8, is no frame at all: nothing yet
    vocoder = _vocoder(model, speaker, length_scale=scale)
    parts = _stream(vocoder, latents)
    assert parts[0].size == 0 and parts[0].dtype == np.float32
    streamed = np.concatenate(parts)
    assert streamed.size == one_pass.size
    assert _snr_db(one_pass, streamed) >= 30.0


@pytest.mark.parametrize("crossfade", [3, 1])
def test_held_back_samples_crossfade_linearly_into_the_next_chunk(
    model, speaker, latents, crossfade  # type: ignore[no-untyped-def]
) -> None:
    """At every join the first `crossfade` held-back frames, as the earlier window rendered
    them, fade out over the same frames of the next window (a linear ramp, ends excluded):
    at the first join, whose earlier window starts at frame 0, and at a later one, whose
    earlier window starts inside the utterance (the tail is cut relative to that start)."""
    pushes, context, lookahead = (10, 14, 20), 16, 6
    # the second push's window starts past frame 0: the third join's tail comes from there
    assert frames_for_tokens(pushes[0]) - lookahead > context
    faded = _vocoder(model, speaker, crossfade=crossfade)
    plain = _vocoder(model, speaker, crossfade=0)
    n = crossfade * HOP
    ramp = np.linspace(0.0, 1.0, n + 2, dtype=np.float32)[1:-1]
    tail: np.ndarray | None = None
    with torch.inference_mode():
        for tokens in pushes:
            # the same window with nothing held back: its samples past `plain`'s chunk are
            # what the earlier window rendered of the held-back frames
            whole = copy.copy(plain).push(latents[:, :tokens], final=True)
            chunk_plain = plain.push(latents[:, :tokens], final=False)
            chunk = faded.push(latents[:, :tokens], final=False)
            if tail is None:  # the first chunk: nothing to fade from
                np.testing.assert_array_equal(chunk, chunk_plain)
            else:
                np.testing.assert_allclose(
                    chunk[:n], tail * (1.0 - ramp) + chunk_plain[:n] * ramp, rtol=0, atol=1e-6
                )
                np.testing.assert_array_equal(chunk[n:], chunk_plain[n:])
                assert np.abs(chunk[:n] - chunk_plain[:n]).max() > 0  # the fade changed samples
            tail = whole[chunk_plain.size : chunk_plain.size + n]
            assert tail.size == n


def test_crossfade_never_exceeds_the_held_back_frames(model, speaker, latents) -> None:  # type: ignore[no-untyped-def]
    capped = np.concatenate(_stream(_vocoder(model, speaker, lookahead=2, crossfade=9), latents))
    exact = np.concatenate(_stream(_vocoder(model, speaker, lookahead=2, crossfade=2), latents))
    np.testing.assert_array_equal(capped, exact)


@pytest.mark.parametrize("speed", [1.0, 1.25, 0.5])
def test_frames_for_tokens_is_what_the_vocoder_renders(model, speaker, latents, speed) -> None:  # type: ignore[no-untyped-def]
    """The engine sizes its chunks with `frames_for_tokens`: it must count the frames the
    decoder's interpolation really makes (speed floored at 0.05, as the engine does)."""
    scale = 1.0 / max(speed, 0.05)
    # 1 token: an utterance whose stop token came first (at speed 1.25: no frame, no error)
    for tokens in (1, 6, 11):
        vocoder = _vocoder(model, speaker, length_scale=scale)
        with torch.inference_mode():
            audio = vocoder.push(latents[:, :tokens], final=True)
        assert audio.size == frames_for_tokens(tokens, speed) * HOP, (tokens, speed)


def test_frames_for_tokens_values() -> None:
    # 4 mel frames a token, stretched 24000/22050 and floored
    assert [frames_for_tokens(t) for t in (1, 6, 24)] == [4, 26, 104]
    assert (frames_for_tokens(65), frames_for_tokens(82)) == (282, 357)  # exactly 24000/22050
    assert frames_for_tokens(6, 1.25) == 17  # floor(6 / 1.25) = 4 tokens' worth
    assert frames_for_tokens(1, 1.25) == 0  # floor(1 / 1.25): a faster voice's first token
    assert frames_for_tokens(6, 2.0) == 13
    assert frames_for_tokens(6, 0.5) == 52
    assert frames_for_tokens(6, 0.0) == frames_for_tokens(6, 0.05) == 522


def test_window_lengths_values() -> None:
    """The stepped lengths the engine's warmup runs: from the shortest window past a piece's
    start (the context and one new frame) to the longest (a full chunk's frames, the held-back
    ones and the context), each rounded up to a step."""
    # 17 frames -> 32; 24 tokens = 104 frames, + 6 + 16 = 126 -> 128
    assert window_lengths(chunk_tokens=24, context=16, lookahead=6, step=16) == [
        32, 48, 64, 80, 96, 112, 128
    ]
    assert window_lengths(chunk_tokens=7, context=16, lookahead=6, step=16) == [32, 48, 64]
    assert window_lengths(chunk_tokens=6, context=4, lookahead=0, step=10) == [10, 20, 30]
    assert window_lengths(chunk_tokens=6, context=10, lookahead=0, step=10) == [20, 30, 40]
    assert window_lengths(chunk_tokens=1, context=0, lookahead=0, step=4) == [4]
    assert window_lengths(chunk_tokens=1, context=0, lookahead=0, step=1) == [1, 2, 3, 4]


def test_folding_weight_norm_keeps_the_audio(model, speaker, latents) -> None:  # type: ignore[no-untyped-def]
    folded = build_xtts("tiny")  # the same weights (a copy.deepcopy breaks parametrizations)
    assert fold_weight_norm(folded.hifigan_decoder) == 76  # every weight-normed conv
    assert fold_weight_norm(folded.hifigan_decoder) == 0  # nothing left to fold
    before = np.concatenate(_stream(_vocoder(model, speaker), latents))
    after = np.concatenate(_stream(_vocoder(folded, speaker), latents))
    assert _snr_db(before, after) >= 100.0


def test_a_bf16_copy_of_the_decoder_is_bf16_autocast(model, speaker, latents) -> None:  # type: ignore[no-untyped-def]
    """The bf16 vocoder runs a bf16 copy of the (folded) waveform decoder, made once, not
    autocast (which casts every weight again for each window): the same samples."""
    import copy

    folded = build_xtts("tiny")  # as the engine loads it: weight_norm folded
    fold_weight_norm(folded.hifigan_decoder.waveform_decoder)
    decoder = folded.hifigan_decoder.waveform_decoder
    with torch.inference_mode():
        bf16 = copy.deepcopy(decoder).to(torch.bfloat16)
        copied = _vocoder(folded, speaker, decoder=bf16).push(latents, final=True)
        frames = _vocoder(folded, speaker)._frames(latents)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = decoder(frames, g=speaker).float().reshape(-1).numpy()
    assert copied.dtype == np.float32
    np.testing.assert_array_equal(copied, autocast)


def _folded_decoder() -> torch.nn.Module:
    """The tiny model's waveform decoder as the engine loads it: weight_norm folded."""
    decoder = build_xtts("tiny").hifigan_decoder.waveform_decoder  # the fixture's weights
    fold_weight_norm(decoder)
    return decoder


def _convs(module: torch.nn.Module, *kinds: type) -> list[torch.nn.Module]:
    return [m for m in module.modules() if isinstance(m, kinds)]


def test_a_channels_last_2d_decoder_copy_gives_the_same_audio(model, speaker, latents) -> None:  # type: ignore[no-untyped-def]
    """The x86 default: every 1-D convolution run as a 1 x k 2-D one over channels-last
    tensors. A copy (the model's own decoder untouched), called as the original, and the
    streamed samples are the original's to float rounding (fp32)."""
    nn = torch.nn
    decoder = _folded_decoder()
    ones = _convs(decoder, nn.Conv1d, nn.ConvTranspose1d)
    two_d = channels_last_2d(decoder)
    assert _convs(decoder, nn.Conv1d, nn.ConvTranspose1d) == ones  # the original as it was
    assert not _convs(decoder, nn.Conv2d, nn.ConvTranspose2d)
    assert not _convs(two_d, nn.Conv1d, nn.ConvTranspose1d)
    converted = _convs(two_d, nn.Conv2d, nn.ConvTranspose2d)
    assert len(converted) == len(ones) > 0
    assert len(_convs(two_d, nn.ConvTranspose2d)) == len(_convs(decoder, nn.ConvTranspose1d)) > 0
    assert all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in converted)

    reference = np.concatenate(_stream(_vocoder(model, speaker, decoder=decoder), latents))
    streamed = np.concatenate(_stream(_vocoder(model, speaker, decoder=two_d), latents))
    assert streamed.size == reference.size
    assert _snr_db(reference, streamed) >= 100.0
    frames = _vocoder(model, speaker)._frames(latents)
    with torch.inference_mode():
        original = decoder(frames, g=speaker)
        by_keyword = two_d(frames, g=speaker)
        by_position = two_d(frames, speaker)
    assert by_keyword.shape == original.shape  # [1, 1, samples]
    torch.testing.assert_close(by_position, by_keyword, rtol=0, atol=0)
    torch.testing.assert_close(by_keyword, original, rtol=1e-4, atol=1e-5)


def test_bf16_channels_last_is_as_close_to_fp32_as_bf16(model, speaker, latents) -> None:  # type: ignore[no-untyped-def]
    """bf16 on top of channels-last (the engine's order: convert, then cast): the same
    closeness to fp32 as the plain bf16 copy."""
    decoder = _folded_decoder()
    reference = np.concatenate(_stream(_vocoder(model, speaker, decoder=decoder), latents))
    both = channels_last_2d(decoder).to(torch.bfloat16)
    assert all(m.weight.dtype == torch.bfloat16 and m.weight.is_contiguous(
        memory_format=torch.channels_last) for m in _convs(both, torch.nn.Conv2d))
    plain = np.concatenate(_stream(_vocoder(
        model, speaker, decoder=copy.deepcopy(decoder).to(torch.bfloat16)), latents))
    streamed = np.concatenate(_stream(_vocoder(model, speaker, decoder=both), latents))
    assert _snr_db(reference, streamed) >= _snr_db(reference, plain) - 3.0 >= 20.0


def test_every_convolution_setting_carries_over_to_2d() -> None:
    """Not only HiFiGAN's settings: stride, dilation, groups, output padding, no bias, and a
    module called without a speaker embedding."""
    nn = torch.nn
    gen = torch.Generator().manual_seed(5)
    module = nn.Sequential(
        nn.Conv1d(4, 6, 5, stride=2, padding=3, dilation=2, groups=2, bias=False),
        nn.ConvTranspose1d(6, 4, 4, stride=3, padding=1, output_padding=2, dilation=2),
        nn.Conv1d(4, 2, 3, padding=1),
    )
    for parameter in module.parameters():
        parameter.data = torch.randn(parameter.shape, generator=gen)
    frames = torch.randn(2, 4, 37, generator=gen)
    with torch.inference_mode():
        expected = module(frames)
        got = channels_last_2d(module)(frames)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_only_zero_padded_convolutions_are_converted() -> None:
    reflect = torch.nn.Sequential(torch.nn.Conv1d(2, 2, 3, padding=1, padding_mode="reflect"))
    with pytest.raises(ValueError, match="reflect"):
        channels_last_2d(reflect)
