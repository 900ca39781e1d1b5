"""The voices directory: `<voice_id>.wav` (or .flac, .ogg, .mp3) reference clips with an
optional `<voice_id>.json` sidecar ({"name": ..., "language": ...}), read at start."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from pathlib import Path

from ..engines.base import VoiceError
from ..log import logger
from .audio import PreparedClip, audio_digest
from .catalog import VoiceEntry, VoiceInfo, check_voice_id

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")

# (voice_id, audio bytes, language) -> the validated clip
Prepare = Callable[..., Awaitable[PreparedClip]]


def default_voices_dir() -> Path | None:
    """The repository's top-level voices/ directory, when running from a checkout."""
    root = Path(__file__).resolve().parents[5]
    candidate = root / "voices"
    if candidate.is_dir() and (root / "pyproject.toml").is_file():
        return candidate
    return None


def read_sidecar(path: Path) -> dict[str, str]:
    """`<voice_id>.json`: {"name": ..., "language": ...}, both optional."""
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{path.name} is not valid JSON: {e}") from e
    if not isinstance(meta, dict):
        raise ValueError(f'{path.name} must hold an object like {{"name": ..., "language": ...}}')
    return {k: str(meta[k]) for k in ("name", "language") if meta.get(k) is not None}


async def scan_directory(
    directory: Path | None, prepare: Prepare
) -> tuple[dict[str, VoiceEntry], dict[str, str]]:
    """(voices by id, files that could not be used: voice id -> why). Every clip is
    validated like an upload; a bad one is reported and never blocks the others."""
    voices: dict[str, VoiceEntry] = {}
    if directory is None:
        return voices, {}
    files, problems = await asyncio.to_thread(_clip_files, directory)
    results = await asyncio.gather(
        *(_read_voice(voice_id, path, prepare) for voice_id, path in files.items())
    )
    for voice_id, result in zip(files, results, strict=True):
        if isinstance(result, VoiceEntry):
            voices[result.info.voice_id] = result  # the id normalized, as lookups expect
        else:
            problems[voice_id] = result
            logger.warning("skipping directory voice %s: %s", files[voice_id], result)
    return voices, problems


def _clip_files(directory: Path) -> tuple[dict[str, Path], dict[str, str]]:
    """(clip file by voice id, voice id -> why it is not used)."""
    files: dict[str, Path] = {}
    problems: dict[str, str] = {}
    if not directory.is_dir():
        return files, problems
    for path in sorted(directory.iterdir()):
        if path.suffix.lower() in AUDIO_SUFFIXES and path.is_file():
            if path.stem in files:
                problems[path.stem] = (
                    f"two clips for one voice: {files[path.stem].name}, {path.name}"
                )
                continue
            files[path.stem] = path
    return files, problems


async def _read_voice(voice_id: str, path: Path, prepare: Prepare) -> VoiceEntry | str:
    try:
        voice_id = check_voice_id(voice_id)  # e.g. macOS file names are decomposed (NFD)
        data = await asyncio.to_thread(path.read_bytes)
        meta = read_sidecar(path.with_suffix(".json"))
        prepared = await prepare(voice_id, data, language=meta.get("language"))
    except (VoiceError, OSError, ValueError) as e:
        return str(e)
    mtime = (await asyncio.to_thread(path.stat)).st_mtime
    stamp = datetime.fromtimestamp(mtime, tz=timezone.utc)
    info = VoiceInfo(
        voice_id=voice_id,
        name=meta.get("name"),
        language=meta.get("language"),
        sample_rate=prepared.clip.sample_rate,
        duration=prepared.clip.duration,
        source="dir",
        created_at=stamp,
        updated_at=stamp,
    )
    return VoiceEntry(info=info, digest=audio_digest(data), path=path)
