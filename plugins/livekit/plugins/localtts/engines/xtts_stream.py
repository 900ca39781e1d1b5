"""One XTTS stream as the scheduler steps it (`scheduler.StreamWork`), and the batched decode
step that advances many streams by one token each.

A stream speaks its pieces one after another. Per piece: `prefill` runs the voice latents and
text through the GPT into the stream's own KV cache and samples the first token; `decode`
(batched with every other stream that wants tokens) samples one more; `emit` vocodes the
next chunk once all its tokens exist. Chunk boundaries depend on the tokens alone (first
`first_chunk_tokens`, then growing by `chunk_growth` up to `chunk_tokens`), never on when the
scheduler ran what, so a stream's audio is the same alone and in any batch. A stream may
decode up to one chunk ahead of its vocoder: those tokens cost little inside a batch.
"""

from __future__ import annotations

import math
from collections import deque
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
        import torch

        engine, model = self._engine, self._model
        gpt, device = model.gpt, engine.device
        text = self._pieces.popleft()
        limit = min(x for x in (self._max_tokens, engine.max_tokens, gpt.max_gen_mel_tokens) if x)
        with torch.inference_mode():
            ids = model.tokenizer.encode(text.strip().lower(), lang=self._lang)
            tokens = torch.tensor([ids], dtype=torch.long, device=device)
            tokens = torch.nn.functional.pad(tokens, (0, 1), value=gpt.stop_text_token)
            tokens = torch.nn.functional.pad(tokens, (1, 0), value=gpt.start_text_token)
            text_emb = gpt.text_embedding(tokens) + gpt.text_pos_embedding(tokens)
            start = torch.full((1, 1), gpt.start_audio_token, dtype=torch.long, device=device)
            start_emb = gpt.mel_embedding(start) + gpt.mel_pos_embedding.get_fixed_embedding(
                0, device
            )
            prompt = torch.cat(
                [self._latents.gpt_cond_latent.to(device), text_emb, start_emb], dim=1
            )
            vocoder = WindowVocoder(
                model, self._latents.speaker_embedding.to(device),
                length_scale=self._length_scale, context=engine.context_frames,
                lookahead=engine.lookahead_frames, crossfade=engine.crossfade_frames,
                bf16=bool(engine.vocoder_bf16),
            )
            # coqui's generate() feeds placeholder ids (1 ... 1, start) for the prefix, so its
            # repetition penalty also covers ids 1 and start: kept for identical sampling
            seen = torch.tensor([[1, gpt.start_audio_token]], dtype=torch.long, device=device)
            piece = _Piece(
                slot=KVSlot(len(gpt.gpt.h)), seen=seen, next_emb=None, vocoder=vocoder,
                limit=limit, chunk=engine.first_chunk_tokens,
            )
            hidden = trunk_forward(gpt.gpt, prompt, [piece.slot])
            piece.slot.commit(prompt.shape[1])
            latent = gpt.final_norm(hidden[:, -1])
            self._piece = piece
            self.accept(latent, gpt.mel_head(latent).float())

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
