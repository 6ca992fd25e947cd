"""Cache storage, read throughput and memory with synthetic rows (no teacher needed).

    python -m benchmarks.scenarios.cache_scale --out r.json --what write|read|memmap \
        --path P --n 20000 --k 32 --grid 16 [--batch 16 --reads 2000 --seed 0]

`write`: create a store with the real writer (`cache.CacheWriter`, whole shards) and fill N rows of
PCA-like fp16 maps (smooth fields + noise, not zeros, so compression sees realistic bytes).
`read`: random-order batched reads through `cache.open(...).read` (what the trainer does).
`memmap`: the same rows from a raw numpy memmap of the same bytes (the disk's ceiling).
"""

from __future__ import annotations

import time

import numpy as np

from benchmarks.scenarios.common import parser, write


def synthetic_rows(rng: np.random.Generator, m: int, k: int, g: int) -> np.ndarray:
    """(m, k, g, g) fp16 with a decaying spectrum: a few smooth fields mixed per channel, plus noise."""
    yy, xx = np.mgrid[0:g, 0:g] / g
    fields = np.stack(
        [np.sin(2 * np.pi * (fx * xx + fy * yy) + ph) for fx, fy, ph in rng.uniform(0, 3, (8, 3))]
    )
    scale = 1.0 / np.arange(1, k + 1) ** 0.5
    mix = rng.normal(size=(m, k, 8)) * scale[None, :, None]
    x = (
        np.einsum("mkf,fhw->mkhw", mix, fields)
        + 0.1 * rng.normal(size=(m, k, g, g)) * scale[None, :, None, None]
    )
    return x.astype(np.float16)


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--what", choices=["write", "read", "memmap"], required=True)
    ap.add_argument("--path", required=True)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--grid", type=int, default=16)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--reads", type=int, default=2000)
    ap.add_argument("--codec", default="zstd")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--no-memmap", action="store_true", help="write: skip the memmap copy (memory scaling runs)"
    )
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    res: dict = {"what": a.what, "n": a.n, "k": a.k, "grid": a.grid}

    if a.what == "write":
        import dinocache.cache.format as fmt

        from dinocache import cache

        g = a.grid
        spec = fmt.Spec(
            n=a.n,
            k=a.k,
            grid=[g, g],
            imgsz=g * 16,
            patch_size=16,
            teacher_channels=a.k,
            shard_size=fmt.auto_shard_size(a.k * g * g * 2),
            codec=a.codec,
            key_len=32,
            pca=False,
            pca_fit_images=0,
            teacher={"synthetic": True, "k": a.k},
        )
        keys = [f"images/train/{i:08d}.png" for i in range(a.n)]
        w = cache.CacheWriter.create(a.path, spec, keys, np.zeros(a.k, np.float32), np.ones(a.k, np.float32))
        t0 = time.perf_counter()
        for s in range(spec.n_shards):
            rows = spec.shard_rows(s)
            feats = synthetic_rows(rng, len(rows), a.k, g)
            w.write_shard(s, feats, ["ab" * 32] * len(rows), np.ones(len(rows), bool))
        dt = time.perf_counter() - t0
        fc = cache.open(a.path)
        res |= {
            "write_images_per_s": round(a.n / dt, 1),
            "bytes_per_image_raw": spec.bytes_per_image,
            "bytes_per_image_disk": round(fc.disk_bytes() / a.n, 1),
            "shard_size": spec.shard_size,
        }
        if a.no_memmap:
            write(a.out, res)
            return
        # a raw memmap of the same rows for the `memmap` ceiling (its mapped pages would count as RSS)
        mm = np.lib.format.open_memmap(a.path + ".npy", mode="w+", dtype=np.float16, shape=(a.n, a.k, g, g))
        for s in range(spec.n_shards):
            r = spec.shard_rows(s)
            mm[r.start : r.stop] = fc.read(list(r))
        mm.flush()
    else:
        order = rng.integers(0, a.n, size=(a.reads // a.batch, a.batch))
        if a.what == "read":
            from dinocache import cache

            fc = cache.open(a.path)
            fc.read(order[0].tolist())  # open arrays, warm the page cache path
            t0 = time.perf_counter()
            for b in order:
                x = fc.read(b.tolist())
        else:
            mm = np.load(a.path + ".npy", mmap_mode="r")
            _ = np.array(mm[np.sort(order[0])])
            t0 = time.perf_counter()
            for b in order:
                x = np.array(mm[np.sort(b)])
        dt = time.perf_counter() - t0
        assert x.shape == (a.batch, a.k, a.grid, a.grid)
        res |= {"images_per_s": round(order.size / dt, 1)}
    write(a.out, res)


if __name__ == "__main__":
    main()
