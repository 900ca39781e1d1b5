"""Word timings for Piper: which phoneme each word of the input starts at, and when.

espeak phonemizes a whole sentence at once, and its phoneme words are not the text's words:
"of the" becomes one ("ʌvðə"), "2024" four, "e.g." becomes "for example". So each text word
is phonemized alone (cached) and the concatenation is aligned to the sentence's phonemes by
edit distance over the phoneme symbols (stress, length and punctuation marks ignored); a
word starts where its first symbol lands, moved back to the start of its phoneme word (the
space before it) unless an earlier text word already starts in that phoneme word. Piper's
alignment output (samples per phoneme id, `include_alignments`) turns phonemes into times.
"""

from __future__ import annotations

import itertools
import unicodedata
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..textcut import word_spans
from .base import WordTiming

_NOT_CORE = set(" ˈˌːˑ,.;:!?-—…'\"()[]")
_WORD_CACHE_SIZE = 20_000  # isolated-word phonemes kept
# Where a word's sound starts relative to its first phoneme's duration: up to 70 ms earlier,
# in the space token before it. Measured against pocketsphinx forced alignment of the same
# audio: median start error 57-61 ms at the first phoneme, 14-20 ms with this lead.
_WORD_ONSET_LEAD_S = 0.07


class WordPhonemes:
    """A word's phonemes said alone, cached (call it where the voice's phonemizer may run)."""

    def __init__(self, voice: Any) -> None:
        self.voice = voice
        self._cache: dict[str, str] = {}

    def __call__(self, word: str) -> str:
        phonemes = self._cache.get(word)
        if phonemes is None:
            if len(self._cache) >= _WORD_CACHE_SIZE:
                self._cache.clear()
            phonemes = "".join("".join(p) for p in self.voice.phonemize(word))
            self._cache[word] = phonemes
        return phonemes


def _core(symbol: str) -> bool:
    return symbol not in _NOT_CORE and not unicodedata.combining(symbol)


def _edit_alignment(a: Sequence[int], b: Sequence[int]) -> list[int]:
    """For each symbol of `a`, the index in `b` it is aligned to by a least-cost edit
    (unit costs): its match or substitute, or for a symbol `b` lacks, the position before
    which it would be inserted (possibly len(b))."""
    n, m = len(a), len(b)
    cost = np.empty((n + 1, m + 1), dtype=np.int32)
    cost[0] = np.arange(m + 1)
    b_arr = np.asarray(b, dtype=np.int64)
    cols = np.arange(m + 1, dtype=np.int32)
    for i in range(1, n + 1):
        row = np.empty(m + 1, dtype=np.int32)
        row[0] = i
        row[1:] = np.minimum(cost[i - 1, 1:] + 1, cost[i - 1, :-1] + (b_arr != a[i - 1]))
        # a run of skipped `b` symbols along the row: cost[i, j] = min_k (row[k] + j - k)
        cost[i] = np.minimum.accumulate(row - cols) + cols
    where = [0] * n
    i, j = n, m
    while i > 0:
        if j > 0 and cost[i, j] == cost[i - 1, j - 1] + (b[j - 1] != a[i - 1]):
            i, j = i - 1, j - 1
            where[i] = j
        elif cost[i, j] == cost[i - 1, j] + 1:
            i -= 1
            where[i] = j
        else:
            j -= 1
    return where


