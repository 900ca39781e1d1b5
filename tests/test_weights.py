"""Weights: one resolver ("a path or a repo id"), one revision scheme (a snapshot's commit,
else a digest of the contents, remembered by path, size and mtime)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from livekit.plugins.localtts.engines.base import EngineUnavailableError
from livekit.plugins.localtts.engines.weights import (
    WeightsSpec,
    looks_like_path,
    resolve_weights,
    weights_problem,
    weights_revision,
)

SPEC = WeightsSpec(
    label="Test", env_var="LOCALTTS_TEST_MODEL", required=("model.bin", "config.json"),
    revision_extra=("extra.json",),
)  # fmt: skip


def checkpoint(directory: Path, weights: bytes) -> Path:
    directory.mkdir(parents=True)
    (directory / "model.bin").write_bytes(weights)
    (directory / "config.json").write_text('{"layers": 2}')
    return directory


def test_same_sizes_different_bytes_give_different_revisions(tmp_path: Path) -> None:
    a = checkpoint(tmp_path / "a", b"\x00" * 4096)
    b = checkpoint(tmp_path / "b", b"\x00" * 4095 + b"\x01")  # fine-tuned: same shapes
    c = checkpoint(tmp_path / "c", b"\x00" * 4096)
    assert weights_revision(SPEC, a) != weights_revision(SPEC, b)
    assert weights_revision(SPEC, a) == weights_revision(SPEC, c)  # contents, not the path
    assert weights_revision(SPEC, a).startswith("local-")


def test_weights_changed_in_place_get_a_new_revision(tmp_path: Path) -> None:
    directory = checkpoint(tmp_path / "ckpt", b"\x00" * 4096)
    before = weights_revision(SPEC, directory)
    stat = (directory / "model.bin").stat()
    (directory / "model.bin").write_bytes(b"\x07" * 4096)
    # even when the clock did not move on (coarse timestamps): another mtime_ns is enough
    os.utime(directory / "model.bin", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert weights_revision(SPEC, directory) != before
    (directory / "extra.json").write_text("{}")  # a file that changes the model counts too
    assert weights_revision(SPEC, directory) != before


def test_digests_are_remembered_in_the_data_dir(tmp_path: Path) -> None:
    directory = checkpoint(tmp_path / "ckpt", b"\x00" * 4096)
    cache = tmp_path / "data" / "weights-digests.json"
    revision = weights_revision(SPEC, directory, digest_cache=cache)
    stored = json.loads(cache.read_text())
    model = str((directory / "model.bin").resolve())
    keys = [k for k in stored if k.startswith(model + ":")]
    assert len(keys) == 1 and keys[0].endswith(f":{(directory / 'model.bin').stat().st_mtime_ns}")
    # a new process (nothing in memory) reads the stored digest instead of hashing again:
    # a forged entry shows it was used
    from livekit.plugins.localtts.engines import weights

    weights._digests.clear()
    stored[keys[0]] = "0" * 64
    cache.write_text(json.dumps(stored))
    assert weights_revision(SPEC, directory, digest_cache=cache) != revision


def test_snapshot_revision_is_its_commit(tmp_path: Path) -> None:
    snapshot = checkpoint(tmp_path / "models--a--b" / "snapshots" / ("ab12" * 10), b"x")
    assert weights_revision(SPEC, snapshot) == "hf-" + ("ab12" * 10)[:12]


def test_one_rule_for_paths_and_repo_ids(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert not looks_like_path("coqui/XTTS-v2")
    for path in ("./model", "~/model", "/models/x", "a/b/c", "C:\\models"):
        assert looks_like_path(path), path
    (tmp_path / "local").mkdir()
    assert looks_like_path("local")  # an existing directory, even without a slash
    with pytest.raises(EngineUnavailableError, match="does not exist"):
        resolve_weights(SPEC, str(tmp_path / "nowhere"), allow_download=False)
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text("{}")
    message = weights_problem(SPEC, str(partial), allow_download=True) or ""
    assert "model.bin missing" in message and "LOCALTTS_TEST_MODEL" in message
