"""A piece's word times and the silence at its edges, as the plugin pushes them.

`PieceTranscript`: each word's slice of the input, timed from the request's first audio
(the engine's times where it gives `TimedChunk`s, else an estimate by `SpeakingPace`).
`PieceEdges`: the silence an engine leaves where a listener would hear a wait (before the
reply's first sound, around a cut mid-sentence) shortened; word times move with it.
Nothing here knows about LiveKit's streams, only its `TimedString`.
"""

from __future__ import annotations

import re

import numpy as np
from livekit.agents.types import TimedString

from .engines import TimedChunk
from .text import Piece

_VOWEL_GROUPS = re.compile(r"[aeiouy]+")
_PAUSE_UNITS = {",": 1.0, ";": 1.5, ":": 1.5, ".": 2.0, "!": 2.0, "?": 2.0}


def _speaking_units(word: str) -> float:
    """How long a word takes to say, in syllables: vowel groups, digits (most are said as
    one or two syllables), and the pause its punctuation makes."""
    lower = word.lower()
    syllables = len(_VOWEL_GROUPS.findall(lower)) + 1.5 * sum(ch.isdigit() for ch in lower)
    return max(1.0, syllables) + _PAUSE_UNITS.get(lower.rstrip("\"')]*")[-1:], 0.0)


class SpeakingPace:
    """Seconds per speaking unit of an engine that gives no word timings, learned from the
    pieces it has spoken (starts at a typical 4.5 syllables per second)."""

    def __init__(self) -> None:
        self.seconds_per_unit = 0.22

    def learn(self, units: float, seconds: float) -> None:
        if units >= 3 and seconds > 0:  # a word or two says little about the pace
            self.seconds_per_unit += 0.3 * (seconds / units - self.seconds_per_unit)


class PieceTranscript:
    """The timed input text of one piece: each word's slice of the input, timed from the
    request's first audio, pushed before (or with) the audio its word starts in.

    With `TimedChunk`s the engine's times are used; otherwise the piece's start is exact and
    each word is placed by its share of an estimated length, never later than the audio
    produced so far, and the words left at the end share what remains of the piece."""

    def __init__(self, piece: Piece, start_s: float, pace: SpeakingPace, speed: float) -> None:
        self._words = piece.raw_words()
        self._start = start_s
        self._pace = pace
        self._speed = speed
        self._units = [_speaking_units(w) for w in self._words]
        per_unit = pace.seconds_per_unit / speed
        self._estimate = list(start_s + per_unit * np.cumsum([0.0, *self._units[:-1]]))
        self._pushed = [False] * len(self._words)
        self._last = start_s  # the latest start pushed: times never go back
        self._timed_by_engine = False

    def shift(self, seconds: float) -> None:
        """The engine's audio of the piece starts `seconds` later (earlier, if negative) than
        thought; its words still start no earlier than its first sample pushed."""
        self._start += seconds
        self._estimate = [t + seconds for t in self._estimate]

    def before(self, chunk: np.ndarray, audio_end_s: float) -> list[TimedString]:
        """The words to push before `chunk`, whose audio ends at `audio_end_s`."""
        if isinstance(chunk, TimedChunk) and chunk.words:
            self._timed_by_engine = True
            return [
                self._timed(w.word, self._start + w.start_s, self._start + w.end_s)
                for w in chunk.words
                if 0 <= w.word < len(self._words) and not self._pushed[w.word]
            ]
        if self._timed_by_engine:
            return []
        return [
            self._timed(k, self._estimate[k], None)
            for k in range(len(self._words))
            if not self._pushed[k] and self._estimate[k] < audio_end_s
        ]

    def finish(self, end_s: float) -> list[TimedString]:
        """The piece's audio ended at `end_s`: the words not pushed yet share what is left
        of it with the last word pushed (by their units)."""
        if not self._timed_by_engine:  # the pace at speed 1
            self._pace.learn(sum(self._units), (end_s - self._start) * self._speed)
        left = [k for k, done in enumerate(self._pushed) if not done]
        if not left:
            return []
        spoken = [k for k, done in enumerate(self._pushed) if done]
        units = [self._units[spoken[-1]] if spoken else 0.0] + [self._units[k] for k in left]
        offsets = np.cumsum(units)[:-1] / sum(units) * max(0.0, end_s - self._last)
        starts = [self._last + float(t) for t in offsets]
        out = [self._timed(k, t, None) for k, t in zip(left[:-1], starts[:-1], strict=True)]
        return [*out, self._timed(left[-1], starts[-1], max(end_s, starts[-1]))]

    def _timed(self, k: int, start: float, end: float | None) -> TimedString:
        self._pushed[k] = True
        start = max(start, self._last)
        self._last = start
        if end is None:
            return TimedString(self._words[k], start_time=start)
        return TimedString(self._words[k], start_time=start, end_time=max(end, start))


