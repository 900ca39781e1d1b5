"""Tiny random-weight XTTS-v2 models for tests and benches, built offline from coqui's classes.

Stable API (other test modules import it):

- ``make_tiny_xtts_engine(**engine_kwargs) -> XTTSEngine``: an engine over a tiny model,
  already loaded and warmed up (a few seconds at most on 2 cores). Extra keyword arguments
  go to ``XTTSEngine`` (e.g. ``first_chunk_tokens=6``); ``threads`` (default 1) sets
  torch's thread count for the process.
- ``build_xtts(size="tiny", seed=0, never_stop=True) -> Xtts``: the model itself (``"tiny"``:
  2 GPT layers of width 256; ``"real"``: the v2 shapes, 30 layers of width 1024).
- ``write_xtts_checkpoint(directory, size="tiny") -> Path``: a checkpoint directory
  (config.json, model.pth, vocab.json) that the engine's real directory loader can read.
- ``make_test_clip(voice_id="test", seconds=3.0) -> VoiceClip``: a synthetic reference clip.

Random weights emit the stop token only by chance; ``never_stop=True`` (the default) rules
it out so every utterance runs exactly to the engine's ``max_tokens`` cap (deterministic
lengths); ``make_tiny_xtts_engine`` sets a small cap by default.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any, Literal

import numpy as np
from livekit.plugins.localtts.engines.base import VoiceClip
from livekit.plugins.localtts.engines.xtts import XTTSEngine
from livekit.plugins.localtts.host import set_torch_threads

ModelSize = Literal["tiny", "real"]

# special tokens of XTTS's vocab.json at the ids the model code expects
_STOP_ID = 0
_START_ID = 261
_LANGUAGES = (
    "en", "es", "fr", "de", "it", "pt", "pl", "tr", "ru", "nl", "cs", "ar", "zh-cn", "hu",
    "ko", "ja", "hi",
)  # fmt: skip
REAL_TEXT_VOCAB = 6681  # gpt_number_text_tokens of the published v2 checkpoint


def tokenizer_json(vocab_size: int = 262) -> str:
    """A tokenizers-library JSON with XTTS's special tokens and one token per character."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab: dict[str, int] = {"[STOP]": _STOP_ID, "[UNK]": 1, "[SPACE]": 2}
    specials = ["[STOP]", "[UNK]", "[SPACE]"]
    for lang in _LANGUAGES:
        vocab[f"[{lang}]"] = len(vocab)
        specials.append(f"[{lang}]")
    chars = string.ascii_lowercase + string.digits + ".,;:!?'\"-()"
    chars += "àâäçéèêëîïôöùûüñáíóúãõąćęłńśźżğışčďěňřšťůžőű"
    for ch in chars:
        if len(vocab) == _START_ID:
            break
        vocab.setdefault(ch, len(vocab))
    while len(vocab) < _START_ID:  # pad so [START] lands at its fixed id
        vocab[f"[PAD{len(vocab)}]"] = len(vocab)
    vocab["[START]"] = _START_ID
    specials.append("[START]")
    while len(vocab) < vocab_size:
        vocab[f"[EXTRA{len(vocab)}]"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(specials)
    return tok.to_str()


def xtts_config(size: ModelSize = "tiny") -> Any:
    from TTS.tts.configs.xtts_config import XttsConfig

    config = XttsConfig()
    args = config.model_args
    # the published v2 token layout (ANCHORS.md)
    args.gpt_num_audio_tokens = 1026
    args.gpt_start_audio_token = 1024
    args.gpt_stop_audio_token = 1025
    args.gpt_use_perceiver_resampler = True
    if size == "tiny":
        args.gpt_layers = 2
        args.gpt_n_model_channels = 256
        args.gpt_n_heads = 4
        args.decoder_input_dim = 256
    else:
        args.gpt_layers = 30
        args.gpt_n_model_channels = 1024
        args.gpt_n_heads = 16
        args.decoder_input_dim = 1024
    return config


def build_xtts(
    size: ModelSize = "tiny", seed: int = 0, *, never_stop: bool = True,
    vocab_dir: Path | None = None,
) -> Any:
    """A random-weight `Xtts` in eval mode (no file is read except the generated vocab)."""
    import tempfile

    import torch
    from TTS.tts.layers.xtts.tokenizer import VoiceBpeTokenizer
    from TTS.tts.models.xtts import Xtts

    torch.manual_seed(seed)
    config = xtts_config(size)
    model = Xtts(config)
    with tempfile.TemporaryDirectory() as tmp:
        vocab = Path(vocab_dir or tmp) / "vocab.json"
        vocab.write_text(
            tokenizer_json(REAL_TEXT_VOCAB if size == "real" else 262), encoding="utf-8"
        )
        model.tokenizer = VoiceBpeTokenizer(vocab_file=str(vocab))
    model.init_models()
    model.eval()
    if never_stop:
        with torch.no_grad():
            model.gpt.mel_head.bias[model.gpt.stop_audio_token] = -1e4
    return model


def write_xtts_checkpoint(
    directory: Path, size: ModelSize = "tiny", seed: int = 0, *, speaker: str | None = None
) -> Path:
    """Write config.json, model.pth and vocab.json of a random-weight model into `directory`;
    with `speaker`, also speakers_xtts.pth holding that one built-in voice (random latents)."""
    import torch

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model = build_xtts(size, seed=seed, vocab_dir=directory)
    model.config.save_json(str(directory / "config.json"))
    # the published checkpoint holds no inference-only aliases (added by eval())
    skip = ("gpt.gpt_inference.", "gpt.gpt.wte.")
    state = {k: v for k, v in model.state_dict().items() if not k.startswith(skip)}
    torch.save({"model": state}, directory / "model.pth")
    if speaker is not None:
        gen = torch.Generator().manual_seed(seed)
        width = model.args.gpt_n_model_channels
        latents = {
            "gpt_cond_latent": torch.randn(1, 32, width, generator=gen),
            "speaker_embedding": torch.randn(1, 512, 1, generator=gen),
        }
        torch.save({speaker: latents}, directory / "speakers_xtts.pth")
    return directory


def make_test_clip(
    voice_id: str = "test", seconds: float = 3.0, sample_rate: int = 24000
) -> VoiceClip:
    """A voiced-sounding synthetic clip: a wobbling harmonic tone plus a little noise."""
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    f0 = 140.0 + 20.0 * np.sin(2 * np.pi * 3.0 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    audio = sum(np.sin(k * phase) / k for k in range(1, 6)) * 0.2
    audio = audio + 0.01 * rng.standard_normal(len(t))
    return VoiceClip(voice_id, audio.astype(np.float32), sample_rate, "en")


def make_tiny_xtts_engine(**engine_kwargs: Any) -> XTTSEngine:
    """A loaded, warmed-up engine over a tiny random-weight model (default voice: a
    synthetic clip; generation capped at 60 tokens unless `max_tokens` is given; torch
    threads: `threads`, default 1)."""
    engine_kwargs.setdefault("max_tokens", 60)
    # one torch thread, as the tests have always run the tiny model (host.py sets threads)
    set_torch_threads(engine_kwargs.pop("threads", 1))
    engine = XTTSEngine.from_model(build_xtts("tiny"), **engine_kwargs)
    engine.load()  # loading warms the engine up
    if engine.default_voice is None:
        engine.set_default_voice(engine.condition(make_test_clip("default")))
    return engine
