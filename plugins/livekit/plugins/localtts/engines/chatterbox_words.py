"""Word times of a Chatterbox utterance from where T3 looks in the text.

Each speech token is sampled while three attention heads of T3 look at the text token being
spoken (`chatterbox_t3.ALIGNED_HEADS`, upstream's alignment analysis); the decoder records
that position per token. A word starts at the first speech token whose position reaches the
word's first text token; speech token k is audio at k * 40 ms (25 tokens per second).
Positions are noisy: as upstream does, a jump back or far ahead is ignored, and the position
never moves back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .base import WordTiming

_MAX_BACK, _MAX_AHEAD = 4, 7  # upstream's "discontinuity" bounds, in text tokens


class SpeechWordClock:
    """Turns the text positions of one utterance's speech tokens into word timings.

    `token_words[t]`: the word (of the text the model was given, after its punctuation
    clean-up) that text token t belongs to; `text_start`: the prompt position of the first
    text token (after the start-of-text token); `words`: how many words the caller's text
    has (its `word_spans`), mapped proportionally when the clean-up changed the count.
    `text_span`: the prompt positions of the text, start/stop tokens included (where the
    decoder records positions).
    """

    def __init__(
        self,
        token_words: Sequence[int],
        text_start: int,
        words: int,
        seconds_per_token: float,
    ) -> None:
        self._token_words = list(token_words) or [0]
        self._text_start = text_start
        self.text_span = (text_start - 1, text_start + len(self._token_words) + 1)
        model_words = max(self._token_words) + 1
        self._word_of = [
            min(model_words - 1, w * model_words // max(1, words)) for w in range(words)
        ]
        self._seconds_per_token = seconds_per_token
        self._token = 0  # speech tokens seen
        self._position = 0  # text token being spoken
        self._reached: list[int] = []  # speech token at which each model word was reached
        self._emitted = 0  # caller's words handed out

    def add(self, positions: Sequence[int]) -> None:
        """The recorded prompt positions of the next speech tokens the stream kept (not
        those after its stop; -1: unknown)."""
        for position in positions:
            token = position - self._text_start
            if 0 <= token < len(self._token_words):
                step = token - self._position
                if -_MAX_BACK < step < _MAX_AHEAD:
                    self._position = max(self._position, token)
            reached = self._token_words[self._position]
            while len(self._reached) <= reached:
                self._reached.append(self._token)
            self._token += 1

    def words_until(self, speech_tokens: int, *, final: bool = False) -> list[WordTiming]:
        """The caller's words that start before speech token `speech_tokens` (all that are
        left when `final`), each ending where the next one starts."""
        end_s = speech_tokens * self._seconds_per_token
        starts: list[float] = []
        for w in range(self._emitted, len(self._word_of)):
            model_word = self._word_of[w]
            if model_word < len(self._reached) and self._reached[model_word] < speech_tokens:
                starts.append(self._reached[model_word] * self._seconds_per_token)
            elif final:
                starts.append(min(end_s, self._token * self._seconds_per_token))
            else:
                break
        if not starts:
            return []
        first = self._emitted
        self._emitted += len(starts)
        ends = [*starts[1:], end_s]
        if not final and self._emitted < len(self._word_of):
            nxt = self._word_of[self._emitted]
            if nxt < len(self._reached):  # the next word's start is known already
                ends[-1] = self._reached[nxt] * self._seconds_per_token
        return [
            WordTiming(first + i, start, max(start, end))
            for i, (start, end) in enumerate(zip(starts, ends, strict=True))
        ]


def text_token_words(token_texts: Sequence[str], space: str) -> list[int]:
    """The word each text token belongs to: words are separated by `space` tokens (the
    tokenizer's word separator); a separator belongs to the word after it."""
    words, word = [], 0
    for text in token_texts:
        if text == space and words:
            word += 1
        words.append(word)
    return words


def utterance_words(
    tokenizer: Any, text: str, ids: Sequence[int], prompt_len: int, seconds_per_token: float
) -> SpeechWordClock:
    """The word clock of `text`, tokenized as `ids`, in a prompt of `prompt_len` positions,
    as the engine builds it: the text (its tokens between start/stop-of-text) is followed by
    a start-of-speech token and upstream's second one, so its first token is at
    prompt_len - 3 - len(ids)."""
    from chatterbox.models.tokenizers.tokenizer import SPACE

    from ..textcut import word_spans

    token_texts = [tokenizer.tokenizer.id_to_token(i) for i in ids]
    return SpeechWordClock(
        text_token_words(token_texts, SPACE), prompt_len - 3 - len(ids),
        len(word_spans(text)), seconds_per_token=seconds_per_token,
    )  # fmt: skip
