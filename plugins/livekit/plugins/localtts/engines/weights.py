"""Model weights: where they are (a local directory or the Hugging Face cache) and which
revision they are. One resolver and one revision scheme for every engine.

Nothing here touches the network unless the caller allows a download.

Revisions: a Hugging Face snapshot is named by its commit (`hf-<commit>`); a local directory
by a digest of its files' contents (`local-<sha256>`), so weights fine-tuned in place get a
new revision even when every file keeps its size. Hashing gigabytes at every start would cost
seconds, so each file's digest is remembered by (path, size, mtime_ns): in this process, and
in a JSON file under the data directory when the engine has one.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .base import EngineUnavailableError

DIGEST_CACHE_FILE = "weights-digests.json"


@dataclass(frozen=True)
class WeightsSpec:
    """What an engine's checkpoint is made of, and how to tell the user about it."""

    label: str  # "XTTS", "Chatterbox": the start of every message
    env_var: str  # the setting that names the weights
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()  # fetched alongside when downloading; never an error
    # files that change what the model computes (the revision's input): required + these
    revision_extra: tuple[str, ...] = ()


def looks_like_path(model: str) -> bool:
    """A local path rather than a Hugging Face repo id ("owner/name")."""
    return (
        Path(model).expanduser().exists()
        or Path(model).is_absolute()
        or model.startswith((".", "~"))
        or "\\" in model
        or model.count("/") > 1
    )


def missing_files(directory: Path, names: Sequence[str]) -> list[str]:
    return [name for name in names if not (directory / name).is_file()]


def local_checkpoint(spec: WeightsSpec, path: Path) -> Path:
    """`path` when it is a directory holding every required file, else a clear error."""
    if not path.is_dir():
        raise EngineUnavailableError(
            f"{spec.label} weights not found: {path} does not exist or is not a directory "
            f"(set {spec.env_var} to a checkpoint directory or a Hugging Face repo id)"
        )
    if missing := missing_files(path, spec.required):
        raise EngineUnavailableError(
            f"{spec.label} weights incomplete: {', '.join(missing)} missing from directory "
            f"{path} (set {spec.env_var} to a complete checkpoint directory or a Hugging Face "
            "repo id)"
        )
    return path


def resolve_weights(spec: WeightsSpec, model: str, *, allow_download: bool) -> Path:
    """The directory holding `model`'s checkpoint: `model` itself when it is a path, else its
    snapshot in the Hugging Face cache (downloaded first only when allowed).
    EngineUnavailableError says what is missing and how to provide it."""
    if looks_like_path(model):
        return local_checkpoint(spec, Path(model).expanduser())
    directory, missing = hub_snapshot(
        model, spec.required, spec.optional, allow_download=allow_download
    )
    if directory is None:
        raise EngineUnavailableError(
            f"{spec.label} weights {model!r} are not in the local Hugging Face cache (missing "
            f"{', '.join(missing)}); download them once (`hf download {model}`), "
            f"point {spec.env_var} at a local directory, or set LOCALTTS_ALLOW_DOWNLOAD=1"
        )
    return directory


def weights_problem(spec: WeightsSpec, model: str, *, allow_download: bool) -> str | None:
    """None when the weights are here (or a repo id can be downloaded at load), else why not.
    Cheap: the network only when a download is allowed and needed, and then one connection
    attempt of at most `_HUB_PROBE_TIMEOUT_S` (a hub that cannot be reached makes the engine
    unavailable now, so "auto" falls back at once instead of failing at load)."""
    try:
        resolve_weights(spec, model, allow_download=False)
    except EngineUnavailableError as e:
        if not allow_download or looks_like_path(model):
            return str(e)
        if (unreachable := hub_unreachable()) is None:
            return None  # fetched at load; a failure then raises EngineUnavailableError
        return (
            f"{spec.label} weights {model!r} are not in the local Hugging Face cache and "
            f"LOCALTTS_ALLOW_DOWNLOAD=1 cannot fetch them: {unreachable}; download them where "
            f"the hub can be reached (`hf download {model}`) or point {spec.env_var} at a local "
            "directory"
        )
    return None


_HUB_PROBE_TIMEOUT_S = 2.0
_HUB_PROBE_TTL_S = 30.0  # one probe serves every engine checked at startup or by `doctor`
_hub_probes: dict[str, tuple[float, str | None]] = {}  # endpoint -> (when, answer)