_AUDIBLE = 1e-3  # -60 dBFS: quieter is silence
# A reply starts at its first audible sample (engines lead with 25-50 ms of silence, which a
# listener would wait through before hearing anything), less a few ms for the onset's ramp
REPLY_LEAD_IN_S = 0.005
# Silence kept at a mid-sentence join: the end of the piece cut at a word, the start of the
# next (a word gap in fluent speech; an engine leaves 120-260 ms there, a sentence pause)
_JOIN_KEEP_END_S = 0.04
JOIN_KEEP_START_S = 0.02


def _audible(audio: np.ndarray) -> np.ndarray:
    return np.flatnonzero(np.abs(audio) > _AUDIBLE)


class PieceEdges:
    """Drops the silence an engine puts at the edges of a piece where a listener would hear
    it as a wait: before the reply's first sound (all but `REPLY_LEAD_IN_S`), and around a
    cut mid-sentence (the first piece cut at a word), where the piece's trailing silence is
    held back as it arrives and all but `_JOIN_KEEP_END_S` of it dropped once the piece
    ends, and the next piece's leading silence all but `JOIN_KEEP_START_S`. Only silence
    is held or dropped: no sound is delayed or changed. `dropped` counts the samples cut
    from the piece's start, by which its word times move earlier."""

    def __init__(self, sample_rate: int, *, keep_lead_s: float | None, cut: bool) -> None:
        # leading silence to keep; None once the piece's first sound has come
        self._keep_lead = None if keep_lead_s is None else round(keep_lead_s * sample_rate)
        self._lead_held = np.zeros(0, dtype=np.float32)
        self._hold_tail = cut
        self._tail_held = np.zeros(0, dtype=np.float32)
        self._keep_tail = round(_JOIN_KEEP_END_S * sample_rate)
        self.dropped = 0

    def audio(self, chunk: np.ndarray) -> np.ndarray:
        """What to push of the next chunk of the piece."""
        audio = np.asarray(chunk, dtype=np.float32).view(np.ndarray)
        if self._keep_lead is not None and audio.size:
            sound = _audible(audio)
            lead = int(sound[0]) if sound.size else audio.size
            silence = np.concatenate([self._lead_held, audio[:lead]])
            kept = silence[len(silence) - min(self._keep_lead, len(silence)) :]
            self.dropped += len(silence) - len(kept)
            if not sound.size:  # silence so far: keep holding the end of it
                self._lead_held = kept
                return audio[:0]
            audio = np.concatenate([kept, audio[lead:]])
            self._keep_lead = None
        if self._hold_tail:
            audio = np.concatenate([self._tail_held, audio])  # held silence was a pause inside
            sound = _audible(audio)
            end = int(sound[-1]) + 1 if sound.size else 0
            audio, self._tail_held = audio[:end], audio[end:]
        return audio

    def end(self) -> np.ndarray:
        """What to push when the piece has ended: the start of its trailing silence."""
        return self._tail_held[: self._keep_tail]
