"""Keep Ultralytics' geometric augmentation with cached teacher maps: warp each map with its image.

The cache holds one teacher map per *un-augmented* training image. With `distill_geometric_aug: warp` the
trainer keeps mosaic, random affine/perspective, flips and letterbox on; the wrappers below are subclasses of
Ultralytics' own transforms that run the original code on the image and, beside it, record each sample's
geometry:

- `WarpMosaic`      (Mosaic)            tile placements: which source image, crop and paste rectangles, offset
- `WarpPerspective` (RandomPerspective) the 3x3 matrix M and the output size
- `WarpFlip`        (RandomFlip)        the flip decision and direction
- `WarpLetterBox`   (LetterBox)         resize ratio and padding

Each transform left-multiplies the per-tile matrix `A` (source-image pixel -> current-frame pixel) and moves
an "owner" map (which source tile each pixel came from; 255 = padding/border) through Ultralytics' own
`apply_semantic` of that transform, so the owner map follows the image by the very same code path (nearest
neighbour, the same border fill). `RenderTeacher` (last, before `Format`) then resamples every source map
ONCE at feature resolution with the composed matrix and writes

- `labels["teacher_feat"]`  (D, H/s, W/s) float16: the warped map (mosaic: tiles blended by pixel coverage)
- `labels["teacher_valid"]` (H/s, W/s) float32 in {0, 1}: 1 where at least `valid_threshold` of the cell's
  s x s pixels come from one source image's real pixels (not mosaic/letterbox/affine-border padding).

Pixel-centre convention (cv2 and Ultralytics): pixel x has its centre at integer x. A feature cell c covers
pixels [c*s, (c+1)*s), its centre at c*s + (s-1)/2, so pixel = K f with K = [[s, 0, (s-1)/2], [0, s, (s-1)/2],
[0, 0, 1]] and the feature-level matrix is M_feat = K_out^-1 A K_src. Flips and shifts by whole cells then
map cell centres onto cell centres exactly, and the render copies values without interpolating.

Source frame: a cached map covers the imgsz x imgsz canvas on which precompute ran the teacher; the loaded
image (long side = imgsz, `resized_shape`) sits centred in it, exactly where Ultralytics' RandomPerspective
puts it with all augmentation off (offset ((S_w - w)/2, (S_h - h)/2)); for square images the offset is 0.

Blending augmentations (mixup, cutmix, copy-paste) are switched off in warp mode (`disable_blends`): mixup
blends the whole image, so no cell of the teacher map would be right; cutmix/copy-paste paste foreign pixels
the cache never saw. All three are 0 in Ultralytics' defaults, so nothing is lost by default.

Dataset protocol (see docs/warp.md): `dataset.get_image_and_label(i)` attaches `labels["teacher_feat"]`
(D, h, w) for the image it loads, or the dataset provides `teacher_feat_for(index) -> (D, h, w)` (used for the
extra images Mosaic loads when their labels carry no map).
"""

from __future__ import annotations

import functools
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

TEACHER_KEY = "teacher_feat"  # in: (D, h, w) cached map of the loaded image; out: the warped map
VALID_KEY = "teacher_valid"  # out: (h, w) float32 in {0, 1}
STATE_KEY = "_warp_state"  # WarpState while the pipeline runs; RenderTeacher pops it
PARAMS_KEY = "warp_params"  # per-sample record of every geometric transform (kept only when asked)

NONE_ID = 255  # owner-map value of pixels that come from no source image (Ultralytics' semantic ignore fill)

# Hyper-parameters switched off in warp mode (see module docstring).
BLEND_AUGMENTATIONS = ("mixup", "cutmix", "copy_paste")

# Default share of a cell's pixels that must come from one source image for the cell to be distilled.
DEFAULT_VALID_THRESHOLD = 0.5


class WarpError(ValueError):
    """Warp mode cannot follow this pipeline or input (the message says which transform/key and why)."""


