"""One rank of the 2-process gloo test (tests/train/test_train_ddp.py), started by torchrun on the CPU.

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/train/ddp_worker.py OUT_DIR

Each rank wraps the same DistillOBBModel in DistributedDataParallel the way Ultralytics does
(find_unused_parameters, no forward buffer sync), runs its own micro-batch through `ddp(batch)` (our
distillation term is inside the forward), backpropagates `loss.sum() * world_size` like Ultralytics'
training step, then unfreezes Stage A's frozen layers with our curriculum callback (which re-wraps DDP)
and does it again. It saves the loss and the gradients it ended up with to OUT_DIR/rank{R}.pt.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

IMGSZ = 64  # -> 4x4 grid at layer 19 (stride 16)
D = 8
FROZEN = 2  # Stage A freezes layers 0..1 here


def build_model() -> torch.nn.Module:
    from dinocache.train.model import DistillOBBModel
    from ultralytics.cfg import get_cfg

    torch.manual_seed(0)
    model = DistillOBBModel("yolo26n-obb.yaml", nc=2, verbose=False, distill_channels=D)
    model.args = get_cfg()  # loss gains (box, cls, dfl, ...), set by Ultralytics' set_model_attributes
    model.distill_weight = 0.5
    model.train()
    for name, p in model.named_parameters():  # Stage A: frozen backbone layers (and .dfl, as Ultralytics)
        if any(name.startswith(f"model.{i}.") for i in range(FROZEN)) or ".dfl" in name:
            p.requires_grad_(False)
    return model


def micro_batch(rank: int, b: int = 2) -> dict:
    """The deterministic micro-batch of `rank`: images, 1 OBB per image, normalised teacher maps."""
    g = torch.Generator().manual_seed(100 + rank)
    return {
        "img": torch.rand(b, 3, IMGSZ, IMGSZ, generator=g),
        "cls": torch.zeros(b, 1),
        # xywhr normalised, one box per image
        "bboxes": torch.tensor([[0.5, 0.5, 0.4, 0.3, 0.3]] * b) + 0.05 * torch.rand(b, 5, generator=g),
        "batch_idx": torch.arange(b, dtype=torch.float32),
        "teacher_feat": torch.randn(b, D, IMGSZ // 16, IMGSZ // 16, generator=g),
    }


def grads(model: torch.nn.Module, prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    return {
        n: p.grad.detach().clone()
        for n, p in model.named_parameters()
        if n.startswith(prefixes) and p.grad is not None
    }


WATCH = ("distill_proj.", "model.0.", "model.19.")


def main(out: Path) -> None:
    import torch.distributed as dist
    from dinocache.train.config import TrainConfig
    from dinocache.train.trainer import apply_curriculum

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model = build_model()
    ddp = torch.nn.parallel.DistributedDataParallel(
        model, find_unused_parameters=True, forward_sync_buffers=False
    )
    batch = micro_batch(rank)
    result: dict = {}

    # Stage A step
    loss, items = ddp(batch)
    (loss.sum() * world).backward()  # Ultralytics: self.loss = loss.sum() * world_size under DDP
    result["a_loss"] = loss.detach().clone()
    result["a_distill"] = items["distill"].detach().clone()
    result["a_grads"] = grads(model, WATCH)

    # Stage B: our curriculum callback unfreezes and re-wraps DDP (epoch 1 of a 1+1 epoch schedule)
    cfg = TrainConfig(epochs=2, stage_a_ratio=0.5, dino_distill_warmup_epochs=0)
    trainer = SimpleNamespace(
        dino=cfg,
        epoch=1,
        model=ddp,
        stage_frozen=True,
        freeze_layer_names=[f"model.{i}." for i in range(FROZEN)] + [".dfl"],
        last_logged_weight=None,
        stage="A",
    )
    apply_curriculum(trainer)
    result["rewrapped"] = trainer.model is not ddp
    model.zero_grad(set_to_none=True)
    model.distill_weight = 0.5  # keep the weight of the reference
    loss, items = trainer.model(batch)
    (loss.sum() * world).backward()
    result["b_loss"] = loss.detach().clone()
    result["b_grads"] = grads(model, WATCH)
    torch.save(result, out / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("YOLO_OFFLINE", "1")
    main(Path(sys.argv[1]))
