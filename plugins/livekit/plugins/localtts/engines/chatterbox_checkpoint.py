"""The Chatterbox checkpoint: its files (a local directory or the Hugging Face cache, see
weights.py) and how its parts are built from them, like `ChatterboxTTS.from_local`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from .base import EngineUnavailableError
from .weights import WeightsSpec

DEFAULT_VOICE_FILE = "conds.pt"
# optional: a non-standard T3 size ({"llama": LlamaConfig kwargs, "use_perceiver_resampler": b})
T3_CONFIG_FILE = "t3_config.json"
WEIGHTS = WeightsSpec(
    label="Chatterbox",
    env_var="LOCALTTS_CHATTERBOX_MODEL",
    required=("ve.safetensors", "t3_cfg.safetensors", "s3gen.safetensors", "tokenizer.json"),
    optional=(DEFAULT_VOICE_FILE,),
    revision_extra=(T3_CONFIG_FILE,),
)


def load_parts(directory: Path) -> dict[str, Any]:
    """(t3, s3gen, ve, tokenizer, conds) on CPU, like ChatterboxTTS.from_local, plus the
    optional T3 size file."""
    import torch
    from chatterbox.models.s3gen import S3Gen
    from chatterbox.models.t3 import T3
    from chatterbox.models.t3.llama_configs import LLAMA_CONFIGS
    from chatterbox.models.t3.modules.t3_config import T3Config
    from chatterbox.models.tokenizers import EnTokenizer
    from chatterbox.models.voice_encoder import VoiceEncoder
    from chatterbox.tts import Conditionals
    from safetensors.torch import load_file

    hp = T3Config.english_only()
    config_file = directory / T3_CONFIG_FILE
    if config_file.is_file():
        custom = json.loads(config_file.read_text(encoding="utf-8"))
        name = "localtts_" + hashlib.sha1(config_file.read_bytes()).hexdigest()[:8]
        LLAMA_CONFIGS.setdefault(name, custom["llama"])
        hp.llama_config_name = name
        hp.use_perceiver_resampler = bool(custom.get("use_perceiver_resampler", True))
    t3_state = load_file(str(directory / "t3_cfg.safetensors"))
    if "model" in t3_state:
        t3_state = t3_state["model"][0]
    text_vocab = t3_state["text_emb.weight"].shape[0]
    if text_vocab != hp.text_tokens_dict_size:
        raise EngineUnavailableError(
            f"{directory} holds a T3 with {text_vocab} text tokens (the multilingual model?); "
            "this engine runs the English Chatterbox (704 text tokens)"
        )
    t3 = T3(hp)
    t3.load_state_dict(t3_state)
    ve = VoiceEncoder()
    ve.load_state_dict(load_file(str(directory / "ve.safetensors")))
    s3gen = S3Gen()
    s3gen.load_state_dict(load_file(str(directory / "s3gen.safetensors")), strict=False)
    tokenizer = EnTokenizer(str(directory / "tokenizer.json"))
    conds = None
    if (directory / DEFAULT_VOICE_FILE).is_file():
        conds = Conditionals.load(directory / DEFAULT_VOICE_FILE, map_location=torch.device("cpu"))
    return {"t3": t3, "s3gen": s3gen, "ve": ve, "tokenizer": tokenizer, "conds": conds}
