"""The `localtts` command line, run in-process through typer's runner."""

from __future__ import annotations

import json
import wave
from pathlib import Path

from typer.testing import CliRunner

from localtts_agent.cli.app import app

runner = CliRunner()


def test_say_writes_a_wav_and_ends_with_a_json_report(tmp_path: Path) -> None:
    out = tmp_path / "hello.wav"
    result = runner.invoke(
        app, ["say", "Hello from a local voice agent.", "--engine", "piper", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert {"first_audio_ms", "total_ms", "audio_s", "rtf", "engine", "sample_rate"} <= set(report)
    assert report["engine"] == "piper" and report["sample_rate"] == 22050
    assert 0 < report["first_audio_ms"] <= report["total_ms"]
    assert 1.0 < report["audio_s"] < 5.0
    with wave.open(str(out)) as f:
        assert f.getframerate() == 22050 and f.getnchannels() == 1
        assert abs(f.getnframes() / 22050 - report["audio_s"]) < 0.01


def test_say_with_a_bad_engine_or_voice_is_a_clear_error() -> None:
    result = runner.invoke(app, ["say", "Hi.", "--engine", "espeak"])
    assert result.exit_code == 2
    assert "unknown engine 'espeak'" in result.output


def test_doctor_json_names_every_engine() -> None:
    result = runner.invoke(app, ["doctor", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert set(report["engines"]) == {"chatterbox", "xtts", "piper"}
    assert report["engines"]["piper"]["usable"] is True
    assert report["host"]["performance_cores"] >= 1
    assert report["selected"]["engine"] in {"chatterbox", "xtts", "piper"}
