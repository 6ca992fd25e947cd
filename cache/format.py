"""THE feature-cache format, version 2. Everything that writes or reads a cache follows this file.

A cache is one Zarr v3 group (a local folder or an fsspec URL) holding, for N training images:

    features                float16 (N, K, h, w)  teacher map per image: K = PCA components (or C_t raw
                                                   channels when channels=full), (h, w) = imgsz // patch.
                                                   Inner chunk = 1 image, grouped by the sharding codec into
                                                   shards of S images; codec Blosc zstd/lz4 (+byte shuffle)
                                                   or none, then crc32c on every inner chunk (version 2), so
                                                   a flipped bit fails the read of exactly that image;
                                                   fill_value NaN so a row never written reads NaN.
    features_flip           float16 (N, K, h, w)  only when `flips` is true (precompute cache_flips=true): the
                                                   teacher map of the horizontally flipped image (the same
                                                   canvas mirrored), projected with the same PCA basis and
                                                   stats; same chunks, shards and codecs as `features`. A ViT
                                                   map is not flip-equivariant (flipping `features` is only
                                                   an approximation of this), so the trainer reads it
                                                   instead of flipping the map (train/warp.py). Written in
                                                   the same shard write as `features`, before `done`.
    done                    uint8   (N,)          1 once the row's features are written. Chunk = S rows, so
                                                   the owner of shard k also owns `done` chunk k.
    sha256                  uint8   (N, 32)       sha256 of the image file's bytes when the row was computed.
                                                   Chunk = S rows.
    keys                    uint8   (N, L)        utf-8 key (image path relative to the dataset root, POSIX),
                                                   zero padded to L bytes. Chunk = S rows. Written once at
                                                   creation; the row order is the sorted dataset listing.
    channel_mean/_std       float32 (K,)          per stored channel, measured on the PCA fit sample; the
                                                   trainer's target is (x[:D] - mean[:D]) / std[:D].
    pca_mean                float32 (C_t,)        only when pca is true: x_pca = components @ (x - mean)
    pca_components          float32 (K, C_t)      rows sorted by decreasing explained variance
    pca_explained_variance  float32 (K,)

Every chunk of every array ends with Zarr v3's own `crc32c` codec (version 2): `done`, `sha256` and
`keys` too, so bit rot anywhere is a checksum error, never a silently wrong value. The shard index
carries zarr's default crc32c as well.

Group attribute `dinocache` (JSON, no pickle anywhere):

    format "dinocache.features", version 2, ready (true only after creation finished: arrays, keys, PCA),
    n, k, grid [h, w], imgsz, patch_size, teacher_channels (C_t), dtype "float16", shard_size S, codec,
    key_len L, pca (bool), pca_fit_images, flips (bool; absent = false), teacher (fingerprint dict from DinoV3Teacher.fingerprint),
    fingerprint_id (sha256 of the canonical JSON of `teacher`), teacher_files (file-level digest of the
    teacher's weight files, `dinocache.teacher.digest.digest`: {version, files {name: {size, sha256}}, id};
    the trainer compares it with its dino_root without building the model), created_by, created_at,
    source {data, split}.

Version history: 1 = the first release; 2 adds teacher_files (version 1 caches are refused with the
command that rebuilds them). Additive within version 2: `flips` and `features_flip` (a cache without the
attribute has no flipped views; readers that predate it ignore the extra array, whose rows they never need).

Multi-teacher caches (version 2, cache/multi.py): a root group with attribute `dinocache_teachers` (a manifest:
imgsz, n, and per teacher NAME its fingerprint_id, family, k, grid, patch_size) and one complete store of
this format per teacher under `teachers/NAME/`, each with its own fingerprint, teacher_files and PCA. All
teachers of one cache cover the same images at the same imgsz. `patch_size` is the teacher's cell size in
image pixels (imgsz / grid; SAM: imgsz / 64), `teacher.family` its registry family (teacher/registry.py).

Writer rules (why: two writers touching one shard lose images silently, see docs/cache.md):
- one creator makes the arrays and writes the attributes LAST with ready=true; other writers wait for
  ready and open the store read-write without touching metadata;
- a writer owns whole shards and writes each in ONE call: features, then sha256, then done, so a row is
  marked done only after its data is written;
- chunk keys use "." as separator so one image does not cost several directories.

A newer version or a foreign format name is refused by `check_attrs`; readers never guess. Version 1
(no chunk checksums) is refused with the command that rebuilds it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from dinocache.cache.errors import CacheFormatError, CacheMismatch

FORMAT_NAME = "dinocache.features"
FORMAT_VERSION = 2
ATTRS_KEY = "dinocache"

# What each older version lacks, for the refusal message (a reader never guesses at old layouts).
OLDER_VERSIONS = {
    1: "version 1 has no digest of the teacher's weight files, which the trainer needs to check the teacher "
    "without loading it, and no crc32c checksum on its chunks, so bit rot would go unnoticed",
}
UPGRADE_HINT = (
    "Upgrade it by rebuilding: `dinocache precompute --config config.json --overwrite` (or `dinocache "
    "precompute cache=PATH dino_root=DIR ... --overwrite` with the options it was made with, saved in "
    "precompute.yaml inside the cache folder)"
)

FEATURES = "features"
FEATURES_FLIP = "features_flip"
DONE = "done"
SHA256 = "sha256"
KEYS = "keys"
CHANNEL_MEAN = "channel_mean"
CHANNEL_STD = "channel_std"
PCA_MEAN = "pca_mean"
PCA_COMPONENTS = "pca_components"
PCA_EXPLAINED_VARIANCE = "pca_explained_variance"

FEATURE_DTYPE = "float16"
CODECS = ("zstd", "lz4", "none")
# A shard is the unit of writing and of ownership; ~16 MiB keeps object-store writes large and a
# shard buffer small in RAM, 256 images caps the O(S) shard-index work per read.
SHARD_TARGET_BYTES = 16 << 20
MAX_SHARD_SIZE = 256
CHUNK_KEY_ENCODING = {"name": "default", "separator": "."}


def auto_shard_size(bytes_per_image: int, n: int | None = None) -> int:
    """Largest power of two <= MAX_SHARD_SIZE with S * bytes_per_image <= SHARD_TARGET_BYTES (>= 1),
    and no larger than the power of two covering `n` images (a shard index has S entries however few
    images exist, which would dominate the bytes of a small cache)."""
    s = MAX_SHARD_SIZE
    while s > 1 and s * bytes_per_image > SHARD_TARGET_BYTES:
        s //= 2
    while n is not None and s > 1 and s // 2 >= n:
        s //= 2
    return s


def compressors(codec: str) -> list[Any]:
    """Zarr bytes-to-bytes codecs of `features` (inner chunks): Blosc with byte shuffle over the 2-byte fp16
    words (unless codec=none), then crc32c so every stored image carries its own checksum."""
    from zarr.codecs import BloscCodec

    if codec not in CODECS:
        raise CacheFormatError(f"unknown codec '{codec}', expected one of {list(CODECS)}")
    blosc = [] if codec == "none" else [BloscCodec(cname=codec, clevel=1, shuffle="shuffle", typesize=2)]
    return [*blosc, *checksum()]


def checksum() -> list[Any]:
    """The codec list that ends every chunk of every array: Zarr v3's crc32c (read by tensorstore too)."""
    from zarr.codecs import Crc32cCodec

    return [Crc32cCodec()]


