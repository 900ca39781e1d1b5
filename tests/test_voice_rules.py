"""The rules of a voice, stated once (issue 13, findings 10 and 11): clip length and size in
`CLIP_RULES`, quoted by the docs and every message; a clip longer than what is used is
refused, not cut; noise is not a voice; voice ids normalized and free of slashes and
invisible characters, while ids stored before these rules still list and remove."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from livekit.plugins import localtts
from livekit.plugins.localtts.engines import VoiceError
from livekit.plugins.localtts.voices import VoiceLibrary
from livekit.plugins.localtts.voices.audio import CLIP_RULES, audio_digest, prepare_clip
from livekit.plugins.localtts.voices.errors import VoiceExistsError
from livekit.plugins.localtts.voices.store import VoiceStore

from .service_fixtures import running_app
from .test_service import CLIP_TEXT, piper_clip

ROOT = Path(__file__).resolve().parents[1]


def _wav(audio: np.ndarray, rate: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, audio.astype(np.float32), rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


@pytest.fixture(scope="module")
async def speech(piper_tts: localtts.TTS) -> tuple[np.ndarray, int]:
    audio, rate = sf.read(io.BytesIO(await piper_clip(piper_tts, CLIP_TEXT)), dtype="float32")
    return audio, rate


def test_the_docs_quote_the_one_statement_of_the_clip_rules() -> None:
    assert "2-30 s of speech" in CLIP_RULES and "20 MiB" in CLIP_RULES
    for doc in ("README.md", "docs/service.md", "voices/README.md"):
        assert CLIP_RULES in (ROOT / doc).read_text(), doc


def test_every_clip_message_states_the_same_rules(speech: tuple[np.ndarray, int]) -> None:
    audio, rate = speech
    short = _wav(audio[: rate // 2], rate)
    with pytest.raises(VoiceError) as too_short:
        prepare_clip("v", short)
    with pytest.raises(VoiceError) as too_big:
        prepare_clip("v", short, max_bytes=100)
    for error in (too_short, too_big):
        assert CLIP_RULES in str(error.value)
    assert "MB" not in str(too_big.value).replace("MiB", "")  # one unit, one number


def test_a_clip_longer_than_what_is_used_is_refused_not_cut(
    speech: tuple[np.ndarray, int],
) -> None:
    audio, rate = speech
    long = np.concatenate([audio] * (int(40 * rate / len(audio)) + 1))
    with pytest.raises(VoiceError, match=r"the clip lasts \d+\.\d s .* trim it") as refused:
        prepare_clip("long", _wav(long, rate))
    assert CLIP_RULES in str(refused.value)
    kept = prepare_clip("fine", _wav(np.concatenate([audio] * 2), rate))  # ~16 s: accepted
    assert kept.clip.duration > 12


def test_noise_is_not_a_voice(speech: tuple[np.ndarray, int]) -> None:
    rng = np.random.default_rng(7)
    white = rng.standard_normal(24_000 * 6) * 0.1
    spectrum = np.fft.rfft(rng.standard_normal(24_000 * 6))
    spectrum /= np.sqrt(np.arange(1, spectrum.size + 1))
    pink = np.fft.irfft(spectrum)
    pink *= 0.3 / np.abs(pink).max()
    for label, noise in (("white", white), ("pink", pink)):
        with pytest.raises(VoiceError, match="sounds like noise, not a voice") as refused:
            prepare_clip(label, _wav(noise, 24_000))
        assert "have a pitch" in str(refused.value), label
    audio, rate = speech  # a voice in a noisy room is still a voice
    noisy = audio + rng.standard_normal(audio.size).astype(np.float32) * 0.03
    assert prepare_clip("noisy room", _wav(noisy, rate)).speech_seconds > 4


async def test_voice_ids_are_normalized_and_safe(
    library: VoiceLibrary, speech: tuple[np.ndarray, int]
) -> None:
    clip = _wav(*speech)
    refused = {
        "../../etc/passwd": "slash",
        "team\\narrator": "slash",
        "a\x00b": "U+0000",
        "evil\u202etxt.exe": "U+202E",  # right-to-left override
        "zero\u200bwidth": "U+200B",
        "bom\ufeff": "U+FEFF",
    }
    for voice_id, says in refused.items():
        with pytest.raises(VoiceError, match="invalid voice id") as error:
            await library.add(voice_id, clip)
        assert says in str(error.value), voice_id
    composed, decomposed = "caf\u00e9", "cafe\u0301"
    info = await library.add(decomposed, clip)
    assert info.voice_id == composed  # stored in NFKC form
    with pytest.raises(VoiceExistsError):
        await library.add(composed, clip)  # looks alike: the same voice
    assert (await library.get(decomposed)).voice_id == composed
    assert (await library.add("\uff4eavi", clip)).voice_id == "navi"  # fullwidth letter
    assert [v.voice_id for v in await library.list()] == [composed, "navi"]


async def test_ids_stored_before_the_rules_still_list_and_remove(
    database_url: str,
    tmp_path: Any,
    piper_settings: localtts.Settings,
    piper_tts: localtts.TTS,
    speech: tuple[np.ndarray, int],
) -> None:
    odd = "team/narrator\u200b"
    wav = prepare_clip("x", _wav(*speech)).wav_bytes()
    store = await VoiceStore.connect(database_url)
    try:
        await store.migrate()
        await store.insert_voice(
            voice_id=odd, name=None, language=None, audio=wav, sample_rate=24_000,
            duration=8.0, audio_digest=audio_digest(wav), replace=False,
        )  # fmt: skip
    finally:
        await store.close()
    library = VoiceLibrary(database_url=database_url, voices_dir=None, data_dir=tmp_path)
    await library.start()
    try:
        async with running_app(piper_settings, piper_tts, library) as (_, client):
            listed = (await client.get("/api/voices")).json()["voices"]
            assert [v["voice_id"] for v in listed] == [odd]
            one = await client.get("/api/voices/team/narrator%E2%80%8B")
            assert one.status_code == 200 and one.json()["voice_id"] == odd
            gone = await client.delete("/api/voices/team/narrator%E2%80%8B")
            assert gone.status_code == 204
            assert (await client.get("/api/voices")).json() == {"voices": []}
    finally:
        await library.aclose()
