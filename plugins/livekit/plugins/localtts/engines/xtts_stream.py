"""One XTTS stream as the scheduler steps it (`scheduler.StreamWork`), and the batched decode
step that advances many streams by one token each.

A stream speaks its pieces one after another. Per piece: `prefill` runs the voice latents and
text through the GPT into the stream's own KV cache and samples the first token; `decode`
(batched with every other stream that wants tokens) samples one more; `emit` vocodes the
next chunk once all its tokens exist. Chunk boundaries depend on the tokens alone (first
`first_chunk_tokens`, then growing by `chunk_growth` up to `chunk_tokens`), never on when the
scheduler ran what, so a stream's audio is the same alone and in any batch. A stream may
decode up to one chunk ahead of its vocoder: those tokens cost little inside a batch.

A prompt is the voice's 32 conditioning latents, the text, and the start token. The trunk
has no position embeddings and attention is causal, so the voice's part of the KV cache is
the same for every piece spoken in that voice: it is computed once per voice
(`VoicePrefixes`) and each piece prefills only its text. Pieces that wait for their prefill
at the same time run it as one pass (`prefill_batch`), their prompts end to end.
"""

from __future__ import annotations

import itertools
import math
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .scheduler import Step
from .xtts_decode import KVSlot, Sampling, logits_processors, trunk_forward
from .xtts_vocoder import WindowVocoder

if TYPE_CHECKING:
    from .xtts import XTTSEngine, XTTSLatents


@dataclass
class _Piece:
    """Decoding state of the piece being spoken."""

    slot: KVSlot
    seen: Any  # ids for the repetition penalty, [1, n]
    next_emb: Any  # what the next decode step feeds, [1, 1, d]
    vocoder: WindowVocoder
    limit: int
    latents: list[Any] = field(default_factory=list)
    generated: int = 0
    finished: bool = False  # stop token or limit reached
    emitted: int = 0  # tokens whose audio is out
    chunk: int = 0  # size of the next chunk


class XTTSStreamWork:
    sample_rate = 24000

    def __init__(
        self,
        engine: XTTSEngine,
        pieces: list[str],
        lang: str,
        latents: XTTSLatents,
        sampling: Sampling,
        length_scale: float,
        *,
        max_tokens: int | None = None,
    ) -> None:
        import torch

        self._engine = engine
        self._model = engine._model
        self._pieces = deque(pieces)
        self._lang = lang
        self._latents = latents
        self._sampling = sampling
        self._processors = logits_processors(sampling)
        self._length_scale = length_scale
        self._max_tokens = max_tokens
        # None: torch's global generator, as coqui's generate() uses; a seed gives the stream
        # a generator of its own, so other streams' draws never shift its samples
        self._rng = None
        if sampling.seed is not None:
            self._rng = torch.Generator(device=engine.device).manual_seed(sampling.seed)
        self._piece: _Piece | None = None
        self._prompt: Any = None

    # -- what comes next -----------------------------------------------------------------

    def _boundary(self, p: _Piece) -> tuple[int, bool] | None:
        """(end, final) of the next chunk when all its tokens exist."""
        end = p.emitted + p.chunk
        if p.finished and p.generated <= end:
            return p.generated, True
        if p.generated >= end:
            return end, False
        return None

    def next_step(self) -> Step:
        p = self._piece
        if p is None:
            return "prefill" if self._pieces else "done"
        if self._boundary(p) is not None:
            return "emit"
        return "decode"

    def wants_decode(self) -> bool:
        p = self._piece
        if p is None or p.finished:
            return False
        grown = min(self._engine.chunk_tokens, math.ceil(p.chunk * self._engine.chunk_growth))
        return p.generated < p.emitted + p.chunk + grown  # at most one chunk ahead

    # -- steps -----------------------------------------------------------------------------

    def prefill(self) -> None:
        failures = prefill_batch(self._engine, [self])
        if failures:
            raise failures[0]

    def next_prompt(self) -> tuple[Any, _Piece]:
        """The next piece's prompt [1, T, d] after the voice's cached part, and its decoding
        state, whose slot already holds that cached part. Changes nothing of the stream (a
        failed prefill leaves it as it was)."""
        import torch

        engine, model = self._engine, self._model
        gpt, device = model.gpt, engine.device
        text = self._pieces[0]
        limit = min(x for x in (self._max_tokens, engine.max_tokens, gpt.max_gen_mel_tokens) if x)
        ids = model.tokenizer.encode(text.strip().lower(), lang=self._lang)
        tokens = torch.tensor([ids], dtype=torch.long, device=device)
        tokens = torch.nn.functional.pad(tokens, (0, 1), value=gpt.stop_text_token)
        tokens = torch.nn.functional.pad(tokens, (1, 0), value=gpt.start_text_token)
        text_emb = gpt.text_embedding(tokens) + gpt.text_pos_embedding(tokens)
        start = torch.full((1, 1), gpt.start_audio_token, dtype=torch.long, device=device)
        start_emb = gpt.mel_embedding(start) + gpt.mel_pos_embedding.get_fixed_embedding(0, device)
        vocoder = WindowVocoder(
            model, self._latents.speaker_embedding.to(device),
            length_scale=self._length_scale, context=engine.context_frames,
            lookahead=engine.lookahead_frames, crossfade=engine.crossfade_frames,
            decoder=engine.waveform_decoder(), window_step=engine.vocoder_window_step,
        )
        # coqui's generate() feeds placeholder ids (1 ... 1, start) for the prefix, so its
        # repetition penalty also covers ids 1 and start: kept for identical sampling
        seen = torch.tensor([[1, gpt.start_audio_token]], dtype=torch.long, device=device)
        piece = _Piece(
            slot=engine.voice_prefixes.slot(self._latents.gpt_cond_latent), seen=seen,
            next_emb=None, vocoder=vocoder, limit=limit, chunk=engine.first_chunk_tokens,
        )
        return torch.cat([text_emb, start_emb], dim=1), piece

    def start_piece(self, piece: _Piece, latent: Any, logits: Any) -> None:
        """The prefill of `piece` succeeded: speak it, starting with its first token."""
        self._pieces.popleft()
        self._piece = piece
        self.accept(latent, logits)

    def accept(self, latent: Any, logits: Any) -> None:
        """Sample this stream's next token from its logits [1, V]; `latent` [1, d] is kept for
        the vocoder."""
        import torch

        p = self._piece
        assert p is not None
        gpt = self._model.gpt
        scores = self._processors(p.seen, logits)
        if self._sampling.temperature > 0:
            token = torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=self._rng)
        else:
            token = scores.argmax(dim=-1, keepdim=True)
        p.latents.append(latent)
        p.generated += 1
        if int(token) == gpt.stop_audio_token or p.generated >= p.limit:
            p.finished = True
            p.slot = KVSlot(0)  # the cache is not needed any more: free it now
            return
        p.seen = torch.cat([p.seen, token], dim=1)
        p.next_emb = gpt.mel_embedding(token) + gpt.mel_pos_embedding.get_fixed_embedding(
            p.generated, self._engine.device
        )

    def emit(self) -> np.ndarray | None:
        import torch

        p = self._piece
        assert p is not None
        boundary = self._boundary(p)
        assert boundary is not None
        end, final = boundary
        with torch.inference_mode():
            audio = p.vocoder.push(torch.stack(p.latents[:end], dim=1), final=final)
        p.emitted = end
        p.chunk = min(self._engine.chunk_tokens, math.ceil(p.chunk * self._engine.chunk_growth))
        if final:
            self._piece = None
        return audio if audio.size else None

    def close(self) -> None:
        self._piece = None
        self._pieces.clear()

    # -- for the batched step ------------------------------------------------------------

    @property
    def piece(self) -> _Piece:
        assert self._piece is not None
        return self._piece


