"""The DINO viz keeps its own copy of the batch images: Ultralytics' plot_images (train_batch*.jpg)
multiplies the batch's images by 255 in place on CPU, which turned dino_viz/augmented_* white."""

from __future__ import annotations

import torch
from dinocache.train.trainer import snapshot


def test_viz_snapshot_survives_ultralytics_plotting(tmp_path) -> None:
    from ultralytics.utils.plotting import plot_images

    img = torch.rand(2, 3, 32, 32)
    batch = {
        "img": img,
        "batch_idx": torch.zeros(1),
        "cls": torch.zeros(1, 1),
        "bboxes": torch.tensor([[16.0, 16.0, 8.0, 4.0, 0.3]]),
        "im_file": ["a.jpg", "b.jpg"],
    }
    kept = snapshot(img, 2)
    plain = img[:2].detach().float().cpu()  # what the trainer kept before: the same storage
    plot_images(labels=batch, paths=batch["im_file"], fname=tmp_path / "train_batch0.jpg", threaded=False)
    assert img.max() > 1.5  # Ultralytics de-normalised the batch in place ...
    assert plain.max() > 1.5  # ... and with it a plain .float().cpu() reference
    assert 0 <= kept.min() and kept.max() <= 1  # the snapshot is untouched
