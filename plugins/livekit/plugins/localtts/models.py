from typing import Literal

EngineName = Literal["chatterbox", "xtts", "piper"]
EngineChoice = Literal["auto", "chatterbox", "xtts", "piper"]
DeviceChoice = Literal["auto", "cuda", "cpu"]

ENGINE_NAMES: tuple[EngineName, ...] = ("chatterbox", "xtts", "piper")
