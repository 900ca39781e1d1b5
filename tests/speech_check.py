"""What a listener would understand, offline: pocketsphinx (its wheel ships an English
acoustic model, language model and dictionary) aligns known text to speech and recognizes
speech. Used to check word timings and the joins between pieces (tests and bench)."""

from __future__ import annotations

import re

import numpy as np

ASR_RATE = 16_000


def _pcm16(audio: np.ndarray, sample_rate: int) -> bytes:
    import soxr

    resampled = soxr.resample(np.asarray(audio, dtype=np.float32), sample_rate, ASR_RATE)
    return (np.clip(resampled, -1.0, 1.0) * 32767).astype("<i2").tobytes()


def spoken_words(text: str) -> list[str]:
    """The words of `text` as the recognizer spells them (lower case, no punctuation)."""
    return [w for w in (re.sub(r"[^a-z']", "", t.lower()) for t in text.split()) if w]


def align_words(
    audio: np.ndarray, sample_rate: int, text: str, *, prefix: bool = False
) -> list[tuple[str, float]]:
    """(word, start in seconds) of every word of `text` in `audio`, by forced alignment;
    `prefix`: the audio may hold only the first words of `text` (the words it holds)."""
    from pocketsphinx import Decoder

    words = spoken_words(text)
    decoder = Decoder(samprate=ASR_RATE, loglevel="FATAL")
    if prefix:  # a grammar of every prefix: w1 [w2 [w3 ...]]
        grammar = " [ ".join(words) + " ]" * (len(words) - 1)
        decoder.add_jsgf_string(
            "prefix", f"#JSGF V1.0;\ngrammar prefix;\npublic <s> = {grammar};\n"
        )
        decoder.activate_search("prefix")
    else:
        decoder.set_align_text(" ".join(words))
    decoder.start_utt()
    decoder.process_raw(_pcm16(audio, sample_rate), full_utt=True)
    decoder.end_utt()
    return [
        (re.sub(r"\(\d+\)$", "", seg.word), seg.start_frame / 100)
        for seg in decoder.seg()
        if seg.word not in ("<s>", "</s>", "<sil>", "[NOISE]")
    ]


def recognize(audio: np.ndarray, sample_rate: int) -> list[str]:
    """The words pocketsphinx hears in `audio` (its general English language model)."""
    from pocketsphinx import Decoder

    decoder = Decoder(samprate=ASR_RATE, loglevel="FATAL")
    decoder.start_utt()
    decoder.process_raw(_pcm16(audio, sample_rate), full_utt=True)
    decoder.end_utt()
    hyp = decoder.hyp()
    return hyp.hypstr.split() if hyp is not None else []


def word_error_rate(reference: list[str], hypothesis: list[str]) -> float:
    """Word-level edit distance / reference length."""
    prev = list(range(len(hypothesis) + 1))
    for i, ref in enumerate(reference, 1):
        row = [i]
        for j, hyp in enumerate(hypothesis, 1):
            row.append(min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (ref != hyp)))
        prev = row
    return prev[-1] / max(1, len(reference))
