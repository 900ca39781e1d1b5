"""Import localtts's engines on a machine that has torch but not livekit-agents.

The engines know nothing of LiveKit, but they live inside the plugin package, whose
`__init__` registers the LiveKit plugin. A lent GPU machine has torch, CUDA and transformers
but no livekit-agents, and livekit-agents with its wheels (livekit, av, livekit-local-
inference: about 80 MB) does not fit beside chatterbox-tts's in what can be carried there.
Importing this module first (`-p bench.engine_only` for pytest, an import for a bench) makes
`livekit.plugins.localtts` a bare package when livekit-agents is missing, so
`livekit.plugins.localtts.engines.*` import as they are, and nothing else is touched.
Where livekit-agents is installed it does nothing.

    python3 -m pytest --noconftest -p bench.engine_only tests/test_chatterbox.py
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

PACKAGE = "livekit.plugins.localtts"
PACKAGE_DIR = Path(__file__).resolve().parents[1] / "plugins" / "livekit" / "plugins" / "localtts"


def livekit_agents_installed() -> bool:
    try:
        return importlib.util.find_spec("livekit.agents") is not None
    except ModuleNotFoundError:  # no `livekit` namespace on the path at all
        return False


def install() -> bool:
    """Make the engines importable without the plugin; True when the bare package is used."""
    if PACKAGE in sys.modules or livekit_agents_installed():
        return False
    plugins_root = str(PACKAGE_DIR.parents[2])
    if plugins_root not in sys.path:
        sys.path.insert(0, plugins_root)
    package = types.ModuleType(PACKAGE)
    package.__path__ = [str(PACKAGE_DIR)]
    package.__package__ = PACKAGE
    sys.modules[PACKAGE] = package
    return True


ENGINE_ONLY = install()
