"""Shared test set-up: nothing here may reach a model hub."""

import os

# belt and braces: any accidental hub call fails at once instead of hanging
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

pytest_plugins = ["tests.pg", "tests.livekit_server", "tests.service_fixtures"]
