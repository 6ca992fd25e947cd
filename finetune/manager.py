"""Optimisation mechanics, kept apart from the data and the model: AdamW, linear warmup then cosine
decay (per optimizer step), gradient accumulation, clipping, AMP on CUDA, a non-finite loss guard."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterable

import numpy as np
import torch

from dinocache.core.errors import DinocacheError


class NonFiniteLoss(DinocacheError, RuntimeError):
    """The loss became NaN/inf; training must stop and keep the last good checkpoint."""

    def __init__(self, value: float, step: int) -> None:
        super().__init__(f"loss is {value} at optimizer step {step}")
        self.value = value
        self.step = step


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def amp_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    """bf16 where the GPU has it (no loss scaling needed), else fp16; None = full precision (CPU)."""
    if not amp or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


class TrainingManager:
    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        lr: float,
        weight_decay: float,
        total_steps: int,
        warmup_steps: int,
        grad_clip: float,
        accumulate: int,
        device: torch.device,
        amp: bool,
    ) -> None:
        from transformers import get_cosine_schedule_with_warmup

        self.params = [p for p in params if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=lr, weight_decay=weight_decay)
        self.scheduler = get_cosine_schedule_with_warmup(self.optimizer, warmup_steps, max(1, total_steps))
        self.dtype = amp_dtype(device, amp)
        self.device = device
        # Loss scaling only matters for fp16; bf16 has fp32's range.
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.dtype == torch.float16)
        self.grad_clip = grad_clip
        self.accumulate = max(1, accumulate)
        self.micro = 0  # backward passes since the last optimizer step
        self.steps = 0  # optimizer steps so far

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> bool:
        """Accumulate one micro-batch; returns True when an optimizer step was taken."""
        v = float(loss.detach())
        if not np.isfinite(v):
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLoss(v, self.steps)
        self.scaler.scale(loss / self.accumulate).backward()
        self.micro += 1
        if self.micro >= self.accumulate:
            self.step()
            return True
        return False

    def step(self) -> None:
        if self.micro == 0:
            return
        self.scaler.unscale_(self.optimizer)
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.micro = 0
        self.steps += 1

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "steps": self.steps,
        }

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.steps = int(state["steps"])