def decode_batch(engine: XTTSEngine, works: list[XTTSStreamWork]) -> dict[int, BaseException]:
    """One GPT step for every stream in `works`: the trunk runs once over the batch (each row
    its own KV cache and length), then each stream samples with its own knobs and generator."""
    import torch

    gpt = engine._model.gpt
    pieces = [w.piece for w in works]
    with torch.inference_mode():
        x = torch.cat([p.next_emb for p in pieces])  # [B, 1, d]
        hidden = trunk_forward(gpt.gpt, x, [p.slot for p in pieces])
        latents = gpt.final_norm(hidden[:, -1])
        logits = gpt.mel_head(latents).float()
        for p in pieces:
            p.slot.commit(1)
        failures: dict[int, BaseException] = {}
        for i, w in enumerate(works):
            try:
                w.accept(latents[i : i + 1], logits[i : i + 1])
            except Exception as e:
                failures[i] = e
    return failures


def prefill_batch(engine: XTTSEngine, works: list[XTTSStreamWork]) -> dict[int, BaseException]:
    """The next piece's prompt of every stream in `works` in one trunk pass (end to end, each
    attending to its own cache, which starts with its voice's part); each then samples its
    first token. Returns the failures by index (a failure of the shared pass raises)."""
    import torch

    gpt = engine._model.gpt
    failures: dict[int, BaseException] = {}
    ready: list[tuple[int, Any, _Piece]] = []
    with torch.inference_mode():
        for i, w in enumerate(works):
            try:
                prompt, piece = w.next_prompt()
            except Exception as e:  # this stream's text or voice: its failure alone
                failures[i] = e
                continue
            ready.append((i, prompt, piece))
        if not ready:
            return failures
        lengths = [prompt.shape[1] for _, prompt, _ in ready]
        x = torch.cat([prompt for _, prompt, _ in ready], dim=1)
        hidden = trunk_forward(gpt.gpt, x, [piece.slot for *_, piece in ready], lengths)
        last = torch.tensor(list(itertools.accumulate(lengths))) - 1
        latents = gpt.final_norm(hidden[0, last])  # [n, d]: each prompt's last position
        logits = gpt.mel_head(latents).float()
        for j, (i, _, piece) in enumerate(ready):
            piece.slot.commit(lengths[j])
            try:
                works[i].start_piece(piece, latents[j : j + 1], logits[j : j + 1])
            except Exception as e:
                failures[i] = e
    return failures


class VoicePrefixes:
    """The GPT's keys and values for each voice's conditioning latents (the part of every
    prompt that only the voice decides), for the last `size` voices spoken."""

    def __init__(self, engine: XTTSEngine, size: int = 8) -> None:
        self._engine = engine
        self._size = size
        # id(latent) -> (latent, its KV): the latent is held so its id is not reused
        self._slots: OrderedDict[int, tuple[Any, KVSlot]] = OrderedDict()

    def slot(self, gpt_cond_latent: Any) -> KVSlot:
        """A new stream's KV slot, starting with this voice's part (computed on first use)."""
        key = id(gpt_cond_latent)
        entry = self._slots.get(key)
        if entry is None or entry[0] is not gpt_cond_latent:
            gpt = self._engine._model.gpt
            prefix = KVSlot(len(gpt.gpt.h))
            latent = gpt_cond_latent.to(self._engine.device)
            trunk_forward(gpt.gpt, latent, [prefix])
            prefix.commit(latent.shape[1])
            entry = self._slots[key] = (gpt_cond_latent, prefix.copy(grow=False))
            while len(self._slots) > self._size:
                self._slots.popitem(last=False)
        self._slots.move_to_end(key)
        return entry[1].copy()

    def clear(self) -> None:
        self._slots.clear()