def _eye() -> np.ndarray:
    return np.eye(3, dtype=np.float64)


def _translate(tx: float, ty: float) -> np.ndarray:
    t = _eye()
    t[0, 2], t[1, 2] = tx, ty
    return t


@dataclass
class Tile:
    """One source image of the current sample (1 normally, 4 or 9 in a mosaic)."""

    # (D, h, w) cached teacher map of the source image
    feat: np.ndarray
    # source pixel -> current-frame pixel (3x3, float64)
    A: np.ndarray
    # (ox, oy): where the loaded image's top-left pixel sits on the map's canvas, in pixels
    offset: tuple[float, float]
    # image file (for the record and error messages)
    key: str = ""


@dataclass
class WarpState:
    """Geometry of one sample so far: its source tiles and where each current pixel came from."""

    tiles: list[Tile]
    # (H, W) uint8 owner map in the current frame: tile index, NONE_ID for padding/border
    owner: np.ndarray
    # teacher stride s in pixels (cell size)
    patch: int
    # what each transform did to this sample (the recorded parameters)
    params: list[dict[str, Any]] = field(default_factory=list)

    def apply(self, T: np.ndarray, owner: np.ndarray, record: dict[str, Any]) -> None:
        """A current-frame transform T (3x3, old pixel -> new pixel) happened; owner is the new owner map."""
        T = np.asarray(T, dtype=np.float64)
        for t in self.tiles:
            t.A = T @ t.A
        self.owner = owner
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
    a = feat.numpy() if isinstance(feat, torch.Tensor) else np.asarray(feat)
    if a.ndim != 3:
        raise WarpError(f"{key}: {TEACHER_KEY} must be (D, h, w), got shape {a.shape}")
    return a


def _single_state(labels: dict[str, Any], patch: int) -> WarpState:
    """State of a sample that has not been moved yet: one tile, identity geometry; pops the map from labels."""
    key = str(labels.get("im_file", ""))
    feat = _as_map(labels.pop(TEACHER_KEY), key)
    h, w = labels["img"].shape[:2]
    tile = Tile(feat=feat, A=_eye(), offset=source_offset(feat, (h, w), patch, key), key=key)
    return WarpState(tiles=[tile], owner=np.zeros((h, w), dtype=np.uint8), patch=patch)


def _state(labels: dict[str, Any], patch: int) -> WarpState | None:
    """The sample's WarpState, created on first use; None when the sample carries no teacher map."""
    st = labels.get(STATE_KEY)
    if st is None and labels.get(TEACHER_KEY) is not None:
        st = labels[STATE_KEY] = _single_state(labels, patch)
    return st


