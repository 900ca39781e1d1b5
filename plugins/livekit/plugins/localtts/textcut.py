"""Cutting a text piece to a length, and what counts as a word: shared by the plugin's
splitter (`text.py`) and the engines (an engine guarding its own limits, an engine timing the
words of its input). No LiveKit import, so the engines can use it where livekit-agents is not
installed (bench/engine_only.py)."""

from __future__ import annotations

import re

CLAUSE_END = re.compile(r"[,;:\u2014.!?\u2026](?=\s)")
_WORD = re.compile(r"\S+")


def word_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of every word (a run of non-space characters) of `text`. An engine that
    times words times these, and the plugin reads its timings back with the same rule."""
    return [m.span() for m in _WORD.finditer(text)]


def cut_long(piece: str, max_chars: int) -> list[str]:
    """Cut a piece longer than max_chars at clause ends, else at spaces, else hard."""
    out: list[str] = []
    while len(piece) > max_chars:
        window = piece[:max_chars]
        cut = max((m.end() for m in CLAUSE_END.finditer(window)), default=0)
        if cut < max_chars // 3:
            cut = window.rfind(" ")
        if cut <= 0:
            cut = max_chars
        out.append(piece[:cut].strip())
        piece = piece[cut:].strip()
    if piece:
        out.append(piece)
    return out
