"""Finding model weights in the local Hugging Face cache (one way for every engine).

Nothing here touches the network unless the caller allows a download; each engine words
its own "what is missing and how to provide it" message from what this returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .base import EngineUnavailableError


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


def snapshot_revision(directory: Path) -> str | None:
    """The commit of a Hugging Face snapshot directory (its name), else None."""
    return directory.name[:12] if directory.parent.name == "snapshots" else None
