"""The cached signal reaches the loss intact: an oracle cache (maps built from the labels) teaches, shuffled
maps don't, and the map the loss sees for a sample is the oracle map of that sample's augmented image.

The oracle: the real precompute's cache of the tiny fixtures, its features overwritten (through the cache's
own writer) with per-cell class coverage of each image's boxes, so "the teacher's map of an augmented
image" is simply the coverage of the augmented boxes, which Ultralytics hands to the loss in the batch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from dinocache.datatools.oracle import cell_coverage

N_CLS = 5  # demo-data classes
GRID = 8  # 128 px / patch 16


def coverage(polys_px: list[np.ndarray], classes: list[int], size: int, patch: int = 16) -> np.ndarray:
    """(1 + N_CLS, g, g) share of each cell's pixels inside a box of each class (channel 0: no box)."""
    return cell_coverage(polys_px, classes, size, N_CLS, patch)


@pytest.fixture(scope="module")
def oracle_cache(tmp_path_factory, demo_data: Path, feature_cache: Path) -> dict:
    """A copy of the real precompute's cache of the fixture data (tests/train/conftest.py), features replaced
    by each image's oracle map (precompute/oracle.py)."""
    import shutil

    from dinocache.precompute.oracle import write_oracle_features

    out = tmp_path_factory.mktemp("oracle") / "features.zarr"
    shutil.copytree(feature_cache, out)
    mu, sd = write_oracle_features(out, demo_data, N_CLS)
    return {"path": out, "mu": mu, "sd": sd}  # mu/sd: to undo the standardisation in the tests


class Capture:
    """Wraps DistillOBBModel.term_losses: keeps the unweighted loss of every step (the run's one term), the first
    batches and the student's weights before its first step."""

    def __init__(self, orig, keep: int = 3) -> None:
        self.orig, self.keep = orig, keep
        self.losses: list[float] = []
        self.batches: list[dict] = []
        self.initial: dict | None = None

    def __call__(self, model, feats, batch):
        if self.initial is None:
            self.initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
        loss = self.orig(model, feats, batch)
        self.losses.append(float(loss[0].detach()))
        if len(self.batches) < self.keep:
            self.batches.append(
                {k: batch[k].detach().cpu().clone() for k in ("img", "teacher_feat", "teacher_valid", "bboxes", "cls", "batch_idx")}
            )  # fmt: skip
        return loss


@pytest.fixture(scope="module")
def oracle_runs(tmp_path_factory, demo_data, tiny_teacher_dir, oracle_cache, tiny_train) -> dict:
    from dinocache.train.config import TrainConfig
    from dinocache.train.model import DistillOBBModel
    from dinocache.train.run import train

    from dinocache.core.config import build

    root = tmp_path_factory.mktemp("oracle_runs")
    orig = DistillOBBModel.term_losses
    runs = {}
    mp = pytest.MonkeyPatch()
    try:
        for name, shuffle in (("cache", False), ("shuffled", True)):
            cap = Capture(orig)
            mp.setattr(DistillOBBModel, "term_losses", lambda self, f, b, _c=cap: _c(self, f, b))
            values = tiny_train(
                root, data=str(demo_data), dino_root=str(tiny_teacher_dir), cache=str(oracle_cache["path"]),
                name=name, epochs=5, stage_a_ratio=0.0, dino_distill_warmup_epochs=0, stage_b_distill_weight=1.0,
                lr0=0.01, distill_shuffle_maps=shuffle, eval_enabled=False, dino_viz_enabled=False,
                # the thresholds below were measured with the cosine distance: this is a test of the pipe (the
                # maps reach the loss and are learned), run with the distance it was calibrated on
                dino_distill_loss="cosine",
                wandb_enabled=False, extra={"plots": False, "val": False, "close_mosaic": 0},
            )  # fmt: skip
            cfg = build(TrainConfig, values, "test")
            cap.model = train(cfg).model  # the trained student (DistillOBBModel, projection included)
            runs[name] = cap
    finally:
        mp.undo()
    return runs


