"""Text -> speakable pieces for the engines, each knowing the input text it stands for.

Sentences come from livekit-agents' blingfire tokenizer, plus sentences glued without a space
("...for.Sentence one.Sentence two"), which blingfire misses and espeak reads as "dot". The
first piece of a reply is cut early, so that its audio starts early whatever the length of
its first sentence:

1. at its first sentence end, or at a clause end after `first_clause_min_chars`;
2. else at a word boundary once `first_piece_min_words` words are complete, never right
   after an article, preposition, auxiliary, title or number ("the | weather", "Dr. | Smith",
   "3.5 | million" make broken joins), at most `_EXTRA_WORDS` words later;
3. else, for streamed text, when the stream's short wait for a boundary ran out
   (`TextSplitter.wait_expired`): at a sentence end that ends the buffer, else at the last
   complete word.

Later pieces are whole sentences; no piece exceeds `max_piece_chars`.

A piece carries the normalized text an engine speaks, the raw input it stands for, and where
each spoken character came from, so word timings on the spoken text become timed slices of
the input (captions and chat history keep the input's spaces, punctuation and markup).
Every character of the input belongs to exactly one piece: unspeakable text joins the next
piece, or ends up in a last, silent piece.
"""

from __future__ import annotations

import itertools
import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from livekit.agents.tokenize import blingfire

from .textcut import CLAUSE_END, cut_long, word_spans

# SSML/XML/HTML tags are not spoken; "x < 5 and y > 3" is not a tag
_TAG = re.compile(r"</?[A-Za-z][\w:.-]*(?:\s[^<>]{0,200})?/?>")
# defaults of the first-piece rules (the plugin's settings use the same). A shorter first
# clause ("Sure, | I can help", LOCALTTS_FIRST_CLAUSE_MIN_CHARS=2) halved stream() first audio
# for a short first sentence with no loss in word error, but four rooms sharing one Piper
# engine on 2 cores then heard "Hello," and over a second of silence (the second pieces queue
# behind the other rooms' first ones): not the default (docs/benchmarks.md)
FIRST_CLAUSE_MIN_CHARS = 16
FIRST_PIECE_MIN_WORDS = 4
_MARKDOWN = re.compile(r"(\*{1,3}|_{2,3}|`{1,3}|^#{1,6}\s|^\s*[-*+]\s)", re.MULTILINE)
_SPACE = re.compile(r"\s+")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.;:!?])")
_SPEAKABLE = re.compile(r"\w", re.UNICODE)
# a sentence end glued to the next sentence: two letters/digits, the mark, a letter
_GLUED = re.compile(r"(?<=[^\W_][^\W_])[.!?](?=[^\W\d_])")
_SENTENCE_MARKS = ".!?\u2026"

# "Dr. Smith", "e.g. this", "J. Smith": a period that ends no sentence or clause
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof st jr sr vs etc inc ltd co corp no nos fig approx dept est gen gov lt "
    "col sgt capt mt rev hon vol ch ave blvd rd jan feb mar apr jun jul aug sep sept oct nov "
    "dec mon tue wed thu fri sat sun".split()
)
# a first piece never ends on these: the next word belongs to them
_NO_CUT_AFTER = frozenset(
    "a an the this that these those my your his her its our their of to in on at by for with "
    "from into onto about as than and or but nor if is are was were be been being am has have "
    "had do does did will would can could should shall may might must not no very so such "
    "i i'm i'll i've i'd let's".split()
)
_EXTRA_WORDS = 3  # how far past the minimum a first piece looks for a word it may end on


def _is_abbreviation(token: str) -> bool:
    """`token` (what precedes a period, without it) is an abbreviation or an initial."""
    t = token.lower().lstrip("([{\"'\u201c\u2018")
    if t in _ABBREVIATIONS or (len(t) == 1 and t.isalpha()):
        return True
    parts = t.split(".")
    return len(parts) > 1 and all(0 < len(p) <= 2 and p.isalpha() for p in parts)  # e.g, u.s


def _token_before(text: str, pos: int) -> str:
    return text[:pos].rsplit(None, 1)[-1] if text[:pos].strip() else ""


def _is_dotted_abbreviation(text: str, pos: int) -> bool:
    """The period at `pos` is inside a dotted abbreviation written with its final period
    ("Ph.D.", "U.S."), not between two sentences ("for.Sentence", "it.It works")."""
    word = _token_before(text, pos) + text[pos:].split(None, 1)[0]
    return word.endswith(".") and _is_abbreviation(word[:-1])