def fingerprint_id(fingerprint: dict[str, Any]) -> str:
    """Stable hex id of a teacher fingerprint (canonical JSON, sorted keys)."""
    blob = json.dumps(fingerprint, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def normalize_json(obj: Any) -> Any:
    """What a value looks like after a JSON round trip (tuples -> lists), so stored == fresh compares."""
    return json.loads(json.dumps(obj, default=str))


@dataclass
class Spec:
    """The attribute block of one cache (see module docstring)."""

    n: int
    k: int
    grid: list[int]
    imgsz: int
    # image pixels per map cell at imgsz (imgsz // grid; Teacher.stride(imgsz)), whatever the teacher's own
    # ViT patch (a DINOv2 cache, 14-px patches, says 16): the attribute keeps its name so every cache opens
    patch_size: int
    teacher_channels: int
    shard_size: int
    codec: str
    key_len: int
    pca: bool
    pca_fit_images: int
    teacher: dict[str, Any]
    # the store also holds `features_flip`, the map of each horizontally flipped image (cache_flips)
    flips: bool = False
    # file-level digest of the teacher checkpoint (teacher.digest.digest); required since version 2
    teacher_files: dict[str, Any] = field(default_factory=dict)
    fingerprint_id: str = ""
    dtype: str = FEATURE_DTYPE
    format: str = FORMAT_NAME
    version: int = FORMAT_VERSION
    ready: bool = False
    created_by: str = ""
    created_at: str = ""
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.grid = [int(g) for g in self.grid]
        self.teacher = normalize_json(self.teacher)
        self.teacher_files = normalize_json(self.teacher_files)
        if not self.fingerprint_id:
            self.fingerprint_id = fingerprint_id(self.teacher)

    @property
    def bytes_per_image(self) -> int:
        return self.k * self.grid[0] * self.grid[1] * 2

    @property
    def n_shards(self) -> int:
        return -(-self.n // self.shard_size)

    def shard_rows(self, shard: int) -> range:
        return range(shard * self.shard_size, min(self.n, (shard + 1) * self.shard_size))

    def to_attrs(self) -> dict[str, Any]:
        return {ATTRS_KEY: normalize_json(asdict(self))}

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any], where: str = "") -> Spec:
        block = check_attrs(attrs, where)
        names = set(cls.__dataclass_fields__)
        required = {"n", "k", "grid", "imgsz", "patch_size", "teacher_channels", "shard_size", "codec"}
        required |= {"key_len", "pca", "pca_fit_images", "teacher"}
        missing = sorted(required - set(block))
        if "teacher_files" not in block or not isinstance(block["teacher_files"], dict):
            raise CacheFormatError(
                f"{where}: the cache lacks the teacher's weight-file digest ('teacher_files', format version "
                f"{FORMAT_VERSION}); it was written by an older or foreign writer. {UPGRADE_HINT}"
            )
        if missing:
            raise CacheFormatError(
                f"{where}: attribute block '{ATTRS_KEY}' lacks {missing}; the cache is damaged"
            )
        if not isinstance(block.get("flips", False), bool):
            raise CacheFormatError(
                f"{where}: attribute 'flips' is {block['flips']!r}, expected true or false"
            )
        if block["codec"] not in CODECS:
            raise CacheFormatError(
                f"{where}: the cache was written with codec {block['codec']!r}, which this dinocache does not "
                f"read (it reads {list(CODECS)}); rebuild it with `dinocache precompute --overwrite` "
                "(codec=none is the default)"
            )
        return cls(**{k: v for k, v in block.items() if k in names})


