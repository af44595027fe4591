"""A 2-D layout of ``torch.distributed`` ranks: ``time`` groups x ``sequence`` ranks.

The ``time`` axis splits the rows of every batched window call (steps x guidance branches, per-row timesteps) over
``G`` groups with ``ShardedDenoiser``; the ``sequence`` axis splits each row's tokens over the ``S`` ranks of a group
with diffusers' context parallelism (Ulysses attention). Rank ``r`` is time group ``r // S``, sequence rank
``r % S``: a group's ranks are neighbours, so on one host its all-to-alls stay on adjacent GPUs.

Every rank runs the same solver on the same state; each group evaluates its chunk of rows (every rank of the group
with the same rows and its share of the tokens), the context-parallel output hook gathers the tokens inside the
group, and ``ShardedDenoiser`` gathers the rows across groups (one all-gather over the ranks that share a sequence
rank). Both splits are exact: the result equals the one-process call up to floating-point summation order.

On the CPU (gloo) diffusers' own ``enable_parallelism`` stops before anything runs: it picks the device as
``rank % torch.accelerator.device_count()`` and there is no accelerator (ZeroDivisionError).
``enable_sequence_parallel`` does the same steps on the CPU with the device given, so the CPU tests run the real
attention collectives.
Only Ulysses runs on the CPU: diffusers' ring attention needs the attention's log-sum-exp, which its CPU backend
("native") does not return.
"""

from __future__ import annotations

import time as _time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .distributed import ShardedDenoiser

__all__ = ["Mesh2D", "choose_layout", "disable_sequence_parallel", "enable_sequence_parallel", "init_mesh", "layouts"]


@dataclass
class Mesh2D:
    """``mesh``: the ``("time", "ring", "ulysses")`` device mesh (ring of size 1); ``time``/``sequence``: sizes;
    ``time_group``: this rank's process group across time groups (its peers with the same sequence rank)."""

    mesh: object  # torch.distributed.device_mesh.DeviceMesh
    time: int
    sequence: int
    time_group: dist.ProcessGroup

    @property
    def time_rank(self) -> int:
        """This rank's time group."""
        return self.mesh.get_local_rank("time")

    def shard(self, model, with_rows: bool = False) -> ShardedDenoiser:
        """``model`` (a denoiser over rows) with its rows split over the time groups."""
        return ShardedDenoiser(model, group=self.time_group, with_rows=with_rows)


def init_mesh(time: int, sequence: int, device_type: str | None = None) -> Mesh2D:
    """The ``time x sequence`` mesh over the initialised world (``time * sequence`` must equal the world size)."""
    from torch.distributed.device_mesh import init_device_mesh

    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("init_mesh needs torch.distributed to be initialised (init_process_group under torchrun)")
    world = dist.get_world_size()
    if time < 1 or sequence < 1 or time * sequence != world:
        raise ValueError(f"time x sequence must equal the world size {world}, got {time} x {sequence}")
    if device_type is None:
        device_type = "cuda" if dist.get_backend() == "nccl" else "cpu"
    mesh = init_device_mesh(device_type, (time, 1, sequence), mesh_dim_names=("time", "ring", "ulysses"))
    return Mesh2D(mesh, time, sequence, mesh.get_group("time"))


def enable_sequence_parallel(model: torch.nn.Module, layout: Mesh2D) -> torch.nn.Module:
    """Turn on diffusers' Ulysses context parallelism over ``layout``'s sequence axis (in place; returns
    ``model``). A sequence axis of size 1 leaves the model as it is.

    The model needs a ``_cp_plan`` (diffusers' Flux, Wan, Qwen-Image, ... transformers), its head count and each
    split sequence (image and text tokens) divisible by the sequence size, and an attention backend with context
    parallelism ("native" on the CPU; flash / cuDNN on CUDA).
    """
    from diffusers import ContextParallelConfig

    if layout.sequence == 1:
        return model
    config = ContextParallelConfig(ulysses_degree=layout.sequence, mesh=layout.mesh)
    if torch.accelerator.device_count() > 0:
        model.enable_parallelism(config=config)
        return model
    # enable_parallelism's steps with the CPU as the device (it computes rank % device_count(), 0 on the CPU)
    from diffusers.hooks.context_parallel import apply_context_parallel
    from diffusers.models._modeling_parallel import ParallelConfig

    if getattr(model, "_parallel_config", None) is not None:
        raise RuntimeError(f"parallelism is already applied to this {type(model).__name__}")
    plan = getattr(model, "_cp_plan", None)
    if plan is None:
        raise ValueError(f"{type(model).__name__} has no _cp_plan: diffusers cannot split its sequence")
    parallel = ParallelConfig(context_parallel_config=config)
    parallel.setup(dist.get_rank(), dist.get_world_size(), torch.device("cpu"), mesh=layout.mesh)
    model._parallel_config = parallel
    for module in model.modules():
        processor = getattr(module, "processor", None)
        if processor is not None and hasattr(processor, "_parallel_config"):
            processor._parallel_config = parallel
    apply_context_parallel(model, config, plan)
    return model


