"""Writing a feature cache, what `dinocache precompute` uses: one creator (`CacheWriter.create`), then
whole-shard writes by each shard owner, and the repair steps (reset a shard, rewrite its keys).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from dinocache.cache import format as fmt
from dinocache.cache.arrays import ZarrArrays, bytes_to_hex, decode_keys, encode_keys, hex_to_bytes
from dinocache.cache.errors import CacheCorrupt, CacheError, CacheExists, damage_reason, repair_hint
from dinocache.cache.locations import exists, filesystem, local_path, read_attrs, zarr_store


class CacheWriter(ZarrArrays):
    """Read-write handle used by precompute. Create once (`create`), then any owner writes whole shards."""

    def __init__(self, path: str | Path, storage_options: dict[str, Any] | None = None) -> None:
        super().__init__(path, storage_options, read_only=False)
        self.spec = self._load_spec()

    @classmethod
    def create(
        cls,
        path: str | Path,
        spec: fmt.Spec,
        keys: Sequence[str],
        channel_mean: np.ndarray,
        channel_std: np.ndarray,
        pca: Any = None,
        storage_options: dict[str, Any] | None = None,
    ) -> CacheWriter:
        """Make a fresh store at `path` (which must not exist): arrays, keys, stats, PCA, attrs last."""
        import zarr

        if len(keys) != spec.n:
            raise CacheError(f"{len(keys)} keys for a cache of n={spec.n}")
        if exists(path, storage_options):
            raise CacheExists(
                f"{path} appeared while this precompute was preparing to create it: another precompute is (or "
                "was) writing it. Do not delete it; wait for that run to end, then rerun this command: it resumes "
                "and computes only the shards still missing"
            )
        h, w = spec.grid
        s = spec.shard_size
        try:
            group = zarr.open_group(zarr_store(path, storage_options, read_only=False), mode="w-")
        except Exception:  # noqa: BLE001 - zarr's ContainsGroupError: lost the race to another creator
            if exists(path, storage_options) and read_attrs(path, storage_options) is not None:
                raise CacheExists(
                    f"{path} was created by another precompute a moment ago: it is (or was) writing it. Do not "
                    "delete it; wait for that run to end, then rerun this command: it resumes and computes only "
                    "the shards still missing"
                ) from None
            raise
        # Attributes first with ready=false, so a crash during creation leaves a store we recognise
        # as ours and unfinished (the next run recreates it), never one that looks complete.
        unfinished = fmt.Spec(**{**spec.__dict__, "ready": False})
        group.attrs.update(unfinished.to_attrs())
        kw = {"chunk_key_encoding": fmt.CHUNK_KEY_ENCODING}
        for name in (fmt.FEATURES, fmt.FEATURES_FLIP) if spec.flips else (fmt.FEATURES,):
            group.create_array(
                name,
                shape=(spec.n, spec.k, h, w),
                dtype=fmt.FEATURE_DTYPE,
                chunks=(1, spec.k, h, w),
                shards=(s, spec.k, h, w),
                compressors=fmt.compressors(spec.codec),
                fill_value=np.nan,
                dimension_names=("image", "channel", "y", "x"),
                chunk_key_encoding=fmt.CHUNK_KEY_ENCODING,
            )
        kw["compressors"] = fmt.checksum()  # every other array: crc32c on each chunk, no compression
        group.create_array(fmt.DONE, shape=(spec.n,), dtype="uint8", chunks=(s,), fill_value=0, **kw)
        group.create_array(fmt.SHA256, shape=(spec.n, 32), dtype="uint8", chunks=(s, 32), fill_value=0, **kw)
        karr = group.create_array(
            fmt.KEYS,
            shape=(spec.n, spec.key_len),
            dtype="uint8",
            chunks=(s, spec.key_len),
            fill_value=0,
            **kw,
        )
        if spec.n:
            karr[:] = encode_keys(keys, spec.key_len)
        vectors = {fmt.CHANNEL_MEAN: channel_mean, fmt.CHANNEL_STD: channel_std}
        if spec.pca:
            if pca is None:
                raise CacheError("spec.pca is true but no PCA basis was given")
            vectors |= {
                fmt.PCA_MEAN: pca.mean,
                fmt.PCA_COMPONENTS: pca.components,
                fmt.PCA_EXPLAINED_VARIANCE: pca.explained_variance,
            }
        for name, value in vectors.items():
            value = np.asarray(value, np.float32)
            a = group.create_array(
                name, shape=value.shape, dtype="float32", chunks=value.shape, fill_value=0.0, **kw
            )
            a[...] = value
        done = fmt.Spec(**{**spec.__dict__, "ready": True})
        group.attrs.update(done.to_attrs())
        return cls(path, storage_options)

    def stored_keys(self) -> list[str]:
        return decode_keys(self._whole(fmt.KEYS))

    def done_rows(self) -> np.ndarray:
        """(N,) uint8 done flags, read fresh; a chunk failing its checksum is a CacheCorrupt naming it."""
        return self._whole(fmt.DONE)

    def basis(self) -> Any:
        """The stored PCA basis (float32) or None; writers project with exactly these numbers."""
        if not self.spec.pca:
            return None
        from dinocache.cache.pca import PCABasis

        return PCABasis(
            *(
                self._whole(n).astype(np.float32)
                for n in (fmt.PCA_MEAN, fmt.PCA_COMPONENTS, fmt.PCA_EXPLAINED_VARIANCE)
            )
        )

    def shard_state(self, shard: int) -> tuple[np.ndarray, list[str]]:
        """(done (m,) bool, sha256 hex list) of the rows of `shard`."""
        r = self.spec.shard_rows(shard)
        try:
            done = np.asarray(self._array(fmt.DONE)[r.start : r.stop]).astype(bool)
            sha = bytes_to_hex(np.asarray(self._array(fmt.SHA256)[r.start : r.stop]))
        except CacheError:
            raise
        except Exception as e:  # noqa: BLE001 - a chunk failing its checksum
            raise CacheCorrupt(
                f"cache {self.path}: the done/sha256 chunk of shard {shard} ({fmt.chunk_file(self.path, fmt.DONE, shard)}) "
                f"{damage_reason(e)}; {repair_hint(self)}"
            ) from None
        return done, sha

    def reset_shard(self, shard: int) -> None:
        """Repair: delete the shard's features file and write its done/sha256 chunks as zeros (not done), so the
        next write pass recomputes the whole shard with its usual batch boundaries (same bits as a fresh run)."""
        fs, _ = filesystem(self.path, self.storage_options)
        for f in [fmt.chunk_file(self.path, fmt.FEATURES, shard)] + (
            [fmt.chunk_file(self.path, fmt.FEATURES_FLIP, shard)] if self.spec.flips else []
        ):
            target = str(local_path(f).resolve()) if local_path(f) is not None else f
            if fs.exists(target):
                fs.rm(target)
        r = self.spec.shard_rows(shard)
        self._array(fmt.SHA256)[r.start : r.stop] = np.zeros((len(r), 32), np.uint8)
        self._array(fmt.DONE)[r.start : r.stop] = np.zeros(len(r), np.uint8)

    def write_keys(self, shard: int, keys: Sequence[str]) -> None:
        """Repair: rewrite the keys chunk of `shard` from the dataset listing (`keys` = all N keys)."""
        r = self.spec.shard_rows(shard)
        self._array(fmt.KEYS)[r.start : r.stop] = encode_keys(list(keys)[r.start : r.stop], self.spec.key_len)

    def write_shard(
        self,
        shard: int,
        features: np.ndarray,
        sha256_hex: Sequence[str],
        done: np.ndarray,
        features_flip: np.ndarray | None = None,
    ) -> None:
        """Write one whole shard in one call per array: features (and features_flip), then sha256, then done
        (last), so a row is marked done only once both of its maps are written."""
        r = self.spec.shard_rows(shard)
        m = len(r)
        h, w = self.spec.grid
        if (features_flip is not None) != bool(self.spec.flips):
            raise CacheError(
                f"shard {shard}: the cache {'holds' if self.spec.flips else 'has no'} flipped views "
                f"(flips={self.spec.flips}) but features_flip was {'not ' if features_flip is None else ''}given"
            )
        for name, x in ((fmt.FEATURES, features), (fmt.FEATURES_FLIP, features_flip)):
            if x is not None and (x.shape != (m, self.spec.k, h, w) or x.dtype != np.float16):
                raise CacheError(
                    f"shard {shard}: {name} {x.shape} {x.dtype}, expected {(m, self.spec.k, h, w)} float16"
                )
        if len(sha256_hex) != m or len(done) != m:
            raise CacheError(f"shard {shard}: {len(sha256_hex)} hashes / {len(done)} flags for {m} rows")
        self._array(fmt.FEATURES)[r.start : r.stop] = features
        if features_flip is not None:
            self._array(fmt.FEATURES_FLIP)[r.start : r.stop] = features_flip
        self._array(fmt.SHA256)[r.start : r.stop] = hex_to_bytes([h or "0" * 64 for h in sha256_hex])
        self._array(fmt.DONE)[r.start : r.stop] = np.asarray(done, np.uint8)
