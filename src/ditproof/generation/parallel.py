"""Tensor and context parallelism of the experts over several GPUs (one process per GPU).

Launch with ``torchrun --nproc-per-node N`` (the CLI's ``generate --tp-degree N`` or
``--cp-degree N``). Every rank loads the whole model, then shards it:

- tensor parallelism (``tp_degree``) with PyTorch's own ``parallelize_module``: each block's
  feed-forward network is split, ``ffn.net.0.proj`` column-wise and ``ffn.net.2`` row-wise
  (the row-parallel all-reduce changes the summation order: a benign deviation, 0.46% relative
  L2 after 4 A14B layers in DESIGN §2). Attention stays replicated: Wan's q/k RMS norm runs
  across all heads, so sharding heads would need the norm's statistics reduced across ranks.
- context parallelism (``cp_degree``) with diffusers' Ulysses attention
  (``enable_parallelism(ContextParallelConfig(ulysses_degree=N))``, Wan's ``_cp_plan``).

Only one of the two per run for now. Ranks other than 0 compute but write nothing. On CPUs the
process group uses gloo (tensor parallelism only), which is how the tests run it.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from ditproof.errors import InvalidInputError, RuntimeUnavailableError
from ditproof.protocol.options import RuntimeOptions


def world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """True on rank 0 (and outside a process group): the rank that writes outputs."""
    return world()[0] == 0


def init_parallel(options: RuntimeOptions) -> RuntimeOptions:
    """Starts the process group a parallel run needs and returns the options with this rank's device.

    Raises:
        InvalidInputError: both degrees above 1, or a world size that does not match.
        RuntimeUnavailableError: a parallel run not launched by torchrun.
    """
    degree = options.tp_degree * options.cp_degree
    if degree == 1:
        return options
    if options.tp_degree > 1 and options.cp_degree > 1:
        raise InvalidInputError(
            f"tp_degree={options.tp_degree}, cp_degree={options.cp_degree}: allowed: one of them above 1, not both"
        )
    if "WORLD_SIZE" not in os.environ:
        raise RuntimeUnavailableError(
            f"parallel degree {degree} needs one process per device: launch with torchrun --nproc-per-node {degree}"
        )
    if int(os.environ["WORLD_SIZE"]) != degree:
        raise InvalidInputError(
            f"tp/cp degree: got {degree} with {os.environ['WORLD_SIZE']} processes; allowed: equal numbers"
        )
    device = options.device
    if device.startswith("cuda"):
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(local_rank)
    elif options.cp_degree > 1:
        raise RuntimeUnavailableError("cp_degree: context parallelism needs CUDA devices (NCCL all-to-all)")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return options.model_copy(update={"device": device})


def ffn_plan(expert: torch.nn.Module) -> dict[str, object]:
    """The tensor-parallel plan of one expert: every block's FFN, column- then row-wise."""
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    plan: dict[str, object] = {}
    for index in range(len(expert.blocks)):  # type: ignore[arg-type]
        plan[f"blocks.{index}.ffn.net.0.proj"] = ColwiseParallel()
        plan[f"blocks.{index}.ffn.net.2"] = RowwiseParallel()
    return plan


def apply_parallel(experts: tuple[torch.nn.Module, ...], options: RuntimeOptions) -> None:
    """Shards the experts in place for the run's tensor or context parallelism."""
    if options.tp_degree > 1:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.tensor.parallel import parallelize_module

        device_type = "cuda" if options.device.startswith("cuda") else "cpu"
        mesh = init_device_mesh(device_type, (options.tp_degree,))
        for expert in experts:
            parallelize_module(expert, mesh, ffn_plan(expert))  # type: ignore[arg-type]
    if options.cp_degree > 1:
        from diffusers import ContextParallelConfig

        for expert in experts:
            expert.enable_parallelism(config=ContextParallelConfig(ulysses_degree=options.cp_degree))  # type: ignore[operator]
