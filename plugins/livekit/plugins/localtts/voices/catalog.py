"""Which voices exist: the database's and the directory's, a database voice overriding a
directory voice of the same id. In memory; the parts around it (directory scan, database
sync) fill it, and it says when a voice's clip changed."""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from ..engines.base import UnknownVoiceError, VoiceError
from .audio import digest_from_sha256
from .store import VoiceRow

VoiceOrigin = Literal["db", "dir"]
MAX_VOICE_ID_CHARS = 128


@dataclass(frozen=True)
class VoiceInfo:
    voice_id: str
    name: str | None
    language: str | None
    sample_rate: int
    duration: float
    source: VoiceOrigin
    created_at: datetime
    updated_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "voice_id": self.voice_id,
            "name": self.name,
            "language": self.language,
            "sample_rate": self.sample_rate,
            "duration": round(self.duration, 3),
            "source": self.source,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


@dataclass(frozen=True)
class VoiceEntry:
    """One voice as the library knows it."""

    info: VoiceInfo
    digest: str  # audio_digest of the source bytes: the conditioning cache key
    path: Path | None = None  # directory voices


# Control (NUL included), format (invisible: zero-width, bidi overrides...), surrogate,
# private-use and unassigned characters, and line/paragraph separators: an id holding one
# looks like another id, or like nothing at all
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
VOICE_ID_RULES = (
    f"a voice id is 1-{MAX_VOICE_ID_CHARS} characters of printable text (letters of any "
    "script, digits, spaces inside, punctuation) without '/' or '\\', invisible or control "
    "characters; it is stored in Unicode NFKC form, so ids that only look alike are one id"
)


def normalize_voice_id(voice_id: str) -> str:
    return unicodedata.normalize("NFKC", voice_id)


def check_voice_id(voice_id: str) -> str:
    """The id as stored (NFKC-normalized), or VoiceError naming what breaks the rules
    (`VOICE_ID_RULES`). Ids stored before these rules are still found and removable."""
    if not isinstance(voice_id, str) or not voice_id:
        raise VoiceError(f"invalid voice id {voice_id!r}: {VOICE_ID_RULES}")
    shown = repr(voice_id[:40]) + ("..." if len(voice_id) > 40 else "")
    if bad := sorted({ch for ch in voice_id if unicodedata.category(ch) in _FORBIDDEN_CATEGORIES}):
        names = ", ".join(f"U+{ord(ch):04X}" for ch in bad[:5])
        raise VoiceError(f"invalid voice id {shown}: it holds {names}; {VOICE_ID_RULES}")
    if "/" in voice_id or "\\" in voice_id:
        raise VoiceError(f"invalid voice id {shown}: it holds a slash; {VOICE_ID_RULES}")
    normalized = normalize_voice_id(voice_id)
    if normalized != normalized.strip() or len(normalized) > MAX_VOICE_ID_CHARS:
        raise VoiceError(
            f"invalid voice id {shown}: {len(normalized)} characters, leading or trailing "
            f"spaces count too; {VOICE_ID_RULES}"
        )
    return normalized


def row_info(row: VoiceRow) -> VoiceInfo:
    return VoiceInfo(
        voice_id=row.voice_id,
        name=row.name,
        language=row.language,
        sample_rate=row.sample_rate,
        duration=row.duration,
        source="db",
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def db_entry(row: VoiceRow) -> VoiceEntry:
    return VoiceEntry(info=row_info(row), digest=digest_from_sha256(row.audio_sha256))


def still_wanted(current: VoiceEntry, entry: VoiceEntry, digest: str) -> bool:
    """Whether conditioning begun for `entry`, made from a clip of `digest`, is still the
    `current` voice's: no change since (`entry` current; a directory file edited since the
    scan is read as it is now), or the clip read was already the current one."""
    return current.digest in (entry.digest, digest)


class VoiceCatalog:
    """The voices by id. `on_changed(voice_id, now)` is called whenever the clip a voice id
    stands for changed (`now`: the voice as it is now, None when it is gone)."""

    def __init__(self, on_changed: Callable[[str, VoiceEntry | None], None]) -> None:
        self.db: dict[str, VoiceEntry] = {}
        self.dir: dict[str, VoiceEntry] = {}
        self._on_changed = on_changed

    def entry(self, voice_id: str) -> VoiceEntry | None:
        """The voice stored under exactly `voice_id` (ids from before the id rules), else
        under its normalized form (what `check_voice_id` stores)."""
        for key in dict.fromkeys((voice_id, normalize_voice_id(voice_id))):
            if (found := self.db.get(key) or self.dir.get(key)) is not None:
                return found
        return None

    def ids(self) -> list[str]:
        return sorted(set(self.db) | set(self.dir))

    def directory_only(self) -> int:
        """Directory voices no database voice hides."""
        return sum(1 for v in self.dir if v not in self.db)

    def require(self, voice_id: str, *, note: str = "") -> VoiceEntry:
        """The voice, or UnknownVoiceError listing some that exist (`note` appended)."""
        entry = self.entry(voice_id)
        if entry is None:
            known = self.ids()
            shown = ", ".join(repr(v) for v in known[:10]) + (", ..." if len(known) > 10 else "")
            raise UnknownVoiceError(
                f"unknown voice {voice_id!r}; known voices: {shown or 'none'}; add one with "
                "`localtts voices add ID PATH`" + note
            )
        return entry

    def set_db_voice(self, voice: VoiceEntry) -> None:
        voice_id = voice.info.voice_id
        old = self.entry(voice_id)
        self.db[voice_id] = voice
        if old is None or old.digest != voice.digest:
            self._on_changed(voice_id, voice)

    def drop_db_voice(self, voice_id: str) -> None:
        old = self.db.pop(voice_id, None)
        if old is None:
            return
        now = self.entry(voice_id)  # a directory voice may show through again
        if now is None or now.digest != old.digest:
            self._on_changed(voice_id, now)

    def replace_db_voices(self, voices: dict[str, VoiceEntry]) -> None:
        """The database's voices are exactly these now (a resync)."""
        for voice_id in [v for v in self.db if v not in voices]:
            self.drop_db_voice(voice_id)
        for voice in voices.values():
            self.set_db_voice(voice)