def hub_unreachable() -> str | None:
    """None when the Hugging Face hub (HF_ENDPOINT) accepts a connection, else why not."""
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    probed = _hub_probes.get(constants.ENDPOINT)
    if probed is not None and time.monotonic() - probed[0] < _HUB_PROBE_TTL_S:
        return probed[1]
    endpoint = urlsplit(constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    answer = None
    try:
        socket.create_connection((endpoint.hostname or "", port), _HUB_PROBE_TIMEOUT_S).close()
    except OSError as e:
        answer = f"the hub {constants.ENDPOINT} cannot be reached ({e.strerror or e})"
    _hub_probes[constants.ENDPOINT] = (time.monotonic(), answer)
    return answer


def hub_snapshot(
    repo_id: str,
    required: Sequence[str],
    optional: Sequence[str] = (),
    *,
    allow_download: bool,
) -> tuple[Path | None, list[str]]:
    """(snapshot directory, []) when every required file is cached (or was downloaded,
    when allowed), else (None, the required files that are missing). Optional files are
    fetched alongside when downloading, and their absence is never an error."""
    try:
        from huggingface_hub import hf_hub_download, try_to_load_from_cache
    except ImportError as e:  # pragma: no cover - a dependency of every weighted engine
        raise EngineUnavailableError(f"huggingface_hub is not installed ({e})") from e
    found: dict[str, Path] = {}
    for name in (*required, *optional):
        cached = try_to_load_from_cache(repo_id, name)  # local only, never the network
        if isinstance(cached, str):
            found[name] = Path(cached)
    missing = [name for name in required if name not in found]
    if missing and allow_download:
        for name in (*missing, *(o for o in optional if o not in found)):
            try:
                found[name] = Path(hf_hub_download(repo_id=repo_id, filename=name))
            except Exception as e:
                if name in optional:
                    continue
                raise EngineUnavailableError(
                    f"downloading {name} from the Hugging Face repo {repo_id} failed: {e}"
                ) from e
        missing = []
    if missing:
        return None, missing
    directories = {found[name].parent for name in required}
    if len(directories) != 1:  # pragma: no cover - the files of one snapshot share a folder
        raise EngineUnavailableError(f"the files of {repo_id} are split across {directories}")
    return directories.pop(), []


# -- revisions ------------------------------------------------------------------------------

_digests: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256, this process
_digests_lock = threading.Lock()


def weights_revision(
    spec: WeightsSpec, directory: Path, *, digest_cache: Path | None = None
) -> str:
    """`hf-<commit>` for a Hugging Face snapshot, else `local-<digest of the contents>` of the
    files that make the model (`spec.required` + `spec.revision_extra`, those present).

    `digest_cache`: a JSON file remembering file digests across processes (see the module)."""
    if directory.parent.name == "snapshots":
        return f"hf-{directory.name[:12]}"
    names = [n for n in (*spec.required, *spec.revision_extra) if (directory / n).is_file()]
    combined = hashlib.sha256()
    for name in names:
        combined.update(f"{name}\0{file_digest(directory / name, digest_cache)}\0".encode())
    return f"local-{combined.hexdigest()[:12]}"


def file_digest(path: Path, digest_cache: Path | None = None) -> str:
    """sha256 of the file's contents, remembered by (path, size, mtime_ns)."""
    stat = path.stat()
    resolved = str(path.resolve())
    key = (resolved, stat.st_size, stat.st_mtime_ns)
    cache_key = f"{resolved}:{stat.st_size}:{stat.st_mtime_ns}"
    with _digests_lock:
        if key in _digests:
            return _digests[key]
        stored = _read_digest_cache(digest_cache)
        digest = stored.get(cache_key)
        if digest is None:
            with path.open("rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
            if digest_cache is not None:
                stored = {k: v for k, v in stored.items() if not k.startswith(f"{resolved}:")}
                stored[cache_key] = digest
                _write_digest_cache(digest_cache, stored)
        _digests[key] = digest
        return digest


def _read_digest_cache(path: Path | None) -> dict[str, str]:
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # absent or damaged: digests are recomputed and the file rewritten
    return {k: v for k, v in data.items() if isinstance(v, str)} if isinstance(data, dict) else {}


def _write_digest_cache(path: Path, digests: dict[str, str]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(digests, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, path)  # atomic: a concurrent reader sees the old or the new file
    except OSError:
        pass  # a read-only data directory only costs a rehash at the next start
