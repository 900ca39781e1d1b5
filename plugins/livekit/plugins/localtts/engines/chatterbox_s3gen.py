"""Chatterbox S3Gen (speech tokens -> 24 kHz audio) run chunk by chunk while T3 still decodes.

Each chunk commits the tokens [a, b) and is rendered from a window with left context and a
short lookahead:

- token -> mel: the flow (conformer encoder + CFM) runs on the voice prompt followed by tokens
  [a - context, n) where n = b + lookahead; frames for [a, b) are kept, the lookahead frames
  are crossfaded into the start of the next chunk's frames (mel-level smoothing);
- mel -> wav: HiFT runs on committed mel frames back to `vocoder_context_frames` plus the
  lookahead frames; the samples for [a, b) are kept and their first few ms crossfaded with the
  previous window's lookahead audio.

What makes the concatenated stream close to vocoding all tokens in one pass is that every
random input is tied to an absolute position, drawn in fixed blocks from a per-utterance
generator: the CFM start noise per mel frame (the prompt's noise fixed per utterance), and
HiFT's source excitation (harmonic phases carried across chunks, noise per sample). The
source already used for committed audio is reused as left context, like CosyVoice's
`cache_source`. One pass = the same stream with a single chunk; tests measure the SNR.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

TOKEN_MEL_RATIO = 2  # mel frames per speech token (25 tokens/s -> 50 frames/s)
SAMPLES_PER_FRAME = 480  # HiFT: 8 * 5 * 3 upsampling * istft hop 4
SAMPLES_PER_TOKEN = TOKEN_MEL_RATIO * SAMPLES_PER_FRAME
_MEL_NOISE_BLOCK = 64  # frames per noise draw: draws are identical whatever the chunking
_SOURCE_NOISE_BLOCK = 8192  # samples per source-noise draw


@dataclass(frozen=True)
class StreamingConfig:
    """Chunking of one utterance (all counts in speech tokens unless named otherwise)."""

    first_chunk_tokens: int = 12  # tokens generated before the first chunk is vocoded
    lookahead_tokens: int = 3  # >= 3: the flow encoder's pre-lookahead layer sees 3 ahead
    chunk_growth: float = 2.0  # each later chunk is this much longer than the previous one
    max_chunk_tokens: int = 100
    context_tokens: int = 25  # flow left context (1 s; SNR vs one pass barely moves)
    vocoder_context_frames: int = 24  # HiFT left context (mel frames)
    mel_crossfade_frames: int = 4
    audio_crossfade_samples: int = 480  # 20 ms
    n_cfm_timesteps: int = 10  # upstream default; fewer is faster and rougher

    def __post_init__(self) -> None:
        if self.lookahead_tokens < 1:
            raise ValueError("lookahead_tokens must be >= 1")
        if self.first_chunk_tokens <= self.lookahead_tokens:
            raise ValueError("first_chunk_tokens must exceed lookahead_tokens")
        if self.chunk_growth < 1.0:
            raise ValueError("chunk_growth must be >= 1")
        if self.n_cfm_timesteps < 1:
            raise ValueError("n_cfm_timesteps must be >= 1")
        if self.audio_crossfade_samples > self.lookahead_tokens * SAMPLES_PER_TOKEN:
            raise ValueError("audio_crossfade_samples must fit inside the lookahead audio")
        if self.mel_crossfade_frames > self.lookahead_tokens * TOKEN_MEL_RATIO:
            raise ValueError("mel_crossfade_frames must fit inside the lookahead frames")


def _fade_in(n: int, device: torch.device) -> torch.Tensor:
    """Raised-cosine ramp from ~0 to ~1 (exclusive ends), n points."""
    t = (torch.arange(n, device=device, dtype=torch.float32) + 0.5) / n
    return 0.5 - 0.5 * torch.cos(math.pi * t)


@dataclass
class PreparedVoice:
    """S3Gen conditioning moved to the model's device/dtype, with the speaker projection done."""

    prompt_token: torch.Tensor  # (1, Tp) long
    prompt_feat: torch.Tensor  # (1, 2*Tp, 80)
    speaker: torch.Tensor  # (1, 80), projected x-vector


