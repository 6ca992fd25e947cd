"""A student start from the Hugging Face hub: `model=owner/name` or `model=hf://owner/name/path/file.pt`.

The checkpoint is fetched by huggingface_hub into its own cache ($HF_HUB_CACHE, default
~/.cache/huggingface/hub) and Ultralytics loads the cached file like any local .pt. `owner/name` without a
file takes the repository's only .pt file. Offline (HF_HUB_OFFLINE=1, or no network) a checkpoint that is
not cached yet is a clear error naming the file to place and where.
"""

from __future__ import annotations

from pathlib import Path

from dinocache.train.config import hub_parts

from dinocache.core.errors import DinocacheError


class HubModelError(DinocacheError, ValueError):
    """`model=` names a hub checkpoint that cannot be resolved; the message says what to do."""


def _cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _where(repo: str, filename: str) -> str:
    folder = _cache_dir() / f"models--{repo.replace('/', '--')}"
    return (
        f"place {filename} at {folder}/snapshots/<revision>/{filename} with the revision in {folder}/refs/main "
        f"(`hf download {repo} {filename}` on a machine with network fills that cache; copy the "
        f"models--{repo.replace('/', '--')} folder over), or pass model=/path/to/{Path(filename).name}"
    )


def resolve_student(model: str) -> str:
    """The local path of a hub student (downloaded into the hub cache when needed); local paths unchanged."""
    parts = hub_parts(model)
    if parts is None:
        return model
    repo, filename = parts
    from huggingface_hub import constants, hf_hub_download, list_repo_files, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    offline = bool(constants.HF_HUB_OFFLINE)
    why = "HF_HUB_OFFLINE=1" if offline else "the hub cannot be reached"
    if filename is None:
        try:
            files = (
                [
                    str(p.relative_to(d))
                    for d in [Path(snapshot_download(repo, local_files_only=True))]
                    for p in d.rglob("*.pt")
                ]
                if offline
                else list_repo_files(repo)
            )
        except (LocalEntryNotFoundError, OfflineModeIsEnabled, OSError, HfHubHTTPError) as e:
            raise HubModelError(
                f"model: {model} is not in the Hugging Face cache and {why} ({type(e).__name__}); "
                f"{_where(repo, '<checkpoint>.pt')}"
            ) from None
        pts = sorted(f for f in files if f.endswith(".pt"))
        if len(pts) != 1:
            raise HubModelError(
                f"model: {model} holds {len(pts)} .pt files ({', '.join(pts) or 'none'}); name one as "
                f"model=hf://{repo}/<file>.pt"
            )
        filename = pts[0]
    try:
        return hf_hub_download(repo, filename)
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as e:
        raise HubModelError(
            f"model: {filename} of {repo} is not in the Hugging Face cache and {why} ({type(e).__name__}); "
            f"{_where(repo, filename)}"
        ) from None
    except HfHubHTTPError as e:
        raise HubModelError(f"model: cannot download {filename} of {repo}: {e}") from None
