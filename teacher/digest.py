"""File-level digest of a teacher checkpoint folder: identifies the weights without loading a model.

Precompute stores `digest(dino_root)` in the cache; the trainer in cache mode recomputes it from the files
in its `dino_root` and compares, so it never imports transformers' model code nor builds the teacher
(a ViT-L would cost ~1.2 GiB of RSS and seconds of hashing tensors; a 7B one ~27 GB). Only the standard
library is imported here.

The digest covers the files `from_pretrained` reads to build the model and its normalisation (see
`WEIGHT_PATTERNS`), each hashed with sha256 streamed in 8 MiB chunks. A sidecar `SIDECAR` inside the folder
remembers (name, size, mtime_ns) -> sha256 so an unchanged multi-GB checkpoint is not re-read at every
start; any change of size or mtime re-hashes that file. A read-only folder just skips the sidecar.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from dinocache.core.data import file_sha256
from dinocache.core.errors import DinocacheError
from dinocache.core.fsutil import umask

# Files of a transformers checkpoint folder that decide the teacher's numbers (weights, shapes, layer
# layout, input normalisation). Tokenizer/README/licence files do not.
WEIGHT_PATTERNS = (
    "config.json",
    "preprocessor_config.json",
    "*.safetensors",
    "*.safetensors.index.json",
    "*.bin",
    "*.bin.index.json",
)
SIDECAR = ".dinocache-digest.json"
CHUNK = 8 << 20
DIGEST_VERSION = 1


class DigestError(DinocacheError, FileNotFoundError):
    """The folder holds no weight files (or is not a folder); the message names it."""


def weight_files(root: str | Path) -> list[Path]:
    """The weight files of checkpoint folder `root` (top level, sorted by name)."""
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise DigestError(f"{folder} is not a folder of teacher weights")
    files = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and any(fnmatch.fnmatch(p.name, pat) for pat in WEIGHT_PATTERNS)
    )
    if not any(f.name != "config.json" and f.name != "preprocessor_config.json" for f in files):
        raise DigestError(f"{folder} holds no weight files ({', '.join(WEIGHT_PATTERNS[2:])})")
    return files


def _load_sidecar(folder: Path) -> dict[str, Any]:
    try:
        d = json.loads((folder / SIDECAR).read_text())
    except (OSError, ValueError):
        return {}
    return d if isinstance(d, dict) and d.get("version") == DIGEST_VERSION else {}


def _save_sidecar(folder: Path, entries: dict[str, Any]) -> None:
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f"{SIDECAR}.")
        with os.fdopen(fd, "w") as f:
            json.dump({"version": DIGEST_VERSION, "files": entries}, f, indent=1, sort_keys=True)
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes 0600: readable like the weights beside it
        os.replace(tmp, folder / SIDECAR)
    except OSError:  # read-only weights folder: hash again next time
        pass


def digest(root: str | Path, use_sidecar: bool = True) -> dict[str, Any]:
    """{"version", "files": {name: {"size", "sha256"}}, "id"} of the weight files in `root`.

    `id` is the sha256 of the canonical JSON of `files`; two folders with byte-identical weight files
    have the same id wherever they live.
    """
    folder = Path(root).expanduser()
    files = weight_files(folder)
    known = _load_sidecar(folder).get("files", {}) if use_sidecar else {}
    out: dict[str, dict[str, Any]] = {}
    memo: dict[str, Any] = {}
    for p in files:
        st = p.stat()
        hit = known.get(p.name)
        if hit and hit.get("size") == st.st_size and hit.get("mtime_ns") == st.st_mtime_ns:
            sha = str(hit["sha256"])
        else:
            sha = file_sha256(p, CHUNK)
        out[p.name] = {"size": int(st.st_size), "sha256": sha}
        memo[p.name] = {"size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns), "sha256": sha}
    if use_sidecar and memo != known:
        _save_sidecar(folder, memo)
    blob = json.dumps(out, sort_keys=True, separators=(",", ":")).encode()
    return {"version": DIGEST_VERSION, "files": out, "id": hashlib.sha256(blob).hexdigest()}


def compare(stored: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """Lines naming each weight file that differs between a stored digest and the folder's (empty: same)."""
    a, b = stored.get("files", {}), now.get("files", {})
    lines = []
    for name in sorted(set(a) | set(b)):
        if name not in b:
            lines.append(f"{name}: in the cache's teacher, missing from this folder")
        elif name not in a:
            lines.append(f"{name}: in this folder, not in the cache's teacher")
        elif a[name].get("sha256") != b[name].get("sha256"):
            lines.append(
                f"{name}: changed since the cache was made (sha256 {str(a[name].get('sha256'))[:12]}… in the "
                f"cache, {str(b[name].get('sha256'))[:12]}… now; {a[name].get('size')} -> {b[name].get('size')} bytes)"
            )
    return lines


def locate(root: str) -> Path | None:
    """The local folder of `root`: the path itself, or the local Hugging Face snapshot of a hub id."""
    p = Path(root).expanduser()
    if p.is_dir():
        return p
    if p.exists() or "/" not in root or root.startswith((".", "~", "/")):
        return None
    try:  # a hub id: only what is already in the local HF cache (no download, no model code)
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(root, local_files_only=True))
    except Exception:
        return None
