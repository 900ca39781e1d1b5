"""A tiny random-weight Chatterbox built offline from chatterbox-tts's own classes.

    from tests.tiny_chatterbox import make_tiny_chatterbox_engine, write_tiny_checkpoint
    engine = make_tiny_chatterbox_engine()           # loaded ChatterboxEngine on CPU, fp32
    ckpt = write_tiny_checkpoint(tmp_dir)             # a real checkpoint directory on disk

- T3: a `LLAMA_CONFIGS["localtts_tiny"]` entry (2 layers, hidden 256, 4 heads) with
  `use_perceiver_resampler=False` (the perceiver is fixed at 1024 dims): ~8M parameters.
- S3Gen: the real architecture (its sizes are fixed, 264M parameters incl. the speech
  tokenizer) but for a shallower CFM estimator (same class, 1 transformer per block and 2 mid
  blocks instead of 4 and 12: 9M parameters, not 71M); built once per process (`tiny_parts()`
  is cached) because its random init takes seconds. Streaming engines use few CFM steps to
  stay fast.
- VoiceEncoder(): the real (small) one; EnTokenizer over a generated character tokenizer.json.
- Default voice: `Conditionals` computed by the engine from a short synthetic clip (a short
  prompt keeps every S3Gen window cheap).

Random weights never emit the stop token on purpose: cap `max_new_tokens`.
"""

from __future__ import annotations

import functools
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np

TINY_LLAMA = "localtts_tiny"
TINY_LAYERS = 2
N_CFM_STEPS = 2
ESTIMATOR_BLOCKS, ESTIMATOR_MID_BLOCKS = 1, 2  # S3Gen's CFM estimator: upstream 4, 12
_build_lock = threading.Lock()


def _register_tiny_llama(layers: int) -> str:
    from chatterbox.models.t3.llama_configs import LLAMA_520M_CONFIG_DICT, LLAMA_CONFIGS

    name = TINY_LLAMA if layers == TINY_LAYERS else f"{TINY_LLAMA}_{layers}"
    LLAMA_CONFIGS.setdefault(
        name,
        dict(
            LLAMA_520M_CONFIG_DICT,
            hidden_size=256,
            intermediate_size=512,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=4,
            head_dim=64,
            max_position_embeddings=4096,
        ),
    )
    return name


def tiny_t3_config(layers: int = TINY_LAYERS) -> Any:
    from chatterbox.models.t3.modules.t3_config import T3Config

    hp = T3Config.english_only()
    hp.llama_config_name = _register_tiny_llama(layers)
    hp.use_perceiver_resampler = False
    return hp


@functools.lru_cache
def tiny_t3(layers: int, seed: int = 0) -> Any:
    """A tiny T3 of `layers` layers (random weights), built once per process: engines given
    it with `make_tiny_chatterbox_engine(t3_layers=...)` share it."""
    import torch
    from chatterbox.models.t3 import T3

    with _build_lock:
        torch.manual_seed(seed)
        return T3(tiny_t3_config(layers)).eval()


def tokenizer_json() -> str:
    """A character-level tokenizer.json that EnTokenizer accepts ([STOP]=0, [START]=255)."""
    from tokenizers import Tokenizer, models

    chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'\"-()"
    vocab = {"[STOP]": 0, "[UNK]": 1, "[SPACE]": 2}
    for i, ch in enumerate(chars):
        vocab[ch] = 3 + i
    vocab["[START]"] = 255
    for i, name in enumerate(["[PAD]", "[SEP]", "[CLS]", "[MASK]"]):
        vocab[name] = 256 + i
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="[UNK]"))
    tok.add_special_tokens(["[START]", "[STOP]", "[UNK]", "[SPACE]"])
    return tok.to_str()


