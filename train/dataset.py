"""Training dataset that attaches each image's cached teacher map; flips flip it too (warp.WarpFlip).

The teacher map is looked up by the image's key (its path relative to the dataset root, see
`dinocache.data.image_key`), never by index: Ultralytics re-sorts `im_files` in some modes. The dataset
resolves every image's key and opens the cache once in the main process (`TeacherLookup.prepare`), so forked
DataLoader workers inherit both; the cache's readers open their files per process (cache/mapped.py,
tensorstore), and a spawned worker reopens the cache from its path.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from dinocache.train.context import DistillTerm
from dinocache.train.warp import (
    FLIP_KEY,
    GEOM_KEY,
    SRC_KEY,
    TEACHER_KEY,
    WarpFlip,
    collate_geometry,
    disable_blends,
    wrap_transforms,
)
from ultralytics.data.augment import Compose, RandomFlip
from ultralytics.data.dataset import YOLODataset

from dinocache.core.data import image_key, image_keys

_UNSET = object()  # TeacherLookup._views: not looked up yet in this process

# maps kept beyond Mosaic's buffer before the map buffer is pruned: pruning builds a set of the buffer's indexes,
# so it runs once per this many new maps; the maps of the memory-mapped reader are views (no memory of their own)
_PRUNE_SLACK = 32


def uses_cache_flips(setting: str, fc: Any) -> bool:
    """distill_cache_flips resolved against the cache: auto = whether it holds flipped views."""
    return setting == "on" or (setting == "auto" and bool(getattr(fc, "flips", False)))


def swap_flips(transforms: Compose) -> Compose:
    """Replace every RandomFlip inside `transforms` (nested Compose included) by warp.py's WarpFlip.

    The one flip path of both modes: without warp state WarpFlip flips the plain (D, h, w) map with the image,
    exact for images whose side is a multiple of the patch size (pixel column x lies in cell x // p, and after a
    horizontal flip in cell (w - 1) - x // p).
    """
    items = transforms.transforms
    for i, t in enumerate(items):
        if isinstance(t, Compose):
            swap_flips(t)
        elif type(t) is RandomFlip:
            items[i] = WarpFlip(p=t.p, direction=t.direction, flip_idx=t.flip_idx)
    return transforms


class TeacherLookup:
    """Maps an image file to its (D, h, w) float16 teacher map from the cache.

    `shuffle_seed` (the control run of `dinocache compare`, mode cache-shuffled): every image gets ANOTHER
    image's map, a seeded derangement of the cache's keys, so the maps keep their statistics but lose
    their content's link to the image.
    """

    def __init__(
        self, cache_path: str, root: str | Path, channels: int, shuffle_seed: int | None = None
    ) -> None:
        self.cache_path = str(cache_path)
        self.root = str(root)
        self.channels = int(channels)
        self.shuffle_seed = shuffle_seed
        self._fc: Any = None
        self._other: dict[str, str] | None = None
        self._keys: dict[str, str] = {}  # im_file -> key: resolving a path costs syscalls, done once per file
        # the per-sample read path (prepare): im_file -> its map's cache row (shuffling applied), and per
        # `flipped` the cache's row -> view function (fc.row_view with the NaN/inf check; None where the
        # memory-mapped reader declines)
        self._rows: dict[str, int] = {}
        self._views: dict[bool, Any] = {}

    @property
    def fc(self) -> Any:
        # kept across fork: its readers open files per process; a pickled lookup (spawn) drops it and reopens
        if self._fc is None:
            from dinocache import cache

            self._fc = cache.open(self.cache_path)
        return self._fc

    def prepare(self, im_files: list[str]) -> None:
        """Resolve the keys of `im_files` and open the cache now, in the main process, so that DataLoader workers
        forked later inherit them instead of each resolving every path and reopening the cache."""
        todo = [f for f in im_files if f not in self._keys]
        self._keys.update(zip(todo, image_keys(todo, self.root)))
        fc = self.fc
        fc.warm()
        for f in todo:
            key = self._keys[f] if self.shuffle_seed is None else self.other_key(self._keys[f])
            try:
                self._rows[f] = fc.row_of(key)
            except KeyError:
                pass  # read through the general path, whose error names the image

    def other_key(self, key: str) -> str:
        """cache-shuffled: the key whose map `key` gets (never itself when the cache has >= 2 rows)."""
        if self._other is None:
            keys = sorted(self.fc.keys)
            perm = np.random.default_rng(self.shuffle_seed).permutation(len(keys))
            # i-th of the permuted order gets the (i+1)-th's map: a cycle, so no image keeps its own
            self._other = {keys[perm[i]]: keys[perm[(i + 1) % len(keys)]] for i in range(len(keys))}
        return self._other.get(key, key)

    def __call__(self, im_file: str, flipped: bool = False) -> np.ndarray:
        """(D, h, w) float16, possibly read-only (`flipped`: the cached map of the mirrored image); a checksum failure, a missing
        shard or NaN/inf is a CacheCorrupt naming the image key, the shard file and the repair command: nothing
        damaged reaches the loss."""
        # once per sample: a prepared image's row viewed straight in the memory-mapped shard, checksum and NaN/inf
        # checked (the scan once per chunk and checksum value: mapped.py, `view_finite`); anything else (not
        # prepared, another reader, damage) takes the general path below, which reads the map again and raises in
        # its own words
        row = self._rows.get(im_file)
        if row is not None:
            view = self._views.get(flipped, _UNSET)
            if view is _UNSET:
                view = self._row_view(flipped)
            if view is not None:
                try:
                    x = view(row)
                except Exception:  # noqa: BLE001 - damage: the general path raises it with the image's key
                    x = None
                if x is not None:
                    return x
        return self._read(im_file, flipped)

    def _row_view(self, flipped: bool) -> Any:
        from dinocache.cache.check import all_finite

        view = self._views[flipped] = self.fc.row_view(self.channels, flipped, finite=all_finite)
        return view

    def _read(self, im_file: str, flipped: bool) -> np.ndarray:
        from dinocache.cache.check import checked_map

        key = self._keys.get(im_file)
        if key is None:
            key = self._keys[im_file] = image_key(im_file, self.root)
        if self.shuffle_seed is not None:
            key = self.other_key(key)
        # a read-only view of the memory-mapped shard where the reader offers one: nothing is copied until collate
        return checked_map(self.fc, key, channels=self.channels, flipped=flipped, view=True)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fc": None, "_views": {}}


class MultiTeacherLookup:
    """Several teachers of one multi-teacher cache packed into one map, so the flip/warp path (which moves one
    `teacher_feat` per image) moves them all with the same geometry.

    Each teacher's first D_i channels are standardised with its own channel stats (float32), repeated
    `factor` times along both axes (nearest: exact, factor = its cell size / the finest teacher's), and
    stacked: (sum D_i, h_f, w_f) float16 on the finest grid. The model splits them back and average-pools
    each to its own grid (train/model.py). `terms`: the run's DistillTerms (store, channels, factor, stats).
    """

    def __init__(self, terms: Sequence[DistillTerm], root: str | Path) -> None:
        self.terms = list(terms)
        self.lookups = [TeacherLookup(t.cache_path, root, t.channels) for t in self.terms]

    def prepare(self, im_files: list[str]) -> None:
        for lk in self.lookups:
            lk.prepare(im_files)

    def __call__(self, im_file: str) -> np.ndarray:
        parts = []
        for t, lk in zip(self.terms, self.lookups):
            x = np.asarray(lk(im_file), dtype=np.float32)  # (D_i, h_i, w_i)
            d = t.channels
            mean = np.asarray(t.mean, np.float32)[:d, None, None]
            std = np.maximum(np.asarray(t.std, np.float32)[:d, None, None], 1e-6)
            x = (x - mean) / std
            if t.factor > 1:  # (D, h, w) -> (D, h*f, w*f): every fine cell carries its coarse cell's vector
                x = np.repeat(np.repeat(x, t.factor, axis=1), t.factor, axis=2)
            parts.append(x)
        return np.concatenate(parts, 0).astype(np.float16)


class DistillDataset(YOLODataset):
    """YOLODataset whose training samples carry `teacher_feat` (D, h, w) float16 of exactly the image seen."""

    def __init__(
        self,
        *args: Any,
        teacher: TeacherLookup | None = None,
        geometric_aug: str = "off",
        patch: int = 16,
        valid_threshold: float = 0.5,
        cache_flips: bool = False,
        **kwargs: Any,
    ) -> None:
        # set before super().__init__, which builds the transforms
        self.teacher = teacher
        # the cache holds each image's flipped view: a horizontal flip reads it instead of mirroring the map
        self.cache_flips = cache_flips
        self.geometric_aug = geometric_aug
        self.patch = patch
        self.valid_threshold = valid_threshold
        # warp mode: maps of the images in Mosaic's buffer [False], and their flipped views once read [True]
        self._map_buffers: dict[bool, dict[int, np.ndarray]] = {False: {}, True: {}}
        # maps of the batch being fetched, read ahead by __getitems__, each taken by its sample's first read
        self._read_ahead: dict[int, np.ndarray] = {}
        super().__init__(*args, **kwargs)
        if self.teacher is not None and self.augment and hasattr(self.teacher, "prepare"):
            self.teacher.prepare(self.im_files)

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        """The DataLoader's fetch of one batch (torch calls it instead of `ds[i]` per index): the samples `ds[i]`
        builds, with the maps of the batch's images that are not in the map buffer read first, in one loop. A read
        between two samples' image work finds the CPU's caches filled with that work and costs several times the
        same read in a loop (measured in the loader benchmark's pipeline, median per read: 39 vs 9 us a 16 KiB map,
        75 vs 28 us a 100 KiB one); the maps read and the samples built are the same."""
        ahead = self._read_ahead
        if self.teacher is not None and self.augment:
            buf = self._map_buffers[False]
            for i in indices:
                if i not in buf and i not in ahead:
                    ahead[i] = self.teacher(self.im_files[i])
        try:
            return [self[i] for i in indices]
        finally:
            ahead.clear()  # not kept past its batch: the map buffer decides what stays

    def build_transforms(self, hyp: Any = None) -> Compose:
        # also called by close_mosaic(), so the wrappers stay in after mosaic closes
        if self.geometric_aug == "warp" and self.augment and self.teacher is not None:
            disable_blends(hyp)  # mixup/cutmix/copy-paste cannot be followed (train/warp.py)
            return wrap_transforms(super().build_transforms(hyp), self.patch, self.valid_threshold)
        return swap_flips(super().build_transforms(hyp))

    def get_image_and_label(self, index: int) -> dict[str, Any]:
        label = super().get_image_and_label(index)
        if self.teacher is not None and self.augment:
            # ~4 calls per mosaic sample, mostly for a map already in the buffer: looked up here, no call
            feat = self._map_buffers[False].get(index)
            label[TEACHER_KEY] = self._teacher_map(index, label["im_file"]) if feat is None else feat
            if self.cache_flips:  # read only if a horizontal flip happens (warp.WarpFlip)
                label[FLIP_KEY] = self.teacher_flip_for(index)
        return label

    def _teacher_map(self, index: int, im_file: str, flipped: bool = False) -> np.ndarray:
        """The cached map (`flipped`: its flipped view); in warp mode kept while its image is in Mosaic's buffer
        (Ultralytics keeps semantic masks the same way), so a mosaic costs ~1 cache read instead of 4, and a
        flipped mosaic ~1 more. Maps are never modified in place."""
        buf = self._map_buffers[flipped]
        feat = buf.get(index)
        if feat is None:
            feat = None if flipped else self._read_ahead.pop(index, None)  # read by __getitems__
            if feat is None:
                feat = self.teacher(im_file, True) if flipped else self.teacher(im_file)
            # the image just loaded is usually the buffer's last entry: checked first, before a scan of the list
            buffer = self.buffer
            if self.geometric_aug == "warp" and ((buffer and buffer[-1] == index) or index in buffer):
                buf[index] = feat
                # drop the maps of images Mosaic's buffer has let go, every _PRUNE_SLACK reads (not a set per read)
                if len(buf) > len(buffer) + _PRUNE_SLACK:
                    keep = set(buffer)
                    for i in [i for i in buf if i not in keep]:
                        del buf[i]
        return feat

    def teacher_feat_for(self, index: int) -> np.ndarray:
        """(D, h, w) cached map of image `index` (warp protocol; get_image_and_label attaches it already)."""
        return self._teacher_map(index, self.im_files[index])

    def teacher_flip_for(self, index: int) -> Callable[[], np.ndarray] | None:
        """() -> (D, h, w) cached map of image `index` flipped left-right (cache_flips), None without them."""
        if not self.cache_flips or self.teacher is None:
            return None
        return functools.partial(self._teacher_map, index, self.im_files[index], True)

    @staticmethod
    def collate_fn(batch: list[dict]) -> dict:
        feats, srcs, geoms = [], [], []
        for b in batch:
            b.pop(FLIP_KEY, None)  # an unused flipped-view reader (no flip happened) is not data
            feats.append(b.pop(TEACHER_KEY, None))
            srcs.append(b.pop(SRC_KEY, None))
            geoms.append(b.pop(GEOM_KEY, None))
        out = YOLODataset.collate_fn(batch)
        if all(f is not None for f in feats):
            # off mode: (D, h, w) x B -> (B, D, h, w) float16
            out[TEACHER_KEY] = torch.from_numpy(np.stack(feats))  # one copy (the maps may be read-only views)
        if all(g is not None for g in geoms):
            # warp mode: tile maps (B, T, D, h, w) + geometry (B, T, GEOM_FIELDS); warped on the device
            out[SRC_KEY], out[GEOM_KEY] = collate_geometry(srcs, geoms)
        return out
