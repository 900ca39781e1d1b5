"""The LiveKit face of localtts: `TTS`, `ChunkedStream`, `SynthesizeStream`.

The engine computes on its scheduler thread (batched with every other stream of the
process) and yields float32 chunks to a waiting worker thread; each chunk is handed to the
event loop with `call_soon_threadsafe` and pushed to LiveKit's `AudioEmitter` the moment it
exists. A stream holds an admission lease on the engine while it speaks (the engine's load);
with `limit_to_capacity`, past the engine's capacity it waits a bounded time, then fails as
"busy" (retryable). Nothing here knows about tensors.

Aligned transcripts: before the audio a word starts in, the word's slice of the input text
(spaces, punctuation and markup kept: it becomes the chat history) is pushed as a
`TimedString`, timed from the start of the request's audio. An engine that yields
`TimedChunk`s gives the times (Piper: from its phoneme durations); for the others each
piece's start is exact and its words are spread by an estimate of their length
(`SpeakingPace`), never ahead of the audio produced so far.

A reply starts at its first sound, and where a piece ends mid-sentence (the first piece cut
at a word) the silence the engine puts around the cut is shortened to a word gap
(`PieceEdges`); word times move with the silence dropped.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from contextlib import aclosing
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from livekit.agents import (
    DEFAULT_API_CONNECT_OPTIONS,
    APIConnectionError,
    APIConnectOptions,
    APIError,
    APIStatusError,
    APITimeoutError,
    tts,
    utils,
)
from livekit.agents.types import NOT_GIVEN, NotGivenOr, TimedString
from livekit.agents.utils import is_given
from livekit.agents.utils.aio.channel import ChanEmpty

from .engine_calls import admitted, engine_chunks, warm_engine
from .engines import (
    Engine,
    EngineBusyError,
    EngineUnavailableError,
    InvalidRequestError,
    SynthesisParams,
    UnknownVoiceError,
    VoiceConditioning,
    VoiceError,
    VoiceSource,
    availability,
    shared_engine,
)
from .engines.scheduler import Lease, StreamTimes
from .host import EngineSelection, detect_host, select_engine
from .log import logger
from .models import ENGINE_NAMES, EngineChoice
from .piece_timing import (
    JOIN_KEEP_START_S,
    REPLY_LEAD_IN_S,
    PieceEdges,
    PieceTranscript,
    SpeakingPace,
)
from .settings import Settings, get_settings
from .text import Piece, TextSplitter

_NOTHING_SPEAKABLE_S = 0.05  # text with nothing to say (emoji only, markup) -> 50 ms silence


@dataclass
class _TTSOptions:
    voice: str | None
    params: SynthesisParams
    first_clause_min_chars: int
    first_piece_min_words: int
    first_piece_wait_s: float
    max_piece_chars: int
    read_ahead_s: float


def resolve_engine(
    engine: EngineChoice | None, settings: Settings, *, source: str | None = None
) -> EngineSelection:
    """Turn "auto" or an engine name into a selection, with host facts and weights checked.

    `engine` None means the settings' choice (LOCALTTS_ENGINE, `.env`, else "auto");
    `source` names where an explicit choice came from, for the errors (default: the
    `engine=` argument)."""
    if engine is None:
        engine, source = settings.engine, "LOCALTTS_ENGINE"
    source = source or f"engine={engine!r}"
    if engine not in ("auto", *ENGINE_NAMES):
        raise ValueError(
            f"unknown engine {engine!r} (from {source}): choose auto, {', '.join(ENGINE_NAMES)}"
        )
    settings = settings.model_copy(update={"engine": engine})
    candidates = ENGINE_NAMES if engine == "auto" else (engine,)
    unavailable = {name: availability(name, settings) for name in candidates}
    host = detect_host(probe_cuda=engine != "piper")
    try:
        return select_engine(host, settings, unavailable, source=source)
    except RuntimeError as e:
        raise EngineUnavailableError(str(e)) from e


class TTS(tts.TTS):
    def __init__(
        self,
        *,
        engine: EngineChoice | Engine | None = None,
        voice: str | None = None,
        voice_library: VoiceSource | None = None,
        language: str | None = None,
        speed: float = 1.0,
        temperature: float | None = None,
        exaggeration: float | None = None,
        cfg_weight: float | None = None,
        seed: int | None = None,
        settings: Settings | None = None,
        limit_to_capacity: bool = False,
    ) -> None:
        """A LiveKit TTS speaking with a self-hosted model.

        Args:
            engine: "auto" (host policy: Chatterbox on CUDA, XTTS on CPU, Piper when no
                weights exist), an engine name, or an `Engine` instance; None (the default):
                the settings' choice, LOCALTTS_ENGINE (or `.env`), else "auto".
            voice: default voice id (a cloned voice from `voice_library`); None speaks with
                the engine's built-in voice.
            voice_library: where cloned voices and their conditioning come from (a
                `voices.VoiceLibrary`, or anything with its `conditioning` method).
            language, speed, temperature, exaggeration, cfg_weight, seed: synthesis knobs;
                engines ignore the ones they do not have.
            settings: defaults to the environment (`LOCALTTS_*`).
            limit_to_capacity: past the engine's capacity (streams it keeps at real time),
                wait in line up to `LOCALTTS_ENGINE_WAIT_S`, then fail with a retryable
                503 "busy" (a service's choice). False (default, agents): a room already
                here is always served; its stream still counts towards the engine's load.

        Raises `APIError(retryable=False)` when the engine cannot run here (naming what is
        missing and where the choice came from), `APIStatusError(400)` for a bad argument.
        """
        self._settings = settings or get_settings()
        try:
            params = SynthesisParams(
                language=language, speed=speed, temperature=temperature,
                exaggeration=exaggeration, cfg_weight=cfg_weight, seed=seed,
            )  # fmt: skip
            if engine is None or isinstance(engine, str):
                self._selection: EngineSelection | None = resolve_engine(engine, self._settings)
                self._engine: Engine = shared_engine(
                    self._selection.engine, self._selection.apply(self._settings)
                )
            else:
                self._selection = None
                self._engine = engine
        except EngineUnavailableError as e:
            raise APIError(str(e), retryable=False) from e
        except ValueError as e:
            raise APIStatusError(str(e), status_code=400, retryable=False) from e
        for warning in self._selection.warnings if self._selection else ():
            logger.warning(warning)
        super().__init__(
            capabilities=tts.TTSCapabilities(streaming=True, aligned_transcript=True),
            sample_rate=self._engine.sample_rate,
            num_channels=1,
        )
        self._opts = _TTSOptions(
            voice=voice if voice is not None else self._settings.voice,
            params=params,
            first_clause_min_chars=self._settings.first_clause_min_chars,
            first_piece_min_words=self._settings.first_piece_min_words,
            first_piece_wait_s=self._settings.first_piece_wait_s,
            max_piece_chars=self._settings.max_piece_chars,
            read_ahead_s=self._settings.read_ahead_s,
        )
        self._voice_library = voice_library
        self._limit_to_capacity = limit_to_capacity
        self._streams: weakref.WeakSet[SynthesizeStream] = weakref.WeakSet()
        self._pace = SpeakingPace()

    @property
    def model(self) -> str:
        return self._engine.name

    @property
    def provider(self) -> str:
        return "localtts"

    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def selection(self) -> EngineSelection | None:
        """Why this engine was chosen (None when an Engine instance was passed in)."""
        return self._selection

    @property
    def voice_library(self) -> VoiceSource | None:
        return self._voice_library

    def update_options(
        self,
        *,
        voice: NotGivenOr[str | None] = NOT_GIVEN,
        language: NotGivenOr[str | None] = NOT_GIVEN,
        speed: NotGivenOr[float] = NOT_GIVEN,
        temperature: NotGivenOr[float | None] = NOT_GIVEN,
        exaggeration: NotGivenOr[float | None] = NOT_GIVEN,
        cfg_weight: NotGivenOr[float | None] = NOT_GIVEN,
        seed: NotGivenOr[int | None] = NOT_GIVEN,
    ) -> None:
        """Change options for streams created from now on (open streams keep theirs)."""
        if is_given(voice):
            self._opts.voice = voice
        changes = {
            k: v
            for k, v in {
                "language": language,
                "speed": speed,
                "temperature": temperature,
                "exaggeration": exaggeration,
                "cfg_weight": cfg_weight,
                "seed": seed,
            }.items()
            if is_given(v)
        }
        if changes:
            try:
                self._opts.params = replace(self._opts.params, **changes)
            except ValueError as e:
                raise APIStatusError(str(e), status_code=400, retryable=False) from e

    def prewarm(self) -> None:
        """Load and warm the engine in the background (returns at once)."""
        warm_engine(self._engine)

    async def warmup(self) -> None:
        """Load and warm the engine; returns when it is ready to speak."""
        await asyncio.wrap_future(warm_engine(self._engine))

    def synthesize(
        self, text: str, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> ChunkedStream:
        return ChunkedStream(tts=self, input_text=text, conn_options=conn_options)

    def stream(
        self, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> SynthesizeStream:
        stream = SynthesizeStream(tts=self, conn_options=conn_options)
        self._streams.add(stream)
        return stream

    async def aclose(self) -> None:
        for stream in list(self._streams):
            await stream.aclose()
        self._streams.clear()

    async def _resolve_voice(self, voice_id: str | None) -> VoiceConditioning | None:
        if voice_id is None:
            return None
        if self._voice_library is None:
            raise UnknownVoiceError(
                f"unknown voice {voice_id!r}: no voice library is configured "
                "(pass voice_library=VoiceLibrary(...) to localtts.TTS)"
            )
        return await self._voice_library.conditioning(voice_id, self._engine)


def _to_pcm16(chunk: np.ndarray) -> bytes:
    return (np.clip(chunk, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


def _api_error(e: Exception, engine: Engine, *, audio_started: bool) -> APIError:
    """The caller's fault (a voice, a request the engine cannot serve) is a 4xx; a transient
    failure before any audio (the engine busy, its device out of memory) is retryable, so
    LiveKit retries or a `FallbackAdapter` moves on; anything else, a ValueError from deep
    inside a model included, is the engine's."""
    if isinstance(e, UnknownVoiceError):
        return APIStatusError(str(e), status_code=404, retryable=False)
    if isinstance(e, EngineBusyError):  # at capacity: try again later (or elsewhere)
        # (once audio is out a retry would start the text again from its first word)
        return APIStatusError(str(e), status_code=503, retryable=not audio_started,
                              body={"retry_after_s": e.retry_after_s})  # fmt: skip
    if isinstance(e, (VoiceError, InvalidRequestError)):
        return APIStatusError(str(e), status_code=400, retryable=False)
    if isinstance(e, EngineUnavailableError):
        return APIError(str(e), retryable=False)
    message = f"{engine.name} engine failed: {type(e).__name__}: {e}"
    # torch.cuda.OutOfMemoryError (a RuntimeError), named so torch is never imported here
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
        return APIConnectionError(message, retryable=not audio_started)
    return APIError(message, retryable=False)


def _text_splitter(engine: Engine, opts: _TTSOptions) -> TextSplitter:
    """The one place text is split: pieces within the plugin's `max_piece_chars` and within
    what the engine speaks as one run in this language, so the engine never splits again."""
    engine_limit = engine.max_piece_chars(opts.params.language)
    return TextSplitter(
        first_clause_min_chars=opts.first_clause_min_chars,
        first_piece_min_words=opts.first_piece_min_words,
        max_piece_chars=min(opts.max_piece_chars, engine_limit or opts.max_piece_chars),
    )


class _ReadAhead:
    """Keeps synthesis at most `limit_s` seconds of audio ahead of the stream's reader.

    A real-time reader (an AgentSession playing into a room) would otherwise let a long
    text pile up as audio in memory; a fast reader (a file, an HTTP client) is never held.
    """

    def __init__(self, limit_s: float) -> None:
        self._limit = limit_s
        self._pushed = 0.0
        self._read = 0.0
        self._room = asyncio.Event()

    def pushed(self, seconds: float) -> None:
        self._pushed += seconds

    def read(self, seconds: float) -> None:
        self._read += seconds
        if self._pushed - self._read <= self._limit:
            self._room.set()

    async def wait(self) -> None:
        while self._pushed - self._read > self._limit:
            self._room.clear()
            await self._room.wait()


class _ReadAheadStream:
    """Counts what the reader has taken (both stream kinds)."""

    _read_ahead: _ReadAhead

    async def __anext__(self) -> tts.SynthesizedAudio:
        ev: tts.SynthesizedAudio = await super().__anext__()  # type: ignore[misc]
        self._read_ahead.read(ev.frame.duration)
        return ev


class _Speaker:
    """Speaks pieces of text into one emitter, with their timed transcript; shared by both
    stream kinds. The first audio of the request must come within `timeout_s` of the first
    piece handed to the engine, or the engine's work is stopped and `APITimeoutError`
    raised (a stalled or busy engine, so a `FallbackAdapter` moves on)."""

    def __init__(
        self,
        tts_: TTS,
        opts: _TTSOptions,
        emitter: tts.AudioEmitter,
        read_ahead: _ReadAhead,
        timeout_s: float,
    ) -> None:
        self._tts = tts_
        self._opts = opts
        self._emitter = emitter
        self._read_ahead = read_ahead
        self._timeout_s = timeout_s
        self._first_audio_deadline: float | None = None
        self._voice: VoiceConditioning | None = None
        self._voice_resolved = False
        self._mid_sentence = False  # the last piece spoken ended mid-sentence (a word cut)
        self._lease: Lease | None = None
        self._first_audio: float | None = None  # time.monotonic() of the reply's first chunk
        self.pushed_samples = 0
        self.waited_s = 0.0  # for the engine: admission, then each piece's queue

    @property
    def audio_s(self) -> float:
        """Seconds of audio pushed so far: where the next piece starts."""
        return self.pushed_samples / self._tts.sample_rate

    async def speak(self, piece: Piece) -> None:
        if not piece.text:  # nothing to say; its text still belongs to the transcript
            self._emitter.push_timed_transcript(
                TimedString(piece.raw, start_time=self.audio_s, end_time=self.audio_s)
            )
            return
        await self._read_ahead.wait()
        if self.pushed_samples == 0 and self._first_audio_deadline is None:
            self._first_audio_deadline = asyncio.get_running_loop().time() + self._timeout_s
        first_audio = asyncio.timeout_at(
            self._first_audio_deadline if self.pushed_samples == 0 else None
        )
        try:
            async with first_audio:
                await self._speak(piece, first_audio)
        except TimeoutError as e:
            if not first_audio.expired():
                raise  # a TimeoutError of the engine's own
            # leaving the block closed the engine's generator: its work is stopped
            raise APITimeoutError(
                f"{self._tts.engine.name} engine gave no audio within {self._timeout_s:g} s "
                "(busy or stalled)"
            ) from e

    async def _speak(self, piece: Piece, first_audio: asyncio.Timeout) -> None:
        if not self._voice_resolved:  # once, and only when there is something to say
            self._voice = await self._tts._resolve_voice(self._opts.voice)
            self._voice_resolved = True
        if self._lease is None:  # one lease for the whole reply: its pieces never queue
            self._lease = await admitted(self._tts.engine, limit=self._tts._limit_to_capacity)
            self.waited_s += self._lease.waited_s
        transcript = PieceTranscript(piece, self.audio_s, self._tts._pace, self._opts.params.speed)
        if self.pushed_samples == 0:
            keep_lead_s: float | None = REPLY_LEAD_IN_S  # the reply starts at its first sound
        else:  # a sentence goes on after a cut; else the engine's pause between sentences
            keep_lead_s = JOIN_KEEP_START_S if self._mid_sentence else None
        edges = PieceEdges(
            self._tts.sample_rate, keep_lead_s=keep_lead_s, cut=piece.ends_mid_sentence
        )
        times: list[StreamTimes] = []
        continues_at = None  # a later piece is due when the audio pushed so far runs out
        if self._first_audio is not None:
            continues_at = self._first_audio + self.audio_s
        chunks = engine_chunks(
            self._tts.engine, piece.text, self._voice, self._opts.params, times,
            continues_at=continues_at,
        )  # fmt: skip
        try:
            async with aclosing(chunks):  # closing stops the engine's stream at once
                async for chunk in chunks:
                    dropped = edges.dropped
                    audio = edges.audio(chunk)
                    if edges.dropped > dropped:  # silence cut from the piece's start
                        transcript.shift((dropped - edges.dropped) / self._tts.sample_rate)
                    end_s = (self.pushed_samples + audio.size) / self._tts.sample_rate
                    self._emitter.push_timed_transcript(transcript.before(chunk, end_s))
                    self._push(audio)
                    if self.pushed_samples:
                        first_audio.reschedule(None)
            self._push(edges.end())
        finally:
            self.waited_s += sum(t.waited_s for t in times)
        self._mid_sentence = piece.ends_mid_sentence
        self._emitter.push_timed_transcript(transcript.finish(self.audio_s))

    def close(self) -> None:
        if self._lease is not None:
            self._lease.release()
            self._lease = None

    def _push(self, audio: np.ndarray) -> None:
        if audio.size:
            if self._first_audio is None:
                self._first_audio = time.monotonic()
            self._emitter.push(_to_pcm16(audio))
            self.pushed_samples += int(audio.size)
            self._read_ahead.pushed(audio.size / self._tts.sample_rate)

    def pad_if_silent(self, text: str) -> None:
        """Non-blank text with nothing speakable still produces (silent) audio: LiveKit
        treats a request without audio as a failure."""
        if self.pushed_samples == 0 and text.strip():
            n = int(self._tts.sample_rate * _NOTHING_SPEAKABLE_S)
            self._emitter.push(bytes(2 * n))
            self.pushed_samples += n


class ChunkedStream(_ReadAheadStream, tts.ChunkedStream):
    """`TTS.synthesize(text)`: the whole text is known; audio still streams piece by piece."""

    def __init__(self, *, tts: TTS, input_text: str, conn_options: APIConnectOptions) -> None:
        super().__init__(tts=tts, input_text=input_text, conn_options=conn_options)
        self._tts: TTS = tts
        self._opts = replace(tts._opts)
        self._read_ahead = _ReadAhead(self._opts.read_ahead_s)

    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        output_emitter.initialize(
            request_id=utils.shortuuid(),
            sample_rate=self._tts.sample_rate,
            num_channels=1,
            mime_type="audio/pcm",
        )
        speaker = _Speaker(
            self._tts, self._opts, output_emitter, self._read_ahead, self._conn_options.timeout
        )
        splitter = _text_splitter(self._tts.engine, self._opts)
        try:
            # one piece at a time: a 50,000-character text is never held as audio
            for piece in splitter.flush(self._input_text):
                await speaker.speak(piece)
        except (APIError, asyncio.CancelledError):
            raise
        except Exception as e:
            raise _api_error(e, self._tts.engine, audio_started=speaker.pushed_samples > 0) from e
        finally:
            speaker.close()
            # LiveKit's "time to acquire the connection": here, the time waiting for the
            # engine (admission and queue), so TTSMetrics shows it apart from synthesis
            self._acquire_time = speaker.waited_s
        speaker.pad_if_silent(self._input_text)
        output_emitter.flush()


def _queued(channel: utils.aio.Chan[Any]) -> list[Any]:
    """What is in the channel now, without waiting."""
    items = []
    while True:
        try:
            items.append(channel.recv_nowait())
        except (ChanEmpty, utils.aio.ChanClosed):
            return items


def _joined(items: list[Any]) -> list[Any]:
    """Consecutive strings joined into one; anything else (a flush) kept in its place."""
    out: list[Any] = []
    for item in items:
        if isinstance(item, str) and out and isinstance(out[-1], str):
            out[-1] += item
        else:
            out.append(item)
    return out


class SynthesizeStream(_ReadAheadStream, tts.SynthesizeStream):
    """`TTS.stream()`: text arrives token by token (an LLM); audio starts with the first
    words (`text.py`: a clause, a few words, or what is there after a short wait) and
    continues sentence by sentence while more text arrives."""

    def __init__(self, *, tts: TTS, conn_options: APIConnectOptions) -> None:
        super().__init__(tts=tts, conn_options=conn_options)
        self._tts: TTS = tts
        self._opts = replace(tts._opts)
        self._read_ahead = _ReadAhead(self._opts.read_ahead_s)

    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        request_id = utils.shortuuid()
        output_emitter.initialize(
            request_id=request_id,
            sample_rate=self._tts.sample_rate,
            num_channels=1,
            mime_type="audio/pcm",
            stream=True,
        )
        output_emitter.start_segment(segment_id=request_id)
        speaker = _Speaker(
            self._tts, self._opts, output_emitter, self._read_ahead, self._conn_options.timeout
        )
        pieces = utils.aio.Chan[Piece]()

        async def read_input() -> None:
            splitter = _text_splitter(self._tts.engine, self._opts)
            wait: asyncio.TimerHandle | None = None

            def send(ready: list[Piece]) -> None:
                for piece in ready:
                    pieces.send_nowait(piece)

            try:
                async for first in self._input_ch:
                    # text queued together is split together: a whole sentence pushed in two
                    # parts at once must not have its first part cut as if more were to come
                    for data in _joined([first, *_queued(self._input_ch)]):
                        if isinstance(data, str):
                            send(splitter.push(data))
                        else:
                            send(splitter.flush())
                    if wait is None and splitter.first_piece_pending:
                        # no boundary soon (a slow LLM): speak the words there are
                        wait = asyncio.get_running_loop().call_later(
                            self._opts.first_piece_wait_s, lambda: send(splitter.wait_expired())
                        )
                send(splitter.flush())
            finally:
                if wait is not None:
                    wait.cancel()
                pieces.close()

        async def speak() -> None:
            async for piece in pieces:
                self._mark_started()
                try:
                    await speaker.speak(piece)
                finally:
                    self._acquire_time = speaker.waited_s  # see ChunkedStream._run

        tasks = [asyncio.create_task(read_input()), asyncio.create_task(speak())]
        try:
            await asyncio.gather(*tasks)
        except (APIError, asyncio.CancelledError):
            raise
        except Exception as e:
            raise _api_error(e, self._tts.engine, audio_started=speaker.pushed_samples > 0) from e
        finally:
            await utils.aio.cancel_and_wait(*tasks)
            speaker.close()
        speaker.pad_if_silent(self._pushed_text)
        output_emitter.end_segment()