def synthetic_voice(seconds: float = 3.0, sample_rate: int = 24_000, seed: int = 0) -> np.ndarray:
    """A voiced-like test signal: a gliding harmonic tone with a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    f0 = 140 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    wav = sum(np.sin(k * phase) / k for k in range(1, 6)) * 0.2
    return (wav + 0.01 * rng.standard_normal(t.shape)).astype(np.float32)


@functools.lru_cache(maxsize=1)
def tiny_parts(seed: int = 0) -> dict[str, Any]:
    """(t3, s3gen, ve, tokenizer) with random weights; built once per process."""
    import tempfile

    import torch
    from chatterbox.models.s3gen import S3Gen
    from chatterbox.models.s3gen.decoder import ConditionalDecoder
    from chatterbox.models.t3 import T3
    from chatterbox.models.tokenizers import EnTokenizer
    from chatterbox.models.voice_encoder import VoiceEncoder

    with _build_lock:
        torch.manual_seed(seed)
        t3 = T3(tiny_t3_config()).eval()
        s3gen = S3Gen().eval()
        # the estimator runs twice per CFM step over every window: at full depth it is most
        # of a tiny engine's time (a 1.2 s utterance streamed: ~6 s, ~2 s shallow); what the
        # tests compare (streamed vs one pass, ours vs upstream's flow) holds at any depth
        s3gen.flow.decoder.estimator = ConditionalDecoder(
            n_blocks=ESTIMATOR_BLOCKS, num_mid_blocks=ESTIMATOR_MID_BLOCKS
        ).eval()
        ve = VoiceEncoder().eval()
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "tokenizer.json"
            path.write_text(tokenizer_json(), encoding="utf-8")
            tokenizer = EnTokenizer(str(path))
    return {"t3": t3, "s3gen": s3gen, "ve": ve, "tokenizer": tokenizer}


def make_tiny_chatterbox_engine(
    *, with_default_voice: bool = True, voice_seconds: float = 2.0, private: bool = False,
    t3_layers: int = TINY_LAYERS, **options: Any,
) -> Any:
    """A loaded ChatterboxEngine over the shared tiny parts (CPU, fp32).

    `options` override `ChatterboxOptions` fields (e.g. first_chunk_tokens=8). `private`
    gives the engine its own copies of T3 and S3Gen: loading moves modules to the engine's
    dtype in place, so an engine in another precision must not share them. `t3_layers`
    other than 2: the shared `tiny_t3` of that depth instead of the tiny parts' T3.
    """
    import copy

    from livekit.plugins.localtts.engines.base import VoiceClip
    from livekit.plugins.localtts.engines.chatterbox import (
        ChatterboxEngine,
        ChatterboxOptions,
    )

    parts = dict(tiny_parts())
    if t3_layers != TINY_LAYERS:
        parts["t3"] = tiny_t3(t3_layers)
    if private:
        parts.update(t3=copy.deepcopy(parts["t3"]), s3gen=copy.deepcopy(parts["s3gen"]))
    defaults: dict[str, Any] = dict(
        device="cpu", n_cfm_timesteps=N_CFM_STEPS, watermark=False, warmup=False,
        max_new_tokens=120,
    )
    defaults.update(options)
    engine = ChatterboxEngine(
        options=ChatterboxOptions(**defaults), revision="tiny-random", **parts
    )
    engine.load()
    if with_default_voice:
        audio = synthetic_voice(voice_seconds)
        clip = VoiceClip(voice_id="default", audio=audio, sample_rate=24_000)
        engine.set_default_voice(engine.condition(clip))
    return engine


def write_tiny_checkpoint(directory: Path, *, with_conds: bool = True) -> Path:
    """Write the tiny model as a checkpoint directory the engine's real loader reads.

    Same files as ResembleAI/chatterbox (ve/t3_cfg/s3gen .safetensors, tokenizer.json,
    conds.pt) plus `t3_config.json` naming the non-standard T3 size. S3Gen is stored in fp16
    to halve the write (the loader upcasts; it is random anyway). The loader builds the stock
    S3Gen: the CFM estimator's blocks beyond the tiny one's depth keep their random init.
    """
    from chatterbox.tts import Conditionals
    from safetensors.torch import save_file

    parts = tiny_parts()
    directory.mkdir(parents=True, exist_ok=True)
    save_file(dict(parts["ve"].state_dict()), str(directory / "ve.safetensors"))
    save_file(
        {
            k: v.contiguous()
            for k, v in parts["t3"].state_dict().items()
            if not k.startswith("patched_model.")  # added by a stock T3.inference call
        },
        str(directory / "t3_cfg.safetensors"),
    )
    s3_state = {
        k: (v.half() if v.is_floating_point() else v).contiguous()
        for k, v in parts["s3gen"].state_dict().items()
    }
    save_file(s3_state, str(directory / "s3gen.safetensors"))
    (directory / "tokenizer.json").write_text(tokenizer_json(), encoding="utf-8")
    hp = tiny_t3_config()
    from chatterbox.models.t3.llama_configs import LLAMA_CONFIGS

    (directory / "t3_config.json").write_text(
        json.dumps(
            {
                "llama": LLAMA_CONFIGS[TINY_LLAMA],
                "use_perceiver_resampler": hp.use_perceiver_resampler,
            }
        ),
        encoding="utf-8",
    )
    if with_conds:
        engine = make_tiny_chatterbox_engine(with_default_voice=True)
        assert engine.default_voice is not None
        conds = engine.default_voice.data
        Conditionals(conds.t3, conds.gen).save(directory / "conds.pt")
    return directory
