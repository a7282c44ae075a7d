"""Tensor and context parallelism of the experts over several GPUs (one process per GPU).

Launch with ``torchrun --nproc-per-node N`` (the CLI's ``generate --tp-degree N`` or
``--cp-degree N``). Every rank loads the whole model, then shards it:

- tensor parallelism (``tp_degree``) with PyTorch's own ``parallelize_module``: each block's
  feed-forward network is split, ``ffn.net.0.proj`` column-wise and ``ffn.net.2`` row-wise
  (the row-parallel all-reduce changes the summation order: a benign deviation, 0.46% relative
  L2 after 4 A14B layers, measured when the design was written). Attention stays replicated: Wan's q/k RMS norm runs
  across all heads, so sharding heads would need the norm's statistics reduced across ranks.
- context parallelism (``cp_degree``) with diffusers' Ulysses attention
  (``enable_parallelism(ContextParallelConfig(ulysses_degree=N))``, Wan's ``_cp_plan``).
- fixed-order feed-forward slices (``ffn_chunks`` C, :func:`slice_feed_forwards`): each block's
  FFN becomes C independent slices of its hidden units, each a contiguous up-projection, GELU and
  down-projection of the same shape; their partial outputs are summed in slice order in float32,
  then the down-projection's bias is added. With tensor parallelism each rank keeps C/N whole
  slices and the ranks gather every partial output before summing, so every rank, and one
  process without parallelism, computes the same matrix products on the same shapes and adds
  them in the same order: TP-N gives the bytes of TP-1 (measured on CPU processes, tests).

- CFG parallelism (``cfg_degree`` 2): the conditional pass on the first half of the ranks, the
  unconditional on the second, each half with ``cp_degree`` context parallelism over a device
  mesh ``(cfg, ring, ulysses) = (2, 1, cp_degree)``. After each guided forward, rank ``r`` of
  one half and rank ``r`` of the other all-gather their outputs (:class:`CfgGroup`) and every
  rank combines them as one process does. Each pass is the forward one process would run, on
  the same shapes, so the bytes are one process's (measured on CPU processes, tests).

Tensor parallelism goes alone; CFG and context parallelism go together. Ranks other than 0
compute but write nothing. On CPUs the process group uses gloo (tensor and CFG parallelism),
which is how the tests run it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from ditproof.errors import InvalidInputError, RuntimeUnavailableError
from ditproof.protocol.options import LoadOptions, RuntimeOptions

Options = TypeVar("Options", LoadOptions, RuntimeOptions)


def world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """True on rank 0 (and outside a process group): the rank that writes outputs."""
    return world()[0] == 0


def init_parallel(options: Options) -> Options:
    """Starts the process group a parallel run needs and returns the options with this rank's device.

    Raises:
        InvalidInputError: both degrees above 1, or a world size that does not match.
        RuntimeUnavailableError: a parallel run not launched by torchrun.
    """
    degree = options.tp_degree * options.cp_degree * options.cfg_degree
    if degree == 1:
        return options
    if options.tp_degree > 1 and options.cp_degree > 1:
        raise InvalidInputError(
            f"tp_degree={options.tp_degree}, cp_degree={options.cp_degree}: allowed: one of them above 1, not both"
        )
    if options.tp_degree > 1 and options.cfg_degree > 1:
        raise InvalidInputError(
            f"tp_degree={options.tp_degree}, cfg_degree={options.cfg_degree}: allowed: cfg_degree 2 alone or "
            "with cp_degree, not with tensor parallelism"
        )
    if isinstance(options, RuntimeOptions):  # the run's CFG mode, where the options hold it
        check_cfg_mode(options.cfg_degree, options.cfg_mode)
    if "WORLD_SIZE" not in os.environ:
        raise RuntimeUnavailableError(
            f"parallel degree {degree} needs one process per device: launch with torchrun --nproc-per-node {degree}"
        )
    if int(os.environ["WORLD_SIZE"]) != degree:
        raise InvalidInputError(
            f"tp × cp × cfg degree: got {degree} with {os.environ['WORLD_SIZE']} processes; allowed: equal numbers"
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


def check_cfg_mode(cfg_degree: int, cfg_mode: str) -> None:
    """Raises InvalidInputError for CFG parallelism with another CFG mode than ``sequential``."""
    if cfg_degree > 1 and cfg_mode != "sequential":
        raise InvalidInputError(
            f"cfg_mode: got {cfg_mode!r} with cfg_degree {cfg_degree}; allowed: 'sequential' "
            "(the two halves of the ranks run one pass each)"
        )


@dataclass(frozen=True)
class CfgGroup:
    """This rank's part in CFG parallelism: which pass it runs and the two ranks that exchange."""

    branch: int
    """0: the conditional pass; 1: the unconditional pass."""
    group: Any
    """The process group of this rank and its counterpart in the other half (cond's rank first)."""

    def exchange(self, output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(conditional, unconditional) outputs, from this rank's pass and its counterpart's."""
        parts = [torch.empty_like(output) for _ in range(2)]
        dist.all_gather(parts, output.contiguous(), group=self.group)
        return parts[0], parts[1]


def apply_parallel(experts: tuple[torch.nn.Module, ...], options: LoadOptions) -> CfgGroup | None:
    """Shards the experts in place for the run's tensor or context parallelism; with CFG
    parallelism, returns this rank's :class:`CfgGroup` (None without).

    Raises:
        RuntimeUnavailableError: CFG parallelism outside a process group of ``2 × cp_degree``.
    """
    if options.cfg_degree > 1 and world()[1] != options.cfg_degree * options.cp_degree:
        raise RuntimeUnavailableError(
            f"cfg_degree {options.cfg_degree} with cp_degree {options.cp_degree}: the process group has "
            f"{world()[1]} processes; launch with torchrun --nproc-per-node {options.cfg_degree * options.cp_degree}"
        )
    if options.tp_degree > 1 and options.ffn_chunks == 1:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.tensor.parallel import parallelize_module

        device_type = "cuda" if options.device.startswith("cuda") else "cpu"
        tp_mesh = init_device_mesh(device_type, (options.tp_degree,))
        for expert in experts:
            parallelize_module(expert, tp_mesh, ffn_plan(expert))  # type: ignore[arg-type]
    # Under CFG parallelism one mesh serves both experts (each expert's Ulysses group is this
    # rank's half) and the exchange; without it diffusers builds each expert's own.
    mesh = cfg_mesh(options) if options.cfg_degree > 1 else None
    if options.cp_degree > 1:
        from diffusers import ContextParallelConfig

        for expert in experts:
            config = ContextParallelConfig(ulysses_degree=options.cp_degree, mesh=mesh)
            expert.enable_parallelism(config=config)  # type: ignore[operator]
    if mesh is None:
        return None
    return CfgGroup(branch=mesh.get_local_rank("cfg"), group=mesh.get_group("cfg"))


def cfg_mesh(options: LoadOptions) -> Any:
    """The device mesh ``(cfg, ring, ulysses) = (2, 1, cp_degree)``: ranks 0 … cp−1 run the
    conditional pass, cp … 2cp−1 the unconditional one, and rank ``r`` pairs with ``r + cp``."""
    from torch.distributed.device_mesh import init_device_mesh

    device_type = "cuda" if options.device.startswith("cuda") else "cpu"
    return init_device_mesh(
        device_type, (options.cfg_degree, 1, options.cp_degree), mesh_dim_names=("cfg", "ring", "ulysses")
    )


class SlicedFeedForward(torch.nn.Module):
    """A Wan block's feed-forward network as fixed-order slices (see the module docstring).

    ``up_weight`` ``(slices, width, dim)``, ``up_bias`` ``(slices, width)`` and ``down_weight``
    ``(slices, dim, width)`` hold this rank's slices, each contiguous; ``down_bias`` the
    down-projection's bias. ``world`` ranks hold ``slices × world`` slices between them.
    """

    def __init__(self, ffn: Any, chunks: int, rank: int, world: int) -> None:
        super().__init__()
        up, down = ffn.net[0].proj, ffn.net[2]
        inner = up.weight.shape[0]
        if inner % chunks:
            raise InvalidInputError(f"ffn_chunks: got {chunks}; allowed: a divisor of the FFN width {inner}")
        width, local = inner // chunks, chunks // world
        first = rank * local
        with torch.no_grad():
            up_w = up.weight.reshape(chunks, width, -1)[first : first + local]
            up_b = up.bias.reshape(chunks, width)[first : first + local]
            down_w = down.weight.reshape(down.weight.shape[0], chunks, width).permute(1, 0, 2)[first : first + local]
            self.up_weight = torch.nn.Parameter(up_w.contiguous(), requires_grad=False)
            self.up_bias = torch.nn.Parameter(up_b.contiguous(), requires_grad=False)
            self.down_weight = torch.nn.Parameter(down_w.contiguous(), requires_grad=False)
            self.down_bias = torch.nn.Parameter(down.bias.detach().clone(), requires_grad=False)
        self.approximate: str = ffn.net[0].approximate
        self.world = world

    def forward(self, hidden_states: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        partials = [
            torch.nn.functional.linear(
                torch.nn.functional.gelu(
                    torch.nn.functional.linear(hidden_states, up_w, up_b), approximate=self.approximate
                ),
                down_w,
            ).float()
            for up_w, up_b, down_w in zip(self.up_weight, self.up_bias, self.down_weight, strict=True)
        ]
        if self.world > 1:
            local = torch.stack(partials)
            gathered = [torch.empty_like(local) for _ in range(self.world)]
            dist.all_gather(gathered, local)
            partials = [partial for rank_partials in gathered for partial in rank_partials]
        total = partials[0]
        for partial in partials[1:]:
            total = total + partial
        return (total + self.down_bias.float()).to(hidden_states.dtype)


def slice_feed_forwards(experts: tuple[torch.nn.Module, ...], options: LoadOptions) -> None:
    """Replaces every block's FFN by :class:`SlicedFeedForward` of ``options.ffn_chunks`` slices,
    keeping this rank's share under tensor parallelism."""
    rank, world = world_rank_for(options)
    for expert in experts:
        for block in expert.blocks:  # type: ignore[union-attr]
            block.ffn = SlicedFeedForward(block.ffn, options.ffn_chunks, rank, world)


def world_rank_for(options: LoadOptions) -> tuple[int, int]:
    """(rank, ranks) among which the FFN slices are shared: the tensor-parallel group, or (0, 1)."""
    if options.tp_degree == 1:
        return 0, 1
    rank, size = world()
    if size != options.tp_degree:
        raise RuntimeUnavailableError(
            f"tp_degree {options.tp_degree}: the process group has {size} processes; launch with torchrun"
        )
    return rank, size
