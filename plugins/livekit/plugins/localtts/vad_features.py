"""What `localtts.VAD` measures beside webrtcvad, per window, with numpy only.

webrtcvad's GMM scores the shape of a window's spectrum; noise shaped like speech (babble,
pink noise at low SNR) fools it, and then it never stops calling speech. Two measurements
on the last 64 ms of audio (one 512-point FFT at 8 kHz) tell the VAD when not to trust it:

- SNR over a tracked noise floor: band levels (12 bands, 150-4000 Hz) against the minimum
  each band reached over the last `floor_s` seconds (minimum statistics: speech always has
  gaps, noise does not rise for seconds and fall back; a noise that changes is learnt in
  `floor_s`). The window's SNR is the mean over bands of its level above the floor.
- aperiodicity: YIN's cumulative-mean-normalised difference (de Cheveigne & Kawahara
  2002), its minimum over pitch periods of 60-400 Hz, from the power spectrum below 1 kHz.
  Voiced speech is periodic (values near 0); white, pink and babble-like noise are not
  (about 0.5 and above). This is the feature that survives low SNRs: a vowel keeps its
  pitch under noise that swamps its level.

Everything runs at 8 kHz (the inference-rate window averaged down): both features live
below 4 kHz, and a 512-point FFT costs a quarter of a 2048-point one.
"""

from __future__ import annotations

import math
from itertools import pairwise

import numpy as np

ANALYSIS_RATE = 8000
ANALYSIS_S = 0.064  # long enough for 3.8 periods of a 60 Hz voice
_BAND_EDGES_HZ = np.geomspace(150.0, 4000.0, 13)
_PITCH_HZ = (60.0, 400.0)
_PERIODICITY_HZ = (50.0, 1000.0)  # harmonics above 1 kHz are weak and smeared by pitch changes
_BLOCKS = 8  # minimum statistics: the floor is the minimum over this many blocks
_FULL_SCALE_DB = 20.0 * math.log10(32768.0)  # levels are in int16 units
NOISY_FLOOR_DBFS = -70.0  # a noise floor above this is noise, not a quiet room


class FeatureTracker:
    """Features of consecutive windows of one stream at `sample_rate` (int16 input)."""

    def __init__(self, sample_rate: int, window: int, floor_s: float) -> None:
        self._step = max(1, sample_rate // ANALYSIS_RATE)  # inference rates are multiples
        size = int(ANALYSIS_S * ANALYSIS_RATE)
        self._history = np.zeros(size, np.float64)
        self._filling = size  # samples still to come before the history is all audio
        # one FFT of the analysis window, no padding: lags wrap around only where the taper
        # has faded both copies out
        self._taper = np.hanning(size)
        freqs = np.fft.rfftfreq(size, 1.0 / ANALYSIS_RATE)
        # power spectrum -> mean-square per band (Parseval with the taper's energy)
        scale = 2.0 / (np.sum(self._taper**2) * size)
        bands = [(freqs >= lo) & (freqs < hi) for lo, hi in pairwise(_BAND_EDGES_HZ)]
        self._bands = np.stack(bands, axis=1) * scale
        # YIN at every lag up to the longest pitch period, from the bins below 1 kHz, as one
        # small matrix product (cheaper than an inverse FFT): the autocorrelation r(0), r(t)
        # and its running sum over lags 1..t (YIN's cumulative mean), t = the pitch lags
        first, last = np.searchsorted(freqs, _PERIODICITY_HZ)
        self._low = slice(int(first), int(last))
        lag_lo = int(ANALYSIS_RATE / _PITCH_HZ[1])
        lag_hi = int(ANALYSIS_RATE / _PITCH_HZ[0])
        lags = np.arange(lag_hi + 1)
        cosines = np.cos(2.0 * np.pi * np.outer(np.arange(size // 2 + 1)[self._low], lags) / size)
        taper_ac = np.fft.irfft(np.abs(np.fft.rfft(self._taper, 2 * size)) ** 2)[: lag_hi + 1]
        cosines /= taper_ac / taper_ac[0]  # undo the taper's decay with the lag
        running = np.cumsum(cosines[:, 1:], axis=1)[:, lag_lo - 1 :]
        self._yin = np.concatenate([cosines[:, :1], cosines[:, lag_lo:], running], axis=1)
        self._pitch_lags = lags[lag_lo:].astype(np.float64)
        self._floor = np.zeros(self._bands.shape[1])
        # minimum statistics: per-band minimum of the current block, and over the blocks
        # before it
        self._block_len = max(1, round(floor_s * sample_rate / window / _BLOCKS))
        self._block_pos = 0
        self._minima = np.full((_BLOCKS, self._bands.shape[1]), np.inf)
        self._older_floor = self._minima[0].copy()
        self._power = np.zeros(size // 2 + 1)
        self._average = np.full(self._step, 1.0 / self._step)

    def update(self, samples: np.ndarray) -> float:
        """Take the next window (int16 at the inference rate); return its SNR (dB)."""
        if self._step > 1:  # means of `step` samples: a crude low-pass, enough here
            samples = samples[: samples.size // self._step * self._step]
            samples = samples.reshape(-1, self._step) @ self._average
        n = samples.size
        self._history[:-n] = self._history[n:]
        self._history[-n:] = samples
        spectrum = np.fft.rfft(self._history * self._taper)
        self._power = (spectrum * spectrum.conj()).real
        level = 10.0 * np.log10(self._power @ self._bands + 1e-3)  # int16 units: 1e-3 is -120 dBFS
        self._filling -= n
        if self._filling > 0:  # the history is not full yet: its level is too low
            return 0.0
        floor = self._floor = self._track_floor(level)
        return float(np.maximum(level - floor, 0.0).sum()) / level.size

    def floor_dbfs(self) -> float:
        """The noise floor, all bands together (dB re full scale)."""
        return 10.0 * math.log10(float(np.sum(10.0 ** (0.1 * self._floor)))) - _FULL_SCALE_DB

    def aperiodicity(self) -> float:
        """Of the last window: 0 (periodic) .. about 1 (noise); computed on demand."""
        values = self._power[self._low] @ self._yin
        n = self._pitch_lags.size
        r0, r, running = values[0], values[1 : n + 1], values[n + 1 :]
        if r0 <= 0.0:
            return 1.0
        # d(t) = 2 (r0 - r(t)), YIN's d'(t) = d(t) / mean of d(1..t); the 2s cancel
        cumulative = np.maximum(self._pitch_lags * r0 - running, 1e-12 * r0)
        return float(np.min((r0 - r) * self._pitch_lags / cumulative))

    def _track_floor(self, level: np.ndarray) -> np.ndarray:
        if self._block_pos == 0:  # a new block replaces the oldest
            self._minima = np.roll(self._minima, 1, axis=0)
            self._minima[0] = level
            self._older_floor = self._minima[1:].min(axis=0)
        else:
            np.minimum(self._minima[0], level, out=self._minima[0])
        self._block_pos = (self._block_pos + 1) % self._block_len
        return np.minimum(self._older_floor, self._minima[0])
