"""Which shard and GPU a precompute process takes when a launcher started it: torchrun or SLURM.

    torchrun --nproc-per-node 4 -m dinocache precompute --config config.json           # one node, 4 GPUs
    torchrun --nnodes 2 --node-rank R --nproc-per-node 4 --rdzv-endpoint HOST:29500 -m dinocache precompute ...
    srun --ntasks 8 --gpus-per-task 1 python -m dinocache precompute ...                  # SLURM tasks

The ranks never talk to each other (no process group): every rank is one `--shard RANK/WORLD_SIZE`
writer of the same store, so they coordinate only through it (rank 0 creates it, the others wait for its
`ready` flag; each writes the zarr shards k with k % WORLD_SIZE == RANK). torchrun sets RANK, WORLD_SIZE
and LOCAL_RANK; a SLURM task has SLURM_PROCID, SLURM_NTASKS and SLURM_LOCALID (torchrun's win when both
are set, as under `srun torchrun ...`). The local rank picks the GPU when `device` is auto or cuda (the
only visible GPU when the launcher binds one GPU per process, e.g. `srun --gpus-per-task=1`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from dinocache.core.config import ConfigError

VARS = {
    "torchrun": ("RANK", "WORLD_SIZE", "LOCAL_RANK"),
    "SLURM": ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"),
}


@dataclass(frozen=True)
class Launch:
    """This process's place in a launch: global rank, world size, rank on its node, and who said so."""

    rank: int
    world: int
    local_rank: int
    source: str

    @property
    def shard(self) -> str:
        return f"{self.rank}/{self.world}"


def from_env(env: Mapping[str, str] | None = None) -> Launch | None:
    """The launch described by torchrun's or SLURM's environment variables, or None outside a launcher."""
    env = os.environ if env is None else env
    for source, (r, w, lr) in VARS.items():
        if w not in env:
            continue
        try:
            rank, world = int(env.get(r, "0")), int(env[w])
            local = int(env.get(lr, rank))
        except ValueError:
            raise ConfigError(
                f"{source} environment: {r}={env.get(r)!r} {w}={env.get(w)!r} {lr}={env.get(lr)!r} are not integers"
            ) from None
        if not (world >= 1 and 0 <= rank < world and local >= 0):
            raise ConfigError(f"{source} environment: {r}={rank} {w}={world} is not a rank of the world")
        return Launch(rank, world, local, source)
    return None


def resolve(shard: str, shard_explicit: bool, device: str, launch: Launch | None) -> tuple[str, str]:
    """(shard, device) of this process: the launcher's rank as the shard, its local rank as the GPU.

    An explicit `shard` (--shard or the config) must agree with a multi-process launch: two ranks with
    the same shard would write the same zarr shards, and concurrent writers of one shard lose images.
    """
    if launch is None or launch.world == 1:
        return shard, device
    if shard_explicit and shard != launch.shard:
        r, w, _ = VARS[launch.source]
        raise ConfigError(
            f"shard: {shard} was given, but {launch.source} started this process as rank {launch.rank} of "
            f"{launch.world} ({r}/{w}); drop `shard` under a launcher (each rank takes shard RANK/WORLD_SIZE)"
        )
    dev = str(device).strip().lower()
    if dev in ("auto", "cuda"):
        import torch

        if torch.cuda.is_available():
            n = torch.cuda.device_count()
            if n == 1:  # the launcher bound one GPU to this process (srun --gpus-per-task=1 & co.)
                return launch.shard, "cuda:0"
            if launch.local_rank >= n:
                raise ConfigError(
                    f"device: local rank {launch.local_rank} of {launch.source} needs GPU {launch.local_rank} but "
                    f"this node has {n} CUDA GPU(s); start at most {n} processes per node"
                )
            device = f"cuda:{launch.local_rank}"
        elif dev == "cuda":
            raise ConfigError("device: 'cuda' asked for CUDA but torch sees no CUDA device")
    return launch.shard, device


__all__ = ["Launch", "from_env", "resolve"]