def _moved(transform: BaseTransform, owner: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    """The owner map moved by `transform`'s own apply_semantic (nearest neighbour, ignore fill 255)."""
    return transform.apply_semantic({"semantic_mask": owner}, params)["semantic_mask"]


class WarpMosaic(Mosaic):
    """Ultralytics' Mosaic; also records the tile layout and collects the teacher map of every tile."""

    patch: int = 16

    def get_indexes(self) -> list[int]:
        idx = super().get_indexes()
        self._last_indexes = list(idx)  # for teacher_feat_for() when a loaded label carries no map
        return idx

    def _tile_feat(self, i: int, patch_labels: dict[str, Any]) -> np.ndarray:
        key = str(patch_labels.get("im_file", ""))
        feat = patch_labels.pop(TEACHER_KEY, None)
        if feat is None and i > 0 and hasattr(self.dataset, "teacher_feat_for"):
            feat = self.dataset.teacher_feat_for(self._last_indexes[i - 1])
        if feat is None:
            raise WarpError(
                f"{key}: mosaic tile {i} has no '{TEACHER_KEY}': the dataset must attach it in "
                "get_image_and_label() or implement teacher_feat_for(index)"
            )
        return _as_map(feat, key)

    def apply_image(self, labels: dict[str, Any], params: dict[str, Any] | None = None) -> dict[str, Any]:
        if labels.get(TEACHER_KEY) is not None or STATE_KEY in labels:
            if STATE_KEY in labels:
                raise WarpError("Mosaic must be the first geometric transform of the pipeline in warp mode")
            layout = params["layout"]
            tiles, record, tmp_layout = [], [], []
            for i, item in enumerate(layout):
                pl = item["labels_patch"]
                h, w = item["img_shape"]
                feat = self._tile_feat(i, pl)
                key = str(pl.get("im_file", ""))
                # the same translation apply_instances gives the boxes
                if self.n == 4:
                    padw, padh = item["padw"], item["padh"]
                else:
                    padw, padh = item["padw"] + self.border[0], item["padh"] + self.border[1]
                tiles.append(
                    Tile(feat, _translate(padw, padh), source_offset(feat, (h, w), self.patch, key), key)
                )
                rec = {"key": key, "img_shape": [int(h), int(w)], "pad": [int(padw), int(padh)]}
                rec["ratio_pad"] = [float(v) for v in pl.get("ratio_pad", (1.0, 1.0))]
                rec["paste"] = [
                    int(item[k]) for k in ("x1a", "y1a", "x2a", "y2a", "x1", "y1", "x2", "y2") if k in item
                ]
                rec["crop"] = [int(item[k]) for k in ("x1b", "y1b", "x2b", "y2b") if k in item]
                record.append(rec)
                tmp_layout.append({**item, "labels_patch": {"semantic_mask": np.full((h, w), i, np.uint8)}})
            first = tmp_layout[0]["labels_patch"]["semantic_mask"]
            owner = Mosaic.apply_semantic(
                self, {"semantic_mask": first, "mix_labels": []}, {"layout": tmp_layout}
            )
            st = WarpState(tiles=tiles, owner=owner["semantic_mask"], patch=self.patch)
            st.params.append({"op": "mosaic", "n": self.n, "tiles": record})
            labels[STATE_KEY] = st
        return super().apply_image(labels, params)


class WarpPerspective(RandomPerspective):
    """Ultralytics' RandomPerspective; also records M and the output size and moves the teacher geometry."""

    patch: int = 16

    def apply_image(self, labels: dict[str, Any], params: dict[str, Any] | None = None) -> dict[str, Any]:
        st = _state(labels, self.patch)
        if st is not None:
            M = np.asarray(params["M"], dtype=np.float64)
            if not self.perspective:  # cv2.warpAffine uses only the top two rows
                M = np.vstack([M[:2], [0.0, 0.0, 1.0]])
            rec = {"op": "affine", "M": M.tolist(), "size": [int(v) for v in params["size"]]}
            rec["perspective"] = bool(self.perspective)
            st.apply(M, _moved(self, st.owner, params), rec)
        return super().apply_image(labels, params)


class WarpFlip(RandomFlip):
    """Ultralytics' RandomFlip; also records the decision and flips the teacher geometry (or the plain map)."""

    patch: int = 16

    def apply_image(self, labels: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
        st = labels.get(STATE_KEY)
        vertical = params["direction"] == "vertical"
        if st is not None:
            h, w = labels["img"].shape[:2]
            T = _eye()
            if params["flip"]:  # pixel centres at integers: x -> (w - 1) - x
                if vertical:
                    T[1, 1], T[1, 2] = -1.0, h - 1.0
                else:
                    T[0, 0], T[0, 2] = -1.0, w - 1.0
            st.apply(
                T,
                _moved(self, st.owner, params),
                {"op": "flip", "direction": params["direction"], "flip": bool(params["flip"])},
            )
        elif labels.get(TEACHER_KEY) is not None and params["flip"]:
            # not moved by anything else: a flip of the whole map is exact (side = whole cells)
            labels[TEACHER_KEY] = np.flip(labels[TEACHER_KEY], axis=-2 if vertical else -1)
        return super().apply_image(labels, params)


class WarpLetterBox(LetterBox):
    """Ultralytics' LetterBox; also records ratio and padding and moves the teacher geometry."""

    patch: int = 16

    def apply_image(self, labels: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
        st = _state(labels, self.patch)
        if st is not None:
            h, w = params["orig_shape"]
            nw, nh = params["new_unpad"]
            T = _eye()
            if (w, h) != (nw, nh):  # cv2.resize maps pixel centres: x' = r x + (r - 1) / 2
                rx, ry = nw / w, nh / h
                T = np.array([[rx, 0, 0.5 * rx - 0.5], [0, ry, 0.5 * ry - 0.5], [0, 0, 1]], dtype=np.float64)
            T = _translate(params["left"], params["top"]) @ T
            rec = {
                "op": "letterbox",
                "ratio": [nw / w, nh / h],
                "pad": [int(params["left"]), int(params["top"])],
            }
            st.apply(T, _moved(self, st.owner, params), rec)
        return super().apply_image(labels, params)


def feature_matrix(A: np.ndarray, offset: tuple[float, float], patch: int) -> np.ndarray:
    """M_feat = K_out^-1 A K_src: source feature coords -> output feature coords (cell centres at integers)."""
    s, c = float(patch), (patch - 1) / 2.0
    k_out = np.array([[s, 0, c], [0, s, c], [0, 0, 1]], dtype=np.float64)
    k_src = np.array([[s, 0, c - offset[0]], [0, s, c - offset[1]], [0, 0, 1]], dtype=np.float64)
    return np.linalg.solve(k_out, np.asarray(A, dtype=np.float64) @ k_src)


def _gather(feat: np.ndarray, M_feat: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Values of (D, h, w) at the source points of output cells (xs, ys) through M_feat -> (D, n) float32."""
    d, h, w = feat.shape
    p = np.linalg.solve(M_feat, np.stack([xs, ys, np.ones_like(xs)]).astype(np.float64))  # (3, n)
    sx, sy = p[0] / p[2], p[1] / p[2]
    rx, ry = np.rint(sx), np.rint(sy)
    if np.abs(sx - rx).max(initial=0) < 1e-6 and np.abs(sy - ry).max(initial=0) < 1e-6:
        ix = np.clip(rx, 0, w - 1).astype(np.intp)
        iy = np.clip(ry, 0, h - 1).astype(np.intp)
        return feat[:, iy, ix].astype(np.float32, copy=False)  # whole cells: a copy, bit-exact
    sx, sy = np.clip(sx, 0, w - 1), np.clip(sy, 0, h - 1)  # border replicate; validity comes from coverage
    x0 = np.minimum(np.floor(sx).astype(np.intp), max(w - 2, 0))
    y0 = np.minimum(np.floor(sy).astype(np.intp), max(h - 2, 0))
    dx, dy = int(w > 1), int(h > 1) * w
    fx, fy = (sx - x0).astype(np.float32)[:, None], (sy - y0).astype(np.float32)[:, None]
    # channels-last rows: each gather fetches one contiguous D-vector
    f = np.ascontiguousarray(feat.transpose(1, 2, 0), dtype=np.float32).reshape(h * w, d)
    i = y0 * w + x0
    out = (f[i] * (1 - fx) + f[i + dx] * fx) * (1 - fy) + (f[i + dy] * (1 - fx) + f[i + dy + dx] * fx) * fy
    return out.T


def sample_bilinear(feat: np.ndarray, M_feat: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Resample (D, h, w) at every output cell of out_hw = (gh, gw) through M_feat (source -> output).

    Border replicate. Where the inverse map hits whole cells (flips, shifts by whole cells, identity) values
    are copied, so the result is bit-exact; elsewhere bilinear in float32. (cv2.warpAffine quantises sub-pixel
    positions to 1/32 for more than 4 channels, an error of ~2% of the value range, so the gather is ours.)
    """
    gh, gw = out_hw
    ys, xs = np.divmod(np.arange(gh * gw), gw)
    return _gather(feat, M_feat, xs, ys).reshape(feat.shape[0], gh, gw)


@functools.lru_cache(maxsize=8)
def _cell_index(gh: int, gw: int, k: int) -> np.ndarray:
    """(gh*k, gw*k) index of the cell each sample point belongs to."""
    return (np.arange(gh * k)[:, None] // k) * gw + np.arange(gw * k)[None, :] // k


def coverage(owner: np.ndarray, n_tiles: int, patch: int, samples: int = 4) -> np.ndarray:
    """(n, gh, gw) float32: share of each cell's pixels that came from tile i, from samples x samples points.

    The points sit at the centres of a samples x samples split of the cell (samples=patch counts every
    pixel); 4 (16 points) keeps the cost far below the image warp and the share within 1/16.
    """
    H, W = owner.shape
    gh, gw = H // patch, W // patch
    k = max(1, min(samples, patch))
    step = patch // k
    o = owner[step // 2 : gh * patch : step, step // 2 : gw * patch : step][: gh * k, : gw * k]
    ids = np.minimum(o, n_tiles).astype(np.intp)  # NONE_ID (and anything else) -> bin n_tiles
    n1 = n_tiles + 1
    counts = np.bincount((_cell_index(gh, gw, k) * n1 + ids).ravel(), minlength=gh * gw * n1)
    share = counts.reshape(gh, gw, n1)[..., :n_tiles].astype(np.float32) * (1.0 / (k * k))
    return np.ascontiguousarray(np.moveaxis(share, -1, 0))


def render(
    state: WarpState,
    out_hw: tuple[int, int],
    valid_threshold: float = DEFAULT_VALID_THRESHOLD,
    dtype: Any = np.float16,
    samples: int = 4,
) -> tuple[np.ndarray, np.ndarray]:
    """Warped map (D, H/s, W/s) and validity (H/s, W/s) of a sample whose image is now out_hw = (H, W) px.

    Each source map is sampled only at the cells its tile covers; a cell on a tile seam mixes its tiles by
    pixel share, as the image does. Cells no tile covers are 0 (and invalid).
    """
    s = state.patch
    H, W = out_hw
    if H % s or W % s:
        raise WarpError(f"augmented image {H}x{W} is not a multiple of the teacher patch {s}")
    if state.owner.shape != (H, W):
        raise WarpError(
            f"owner map {state.owner.shape} does not match the image {H}x{W} (a transform was missed)"
        )
    gh, gw = H // s, W // s
    cov = coverage(state.owner, len(state.tiles), s, samples).reshape(len(state.tiles), -1)  # (n, gh*gw)
    d = state.tiles[0].feat.shape[0]
    out = np.zeros((d, gh * gw), dtype=np.float32)
    single = len(state.tiles) == 1
    for t, c in zip(state.tiles, cov):
        if t.feat.shape[0] != d:
            raise WarpError(
                f"{t.key}: teacher map has {t.feat.shape[0]} channels, the sample's first tile {d}"
            )
        cells = np.flatnonzero(c)
        if cells.size == 0:
            continue
        ys, xs = np.divmod(cells, gw)
        vals = _gather(t.feat, feature_matrix(t.A, t.offset, s), xs, ys)  # (D, n_cells)
        if single:  # copy, so whole-cell moves stay bit-exact
            out[:, cells] = vals
        else:
            out[:, cells] += c[cells] * vals
    if not single:
        total = cov.sum(0)
        hit = total > 0
        out[:, hit] /= total[hit]
    valid = (cov.max(0) >= valid_threshold - 1e-9).astype(np.float32).reshape(gh, gw)
    return out.reshape(d, gh, gw).astype(dtype), valid


class RenderTeacher(BaseTransform):
    """Last geometric step (before Format): resamples the source maps once and adds teacher_feat/_valid."""

    def __init__(
        self, valid_threshold: float = DEFAULT_VALID_THRESHOLD, keep_params: bool = False, samples: int = 4
    ) -> None:
        if not 0.0 < valid_threshold <= 1.0:
            raise WarpError(f"valid_threshold: {valid_threshold} must be in (0, 1]")
        self.valid_threshold = valid_threshold
        self.keep_params = keep_params
        self.samples = samples

    def __call__(self, labels: dict[str, Any]) -> dict[str, Any]:
        st = labels.pop(STATE_KEY, None)
        if st is not None:
            dtype = (
                st.tiles[0].feat.dtype if st.tiles[0].feat.dtype in (np.float16, np.float32) else np.float32
            )
            feat, valid = render(st, labels["img"].shape[:2], self.valid_threshold, dtype, self.samples)
            labels[TEACHER_KEY], labels[VALID_KEY] = feat, valid
            if self.keep_params:
                labels[PARAMS_KEY] = st.params
        elif labels.get(TEACHER_KEY) is not None:  # never moved: the whole cached map is valid
            feat = np.ascontiguousarray(labels[TEACHER_KEY])
            labels[TEACHER_KEY] = feat
            labels[VALID_KEY] = np.ones(feat.shape[-2:], dtype=np.float32)
        return labels


_WRAPPERS: list[tuple[type, type]] = [
    (Mosaic, WarpMosaic),
    (RandomPerspective, WarpPerspective),
    (RandomFlip, WarpFlip),
    (LetterBox, WarpLetterBox),
]


def _rewrap(obj: Any, patch: int) -> Any:
    """The wrapper of `obj` with all of obj's attributes (so its probabilities/ranges stay exactly as built)."""
    for base, wrapper in _WRAPPERS:
        if isinstance(obj, base) and not isinstance(obj, wrapper):
            new = wrapper.__new__(wrapper)
            new.__dict__.update(obj.__dict__)
            new.patch = patch
            return new
        if isinstance(obj, wrapper):
            obj.patch = patch
            return obj
    return obj


def _walk(compose: Compose, patch: int, memo: dict[int, Any]) -> None:
    items = compose.transforms
    for i, t in enumerate(items):
        if id(t) in memo:
            items[i] = memo[id(t)]
            continue
        if isinstance(t, Compose):
            memo[id(t)] = t
            _walk(t, patch, memo)
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
                _walk(t.pre_transform, patch, memo)
        new = _rewrap(t, patch)
        memo[id(t)] = new
        items[i] = new


def wrap_transforms(
    transforms: Compose,
    patch: int = 16,
    valid_threshold: float = DEFAULT_VALID_THRESHOLD,
    keep_params: bool = False,
) -> Compose:
    """Swap the warp wrappers into an Ultralytics Compose (in place, nested ones too) and add RenderTeacher.

    RenderTeacher goes right before `Format` when there is one (the output of `YOLODataset.build_transforms`),
    else at the end (the output of `v8_transforms`). Raises WarpError for blends with p > 0 or spatial
    Albumentations, which warp mode cannot follow.
    """
    _walk(transforms, patch, {})
    render_t = RenderTeacher(valid_threshold, keep_params)
    items = transforms.transforms
    at = next((i for i, t in enumerate(items) if isinstance(t, Format)), len(items))
    items.insert(at, render_t)
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

    Returns the training Compose without `Format`, like v8_transforms; RenderTeacher is its last step.
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


def stack_valid(valids: list[np.ndarray]) -> torch.Tensor:
    """Collate helper: B x (h, w) -> (B, h, w) float32."""
    return torch.stack([torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for v in valids], 0)


def cos_per_cell(a: np.ndarray, b: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    """Cosine similarity over channels of two (D, h, w) maps -> (h, w) float64."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    num = (a64 * b64).sum(0)
    den = np.sqrt((a64 * a64).sum(0) * (b64 * b64).sum(0))
    return num / np.maximum(den, eps)