def word_starts(
    words: Sequence[str],
    sentences: Sequence[Sequence[str]],
    phonemize_word: Callable[[str], str],
) -> list[tuple[int, int]]:
    """(sentence, phoneme index) where each of `words` starts in `sentences` (Piper's
    phonemes of the text the words come from); every word gets one."""
    symbols: dict[str, int] = {}
    sentence_syms: list[int] = []
    places: list[tuple[int, int, int]] = []  # per core symbol: sentence, phoneme, its word
    group = -1
    for s, phonemes in enumerate(sentences):
        group_start = 0
        group += 1
        for p, symbol in enumerate(phonemes):
            if symbol == " ":
                group += 1
                group_start = p + 1
            elif _core(symbol):
                sentence_syms.append(symbols.setdefault(symbol, len(symbols)))
                places.append((s, p, group * 1_000_000 + group_start))
    if not places:
        return [(0, 0)] * len(words)
    word_syms: list[int] = []
    first_sym: list[int | None] = []
    for word in words:
        own = [symbols.setdefault(x, len(symbols)) for x in phonemize_word(word) if _core(x)]
        first_sym.append(len(word_syms) if own else None)
        word_syms += own
    where = _edit_alignment(word_syms, sentence_syms)
    starts: list[tuple[int, int]] = []
    taken_groups: set[int] = set()
    for k in range(len(words)):
        following = [i for i in first_sym[k:] if i is not None]
        g = where[following[0]] if following else len(places)
        g = min(g, len(places) - 1)
        if starts and (places[g][0], places[g][1]) < starts[-1]:
            starts.append(starts[-1])  # never before the previous word
            continue
        s, p, group_key = places[g]
        if group_key not in taken_groups:
            taken_groups.add(group_key)
            p = group_key % 1_000_000
        starts.append((s, p))
    return starts


def phoneme_samples(
    phonemes: Sequence[str],
    samples_per_id: np.ndarray,
    id_map: dict[str, Sequence[int]],
    *,
    bos: str,
    eos: str,
    pad: str,
) -> list[int]:
    """Samples of audio per phoneme of a sentence, as `PiperVoice.phonemes_to_ids` laid the
    ids out: BOS + pad, each known phoneme + pad (unknown ones are dropped), EOS. Index 0 is
    BOS; phoneme i is at i + 1; the last entry is EOS."""
    pad_n = len(id_map.get(pad, []))
    sizes = [len(id_map.get(bos, [])) + pad_n]
    sizes += [len(id_map[x]) + pad_n if x in id_map else 0 for x in phonemes]
    sizes.append(len(id_map.get(eos, [])))
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    totals = np.concatenate([[0], np.cumsum(samples_per_id)])
    bounds = np.minimum(bounds, len(samples_per_id))
    return [int(totals[b] - totals[a]) for a, b in itertools.pairwise(bounds)]


class WordTimer:
    """The word timings of one text Piper speaks: built once its sentences are phonemized
    (where each word starts, `word_starts`), then asked for each sentence's words as Piper
    gives that sentence's audio and durations."""

    def __init__(self, text: str, sentences: Sequence[Sequence[str]], phonemes: WordPhonemes):
        words = [text[a:b] for a, b in word_spans(text)]
        self._sentences = sentences
        self._starts = word_starts(words, sentences, phonemes)
        self._id_map = phonemes.voice.config.phoneme_id_map
        self._rate = float(phonemes.voice.config.sample_rate)

    def sentence(self, s: int, samples_per_id: np.ndarray, offset: int) -> list[WordTiming]:
        """The words that start in sentence `s` (its audio begins `offset` samples into the
        text's): from their first sound to where the next word starts or the sentence's last
        sound ends."""
        from piper.const import BOS, EOS, PAD

        phonemes = self._sentences[s]
        sizes = phoneme_samples(phonemes, samples_per_id, self._id_map, bos=BOS, eos=EOS, pad=PAD)
        begin = np.cumsum([0, *sizes])  # begin[i + 1]: first sample of phoneme i
        last_sound = max(
            (i for i, x in enumerate(phonemes) if x not in " ,.;:!?"), default=len(phonemes) - 1
        )
        sound_end = int(begin[last_sound + 2])
        lead = int(_WORD_ONSET_LEAD_S * self._rate)

        def onset(p: int) -> int:
            # a word's first sound begins inside the space before it (as much as that space
            # lasts: after a comma the space is the pause, which the word does not fill)
            if p > 0 and phonemes[p - 1] == " ":
                return int(max(begin[p], begin[p + 1] - lead))
            return int(begin[p + 1])

        mine = [(k, p) for k, (sentence, p) in enumerate(self._starts) if sentence == s]
        timings = []
        for n, (k, p) in enumerate(mine):
            start = onset(p)
            end = onset(mine[n + 1][1]) if n + 1 < len(mine) else max(sound_end, start)
            timings.append(
                WordTiming(k, (offset + start) / self._rate, (offset + end) / self._rate)
            )
        return timings