class S3GenStreamer:
    """Stateless helper around one S3Gen model; `open()` returns a per-utterance stream."""

    def __init__(self, s3gen: Any, *, config: StreamingConfig) -> None:
        self.s3gen = s3gen
        self.config = config
        self.flow = s3gen.flow
        self.hift = s3gen.mel2wav
        self.device = next(s3gen.parameters()).device
        self.flow_dtype = next(self.flow.parameters()).dtype

    @torch.inference_mode()
    def prepare(self, ref_dict: dict[str, Any]) -> PreparedVoice:
        prompt_token = torch.as_tensor(ref_dict["prompt_token"]).to(self.device).long()
        prompt_feat = torch.as_tensor(ref_dict["prompt_feat"]).to(self.device, self.flow_dtype)
        embedding = torch.atleast_2d(torch.as_tensor(ref_dict["embedding"]))
        embedding = embedding.to(self.device, self.flow_dtype)
        speaker = self.flow.spk_embed_affine_layer(F.normalize(embedding, dim=1))
        prompt_token = torch.atleast_2d(prompt_token)
        # an odd-length reference leaves one mel frame without a token: drop it so prompt
        # frames and generated frames stay aligned (upstream then loses a generated frame)
        prompt_feat = prompt_feat[:, : TOKEN_MEL_RATIO * prompt_token.shape[1]]
        return PreparedVoice(prompt_token, prompt_feat, speaker)

    def open(self, voice: PreparedVoice, *, seed: int) -> VocoderStream:
        return VocoderStream(self, voice, seed=seed)

    # -- model pieces (mirroring CausalMaskedDiffWithXvec.inference / HiFTGenerator.inference)

    def token2mel(
        self, voice: PreparedVoice, tokens: torch.Tensor, prompt_noise: torch.Tensor,
        token_noise: torch.Tensor,
    ) -> torch.Tensor:
        """Mel frames (1, 80, 2T) for tokens (1, T), given the CFM start noise."""
        from chatterbox.models.s3gen.utils.mask import make_pad_mask

        flow = self.flow
        token = torch.cat([voice.prompt_token, tokens], dim=1)
        token_len = torch.tensor([token.shape[1]], device=self.device)
        mask = (~make_pad_mask(token_len)).unsqueeze(-1).to(voice.speaker)
        h, _ = flow.encoder(flow.input_embedding(token) * mask, token_len)
        h = flow.encoder_proj(h)
        n_prompt = voice.prompt_feat.shape[1]
        conds = torch.zeros(1, h.shape[1], flow.output_size, device=self.device, dtype=h.dtype)
        conds[:, :n_prompt] = voice.prompt_feat
        z = torch.cat([prompt_noise, token_noise], dim=2).to(h.dtype)
        t_span = torch.linspace(0, 1, self.config.n_cfm_timesteps + 1, device=self.device)
        t_span = (1 - torch.cos(t_span * 0.5 * torch.pi)).to(h.dtype)  # cosine scheduler
        mel_mask = torch.ones(1, 1, h.shape[1], device=self.device, dtype=h.dtype)
        feat = flow.decoder.solve_euler(
            z, t_span=t_span, mu=h.transpose(1, 2).contiguous(), mask=mel_mask,
            spks=voice.speaker, cond=conds.transpose(1, 2),
        )
        return feat[:, :, n_prompt:].float()

    def f0(self, mel: torch.Tensor) -> torch.Tensor:
        """Per-sample f0 (S,) for mel (1, 80, F)."""
        f0 = self.hift.f0_predictor(mel)  # (1, F)
        return f0[0].repeat_interleave(SAMPLES_PER_FRAME)

    def excitation(
        self, f0: torch.Tensor, start_cycles: torch.Tensor, phase: torch.Tensor,
        noise: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """HiFT's merged sine+noise source for f0 (S,), continuing from `start_cycles` (H,).

        Returns (source (S,), cycles (H, S) fractional phase after each sample).
        """
        sine_gen = self.hift.m_source.l_sin_gen
        n_harm = phase.shape[0]
        harmonics = torch.arange(1, n_harm + 1, device=f0.device, dtype=torch.float64)
        step = f0.double()[None] * harmonics[:, None] / sine_gen.sampling_rate
        cycles = torch.remainder(start_cycles.double()[:, None] + torch.cumsum(step, dim=1), 1.0)
        sine = sine_gen.sine_amp * torch.sin(2 * math.pi * cycles.float() + phase[:, None])
        uv = (f0 > sine_gen.voiced_threshold).float()[None]
        noise_amp = uv * sine_gen.noise_std + (1 - uv) * sine_gen.sine_amp / 3
        sine = sine * uv + noise_amp * noise
        m_source = self.hift.m_source
        merged = m_source.l_tanh(m_source.l_linear(sine.transpose(0, 1)))  # (S, 1)
        return merged[:, 0], cycles

    def decode(self, mel: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        return self.hift.decode(x=mel, s=source.view(1, 1, -1))[0]


class VocoderStream:
    """One utterance: feed tokens with `add`, take audio from `render_next` (while
    `chunk_ready`) and then `finish`."""

    def __init__(self, streamer: S3GenStreamer, voice: PreparedVoice, *, seed: int) -> None:
        self.streamer = streamer
        self.config = streamer.config
        self.voice = voice
        dev = streamer.device
        self._device = dev
        self._gen = torch.Generator(device=dev)
        self._gen.manual_seed(seed)
        self._prompt_noise = torch.randn(
            1, 80, voice.prompt_feat.shape[1], generator=self._gen, device=dev
        )
        n_harm = streamer.hift.m_source.l_sin_gen.harmonic_num + 1
        self._phase = torch.rand(n_harm, generator=self._gen, device=dev) * 2 * math.pi - math.pi
        self._phase[0] = 0.0
        self._n_harm = n_harm
        # separate generator for the source noise so mel and source draws never interleave
        self._src_gen = torch.Generator(device=dev)
        self._src_gen.manual_seed(seed + 1)
        self._mel_noise = torch.zeros(80, 0, device=dev)
        self._src_noise = torch.zeros(n_harm, 0, device=dev)
        self._src_noise_start = 0  # absolute sample index of _src_noise[:, 0]

        self.tokens: list[int] = []
        self.committed = 0  # tokens whose audio has been emitted
        self._next_chunk = self.config.first_chunk_tokens - self.config.lookahead_tokens
        self._mel = torch.zeros(80, 0, device=dev)  # committed mel frames
        self._mel_start = 0  # absolute frame of _mel[:, 0]
        self._mel_tail = torch.zeros(80, 0, device=dev)  # lookahead frames of the last window
        self._audio_tail = torch.zeros(0, device=dev)
        self._source = torch.zeros(0, device=dev)  # committed source (left context)
        self._source_end = 0  # absolute sample where committed source ends
        self._cycles = torch.zeros(n_harm, device=dev, dtype=torch.float64)
        self.chunk_tokens: list[int] = []  # committed tokens per emitted chunk

    # -- random inputs tied to absolute positions -------------------------------------------

    def _mel_noise_for(self, f0: int, f1: int) -> torch.Tensor:
        while self._mel_noise.shape[1] < f1:
            block = torch.randn(_MEL_NOISE_BLOCK, 80, generator=self._gen, device=self._device)
            self._mel_noise = torch.cat([self._mel_noise, block.T], dim=1)
        return self._mel_noise[:, f0:f1]

    def _source_noise_for(self, s0: int, s1: int) -> torch.Tensor:
        while self._src_noise_start + self._src_noise.shape[1] < s1:
            block = torch.randn(
                _SOURCE_NOISE_BLOCK, self._n_harm, generator=self._src_gen, device=self._device
            )
            self._src_noise = torch.cat([self._src_noise, block.T], dim=1)
        return self._src_noise[:, s0 - self._src_noise_start : s1 - self._src_noise_start]

    def _drop_source_noise_before(self, sample: int) -> None:
        blocks = (sample - self._src_noise_start) // _SOURCE_NOISE_BLOCK
        if blocks > 0:
            cut = blocks * _SOURCE_NOISE_BLOCK
            self._src_noise = self._src_noise[:, cut:]
            self._src_noise_start += cut

    # -- chunking ------------------------------------------------------------------------------

    def add(self, tokens: list[int]) -> None:
        self.tokens.extend(tokens)

    def chunk_ready(self) -> bool:
        """All tokens of the next chunk (plus its lookahead) are known."""
        lookahead = self.config.lookahead_tokens
        return len(self.tokens) - lookahead >= self.committed + self._next_chunk

    def render_next(self) -> np.ndarray:
        """Audio of the next chunk (`chunk_ready()` must hold)."""
        chunk = self._render(self.committed + self._next_chunk, final=False)
        self._next_chunk = min(
            max(self._next_chunk + 1, int(self._next_chunk * self.config.chunk_growth)),
            self.config.max_chunk_tokens,
        )
        return chunk

    def tokens_needed_for_next_chunk(self) -> int:
        return self.committed + self._next_chunk + self.config.lookahead_tokens

    def finish(self) -> np.ndarray | None:
        """Audio for every remaining token (the last chunk is never dropped)."""
        if len(self.tokens) <= self.committed:
            return None
        return self._render(len(self.tokens), final=True)

    @torch.inference_mode()
    def _render(self, b: int, *, final: bool) -> np.ndarray:
        cfg, st = self.config, self.streamer
        # exactly `lookahead` tokens of right context, however many are known: the audio is
        # a function of the tokens alone, not of when the decoder handed them over
        a = self.committed
        n = len(self.tokens) if final else b + cfg.lookahead_tokens
        t0 = max(0, a - cfg.context_tokens)
        ids = torch.tensor([self.tokens[t0:n]], dtype=torch.long, device=self._device)
        frames = self._mel_noise_for(TOKEN_MEL_RATIO * t0, TOKEN_MEL_RATIO * n)
        mel = st.token2mel(self.voice, ids, self._prompt_noise, frames[None])[0]  # (80, 2(n-t0))
        fa, fb, fn = (TOKEN_MEL_RATIO * x for x in (a, b, n))
        f_t0 = TOKEN_MEL_RATIO * t0
        new_mel = mel[:, fa - f_t0 : fb - f_t0].clone()
        k = min(cfg.mel_crossfade_frames, self._mel_tail.shape[1], new_mel.shape[1])
        if k > 0:
            w = _fade_in(k, self._device)
            new_mel[:, :k] = self._mel_tail[:, :k] * (1 - w) + new_mel[:, :k] * w
        self._mel_tail = mel[:, fb - f_t0 :]
        self._mel = torch.cat([self._mel, new_mel], dim=1)

        # HiFT window: committed frames [m0, fb) + this window's lookahead frames [fb, fn)
        m0 = max(self._mel_start, fb - (fb - fa) - cfg.vocoder_context_frames)
        hift_mel = torch.cat([self._mel[:, m0 - self._mel_start :], self._mel_tail], dim=1)
        s0, sa, sb, sn = (SAMPLES_PER_FRAME * x for x in (m0, fa, fb, fn))
        f0 = st.f0(hift_mel[None])  # (sn - s0,)
        cached = self._source[self._source.shape[0] - (self._source_end - s0) :]
        new_f0 = f0[self._source_end - s0 :]
        src_new, cycles = st.excitation(
            new_f0, self._cycles, self._phase,
            self._source_noise_for(self._source_end, sn),
        )
        wav = st.decode(hift_mel[None], torch.cat([cached, src_new]))  # (sn - s0,)

        out = wav[sa - s0 : sb - s0].clone()
        k = min(cfg.audio_crossfade_samples, self._audio_tail.shape[0], out.shape[0])
        if k > 0:
            w = _fade_in(k, self._device)
            out[:k] = self._audio_tail[:k] * (1 - w) + out[:k] * w
        self._audio_tail = wav[sb - s0 : sb - s0 + cfg.audio_crossfade_samples]
        if a == 0:  # upstream's fade-in against spillover from the reference clip
            fade = st.s3gen.trim_fade.to(out.device)
            m = min(fade.shape[0], out.shape[0])
            out[:m] *= fade[:m]

        # commit: source and phase up to sb, mel/source context trimmed to what HiFT needs
        n_commit = sb - self._source_end
        if n_commit > 0:
            self._cycles = cycles[:, n_commit - 1].clone()
            self._source = torch.cat([self._source, src_new[:n_commit]])
            self._source_end = sb
        keep_frames = cfg.vocoder_context_frames + 1
        keep_samples = SAMPLES_PER_FRAME * keep_frames
        # the next window starts at most `vocoder_context_frames` before fb
        self._source = self._source[-keep_samples:]
        drop = self._mel.shape[1] - keep_frames
        if drop > 0:
            self._mel = self._mel[:, drop:]
            self._mel_start += drop
        self._drop_source_noise_before(self._source_end)
        self.committed = b
        self.chunk_tokens.append(b - a)
        if final:
            self._mel_tail = self._mel_tail[:, :0]
        return out.float().cpu().numpy()
