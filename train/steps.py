"""How many optimizer steps a run makes, known before it starts.

Ultralytics accumulates gradients over `accumulate = max(round(nbs / batch), 1)` batches (capped at the
run's batch count) and ramps the accumulation up from 1 during its warmup (`warmup_epochs` of batches,
leaving the last epoch out), so a small dataset with the default `nbs=64` can make one step in five epochs
while every epoch line says it trained. `planned_steps` replays that rule batch by batch; the trainer logs a
warning with the fix when the steps are few.
"""

from __future__ import annotations

import numpy as np

# fewer optimizer steps than these (per epoch once the warmup is over, or in the whole run) leave the
# model hardly trained: the run warns and names the fix
MIN_STEPS_PER_EPOCH = 10
MIN_STEPS_TOTAL = 50


def planned_steps(
    n_batches: int, epochs: int, accumulate: int, warmup_iters: int, start_epoch: int = 0
) -> list[int]:
    """Optimizer steps of each epoch from `start_epoch` on, by Ultralytics' loop (engine/trainer.py): batch
    `ni` steps when `ni - last_step >= accumulate`, where during the warmup (`ni <= warmup_iters`)
    accumulate is `round(interp(ni, [0, warmup_iters], [1, accumulate]))`."""
    per_epoch = [0] * epochs
    last, acc = -1, accumulate
    for ni in range(start_epoch * n_batches, epochs * n_batches):
        if warmup_iters and ni <= warmup_iters:
            acc = max(1, int(np.interp(ni, [0, warmup_iters], [1, accumulate]).round()))
        if ni - last >= acc:
            per_epoch[ni // n_batches] += 1
            last = ni
    return per_epoch[start_epoch:]


def few_steps_warning(
    steps: list[int], n_images: int, batch: int, nbs: int, accumulate: int, warmup_epochs: float
) -> str:
    """The warning for a run of few optimizer steps, with the fix; '' when they are enough.

    Few means fewer than MIN_STEPS_TOTAL in all, or fewer than MIN_STEPS_PER_EPOCH per epoch after the
    warmup because of accumulation (with one step per batch the per-epoch count is the batch count, which
    only more data or a smaller batch changes: the total decides then)."""
    total = sum(steps)
    after = steps[-1] if steps else 0
    few_total = total < MIN_STEPS_TOTAL
    few_per_epoch = accumulate > 1 and after < MIN_STEPS_PER_EPOCH
    if not (few_total or few_per_epoch):
        return ""
    n_batches = -(-n_images // batch)
    fixes = []
    if accumulate > 1:
        fixes.append(f"nbs={batch} (one optimizer step per batch instead of one per {accumulate})")
    if warmup_epochs > 0 and accumulate > 1:
        fixes.append("warmup_epochs=0 (the warmup ramps accumulation, fewer steps still)")
    if few_total:
        fixes.append("more epochs, more images (augment's views), or a smaller batch")
    return (
        f"this run makes {total} optimizer step(s) in {len(steps)} epoch(s) ({after} in its last epoch): "
        f"{n_images} images / batch {batch} = {n_batches} batches per epoch, one step per {accumulate} batches "
        f"(nbs {nbs} / batch {batch}); the model will hardly train. Fix: " + "; ".join(fixes)
    )
