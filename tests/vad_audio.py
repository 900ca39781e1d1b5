"""Speech in noise with known utterance spans, for the VAD tests and `bench/bench_vad.py`.

Everything is generated here, offline and seeded: the target speech is the bundled Piper
voice; the noises are

- white: Gaussian samples, flat spectrum over 0-8 kHz;
- pink: white noise shaped to 1/f power in the frequency domain (-3 dB per octave);
- talkers: `BABBLE_TALKERS` (6) simultaneous talkers, each an endless run of Piper
  sentences (from a pool disjoint from the target's texts) read at its own speed and
  pitch (resampled by a factor of 0.8-1.25: different speakers made from one voice), from
  its own random start, with 0.05-0.3 s pauses between sentences, at equal RMS, summed.
  Real voices with pitch and words: for a VAD they are speech (no VAD here tells the
  caller from the people at the next table; the bench shows it);
- babble (babble-like noise): the talkers' sound without their voices, like the ICRA
  "6-person babble" noise: Gaussian noise with the talkers' long-term spectrum (smoothed
  over 50 Hz, random phases) times their envelope (|x| low-passed at 8 Hz). A speech
  spectrum and a syllable rhythm, deep dips where the talkers pause together; no pitch.

Piper renders without its random sampling (noise_scale = noise_w = 0), so audio depends
on the text alone. Utterance spans come from the clean signal (10 ms frames within `SPAN_DB` of the
utterance's loudest frame), never from assumed lengths. The SNR is speech power over the
utterances' spans divided by the noise's mean power.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

RATE = 16000
SPAN_DB = 45.0  # a frame is speech when within this of the utterance's loudest 10 ms
SPEECH_PEAK = 0.3  # target speech peaks at -10.5 dBFS: room for noise at 0 dB SNR
BABBLE_TALKERS = 6

TARGET_TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "Please call me back tomorrow morning.",
    "I would like to book a table for two at eight tonight.",
    "Can you tell me how long the delivery will take?",
    "My account number is four seven one two nine.",
    "Yes, that works for me, thank you very much.",
    "What time does the pharmacy on the corner close today?",
    "I need to change the address on my last order.",
)
BABBLE_TEXTS = (
    "We went to the market early and bought some fresh bread.",
    "Did you see the game last night? It was incredible.",
    "The meeting has been moved to Thursday afternoon.",
    "She told me the train was running twenty minutes late.",
    "I think we should paint the kitchen a lighter colour.",
    "Honestly, the coffee here is better than anywhere else.",
    "They are building a new bridge across the river next year.",
    "Remember to bring your umbrella, it looks like rain.",
    "My brother just moved to a small town near the coast.",
    "Could you pass me the salt and pepper, please?",
)
NOISES = ("white", "pink", "babble", "talkers")


@dataclass(frozen=True)
class Scene:
    """Clean target speech at RATE with the spans of its utterances."""

    speech: np.ndarray  # float32, mono
    spans: tuple[tuple[float, float], ...]  # (start s, end s) of each utterance

    @property
    def duration(self) -> float:
        return self.speech.size / RATE


@lru_cache(maxsize=64)
def piper_16k(text: str) -> np.ndarray:
    """`text` in the bundled Piper voice, resampled to 16 kHz, peak 1.0 (float32).

    Piper samples its prior and durations at random (noise_scale, noise_w): both are set to
    0 so the same text always gives the same audio, whatever ran before.
    """
    import soxr
    from piper import SynthesisConfig

    voice = _piper()
    config = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)
    audio = np.concatenate([c.audio_float_array for c in voice.synthesize(text, config)])
    audio = soxr.resample(audio, voice.config.sample_rate, RATE)
    return (audio / np.max(np.abs(audio))).astype(np.float32)


@lru_cache(maxsize=1)
def _piper():  # type: ignore[no-untyped-def]
    from livekit.plugins.localtts.engines.piper import bundled_voice_paths
    from piper import PiperVoice

    return PiperVoice.load(*bundled_voice_paths())


def active_span(audio: np.ndarray) -> tuple[float, float]:
    """First and last 10 ms frame within SPAN_DB of the loudest one (seconds)."""
    hop = RATE // 100
    frames = audio[: audio.size // hop * hop].astype(np.float64).reshape(-1, hop)
    level = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-20)
    loud = np.flatnonzero(level > level.max() - SPAN_DB)
    return loud[0] * hop / RATE, (loud[-1] + 1) * hop / RATE


def make_scene(
    texts: tuple[str, ...],
    *,
    lead_s: float,
    gaps_s: tuple[float, ...],
    tail_s: float,
) -> Scene:
    """`texts` spoken one after the other: `lead_s` of silence, then each utterance followed
    by its gap (the last by `tail_s`)."""
    if len(gaps_s) != len(texts) - 1:
        raise ValueError("one gap between each two utterances")
    pieces = [np.zeros(int(lead_s * RATE), np.float32)]
    spans = []
    offset = lead_s
    for text, after in zip(texts, (*gaps_s, tail_s), strict=True):
        utterance = piper_16k(text) * SPEECH_PEAK
        start, end = active_span(utterance)
        spans.append((offset + start, offset + end))
        pieces += [utterance, np.zeros(int(after * RATE), np.float32)]
        offset += utterance.size / RATE + int(after * RATE) / RATE
    return Scene(speech=np.concatenate(pieces), spans=tuple(spans))


def random_scene(seed: int, *, utterances: int = 5, quiet_s: float = 8.0) -> Scene:
    """`utterances` target sentences (picked by `seed`) with 1.5-3 s pauses, 4 s of lead-in,
    and one long pause of `quiet_s` in the middle: noise-only stretches for false starts."""
    rng = np.random.default_rng(seed)
    texts = tuple(rng.choice(TARGET_TEXTS, size=utterances, replace=False))
    gaps = [float(g) for g in rng.uniform(1.5, 3.0, size=utterances - 1)]
    gaps[len(gaps) // 2] = quiet_s
    return make_scene(texts, lead_s=4.0, gaps_s=tuple(gaps), tail_s=3.0)


def white(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal(n).astype(np.float32)


def pink(n: int, rng: np.random.Generator) -> np.ndarray:
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / RATE)
    spectrum[1:] /= np.sqrt(freqs[1:])  # power ~ 1/f
    spectrum[0] = 0.0
    return np.fft.irfft(spectrum, n).astype(np.float32)


def talkers(
    n: int,
    rng: np.random.Generator,
    count: int = BABBLE_TALKERS,
    texts: tuple[str, ...] = BABBLE_TEXTS,
) -> np.ndarray:
    """`count` Piper voices at different pitches and offsets, summed (see module doc)."""
    import soxr

    pool = [piper_16k(text) for text in texts]
    mix = np.zeros(n, np.float64)
    for _ in range(count):
        factor = rng.uniform(0.8, 1.25)  # >1: higher and faster
        pieces: list[np.ndarray] = []
        size = 0
        skip = int(rng.uniform(0, 4.0) * RATE)  # start mid-sentence
        while size < n + skip:
            sentence = pool[rng.integers(len(pool))]
            pieces += [sentence, np.zeros(int(rng.uniform(0.05, 0.3) * RATE), np.float32)]
            size += pieces[-2].size + pieces[-1].size
        talker = soxr.resample(np.concatenate(pieces), RATE, RATE / factor)
        talker = np.resize(talker[skip:], n)  # resampling shortened it: wrap around
        mix += talker / np.sqrt(np.mean(talker.astype(np.float64) ** 2))
    return mix.astype(np.float32)


def babble(n: int, rng: np.random.Generator, texts: tuple[str, ...] = BABBLE_TEXTS) -> np.ndarray:
    """Babble-like noise: the talkers' long-term spectrum and syllable rhythm, no voices.

    Gaussian noise with the crowd's power spectrum (smoothed over 50 Hz, random phases),
    multiplied by the crowd's envelope (|x| low-passed at 8 Hz).
    """
    crowd = talkers(n, rng, texts=texts).astype(np.float64)
    spectrum = np.fft.rfft(crowd)
    freqs = np.fft.rfftfreq(n, 1 / RATE)
    width = max(1, int(50.0 / freqs[1]))
    power = _moving_average(np.abs(spectrum) ** 2, width)
    phases = np.exp(2j * np.pi * rng.random(power.size))
    shaped = np.fft.irfft(np.sqrt(power) * phases, n)
    lowpass = np.exp(-0.5 * (freqs / 8.0) ** 2)  # Gaussian roll-off: no ringing
    envelope = np.fft.irfft(np.fft.rfft(np.abs(crowd)) * lowpass, n)
    return (shaped * np.maximum(envelope, 1e-3 * envelope.max())).astype(np.float32)


def _moving_average(x: np.ndarray, width: int) -> np.ndarray:
    padded = np.concatenate([np.zeros(1), np.cumsum(np.pad(x, width // 2, mode="edge"))])
    return (padded[width:] - padded[:-width])[: x.size] / width


def make_noise(kind: str, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return {"white": white, "pink": pink, "babble": babble, "talkers": talkers}[kind](n, rng)


def speech_power(scene: Scene) -> float:
    """Mean power of the target over its utterances' spans."""
    parts = [scene.speech[int(a * RATE) : int(b * RATE)] for a, b in scene.spans]
    return float(np.mean(np.square(np.concatenate(parts), dtype=np.float64)))


def mix(scene: Scene, noise: np.ndarray | None, snr_db: float | None) -> np.ndarray:
    """The scene with `noise` scaled to `snr_db`, as int16 (clipped)."""
    audio = scene.speech.astype(np.float64)
    if noise is not None and snr_db is not None:
        noise = noise[: audio.size].astype(np.float64)
        gain = np.sqrt(speech_power(scene) / np.mean(noise**2) / 10 ** (snr_db / 10))
        audio = audio + gain * noise
    return np.clip(np.round(audio * 32767), -32768, 32767).astype(np.int16)