def _glued_sentence_ends(text: str) -> list[int]:
    """Positions right after a sentence end glued to the next sentence ("for.Sentence")."""
    return [
        m.end()
        for m in _GLUED.finditer(text)
        if text[m.end()].isupper()
        and not _is_abbreviation(_token_before(text, m.start()))
        and not _is_dotted_abbreviation(text, m.start())
    ]


Edit = tuple[int, int, list[tuple[str, int]]]  # replace text[start:end] by (char, source pos)


def _rewrite(text: str, sources: list[int], edits: Iterable[Edit]) -> tuple[str, list[int]]:
    """Apply non-overlapping, ordered edits; keep for every output character the input
    position it came from (`sources` maps `text` to the original input)."""
    out: list[str] = []
    out_sources: list[int] = []
    last = 0
    for start, end, replacement in edits:
        out.append(text[last:start])
        out_sources.extend(sources[last:start])
        for ch, pos in replacement:
            out.append(ch)
            out_sources.append(sources[min(pos, len(sources) - 1)])
        last = end
    out.append(text[last:])
    out_sources.extend(sources[last:])
    return "".join(out), out_sources


def _replace_all(
    pattern: re.Pattern[str], repl: Callable[[re.Match[str]], list[tuple[str, int]]]
) -> Callable[[str], Iterable[Edit]]:
    return lambda text: ((m.start(), m.end(), repl(m)) for m in pattern.finditer(text))


def _strip_unspoken_chars(text: str) -> Iterable[Edit]:
    for i, ch in enumerate(text):
        cat = unicodedata.category(ch)
        if ch == "\u200b":
            yield i, i + 1, [(" ", i)]  # a zero-width space still separates words
        elif cat == "Cf" or "\ufe00" <= ch <= "\ufe0f":
            yield i, i + 1, []  # joiners and other format characters, emoji variation selectors
        elif cat[0] == "C" or (cat in ("So", "Sk") and ord(ch) >= 0x2000):
            yield i, i + 1, [(" ", i)]  # controls (newline, tab...), emoji, arrows, dingbats
        # letters, digits, punctuation, and symbols like ° © £ stay


def _space_glued_sentences(text: str) -> Iterable[Edit]:
    return ((end, end, [(" ", end)]) for end in _glued_sentence_ends(text))


def _strip(text: str) -> Iterable[Edit]:
    lead = len(text) - len(text.lstrip())
    if lead:
        yield 0, lead, []
    trail = len(text.rstrip())
    if trail < len(text) and trail >= lead:
        yield trail, len(text), []


_NORMALIZE_STEPS: tuple[Callable[[str], Iterable[Edit]], ...] = (
    _replace_all(_TAG, lambda m: [(" ", m.start())]),
    _replace_all(_MARKDOWN, lambda m: [(" ", m.start())]),
    _strip_unspoken_chars,
    _replace_all(_SPACE, lambda m: [(" ", m.start())]),
    _replace_all(_SPACE_BEFORE_PUNCT, lambda m: [(m.group(1), m.start(1))]),
    _space_glued_sentences,
    _strip,
)


def normalize_with_offsets(text: str) -> tuple[str, list[int]]:
    """`normalize(text)`, and for each of its characters the index in `text` it came from."""
    sources = list(range(len(text)))
    for step in _NORMALIZE_STEPS:
        text, sources = _rewrite(text, sources, list(step(text)))
    return text, sources


def normalize(text: str) -> str:
    """Drop what no engine should read aloud (control characters, markup, emoji) and space
    sentences glued together."""
    return normalize_with_offsets(text)[0]


def is_speakable(text: str) -> bool:
    return _SPEAKABLE.search(text) is not None


@dataclass(frozen=True)
class Piece:
    """What an engine speaks at once (`text`), the input it stands for (`raw`), and for each
    character of `text` its index in `raw`. `text` is empty for input with nothing to say."""

    text: str
    raw: str
    offsets: tuple[int, ...]

    @property
    def ends_mid_sentence(self) -> bool:
        """The piece was cut at a word, not after punctuation: the sentence goes on."""
        return self.text[-1:].isalnum()

    def raw_words(self) -> list[str]:
        """The input cut at the start of each spoken word: one slice per word of `text`
        (`textcut.word_spans`), which together are exactly `raw` (the first slice keeps what
        precedes the first word, each slice the spaces and punctuation after its word)."""
        spans = word_spans(self.text)
        if not spans:
            return [self.raw]
        starts = [0] + [self.offsets[start] for start, _ in spans[1:]] + [len(self.raw)]
        return [self.raw[a:b] for a, b in itertools.pairwise(starts)]


