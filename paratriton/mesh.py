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

from dataclasses import dataclass

import torch
import torch.distributed as dist

from .distributed import ShardedDenoiser

__all__ = ["Mesh2D", "enable_sequence_parallel", "init_mesh"]


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