def disable_sequence_parallel(model: torch.nn.Module) -> torch.nn.Module:
    """Undo ``enable_sequence_parallel`` (in place; returns ``model``): the context-parallel hooks removed and the
    parallel config cleared on the model and its attention processors. A model without it is left as it is."""
    from diffusers.hooks.context_parallel import remove_context_parallel

    if getattr(model, "_parallel_config", None) is None:
        return model
    remove_context_parallel(model, model._cp_plan)
    model._parallel_config = None
    for module in model.modules():
        processor = getattr(module, "processor", None)
        if processor is not None and hasattr(processor, "_parallel_config"):
            processor._parallel_config = None
    return model


def layouts(world: int) -> list[tuple[int, int]]:
    """Every ``(time, sequence)`` with ``time * sequence == world``, time-only first, sequence-only last."""
    if world < 1:
        raise ValueError(f"world must be >= 1, got {world}")
    return [(world // s, s) for s in range(1, world + 1) if world % s == 0]


def choose_layout(
    model: torch.nn.Module,
    time_call: Callable[[Mesh2D, torch.nn.Module], None],
    candidates: list[tuple[int, int]] | None = None,
    reps: int = 3,
) -> tuple[Mesh2D, dict[tuple[int, int], float]]:
    """Measure each ``(time, sequence)`` layout and keep the fastest, with ``model`` context-parallel over it.

    ``time_call(layout, model)`` runs what a layout is chosen for (one batched window call of the solve, split with
    ``layout.shard``); it is run once to warm up, then ``reps`` times, on every rank. A layout's time is the slowest
    rank's median in ms (an ``all_reduce`` of the maximum), so every rank chooses the same one. ``candidates``:
    default ``layouts(world)``; one the model cannot split (heads or tokens not divisible by its sequence size)
    is skipped on every rank. Returns the chosen layout (its context parallelism left enabled on ``model``) and
    every measured layout's ms."""
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("choose_layout needs torch.distributed to be initialised (init_process_group)")
    if isinstance(reps, bool) or not isinstance(reps, int) or reps < 1:
        raise ValueError(f"reps must be an int >= 1, got {reps!r}")
    world = dist.get_world_size()
    candidates = layouts(world) if candidates is None else [tuple(c) for c in candidates]
    for c in candidates:
        if len(c) != 2 or c[0] * c[1] != world:
            raise ValueError(f"candidates must be (time, sequence) pairs with time x sequence = {world}, got {c}")
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    measured: dict[tuple[int, int], float] = {}
    for time, seq in candidates:
        layout = init_mesh(time, seq)
        try:
            enable_sequence_parallel(model, layout)
            time_call(layout, model)  # warm-up: compiles, autotuning, the collectives' first use
            ms = []
            for _ in range(reps):
                _sync(device)
                t0 = _time.perf_counter()
                time_call(layout, model)
                _sync(device)
                ms.append((_time.perf_counter() - t0) * 1e3)
            local = sorted(ms)[reps // 2]
        except (ValueError, RuntimeError):  # a split this model cannot take: skipped where any rank failed
            local = float("inf")
        finally:
            disable_sequence_parallel(model)
        slowest = torch.tensor([local], dtype=torch.float64, device=device)
        dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
        if slowest.item() < float("inf"):
            measured[(time, seq)] = slowest.item()
    if not measured:
        raise RuntimeError(f"no layout of {candidates} could run this model")
    best = min(measured, key=measured.get)
    layout = init_mesh(*best)
    enable_sequence_parallel(model, layout)
    return layout, measured


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()