class TextSplitter:
    """Incremental splitter: push text as it streams in, take finished pieces out.

    Not thread-safe; one per stream.
    """

    def __init__(
        self,
        *,
        first_clause_min_chars: int = FIRST_CLAUSE_MIN_CHARS,
        first_piece_min_words: int = FIRST_PIECE_MIN_WORDS,
        max_piece_chars: int = 300,
    ) -> None:
        if max_piece_chars < 20:
            raise ValueError("max_piece_chars must be at least 20")
        if first_piece_min_words < 1:
            raise ValueError("first_piece_min_words must be at least 1")
        self._first_min = first_clause_min_chars
        self._first_words = first_piece_min_words
        self._max = max_piece_chars
        self._tokenizer = blingfire.SentenceTokenizer(min_sentence_len=1, retain_format=True)
        self._buf = ""
        self._carry = ""  # input taken but with nothing to say: it joins the next piece
        self._emitted_any = False
        self._waited = False  # the stream's wait for a first boundary ran out

    @property
    def first_piece_pending(self) -> bool:
        """Speakable text is buffered, and no piece has been cut yet."""
        return not self._emitted_any and is_speakable(self._buf)

    def push(self, text: str) -> list[Piece]:
        """Add streamed text; return the pieces that are complete now."""
        self._buf += text
        pieces: list[Piece] = []
        if not self._emitted_any:
            pieces += self._take(self._first_cut("waited" if self._waited else "stream"))
        if self._emitted_any:
            pieces += self._take_sentences(final=False)
        return pieces

    def wait_expired(self) -> list[Piece]:
        """The stream waited long enough for a boundary: from now on the first piece is cut
        at the last complete word it may end on (returns it, if there is one now)."""
        self._waited = True
        return self.push("") if self.first_piece_pending else []

    def flush(self, text: str = "") -> list[Piece]:
        """The input paused or ended (after `text`): everything buffered becomes pieces."""
        self._buf += text
        pieces: list[Piece] = []
        if not self._emitted_any:
            pieces += self._take(self._first_cut("final"))
        pieces += self._take_sentences(final=True)
        if self._carry:  # trailing input with nothing to say still belongs to the transcript
            pieces.append(Piece(text="", raw=self._carry, offsets=()))
            self._carry = ""
        return pieces

    # -- where to cut -----------------------------------------------------------------------

    def _first_cut(self, mode: Literal["stream", "waited", "final"]) -> int | None:
        """Where the first piece ends in the buffer, or None: not (yet) by the first-piece
        rules. A first clause or sentence of at most twice the minimum words is spoken whole
        (it is quick to say). "stream": text is still arriving, and the earliest boundary
        wins; "waited": the stream's wait ran out; "final": the buffer is all there is."""
        buf = self._buf
        clause = self._first_clause_end()
        # complete words within reach of a first piece: followed by a space (in a stream the
        # last one may still be growing)
        scan = buf[: self._max + 1] if mode != "final" else buf[: self._max] + " "
        ends = [m.end() for m in re.finditer(r"\S+(?=\s)", scan) if is_speakable(m.group())]
        ok = [i for i, end in enumerate(ends) if self._may_end_on(_token_before(buf, end))]
        # the buffer may end with the first sentence (no space after its end yet, as when a
        # whole text is pushed at once, or the LLM paused after it)
        sentence_at_end = clause is None and self._ends_with_sentence_mark()
        if mode == "waited":
            if sentence_at_end:
                return len(buf)  # waited long enough: it ended
            return clause if clause is not None else (ends[ok[-1]] if ok else None)
        short = 2 * self._first_words
        if mode == "stream" and sentence_at_end and len(ends) + 1 <= short:
            return None  # a short one is worth one more token's wait
        if clause is not None and sum(end <= clause for end in ends) <= short:
            return clause  # (in a stream, with the words before it arrived at once)
        if mode == "final" and clause is None and len(ends) <= short:
            return None  # the sentences that follow are the pieces
        first = self._first_words - 1
        word: int | None = None
        candidates = [i for i in ok if first <= i <= first + _EXTRA_WORDS]
        if candidates:
            word = ends[candidates[0]]
        elif len(ends) > first + _EXTRA_WORDS:  # no good word to end on: cut anyway
            word = ends[first + _EXTRA_WORDS]
        elif mode == "stream" and len(buf) > self._max:  # a long run without spaces
            word = self._max
        cuts = [c for c in (clause, word) if c is not None]
        return min(cuts) if cuts else None

    def _first_clause_end(self) -> int | None:
        """The end of the first sentence, or of the first clause after `first_clause_min_chars`
        (a period after an abbreviation or initial ends neither)."""
        buf = self._buf
        start = len(buf) - len(buf.lstrip())
        glued = _glued_sentence_ends(buf)
        for m in CLAUSE_END.finditer(buf):
            if glued and glued[0] < m.end():
                break
            mark = m.group()
            if mark == "." and _is_abbreviation(_token_before(buf, m.start())):
                continue
            long_enough = mark in _SENTENCE_MARKS or m.end() - start >= self._first_min
            if long_enough and is_speakable(buf[: m.end()]):
                return m.end()
        return glued[0] if glued and is_speakable(buf[: glued[0]]) else None

    def _ends_with_sentence_mark(self) -> bool:
        """The buffer ends with ".!?…" after a word, not after an abbreviation, an initial or
        a number still being written ("Dr.", "J.", "3.")."""
        buf = self._buf
        if not buf[-1:] or buf[-1] not in _SENTENCE_MARKS:
            return False
        token = _token_before(buf, len(buf) - 1)
        if buf[-1] == "." and (_is_abbreviation(token) or token[-1:].isdigit()):
            return False
        return is_speakable(token)

    @staticmethod
    def _may_end_on(token: str) -> bool:
        word = token.lower().replace("\u2019", "'").strip("\"'()[]{}*_`\u201c\u201d\u2018")
        if any(ch.isdigit() for ch in word):
            return False  # "3.5 | million", "at 3 | pm"
        if word.endswith(".") and _is_abbreviation(word[:-1]):
            return False
        return word.rstrip(".,;:!?") not in _NO_CUT_AFTER

    def _sentence_ends(self) -> list[int]:
        """Sentence ends in the buffer that have speakable text after them."""
        buf = self._buf
        ends: set[int] = set(_glued_sentence_ends(buf))
        pos = 0
        for sentence in self._tokenizer.tokenize(buf):
            pos += len(sentence)
            ends.add(pos)
        return sorted(e for e in ends if 0 < e < len(buf) and is_speakable(buf[e:]))

    def _take_sentences(self, *, final: bool) -> list[Piece]:
        if final:
            ends = [*self._sentence_ends(), len(self._buf)]
        else:
            ends = self._sentence_ends()
            if not ends and len(self._buf) > self._max:
                # one over-long sentence: speak all but its last partial word
                cut = self._buf.rstrip().rfind(" ")
                ends = [cut] if cut > 0 else []
        pieces: list[Piece] = []
        taken = 0
        for end in ends:
            pieces += self._pieces(self._buf[taken:end])
            taken = end
        self._buf = self._buf[taken:]
        return pieces

    # -- making pieces ----------------------------------------------------------------------

    def _take(self, cut: int | None) -> list[Piece]:
        if cut is None:
            return []
        raw, self._buf = self._buf[:cut], self._buf[cut:]
        return self._pieces(raw)

    def _pieces(self, raw: str) -> list[Piece]:
        """Raw input -> pieces within `max_piece_chars`, tiling `raw` (plus any carry)."""
        raw = self._carry + raw
        text, offsets = normalize_with_offsets(raw)
        if not is_speakable(text):
            self._carry = raw
            return []
        self._carry = ""
        spans: list[tuple[int, int]] = []
        pos = 0
        for part in cut_long(text, self._max):
            start = text.index(part, pos)
            spans.append((start, start + len(part)))
            pos = start + len(part)
        raw_starts = [0] + [offsets[start] for start, _ in spans[1:]] + [len(raw)]
        pieces = []
        for (start, end), (raw_start, raw_end) in zip(
            spans, itertools.pairwise(raw_starts), strict=True
        ):
            pieces.append(
                Piece(
                    text=text[start:end],
                    raw=raw[raw_start:raw_end],
                    offsets=tuple(o - raw_start for o in offsets[start:end]),
                )
            )
        self._emitted_any = True
        return pieces


def split_text(
    text: str,
    *,
    first_clause_min_chars: int = FIRST_CLAUSE_MIN_CHARS,
    first_piece_min_words: int = FIRST_PIECE_MIN_WORDS,
    max_piece_chars: int = 300,
) -> list[Piece]:
    """Whole text -> pieces (what `synthesize()` feeds the engine, one piece at a time)."""
    splitter = TextSplitter(
        first_clause_min_chars=first_clause_min_chars,
        first_piece_min_words=first_piece_min_words,
        max_piece_chars=max_piece_chars,
    )
    return splitter.flush(text)
