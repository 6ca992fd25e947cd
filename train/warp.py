"""Keep Ultralytics' geometric augmentation with cached teacher maps: warp each map with its image.

The cache holds one teacher map per *un-augmented* training image. With `distill_geometric_aug: warp` the
trainer keeps mosaic, random affine/perspective, flips and letterbox on; the wrappers below are subclasses of
Ultralytics' own transforms that run the original code on the image and, beside it, record each sample's
geometry:

- `WarpMosaic`      (Mosaic)            tile placements: which source image, crop and paste rectangles, offset
- `WarpPerspective` (RandomPerspective) the 3x3 matrix M and the output size
- `WarpFlip`        (RandomFlip)        the flip decision and direction
- `WarpLetterBox`   (LetterBox)         resize ratio and padding

Each transform left-multiplies the per-tile matrix `A` (source-image pixel -> current-frame pixel). Nothing
is resampled in the dataloader: `AttachGeometry` (last, before `Format`) attaches each sample's

- `labels["teacher_src"]`  T x (D, h, w): the cached map of each of its T source tiles (1, 4 or 9), as they were
  read (a tuple; possibly read-only views of the memory-mapped cache, copied once, by the collate)
- `labels["teacher_geom"]` (T, GEOM_FIELDS) float64: per tile the composed matrix A, the map offset, the
  tile's source rectangle (which source pixels the tile shows: a mosaic crop, else the whole image), the
  output size, the patch and a presence flag (a few hundred bytes)

and the trainer resamples the whole batch on the training device in `preprocess_batch` (`warp_batch`), which
writes

- `batch["teacher_feat"]`  (B, D, H/s, W/s) float32: the warped maps (mosaic: tiles blended by pixel coverage)
- `batch["teacher_valid"]` (B, H/s, W/s) float32 in {0, 1}: 1 where at least `valid_threshold` of the cell's
  sample points come from one source image's real pixels (not mosaic/letterbox/affine-border padding).

Ownership is computed analytically: an output pixel p belongs to tile i when the nearest source pixel of
A_i^-1 p lies inside tile i's source rectangle (the last tile wins, as in Mosaic's paste order); this is what
Ultralytics' nearest-neighbour semantic-mask path computes, without moving an owner image through every
transform on the CPU.

Pixel-centre convention (cv2 and Ultralytics): pixel x has its centre at integer x. A feature cell c covers
pixels [c*s, (c+1)*s), its centre at c*s + (s-1)/2, so pixel = K f with K = [[s, 0, (s-1)/2], [0, s, (s-1)/2],
[0, 0, 1]] and the feature-level matrix is M_feat = K_out^-1 A K_src. Flips and shifts by whole cells then
map cell centres onto cell centres exactly, and the render copies values without interpolating.

Source frame: a cached map covers the imgsz x imgsz canvas on which precompute ran the teacher; the loaded
image (long side = imgsz, `resized_shape`) sits centred in it, exactly where Ultralytics' RandomPerspective
puts it with all augmentation off (offset ((S_w - w)/2, (S_h - h)/2)); for square images the offset is 0.

Cached flipped views (`cache_flips`): a ViT map is not flip-equivariant (mirroring the map of an image is
not the map of the mirrored image; cosine ~0.87 for real DINO models, docs/warp.md). When the cache holds
each image's flipped view, the dataset attaches `labels["teacher_feat_flip"]`, a zero-argument callable
that reads it (read only when a horizontal flip actually happens). `WarpFlip` then swaps each tile's map
for its flipped view and conjugates the tile's geometry, A' = F_out A F_src (F_src: x -> (w - 1) - x on the
tile's loaded image, an involution), so the output pixel still shows the same source pixel but the map is
the teacher's real view of it. Without warp state (off mode) the flipped view replaces the mirrored map.

Blending augmentations (mixup, cutmix, copy-paste) are switched off in warp mode (`disable_blends`): mixup
blends the whole image, so no cell of the teacher map would be right; cutmix/copy-paste paste foreign pixels
the cache never saw. All three are 0 in Ultralytics' defaults, so nothing is lost by default.

Dataset protocol (see docs/warp.md): `dataset.get_image_and_label(i)` attaches `labels["teacher_feat"]`
(D, h, w) for the image it loads, or the dataset provides `teacher_feat_for(index) -> (D, h, w)` (used for the
extra images Mosaic loads when their labels carry no map).

Why one file of ~730 lines: the transform wrappers write and `warp_batch` reads the same per-tile geometry
record (`GEOM_FIELDS`, the matrix and rectangle conventions); kept together, a change to the record is made
in one place and tests/train/test_train_warp.py checks both sides of it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from ultralytics.data.augment import (
    Albumentations,
    BaseMixTransform,
    BaseTransform,
    Compose,
    CopyPaste,
    CutMix,
    Format,
    LetterBox,
    MixUp,
    Mosaic,
    RandomFlip,
    RandomPerspective,
    v8_transforms,
)
from ultralytics.utils import IterableSimpleNamespace

from dinocache.core.errors import DinocacheError

TEACHER_KEY = "teacher_feat"  # in: (D, h, w) cached map of the loaded image; out: the warped map
FLIP_KEY = "teacher_feat_flip"  # in (optional): () -> (D, h, w) map of the h-flipped image (cache_flips)
VALID_KEY = "teacher_valid"  # out: (h, w) float32 in {0, 1}
STATE_KEY = "_warp_state"  # WarpState while the pipeline runs; AttachGeometry pops it
SRC_KEY = "teacher_src"  # T x (D, h, w) cached maps of a sample's tiles (a tuple); collated (B, T, D, h, w)
GEOM_KEY = "teacher_geom"  # (T, GEOM_FIELDS) float64 per-tile geometry; collated (B, T, GEOM_FIELDS)
PARAMS_KEY = "warp_params"  # per-sample record of every geometric transform (kept only when asked)

# teacher_geom columns: A (9, row-major; source pixel -> output pixel), map offset (ox, oy), source rectangle (x0, y0, x1, y1) in
# source pixels, output (H, W) in pixels, patch, present (0 for the padding rows of a collated batch)
GEOM_FIELDS = 19

# Hyper-parameters switched off in warp mode (see module docstring).
BLEND_AUGMENTATIONS = ("mixup", "cutmix", "copy_paste")

# Default share of a cell's pixels that must come from one source image for the cell to be distilled.
DEFAULT_VALID_THRESHOLD = 0.5


class WarpError(DinocacheError, ValueError):
    """Warp mode cannot follow this pipeline or input (the message says which transform/key and why)."""


_EYE = np.eye(3, dtype=np.float64)
# read-only: a new WarpState's `post` (apply replaces it, never writes it)
_EYE_RO = np.eye(3, dtype=np.float64)
_EYE_RO.setflags(write=False)
_EYES: dict[int, np.ndarray] = {}  # n -> (n, 3, 3) identities: a mosaic's tile matrices start as one copy
_AFFINE_ROW = np.array([0.0, 0.0, 1.0])


def _eye() -> np.ndarray:
    return _EYE.copy()  # a copy of a constant: np.eye costs ~10x more, several times per sample


def _translate(tx: float, ty: float) -> np.ndarray:
    t = _eye()
    t[0, 2], t[1, 2] = tx, ty
    return t


def _no_transform() -> np.ndarray:
    return _EYE_RO


def _identities(n: int) -> np.ndarray:
    """(n, 3, 3) identity matrices, one new array (a mosaic's tile matrices: one copy per sample, not per tile)."""
    eyes = _EYES.get(n)
    if eyes is None:
        eyes = _EYES[n] = np.broadcast_to(_EYE, (n, 3, 3)).copy()
    return eyes.copy()


@functools.lru_cache(maxsize=256)
def _flip_matrix(vertical: bool, h: int, w: int) -> np.ndarray:
    """The flip of an h x w frame (pixel centres at integers: x -> (w - 1) - x), read-only: shared by every sample
    flipped at this size (WarpState.apply multiplies it, never writes it)."""
    t = _eye()
    if vertical:
        t[1, 1], t[1, 2] = -1.0, h - 1.0
    else:
        t[0, 0], t[0, 2] = -1.0, w - 1.0
    t.setflags(write=False)
    return t


@dataclass(slots=True)
class Tile:
    """One source image of the current sample (1 normally, 4 or 9 in a mosaic)."""

    # (D, h, w) cached teacher map of the source image
    feat: np.ndarray
    # source pixel -> current-frame pixel (3x3, float64), once the state's pending transforms are applied
    # (WarpState.post, in geometry_rows: the transforms after the tiles were placed act on all tiles alike and are
    # composed once); the tile's own array, possibly a row of its state's stack (WarpState.a), updated in place
    A: np.ndarray
    # (ox, oy): where the loaded image's top-left pixel sits on the map's canvas, in pixels
    offset: tuple[float, float]
    # image file (for the record and error messages)
    key: str = ""
    # (x0, y0, x1, y1): the source pixels [x0, x1) x [y0, y1) this tile shows (a mosaic crop, else the image)
    region: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    # () -> (D, h, w) map of the horizontally flipped source image (cache_flips), None when there is none
    flip_feat: Callable[[], Any] | None = None
    # width in pixels of the loaded source image (the axis F_src mirrors)
    width: float = 0.0

    def use_flipped_view(self) -> None:
        """Swap in the flipped view's map and re-express the tile in flipped-source pixels: A <- A F_src."""
        f_src = _eye()
        f_src[0, 0], f_src[0, 2] = -1.0, self.width - 1.0
        self.feat = _as_map(self.flip_feat(), self.key)  # type: ignore[misc]
        self.A[...] = self.A @ f_src  # in place: A may be a row of the state's stack (WarpState.a)
        x0, y0, x1, y1 = self.region
        self.region = (self.width - x1, y0, self.width - x0, y1)  # [x0, x1) mirrored: [w - x1, w - x0)
        self.flip_feat = None  # one view per tile: a second mirror would need the unflipped map back


@dataclass
class WarpState:
    """Geometry of one sample so far: its source tiles and what each transform did."""

    tiles: list[Tile]
    # teacher stride s in pixels (cell size)
    patch: int
    # what each transform did to this sample (the recorded parameters; only when `record`)
    params: list[dict[str, Any]] = field(default_factory=list)
    # keep `params` (warp-check, tests: keep_params); the training loader does not build them
    record: bool = True
    # the frame transforms applied since the tiles were placed, composed (3x3): every tile's A is left-multiplied by
    # it (geometry_rows; a tile's flipped view right-multiplies A, so it commutes with this pending left factor)
    post: np.ndarray = field(default_factory=_no_transform)
    # (T, 3, 3) the tiles' A matrices when each tile's A is the row of this stack (WarpMosaic, _single_state): geometry_rows
    # multiplies it as it is instead of stacking the tiles' A again; None when the tiles hold arrays of their own
    a: np.ndarray | None = None

    def apply(self, T: np.ndarray, record: dict[str, Any] | None = None) -> None:
        """A current-frame transform T (3x3 float64, old pixel -> new pixel) happened (`record`: its parameters)."""
        self.post = T @ self.post
        if self.record and record is not None:
            self.params.append(record)


def source_offset(
    feat: np.ndarray, img_hw: tuple[int, int], patch: int, key: str = ""
) -> tuple[float, float]:
    """Offset of the loaded image on its map's canvas: centred, as Ultralytics' zero-augmentation affine does."""
    gh, gw = feat.shape[-2:]
    ch, cw = gh * patch, gw * patch
    h, w = img_hw
    if h > ch or w > cw:
        raise WarpError(
            f"{key}: teacher map {gh}x{gw} cells x {patch} px covers {ch}x{cw} px, smaller than the loaded "
            f"image {h}x{w}; the cache was made at another imgsz/patch than this dataset"
        )
    return ((cw - w) / 2.0, (ch - h) / 2.0)


def _as_map(feat: Any, key: str) -> np.ndarray:
    if type(feat) is np.ndarray and feat.ndim == 3:  # the cache's maps: nothing to convert or check
        return feat
    a = feat.numpy() if isinstance(feat, torch.Tensor) else np.asarray(feat)
    if a.ndim != 3:
        raise WarpError(f"{key}: {TEACHER_KEY} must be (D, h, w), got shape {a.shape}")
    return a


def _single_state(labels: dict[str, Any], patch: int, record: bool = True) -> WarpState:
    """State of a sample that has not been moved yet: one tile, identity geometry; pops the map from labels."""
    key = str(labels.get("im_file", ""))
    feat = _as_map(labels.pop(TEACHER_KEY), key)
    h, w = labels["img"].shape[:2]
    off = source_offset(feat, (h, w), patch, key)
    a = _identities(1)
    tile = Tile(feat, a[0], off, key, (0.0, 0.0, float(w), float(h)), labels.pop(FLIP_KEY, None), float(w))
    return WarpState(tiles=[tile], patch=patch, record=record, a=a)


def _state(labels: dict[str, Any], patch: int, record: bool = True) -> WarpState | None:
    """The sample's WarpState, created on first use; None when the sample carries no teacher map."""
    st = labels.get(STATE_KEY)
    if st is None and labels.get(TEACHER_KEY) is not None:
        st = labels[STATE_KEY] = _single_state(labels, patch, record)
    return st


class WarpMosaic(Mosaic):
    """Ultralytics' Mosaic; also records the tile layout and collects the teacher map of every tile."""

    patch: int = 16
    keep_params: bool = False  # build the per-sample record of what each transform did (wrap_transforms)

    def get_indexes(self) -> list[int]:
        idx = super().get_indexes()
        self._last_indexes = list(idx)  # for teacher_feat_for() when a loaded label carries no map
        return idx

    def _tile_feat(
        self, i: int, patch_labels: dict[str, Any], key: str
    ) -> tuple[np.ndarray, Callable[[], Any] | None]:
        feat = patch_labels.pop(TEACHER_KEY, None)
        flip = patch_labels.pop(FLIP_KEY, None)
        if feat is None and i > 0 and hasattr(self.dataset, "teacher_feat_for"):
            feat = self.dataset.teacher_feat_for(self._last_indexes[i - 1])
            if hasattr(self.dataset, "teacher_flip_for"):
                flip = self.dataset.teacher_flip_for(self._last_indexes[i - 1])
        if feat is None:
            raise WarpError(
                f"{key}: mosaic tile {i} has no '{TEACHER_KEY}': the dataset must attach it in "
                "get_image_and_label() or implement teacher_feat_for(index)"
            )
        return _as_map(feat, key), flip

    def apply_image(self, labels: dict[str, Any], params: dict[str, Any] | None = None) -> dict[str, Any]:
        if labels.get(TEACHER_KEY) is not None or STATE_KEY in labels:
            if STATE_KEY in labels:
                raise WarpError("Mosaic must be the first geometric transform of the pipeline in warp mode")
            layout = params["layout"]
            tiles, record = [], []
            a = _identities(len(layout))  # (T, 3, 3): each tile's A, a translation
            # per tile (padw, padh): the translation, set once after the loop
            pads: list[tuple[Any, Any]] = []
            mosaic4, patch = self.n == 4, self.patch
            for i, item in enumerate(layout):
                pl = item["labels_patch"]
                h, w = item["img_shape"]
                key = str(pl.get("im_file", ""))
                feat, flip = self._tile_feat(i, pl, key)
                # the same translation apply_instances gives the boxes
                if mosaic4:
                    padw, padh = item["padw"], item["padh"]
                    crop = [int(item["x1b"]), int(item["y1b"]), int(item["x2b"]), int(item["y2b"])]
                else:  # Mosaic._mosaic9 pastes img[y1b:y2b, x1b:x2b] with x1b = x1 - padw
                    x1b, y1b = item["x1"] - item["padw"], item["y1"] - item["padh"]
                    crop = [
                        int(x1b),
                        int(y1b),
                        int(x1b + item["x2"] - item["x1"]),
                        int(y1b + item["y2"] - item["y1"]),
                    ]
                    padw, padh = item["padw"] + self.border[0], item["padh"] + self.border[1]
                region = (float(crop[0]), float(crop[1]), float(crop[2]), float(crop[3]))
                off = source_offset(feat, (h, w), patch, key)
                pads.append((padw, padh))
                tiles.append(Tile(feat, a[i], off, key, region, flip, float(w)))
                if self.keep_params:
                    rec = {"key": key, "img_shape": [int(h), int(w)], "pad": [int(padw), int(padh)]}
                    rec["ratio_pad"] = [float(v) for v in pl.get("ratio_pad", (1.0, 1.0))]
                    rec["paste"] = [
                        int(item[k])
                        for k in ("x1a", "y1a", "x2a", "y2a", "x1", "y1", "x2", "y2")
                        if k in item
                    ]
                    rec["crop"] = crop
                    record.append(rec)
            a[:, :2, 2] = pads
            st = WarpState(tiles=tiles, patch=self.patch, record=self.keep_params, a=a)
            if self.keep_params:
                st.params.append({"op": "mosaic", "n": self.n, "tiles": record})
            labels[STATE_KEY] = st
        return super().apply_image(labels, params)


class WarpPerspective(RandomPerspective):
    """Ultralytics' RandomPerspective; also records M and the output size and moves the teacher geometry."""

    patch: int = 16
    keep_params: bool = False

    def apply_image(self, labels: dict[str, Any], params: dict[str, Any] | None = None) -> dict[str, Any]:
        st = _state(labels, self.patch, self.keep_params)
        if st is not None:
            M = np.array(params["M"], dtype=np.float64)
            if not self.perspective:  # cv2.warpAffine uses only the top two rows
                M[2] = _AFFINE_ROW
            rec = None
            if st.record:
                rec = {"op": "affine", "M": M.tolist(), "size": [int(v) for v in params["size"]]}
                rec["perspective"] = bool(self.perspective)
            st.apply(M, rec)
        return super().apply_image(labels, params)


class WarpFlip(RandomFlip):
    """Ultralytics' RandomFlip; also records the decision and flips the teacher geometry (or the plain map)."""

    patch: int = 16
    keep_params: bool = False

    def apply_image(self, labels: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
        st = labels.get(STATE_KEY)
        vertical = params["direction"] == "vertical"
        if st is not None:
            views = 0
            if params["flip"]:  # pixel centres at integers: x -> (w - 1) - x
                h, w = labels["img"].shape[:2]
                T = _flip_matrix(vertical, h, w)
                if not vertical:
                    for t in st.tiles:  # cache_flips: the teacher's own view of the mirrored tile
                        if t.flip_feat is not None:
                            t.use_flipped_view()
                            views += 1
                st.apply(T)
            if st.record:
                rec = {"op": "flip", "direction": params["direction"], "flip": bool(params["flip"])}
                st.params.append({**rec, "flipped_views": views} if views else rec)
        elif labels.get(TEACHER_KEY) is not None and params["flip"]:
            view = labels.get(FLIP_KEY)
            if not vertical and view is not None:  # cache_flips: the teacher's map of the mirrored image
                labels[TEACHER_KEY] = _as_map(view(), str(labels.get("im_file", "")))
                labels[FLIP_KEY] = None  # a second horizontal flip would need the unflipped map back
            else:
                # not moved by anything else: a flip of the whole map is exact (side = whole cells)
                labels[TEACHER_KEY] = np.flip(labels[TEACHER_KEY], axis=-2 if vertical else -1)
                if vertical and view is not None:  # the flipped view must show this flip too
                    labels[FLIP_KEY] = lambda view=view: np.flip(view(), axis=-2)
        return super().apply_image(labels, params)


class WarpLetterBox(LetterBox):
    """Ultralytics' LetterBox; also records ratio and padding and moves the teacher geometry."""

    patch: int = 16
    keep_params: bool = False

    def apply_image(self, labels: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
        st = _state(labels, self.patch, self.keep_params)
        if st is not None:
            h, w = params["orig_shape"]
            nw, nh = params["new_unpad"]
            T = _eye()
            if (w, h) != (nw, nh):  # cv2.resize maps pixel centres: x' = r x + (r - 1) / 2
                rx, ry = nw / w, nh / h
                T = np.array([[rx, 0, 0.5 * rx - 0.5], [0, ry, 0.5 * ry - 0.5], [0, 0, 1]], dtype=np.float64)
            T = _translate(params["left"], params["top"]) @ T
            rec = None
            if st.record:
                rec = {
                    "op": "letterbox",
                    "ratio": [nw / w, nh / h],
                    "pad": [int(params["left"]), int(params["top"])],
                }
            st.apply(T, rec)
        return super().apply_image(labels, params)


def feature_matrix(A: np.ndarray, offset: tuple[float, float], patch: int) -> np.ndarray:
    """M_feat = K_out^-1 A K_src: source feature coords -> output feature coords (cell centres at integers)."""
    s, c = float(patch), (patch - 1) / 2.0
    k_out = np.array([[s, 0, c], [0, s, c], [0, 0, 1]], dtype=np.float64)
    k_src = np.array([[s, 0, c - offset[0]], [0, s, c - offset[1]], [0, 0, 1]], dtype=np.float64)
    return np.linalg.solve(k_out, np.asarray(A, dtype=np.float64) @ k_src)


def geometry_rows(state: WarpState, out_hw: tuple[int, int]) -> np.ndarray:
    """(T, GEOM_FIELDS) float64 geometry of a sample whose image is now out_hw = (H, W) px (see GEOM_FIELDS)."""
    H, W = out_hw
    tiles = state.tiles
    n = len(tiles)
    # every tile's A with the pending transforms applied: post @ A_i, one product for all tiles (the same per-tile
    # products, bit for bit); the state is left as it is. The tiles' A are their state's stack when it has one
    a = state.a
    if a is None or len(a) != n:
        a = np.array([t.A for t in tiles], np.float64)
    a = state.post @ a  # (T, 3, 3)
    rows = np.empty((n, GEOM_FIELDS), np.float64)
    rows[:, :9] = a.reshape(n, 9)  # inverted on the device (render_batch)
    rows[:, 9:] = [(*t.offset, *t.region, H, W, state.patch, 1.0) for t in tiles]
    return rows


class AttachGeometry(BaseTransform):
    """Last geometric step (before Format): attaches the tile maps and their geometry; resamples nothing.

    The trainer warps the whole batch on its device (`warp_batch`). A map no transform moved (aug all off)
    gets identity geometry, so the device path is the only path in warp mode.
    """

    def __init__(
        self, valid_threshold: float = DEFAULT_VALID_THRESHOLD, keep_params: bool = False, patch: int = 16
    ) -> None:
        if not 0.0 < valid_threshold <= 1.0:
            raise WarpError(f"valid_threshold: {valid_threshold} must be in (0, 1]")
        self.valid_threshold = valid_threshold  # kept for the record; applied in warp_batch
        self.keep_params = keep_params
        self.patch = patch

    def __call__(self, labels: dict[str, Any]) -> dict[str, Any]:
        st = labels.pop(STATE_KEY, None)
        if st is None and labels.get(TEACHER_KEY) is not None:
            st = _single_state(labels, self.patch, self.keep_params)
        labels.pop(FLIP_KEY, None)
        if st is not None:
            shape = st.tiles[0].feat.shape
            d = shape[0]
            for t in st.tiles:
                if t.feat.shape != shape:
                    raise WarpError(
                        f"{t.key}: teacher map {t.feat.shape} differs from the sample's first tile {st.tiles[0].feat.shape}"
                        if t.feat.shape[0] == d
                        else f"{t.key}: teacher map has {t.feat.shape[0]} channels, the sample's first tile {d}"
                    )
            # T x (D, h, w), not stacked: the collate copies each map once, straight into the batch
            labels[SRC_KEY] = tuple([t.feat for t in st.tiles])
            labels[GEOM_KEY] = geometry_rows(st, labels["img"].shape[:2])
            if self.keep_params:
                labels[PARAMS_KEY] = st.params
        return labels


# the maps' dtypes -> torch's, without a tensor per batch
_TORCH_DTYPES = {np.dtype(np.float16): torch.float16, np.dtype(np.float32): torch.float32}


def _batch_tensor(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised CPU tensor for a collated batch; in a DataLoader worker allocated in shared memory, as
    torch's default_collate does, so sending the batch to the main process copies nothing."""
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    numel = int(np.prod(shape))
    elem = torch.empty(0, dtype=dtype)
    return elem.new(elem._typed_storage()._new_shared(numel, device=elem.device)).resize_(shape)


def collate_geometry(srcs: list[Any], geoms: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """B x (T_i maps (D, h, w)) and B x (T_i, GEOM_FIELDS) rows -> (B, T, D, h, w), (B, T, GEOM_FIELDS).

    A sample's maps are a sequence of (D, h, w) arrays or one (T_i, D, h, w) array; each map is copied once,
    into its place in the batch. T = max T_i; padding rows have present = 0 and zero maps (weight 0 on the device).
    """
    t = max(g.shape[0] for g in geoms)
    first = np.asarray(srcs[0][0])
    shape = first.shape
    dtype = _TORCH_DTYPES.get(first.dtype)
    if dtype is None:  # not torch.from_numpy(first): of a read-only map it warns and costs the warning lookup
        dtype = torch.from_numpy(np.empty(0, first.dtype)).dtype
    src_t = _batch_tensor((len(srcs), t, *shape), dtype)
    geom_t = _batch_tensor((len(geoms), t, GEOM_FIELDS), torch.float64)
    src, geom = src_t.numpy(), geom_t.numpy()  # views: filled in place
    if all(len(maps) == t for maps in srcs) and all(g.shape[0] == t for g in geoms):
        # every sample has T tiles (a mosaic batch): each map copied into its place by one concatenate, not per map
        flat = [m for maps in srcs for m in maps]
        for k, m in enumerate(flat):
            if m.shape != shape:
                raise WarpError(f"sample {k // t}: teacher maps {m.shape} differ from sample 0's {shape}")
        np.concatenate(flat, 0, out=src.reshape(-1, *shape[1:]), casting="unsafe")
        np.concatenate(geoms, 0, out=geom.reshape(-1, GEOM_FIELDS), casting="unsafe")
        return src_t, geom_t
    geom.fill(0.0)
    for i, (maps, g) in enumerate(zip(srcs, geoms)):
        for j, m in enumerate(maps):
            if m.shape != shape:
                raise WarpError(f"sample {i}: teacher maps {m.shape} differ from sample 0's {shape}")
            src[i, j] = m
        if len(maps) < t:
            src[i, len(maps) :] = 0
        geom[i, : g.shape[0]] = g
    return src_t, geom_t


def _apply_h(inv: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """inv (N, 3, 3) applied to the points (x, y) (P,) -> source (x, y), each (N, P) (homogeneous divide)."""
    px = inv[:, 0, 0, None] * x + inv[:, 0, 1, None] * y + inv[:, 0, 2, None]
    py = inv[:, 1, 0, None] * x + inv[:, 1, 1, None] * y + inv[:, 1, 2, None]
    pw = inv[:, 2, 0, None] * x + inv[:, 2, 1, None] * y + inv[:, 2, 2, None]
    return px / pw, py / pw


def sample_maps(feat: torch.Tensor, inv_feat: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
    """Resample maps (N, D, h, w) at every output cell of out_hw = (gh, gw) -> (N, gh*gw, D) float32.

    inv_feat (N, 3, 3) float64 maps output cell coords to source cell coords (cell centres at integers).
    Border replicate, bilinear; a source position within 1e-6 of a cell centre is snapped to it, so flips,
    whole-cell shifts and identity copy values bit-exactly. (torch's grid_sample normalises coordinates to
    [-1, 1] and back, which turns an exact cell index into 2.9999999 and mixes in a neighbour; the gather
    below is the same bilinear rule without that round trip, on any device.)
    """
    n, d, h, w = feat.shape
    gh, gw = out_hw
    dev = feat.device
    ys, xs = torch.meshgrid(
        torch.arange(gh, device=dev, dtype=torch.float64),
        torch.arange(gw, device=dev, dtype=torch.float64),
        indexing="ij",
    )
    sx, sy = _apply_h(inv_feat.to(torch.float64), xs.reshape(-1), ys.reshape(-1))  # (N, P)
    # a perspective can send points to infinity: clamp to the border like any other outside point
    sx = torch.nan_to_num(sx, nan=0.0, posinf=float(w - 1), neginf=0.0)
    sy = torch.nan_to_num(sy, nan=0.0, posinf=float(h - 1), neginf=0.0)
    rx, ry = torch.round(sx), torch.round(sy)
    sx = torch.where((sx - rx).abs() < 1e-6, rx, sx).clamp(0, w - 1)
    sy = torch.where((sy - ry).abs() < 1e-6, ry, sy).clamp(0, h - 1)
    x0 = sx.floor().clamp(max=max(w - 2, 0))
    y0 = sy.floor().clamp(max=max(h - 2, 0))
    fx = (sx - x0).to(torch.float32)[..., None]  # (N, P, 1)
    fy = (sy - y0).to(torch.float32)[..., None]
    dx, dy = int(w > 1), int(h > 1) * w
    base = (torch.arange(n, device=dev) * (h * w))[:, None]
    i00 = base + y0.long() * w + x0.long()  # (N, P) rows of the channels-last table
    table = feat.to(torch.float32).permute(0, 2, 3, 1).reshape(n * h * w, d)  # one D-vector per cell
    f00, f01 = table[i00], table[i00 + dx]
    f10, f11 = table[i00 + dy], table[i00 + dy + dx]
    return (f00 * (1 - fx) + f01 * fx) * (1 - fy) + (f10 * (1 - fx) + f11 * fx) * fy  # (N, P, D)


def _feature_inverse(geom: torch.Tensor) -> torch.Tensor:
    """(N, GEOM_FIELDS) with A^-1 in columns 0-8 -> (N, 3, 3): output cell -> source cell = K_src^-1 A^-1 K_out."""
    inv = geom[:, :9].reshape(-1, 3, 3)
    s = geom[:, 17]
    c = (s - 1) / 2
    z, o = torch.zeros_like(s), torch.ones_like(s)
    k_out = torch.stack([s, z, c, z, s, c, z, z, o], 1).reshape(-1, 3, 3)
    ox, oy = geom[:, 9], geom[:, 10]  # source pixel + offset = map-canvas pixel = s * cell + c
    k_src_inv = torch.stack([1 / s, z, (ox - c) / s, z, 1 / s, (oy - c) / s, z, z, o], 1).reshape(-1, 3, 3)
    return k_src_inv @ inv @ k_out


def render_batch(
    src: torch.Tensor, geom: torch.Tensor, valid_threshold: float = DEFAULT_VALID_THRESHOLD, samples: int = 4
) -> tuple[torch.Tensor, torch.Tensor]:
    """Warp a batch on src's device: (B, T, D, h, w) maps + (B, T, GEOM_FIELDS) -> (B, D, H/s, W/s), (B, H/s, W/s).

    Each tile's map is sampled at every output cell; cells are blended by the share of their samples x
    samples points each tile owns (a cell one tile covers is that tile's value, bit for bit); cells no tile
    covers are 0 and invalid. valid = 1 where one tile owns >= valid_threshold of the cell's points.
    """
    if src.ndim != 5 or geom.ndim != 3 or geom.shape[:2] != src.shape[:2] or geom.shape[2] != GEOM_FIELDS:
        raise WarpError(
            f"warp_batch needs maps (B, T, D, h, w) and geometry (B, T, {GEOM_FIELDS}), got "
            f"{tuple(src.shape)} and {tuple(geom.shape)}"
        )
    b, t, d, h, w = src.shape
    geom = geom.to(src.device, torch.float64)
    present = geom[..., 18] > 0  # (B, T)
    if not bool(present[:, 0].all()):
        raise WarpError("a sample of the batch has no tile geometry (first tile not present)")
    first = geom[:, 0]
    H, W, s = int(first[0, 15]), int(first[0, 16]), int(first[0, 17])
    same = (geom[..., 15] == H) & (geom[..., 16] == W) & (geom[..., 17] == s)
    if not bool(same[present].all()):
        raise WarpError("the samples of a batch must share one output size and patch")
    if H % s or W % s:
        raise WarpError(f"augmented image {H}x{W} is not a multiple of the teacher patch {s}")
    gh, gw = H // s, W // s
    # padding rows (present 0): identity geometry with an empty rectangle, so they own nothing and stay finite
    pad = torch.zeros_like(geom)
    pad[..., [0, 4, 8]] = 1.0
    pad[..., 15:18] = geom[:, :1, 15:18]
    flat = torch.where(present[..., None], geom, pad).reshape(b * t, GEOM_FIELDS)
    a_inv = torch.linalg.inv_ex(flat[:, :9].reshape(-1, 3, 3))
    if bool((a_inv.info != 0).any()):
        raise WarpError("a sample's composed transform is singular (degenerate scale/perspective)")
    flat = torch.cat([a_inv.inverse.reshape(-1, 9), flat[:, 9:]], 1)  # columns 0-8 now hold A^-1
    # -- ownership of the k x k sample points of every cell (same points as the old owner-map count)
    k = max(1, min(samples, s))
    step = s // k
    pts_y = torch.arange(gh * k, device=src.device, dtype=torch.float64)
    pts_y = (pts_y // k) * s + step // 2 + (pts_y % k) * step
    pts_x = torch.arange(gw * k, device=src.device, dtype=torch.float64)
    pts_x = (pts_x // k) * s + step // 2 + (pts_x % k) * step
    yy, xx = torch.meshgrid(pts_y, pts_x, indexing="ij")
    qx, qy = _apply_h(flat[:, :9].reshape(-1, 3, 3), xx.reshape(-1), yy.reshape(-1))  # (B*T, P) source px
    nx, ny = torch.floor(qx + 0.5), torch.floor(qy + 0.5)  # nearest source pixel, as cv2's INTER_NEAREST
    r = flat[:, 11:15, None]
    claim = (nx >= r[:, 0]) & (nx < r[:, 2]) & (ny >= r[:, 1]) & (ny < r[:, 3])
    claim = claim.reshape(b, t, -1) & present[..., None]  # (B, T, P)
    # the last claiming tile owns a point (Mosaic pastes in tile order)
    order = torch.arange(1, t + 1, device=src.device)[None, :, None]
    owner = (claim * order).amax(1)  # (B, P): 0 = nobody, else tile index + 1
    onehot = (owner[:, None, :] == order).to(torch.float32)  # (B, T, P)
    cov = onehot.reshape(b, t, gh, k, gw, k).mean((3, 5)).reshape(b, t, gh * gw)  # (B, T, cells)
    # -- values: every tile's map at every output cell, blended by coverage
    vals = sample_maps(src.reshape(b * t, d, h, w), _feature_inverse(flat), (gh, gw))  # (B*T, cells, D)
    vals = vals.reshape(b, t, gh * gw, d)
    total = cov.sum(1, keepdim=True)  # (B, 1, cells)
    weight = torch.where(total > 0, cov / total.clamp(min=1e-12), torch.zeros_like(cov))  # c / c == 1 exactly
    out = torch.where(weight[..., None] > 0, weight[..., None] * vals, torch.zeros_like(vals)).sum(1)
    out = out.permute(0, 2, 1).reshape(b, d, gh, gw).contiguous()
    valid = (cov.amax(1) >= valid_threshold - 1e-9).to(torch.float32).reshape(b, gh, gw)
    return out, valid


def warp_batch(batch: dict[str, Any], valid_threshold: float = DEFAULT_VALID_THRESHOLD) -> dict[str, Any]:
    """Trainer side: replace the collated maps + geometry by the warped maps and the validity mask (in place).

    Raises WarpError for a warp-mode batch without geometry: a plain map is never used silently.
    """
    if SRC_KEY not in batch or GEOM_KEY not in batch:
        raise WarpError(
            f"distill_geometric_aug=warp but the batch carries no teacher geometry ('{SRC_KEY}'/'{GEOM_KEY}'"
            f"{'; it has a plain ' + repr(TEACHER_KEY) if TEACHER_KEY in batch else ''}): the dataset's transforms "
            "must end with warp.AttachGeometry (wrap_transforms / DistillDataset in warp mode)"
        )
    feat, valid = render_batch(batch.pop(SRC_KEY), batch.pop(GEOM_KEY), valid_threshold)
    batch[TEACHER_KEY], batch[VALID_KEY] = feat, valid
    return batch


class RenderTeacher:
    """One sample, on the CPU, through the trainer's device warp: for tools and tests (warp-check).

    Takes labels after the geometric transforms (a WarpState or the attached geometry) and returns them with
    `teacher_feat` (D, H/s, W/s) float32 and `teacher_valid` (H/s, W/s) float32 as numpy arrays.
    """

    def __init__(
        self, valid_threshold: float = DEFAULT_VALID_THRESHOLD, keep_params: bool = False, samples: int = 4
    ) -> None:
        self.attach = AttachGeometry(valid_threshold, keep_params)
        self.valid_threshold = valid_threshold
        self.samples = samples

    def __call__(self, labels: dict[str, Any]) -> dict[str, Any]:
        st = labels.get(STATE_KEY)
        if st is not None:
            self.attach.patch = st.patch
        labels = self.attach(labels) if SRC_KEY not in labels else labels
        if SRC_KEY in labels:
            src, geom = collate_geometry([labels.pop(SRC_KEY)], [labels.pop(GEOM_KEY)])
            feat, valid = render_batch(src, geom, self.valid_threshold, self.samples)
            labels[TEACHER_KEY], labels[VALID_KEY] = feat[0].numpy(), valid[0].numpy()
        return labels


_WRAPPERS: list[tuple[type, type]] = [
    (Mosaic, WarpMosaic),
    (RandomPerspective, WarpPerspective),
    (RandomFlip, WarpFlip),
    (LetterBox, WarpLetterBox),
]


def _rewrap(obj: Any, patch: int, keep_params: bool = False) -> Any:
    """The wrapper of `obj` with all of obj's attributes (so its probabilities/ranges stay exactly as built)."""
    for base, wrapper in _WRAPPERS:
        if isinstance(obj, base) and not isinstance(obj, wrapper):
            new = wrapper.__new__(wrapper)
            new.__dict__.update(obj.__dict__)
            new.patch, new.keep_params = patch, keep_params
            return new
        if isinstance(obj, wrapper):
            obj.patch, obj.keep_params = patch, keep_params
            return obj
    return obj


def _walk(compose: Compose, patch: int, memo: dict[int, Any], keep_params: bool = False) -> None:
    items = compose.transforms
    for i, t in enumerate(items):
        if id(t) in memo:
            items[i] = memo[id(t)]
            continue
        if isinstance(t, Compose):
            memo[id(t)] = t
            _walk(t, patch, memo, keep_params)
            continue
        if isinstance(t, (MixUp, CutMix, CopyPaste)) and t.p > 0:
            raise WarpError(
                f"{type(t).__name__} (p={t.p}) blends other images into the sample; set mixup=cutmix=copy_paste=0 "
                "in warp mode (disable_blends)"
            )
        if isinstance(t, Albumentations) and getattr(t, "contains_spatial", False):
            raise WarpError("custom Albumentations with spatial transforms cannot be followed in warp mode")
        if isinstance(t, BaseMixTransform) and isinstance(t.pre_transform, Compose):
            if id(t.pre_transform) not in memo:
                memo[id(t.pre_transform)] = t.pre_transform
                _walk(t.pre_transform, patch, memo, keep_params)
        new = _rewrap(t, patch, keep_params)
        memo[id(t)] = new
        items[i] = new


def wrap_transforms(
    transforms: Compose,
    patch: int = 16,
    valid_threshold: float = DEFAULT_VALID_THRESHOLD,
    keep_params: bool = False,
) -> Compose:
    """Swap the warp wrappers into an Ultralytics Compose (in place, nested ones too) and add AttachGeometry.

    AttachGeometry goes right before `Format` when there is one (the output of `YOLODataset.build_transforms`),
    else at the end (the output of `v8_transforms`). Raises WarpError for blends with p > 0 or spatial
    Albumentations, which warp mode cannot follow.
    """
    _walk(transforms, patch, {}, keep_params)
    attach = AttachGeometry(valid_threshold, keep_params, patch)
    items = transforms.transforms
    at = next((i for i, t in enumerate(items) if isinstance(t, Format)), len(items))
    items.insert(at, attach)
    return transforms


def disable_blends(hyp: Any) -> list[str]:
    """Set mixup/cutmix/copy_paste to 0 on `hyp` (in place); returns the names that were on (for one log line)."""
    was_on = [k for k in BLEND_AUGMENTATIONS if float(getattr(hyp, k, 0.0) or 0.0) > 0]
    for k in BLEND_AUGMENTATIONS:
        if hasattr(hyp, k):
            setattr(hyp, k, 0.0)
    return was_on


def build_warp_transforms(
    dataset: Any,
    hyp: Any,
    imgsz: int,
    patch: int = 16,
    valid_threshold: float = DEFAULT_VALID_THRESHOLD,
    keep_params: bool = False,
) -> Compose:
    """`ultralytics.data.augment.v8_transforms` with the warp wrappers swapped in (blends off, on a copy of hyp).

    Returns the training Compose without `Format`, like v8_transforms; AttachGeometry is its last step.
    """
    h = IterableSimpleNamespace(**vars(hyp))
    disable_blends(h)
    return wrap_transforms(v8_transforms(dataset, imgsz, h), patch, valid_threshold, keep_params)


def combine_masks(obj_mask: torch.Tensor, valid: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-cell weights of the object and background terms: (obj * valid, (1 - obj) * valid), float32.

    obj_mask: (B, h, w) bool/float; valid: (B, h, w) in [0, 1] or None (all valid).
    """
    obj = obj_mask.float()
    v = torch.ones_like(obj) if valid is None else valid.to(obj.device, torch.float32)
    return obj * v, (1.0 - obj) * v


def cos_per_cell(a: np.ndarray, b: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    """Cosine similarity over channels of two (D, h, w) maps -> (h, w) float64."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    num = (a64 * b64).sum(0)
    den = np.sqrt((a64 * a64).sum(0) * (b64 * b64).sum(0))
    return num / np.maximum(den, eps)
