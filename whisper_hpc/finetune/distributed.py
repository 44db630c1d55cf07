"""The ranks torchrun started: RANK / WORLD_SIZE / LOCAL_RANK, gloo on CPU and NCCL on CUDA."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def environment_ranks() -> tuple[int, int, int]:
    read = lambda name, default: int(os.environ.get(name, default) or default)  # noqa: E731
    return read("RANK", 0), read("WORLD_SIZE", 1), read("LOCAL_RANK", 0)


def start() -> Ranks:
    """This process's rank; with several, the process group is joined (torchrun's env:// rendezvous)."""
    import torch

    rank, world, local_rank = environment_ranks()
    device = "cpu"
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    if world > 1:
        import torch.distributed as dist

        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend, rank=rank, world_size=world,
                                device_id=torch.device(device) if backend == "nccl" else None)
    return Ranks(rank, world, local_rank, device)


def stop(ranks: Ranks) -> None:
    if ranks.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def barrier(ranks: Ranks) -> None:
    if ranks.distributed:
        import torch.distributed as dist

        dist.barrier()


def all_sum(ranks: Ranks, values: list[float]) -> list[float]:
    """The sum over ranks of each value (float64 on the wire: exact for token counts)."""
    if not ranks.distributed:
        return list(values)
    import torch
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64, device=ranks.device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def agree(ranks: Ranks, error: BaseException | None) -> None:
    """Every rank learns whether one of them failed (rank 0's lock, say) and stops with it."""
    failed = all_sum(ranks, [1.0 if error is not None else 0.0])[0]
    if error is not None:
        raise error
    if failed:
        from whisper_hpc.finetune.rundir import FinetuneError

        raise FinetuneError("another rank failed; see its message above", exit_code=1)
