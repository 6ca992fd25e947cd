"""Precompute throughput: the teacher forward alone vs the full precompute, on the same images.

    python -m benchmarks.scenarios.precompute_tp --out r.json --what forward|precompute \
        --data D/data.yaml --dino-root T --imgsz 256 --batch 16 [--cache C --set key=value ...]

`forward`: images decoded into memory first, then only `teacher.extract_feature_map` is timed.
`precompute`: `dinocache precompute` end to end (list, hash, decode, teacher, PCA, fp16, write).
"""

from __future__ import annotations

import time

from benchmarks.scenarios.common import parser, write


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--what", choices=["forward", "precompute"], required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--dino-root", required=True)
    ap.add_argument("--imgsz", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--cache", default="")
    ap.add_argument("--set", nargs="*", default=[])
    a = ap.parse_args()

    from dinocache.core.data import list_split_images

    _, files = list_split_images(a.data, "train")
    n = len(files)
    if a.what == "forward":
        import cv2
        import numpy as np
        import torch
        from dinocache.teacher.registry import load_teacher

        from dinocache.core.device import select_device

        dev = select_device(a.device)
        teacher = load_teacher(a.dino_root, device=dev)
        imgs = np.stack([cv2.imread(str(f))[:, :, ::-1] for f in files])  # (N, H, W, 3) RGB
        x = torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous()
        teacher.extract_feature_map(x[:2].to(dev).float() / 255)  # warm-up (lazy init, autotune)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for i in range(0, n, a.batch):
            f = teacher.extract_feature_map(x[i : i + a.batch].to(dev).float() / 255)
        _ = f.sum().item()
        dt = time.perf_counter() - t0
    else:
        from dinocache.precompute.run import Precompute, PrecomputeConfig

        from dinocache.core.config import build, parse_overrides

        args = [
            f"data={a.data}",
            f"cache={a.cache}",
            f"dino_root={a.dino_root}",
            f"imgsz={a.imgsz}",
            f"batch={a.batch}",
            f"device={a.device}",
            *a.set,
        ]
        cfg = build(PrecomputeConfig, parse_overrides(args), "benchmark")
        t0 = time.perf_counter()
        res = Precompute(cfg).run()
        total = time.perf_counter() - t0
        if res.exit_code != 0:
            raise SystemExit(f"precompute failed with {res.exit_code}")
        # steady state: the compute loop (decode, teacher, PCA, fp16, background writes until the last
        # shard is on disk), without the one-off start-up (imports, listing + hashing, teacher load, PCA fit)
        dt = res.compute_seconds
        # the PCA fit's rows were computed before the loop's clock: count only the loop's own rows
        n_loop = res.loop_rows
        write(
            a.out,
            {
                "what": a.what,
                "n_images": n,
                "seconds": round(dt, 3),
                "images_per_s": round(n_loop / dt, 2),
                "end_to_end_s": round(total, 3),
                "end_to_end_images_per_s": round(n / total, 2),
            },
        )
        return
    write(a.out, {"what": a.what, "n_images": n, "seconds": round(dt, 3), "images_per_s": round(n / dt, 2)})


if __name__ == "__main__":
    main()
