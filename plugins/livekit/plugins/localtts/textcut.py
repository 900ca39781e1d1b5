"""Cutting a text piece to a length: the one cutter, shared by the plugin's splitter
(`text.py`) and an engine guarding its own limits. No LiveKit import, so the engines can
use it where livekit-agents is not installed (bench/engine_only.py)."""

from __future__ import annotations

import re

CLAUSE_END = re.compile(r"[,;:\u2014.!?\u2026](?=\s)")


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