def true_map_loss(model, batches: list[dict], distill_loss) -> float:
    """Unweighted distill loss of a trained student against the TRUE (own-image) oracle maps of `batches`."""
    import copy

    m = copy.deepcopy(model).float().train()  # FeatHook keeps features in training mode only
    out = []
    with torch.no_grad():
        for b in batches:
            m.predict(b["img"].float())
            feats = [h.pop() for h in m.distill_hooks]
            out.append(float(distill_loss(m, feats, b)))
    return float(np.mean(out))


def test_oracle_cache_teaches_and_shuffled_does_not(oracle_runs) -> None:
    """Against the true oracle maps of the same batches, the cache run's student ends closer than it started
    and clearly closer than the student trained on shuffled maps (whose own loss can drop too: it learns the
    maps' common part).

    The training loss itself is no yardstick here: 20 steps of a student from scratch under mosaic draw other
    tiles with every change of the random stream, and its first-4 vs last-4 ratio measured 0.88-1.09 over
    seeds 0-3 on the 2-core CPU, while the comparison below held at every seed (cache 1.08-1.20 vs shuffled
    1.29-1.49, before training ~1.2-1.4)."""
    import copy

    from dinocache.train.model import DistillOBBModel

    cache, shuf = oracle_runs["cache"], oracle_runs["shuffled"]
    c = np.array(cache.losses)
    assert len(c) == len(shuf.losses) == 20  # 5 epochs x 16 images / batch 4
    print(f"oracle distill loss (cache run): first 4 steps {c[:4].mean():.3f}, last 4 {c[-4:].mean():.3f}")
    truth = cache.batches  # batches of the cache run carry each sample's own (warped) oracle map
    start = copy.deepcopy(cache.model)
    start.load_state_dict(cache.initial)
    l_start = true_map_loss(start, truth, DistillOBBModel.distill_loss)
    l_cache = true_map_loss(cache.model, truth, DistillOBBModel.distill_loss)
    l_shuf = true_map_loss(shuf.model, truth, DistillOBBModel.distill_loss)
    print(
        f"oracle distill loss vs the true maps: before training {l_start:.3f}, trained on cache {l_cache:.3f}, "
        f"on shuffled maps {l_shuf:.3f}"
    )
    assert l_cache < l_start  # the student learns the cached maps
    assert l_cache < 0.93 * l_shuf


def test_map_reaching_the_loss_is_the_oracle_of_the_augmented_image(oracle_runs, oracle_cache) -> None:
    """Warp mode, mosaic + affine + flips on: the (de-standardised) map in the loss's batch equals the oracle
    map of the augmented boxes the same batch carries, within the documented warp bound (docs/warp.md)."""
    from ultralytics.utils.ops import xywhr2xyxyxyxy

    mu, sd = oracle_cache["mu"], oracle_cache["sd"]
    mu, sd = mu[: 1 + N_CLS, None, None], np.maximum(sd[: 1 + N_CLS, None, None], 1e-6)
    cos, maes, n_cells = [], [], 0
    for b in oracle_runs["cache"].batches:
        # (B, 8, g, g) standardised -> coverage units
        feat = b["teacher_feat"].numpy()[:, : 1 + N_CLS] * sd[None] + mu[None]
        valid = b["teacher_valid"].numpy() > 0.5
        for i in range(feat.shape[0]):
            sel = b["batch_idx"] == i
            xywhr = b["bboxes"][sel].clone().double()
            xywhr[:, :4] *= 128
            polys = list(xywhr2xyxyxyxy(xywhr).numpy())
            want = coverage(polys, [int(c) for c in b["cls"][sel].view(-1)], 128)  # (6, g, g)
            got = feat[i]
            maes.append(float(np.abs(got - want)[:, valid[i]].mean()) if valid[i].any() else 0.0)
            m = valid[i]
            if m.sum() == 0:
                continue
            g, w = (
                got[:, m] - got[:, m].mean(1, keepdims=True),
                want[:, m] - want[:, m].mean(1, keepdims=True),
            )
            cos.append(float((g * w).sum() / (np.linalg.norm(g) * np.linalg.norm(w) + 1e-9)))
            n_cells += int(m.sum())
    assert n_cells > 100
    # documented bound for rotation/scale (bilinear resampling of the cached map): centred cosine >= 0.9
    print(
        f"map in the loss vs oracle of the augmented boxes: centred cosine {np.mean(cos):.3f}, MAE {np.mean(maes):.3f}"
    )
    assert np.mean(cos) >= 0.9, cos
