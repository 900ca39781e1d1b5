"""Shared test set-up: nothing here may reach a model hub."""

import os

import pytest
from livekit.plugins.localtts.engines.piper import PiperEngine

# belt and braces: any accidental hub call fails at once instead of hanging
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

pytest_plugins = ["tests.pg", "tests.livekit_server", "tests.service_fixtures"]


@pytest.fixture(scope="session")
def piper_engine() -> PiperEngine:
    """The bundled Piper voice, loaded and warm: real speech for every plugin test."""
    engine = PiperEngine()
    engine.load()
    engine.warmup()
    return engine
