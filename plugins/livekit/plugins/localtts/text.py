"""Text -> speakable pieces for the engines.

Sentences come from livekit-agents' blingfire tokenizer. Two rules on top keep the first
audio early and engine inputs bounded: the first piece of a reply is cut at the first
clause end after `first_clause_min_chars`, and no piece exceeds `max_piece_chars`.
"""

from __future__ import annotations

import re
import unicodedata

from livekit.agents.tokenize import blingfire

from .textcut import CLAUSE_END, cut_long

# SSML/XML/HTML tags are not spoken; "x < 5 and y > 3" is not a tag
_TAG = re.compile(r"</?[A-Za-z][\w:.-]*(?:\s[^<>]{0,200})?/?>")
_MARKDOWN = re.compile(r"(\*{1,3}|_{2,3}|`{1,3}|^#{1,6}\s|^\s*[-*+]\s)", re.MULTILINE)
_SPACE = re.compile(r"\s+")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.;:!?])")
_SPEAKABLE = re.compile(r"\w", re.UNICODE)


def normalize(text: str) -> str:
    """Drop what no engine should read aloud: control characters, markup, emoji."""
    text = _TAG.sub(" ", text)
    text = _MARKDOWN.sub(" ", text)
    kept = []
    for ch in text:
        cat = unicodedata.category(ch)
        if ch == "\u200b":
            kept.append(" ")  # a zero-width space still separates words
        elif cat == "Cf" or "\ufe00" <= ch <= "\ufe0f":
            continue  # joiners and other format characters, emoji variation selectors
        elif cat[0] == "C" or (cat in ("So", "Sk") and ord(ch) >= 0x2000):
            kept.append(" ")  # controls (newline, tab...), emoji, arrows, dingbats
        else:
            kept.append(ch)  # letters, digits, punctuation, and symbols like ° © £
    return _SPACE_BEFORE_PUNCT.sub(r"\1", _SPACE.sub(" ", "".join(kept))).strip()


def is_speakable(text: str) -> bool:
    return _SPEAKABLE.search(text) is not None


class TextSplitter:
    """Incremental splitter: push text as it streams in, take finished pieces out.

    Not thread-safe; one per stream.
    """

    def __init__(self, *, first_clause_min_chars: int = 16, max_piece_chars: int = 300) -> None:
        if max_piece_chars < 20:
            raise ValueError("max_piece_chars must be at least 20")
        self._first_min = first_clause_min_chars
        self._max = max_piece_chars
        self._tokenizer = blingfire.SentenceTokenizer(min_sentence_len=1)
        self._buf = ""
        self._emitted_any = False

    def push(self, text: str) -> list[str]:
        """Add streamed text; return the pieces that are complete now."""
        self._buf += text
        pieces: list[str] = []
        if not self._emitted_any:
            pieces += self._take_first_clause()
        if self._emitted_any:
            pieces += self._take_sentences(final=False)
        return self._finish(pieces)

    def flush(self) -> list[str]:
        """The input paused or ended: everything buffered becomes pieces."""
        pieces = self._take_sentences(final=True)
        return self._finish(pieces)

    def _finish(self, pieces: list[str]) -> list[str]:
        out: list[str] = []
        for piece in pieces:
            piece = normalize(piece).strip()
            if piece and is_speakable(piece):
                out.extend(cut_long(piece, self._max))
        if out:
            self._emitted_any = True
        return out

    def _take_first_clause(self) -> list[str]:
        start = len(self._buf) - len(self._buf.lstrip())
        for m in CLAUSE_END.finditer(self._buf):
            if m.end() - start >= self._first_min and is_speakable(self._buf[: m.end()]):
                piece, self._buf = self._buf[: m.end()], self._buf[m.end() :]
                return [piece]
        if len(self._buf) > self._max:  # a long run without punctuation
            return self._take_sentences(final=False, force=True)
        return []

    def _take_sentences(self, *, final: bool, force: bool = False) -> list[str]:
        if not self._buf.strip():
            self._buf = "" if final else self._buf
            return []
        sentences = self._tokenizer.tokenize(self._buf)
        if final:
            self._buf = ""
            return sentences
        if len(sentences) <= 1 and not (force or len(self._buf) > self._max):
            return []  # the last sentence may still be growing
        if len(sentences) > 1:
            done, tail = sentences[:-1], sentences[-1]
        else:  # one over-long sentence: speak all but its last partial word
            cut = self._buf.rstrip().rfind(" ")
            if cut <= 0:
                return []
            done, tail = [self._buf[:cut]], self._buf[cut:]
        # keep the raw tail (with its leading space) so the next push continues it
        idx = self._buf.rfind(tail)
        self._buf = self._buf[idx:] if idx >= 0 else tail
        return done


def split_text(
    text: str, *, first_clause_min_chars: int = 16, max_piece_chars: int = 300
) -> list[str]:
    """Whole text -> pieces (what `synthesize()` feeds the engine, one piece at a time)."""
    splitter = TextSplitter(
        first_clause_min_chars=first_clause_min_chars, max_piece_chars=max_piece_chars
    )
    return splitter.push(text) + splitter.flush()
