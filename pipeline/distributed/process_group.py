"""The process group of a multi-process run, and the collectives that training across ranks needs.

torchrun and Ray Train's TorchTrainer both start one process per device and export RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; Ray Train also creates the process group
before the training function starts. `process_group` joins whichever is there, so the trainer is
the same code under both launchers and in a plain single process.

Every collective here is a no-op in a world of one process, so single-process runs need no group.
"""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int
    size: int

    @property
    def main(self) -> bool:
        """The rank that writes run folders, metrics and tracking; the others only compute."""
        return self.rank == 0


def world() -> World:
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World(0, 1)


def launched_processes() -> int:
    """Processes the launcher started for this run: 1 outside torchrun and Ray Train."""
    return int(os.environ.get("WORLD_SIZE", "1"))


@contextmanager
def process_group(device: torch.device) -> Iterator[World]:
    """Joins the launcher's process group (nccl on GPUs, gloo on CPUs) and leaves the group it created."""
    created = launched_processes() > 1 and not dist.is_initialized()
    if device.type == "cuda" and "LOCAL_RANK" in os.environ:
        # One device per process: "cuda" must mean this rank's GPU for every tensor the run makes.
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]) % torch.cuda.device_count())
    if created:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield world()
    finally:
        if created:
            dist.destroy_process_group()


def all_reduce_(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In place over all ranks (`op` is sum, max or min); returns the tensor."""
    if world().size > 1:
        dense = tensor.contiguous()  # collectives read raw memory; a transposed weight's gradient is strided
        dist.all_reduce(dense, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}[op])
        if dense is not tensor:
            tensor.copy_(dense)
    return tensor


def all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """[world size, *shape]: every rank's `tensor` (same shape on all ranks), without gradients."""
    size = world().size
    if size == 1:
        return tensor.detach().unsqueeze(0)
    flat = tensor.detach().reshape(-1).contiguous()  # gloo gathers only along the first dimension
    out = flat.new_empty(size * flat.numel())
    dist.all_gather_single(out, flat)
    return out.view(size, *tensor.shape)


def broadcast(tensor: torch.Tensor, src: int) -> torch.Tensor:
    """`src`'s `tensor` on every rank, as a new contiguous tensor (the others pass one of the same shape)."""
    dense = tensor.clone(memory_format=torch.contiguous_format)
    if world().size > 1:
        dist.broadcast(dense, src)
    return dense


def barrier() -> None:
    if world().size > 1:
        dist.barrier()


class _SumOverRanks(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        return all_reduce_(tensor.clone())

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        # Every rank computes the same loss from the sum, so each already holds the whole gradient
        # of that one loss; summing it again would count the loss once per rank.
        return grad


class _SharedInput(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        # Each rank sends gradient back only through its own features; the input's gradient is the sum.
        return all_reduce_(grad.clone())


def sum_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of each rank's partial `tensor`, for a loss that every rank then computes identically."""
    return _SumOverRanks.apply(tensor) if world().size > 1 else tensor


def shared_input(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` unchanged, fed to every rank's slice of the features: its gradient sums over ranks."""
    return _SharedInput.apply(tensor) if world().size > 1 else tensor