def check_attrs(attrs: dict[str, Any], where: str = "") -> dict[str, Any]:
    """Return the `dinocache` block after checking format name and version; CacheFormatError otherwise."""
    block = attrs.get(ATTRS_KEY)
    if not isinstance(block, dict) and isinstance(attrs.get("dinocache_teachers"), dict):
        held = sorted(attrs["dinocache_teachers"].get("teachers", {}))
        raise CacheFormatError(
            f"{where} is a multi-teacher cache holding teachers {held} (cache/multi.py): name them in the "
            f"trainer's `teachers` list; inspect or verify one as {where}/teachers/NAME"
        )
    if not isinstance(block, dict):
        raise CacheFormatError(
            f"{where} is not a dinocache feature cache (no '{ATTRS_KEY}' attribute block); "
            "make one with `dinocache precompute`"
        )
    name = block.get("format")
    if name != FORMAT_NAME:
        raise CacheFormatError(f"{where}: format is {name!r}, expected {FORMAT_NAME!r}")
    version = block.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CacheFormatError(f"{where}: invalid format version {version!r}")
    if version > FORMAT_VERSION:
        raise CacheFormatError(
            f"{where}: cache format version {version} was written by a newer dinocache; this one reads "
            f"version {FORMAT_VERSION}. Upgrade dinocache or rebuild the cache with --overwrite"
        )
    if version != FORMAT_VERSION:
        raise CacheFormatError(
            f"{where}: cache format version {version} is older than this dinocache's version {FORMAT_VERSION} "
            f"({OLDER_VERSIONS.get(version, 'an unknown older layout')}). {UPGRADE_HINT}"
        )
    return block


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, name + "."))
        else:
            out[name] = v
    return out


def diff(stored: dict[str, Any], wanted: dict[str, Any], prefix: str = "") -> list[str]:
    """Human lines `field: cache X, wanted Y` for every differing (dotted) field."""
    a, b = flatten(normalize_json(stored), prefix), flatten(normalize_json(wanted), prefix)
    lines = []
    for k in sorted(set(a) | set(b)):
        if a.get(k, "<absent>") != b.get(k, "<absent>"):
            lines.append(f"{k}: cache {_short(a.get(k, '<absent>'))}, wanted {_short(b.get(k, '<absent>'))}")
    return lines


def _short(v: Any, n: int = 60) -> str:
    s = json.dumps(v, default=str) if not isinstance(v, str) else v
    return s if len(s) <= n else s[: n - 3] + "..."


# Spec fields that must agree for a writer to add rows to an existing cache (the rest is bookkeeping).
COMPAT_FIELDS = (
    "n",
    "k",
    "grid",
    "imgsz",
    "patch_size",
    "teacher_channels",
    "shard_size",
    "codec",
    "key_len",
    "pca",
    "pca_fit_images",
    "flips",
    "fingerprint_id",
)


def compat_diff(stored: Spec, wanted: Spec) -> list[str]:
    a = {k: getattr(stored, k) for k in COMPAT_FIELDS if k != "fingerprint_id"}
    b = {k: getattr(wanted, k) for k in COMPAT_FIELDS if k != "fingerprint_id"}
    lines = diff(a, b)
    if stored.fingerprint_id != wanted.fingerprint_id:
        lines += diff(stored.teacher, wanted.teacher, "teacher.") or ["fingerprint_id differs"]
    return lines


def raise_mismatch(where: str, lines: list[str], hint: str) -> None:
    if lines:
        shown = "\n  ".join(lines[:12]) + (f"\n  ... and {len(lines) - 12} more" if len(lines) > 12 else "")
        raise CacheMismatch(f"{where} does not match:\n  {shown}\n{hint}")


def chunk_file(path: str, array: str, chunk: int) -> str:
    """File of chunk/shard `chunk` along the image axis of `array` in the store at `path` (keys use '.' as
    separator)."""
    tail = {FEATURES: ".0.0.0", FEATURES_FLIP: ".0.0.0", DONE: "", SHA256: ".0", KEYS: ".0"}.get(array, "")
    return f"{str(path).rstrip('/')}/{array}/c.{chunk}{tail}"
