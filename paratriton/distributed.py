"""Multi-GPU sampling: shard every batched model call of a solver across ``torch.distributed`` ranks.

Every rank runs the same solver on the same state (the solver is deterministic and cheap); only the model call is
split. ``ShardedDenoiser`` gives rank ``r`` a balanced, contiguous chunk of the ``N`` rows (sizes differ by at most
one, so no rank idles while another holds the window), evaluates it, and gathers all chunks with one collective
per call. A chunk loses its rows' positions, which a model needs whenever its conditioning depends on the row:
keyword tensors with one entry per row (such as ``ClassifierFreeGuidance(..., pass_branch=True)``'s ``cond``
flag) are sliced with the chunk, and with ``with_rows=True`` the model also gets ``rows=`` the global row indices
(``rows % B`` is the trajectory, for per-trajectory labels or prompts). So the two guidance halves can be spread
over ranks: ``ClassifierFreeGuidance(ShardedDenoiser(two_branch), scale, pass_branch=True)``.
"""

from __future__ import annotations

import datetime

import torch
import torch.distributed as dist

__all__ = ["ShardedDenoiser", "balanced_chunks", "init_process_group"]


def balanced_chunks(n: int, world: int) -> list[tuple[int, int]]:
    """``world`` contiguous ``[start, stop)`` ranges covering ``range(n)``, sizes differing by at most one."""
    base, extra = divmod(n, world)
    bounds, start = [], 0
    for r in range(world):
        stop = start + base + (1 if r < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


class ShardedDenoiser:
    """``model(x [N, ...], step_index [N])`` evaluated in ``world_size`` balanced chunks, one per rank.

    Each rank pads its chunk to ``ceil(N / world)`` rows so one fixed-size ``all_gather_into_tensor`` (NCCL) or
    ``all_gather`` (gloo) collects them; the padding rows repeat the chunk's last row and are dropped. All ranks
    must call it with identical ``x`` (they do when they run the same solver on the same inputs).
    """

    def __init__(self, model, group: dist.ProcessGroup | None = None, with_rows: bool = False) -> None:
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError(
                "ShardedDenoiser needs torch.distributed to be initialised "
                "(paratriton.distributed.init_process_group() under torchrun)"
            )
        self.model, self.group, self.with_rows = model, group, with_rows
        self.world = dist.get_world_size(group)
        self.rank = dist.get_rank(group)

    def __call__(self, x: torch.Tensor, step_index: torch.Tensor, **row_args: torch.Tensor) -> torch.Tensor:
        N = x.shape[0]
        per = -(-N // self.world)
        start, stop = balanced_chunks(N, self.world)[self.rank]
        if stop > start:
            out = self._call(x, step_index, row_args, start, stop)
        else:  # more ranks than rows: evaluate a real row to keep shapes and dtypes, then drop it
            out = self._call(x, step_index, row_args, 0, 1)[:0]
        want = (max(stop - start, 1), *x.shape[1:])
        got = tuple(out.shape) if torch.is_tensor(out) else None
        if got is None or got[1:] != want[1:] or (stop > start and got[0] != want[0]):
            # checked before padding: a chunk of the wrong size would be padded or trimmed into place silently.
            # This rank still joins the collective (with NaN rows, so the other ranks stop on a non-finite model
            # output instead of waiting for it until the timeout), then raises.
            dtype = out.dtype if torch.is_tensor(out) and out.is_floating_point() else x.dtype
            self._gather(torch.full((per, *x.shape[1:]), float("nan"), dtype=dtype, device=x.device), N, per)
            raise ValueError(
                f"ShardedDenoiser rank {self.rank} of {self.world}: the model returned "
                f"{list(got) if got is not None else type(out).__name__} for its chunk of rows {start}..{stop - 1} "
                f"(input {list(x[start:stop].shape)}); it must return one output row per input row, shaped like "
                f"the input: {[stop - start, *x.shape[1:]]}"
            )
        pad = per - out.shape[0]
        if pad:
            fill = out[-1:] if out.shape[0] else torch.zeros_like(self._call(x, step_index, row_args, 0, 1))
            out = torch.cat([out, fill.expand(pad, *out.shape[1:])])
        return self._gather(out, N, per)

    def _gather(self, out: torch.Tensor, N: int, per: int) -> torch.Tensor:
        """Every rank's padded chunk ``out [per, ...]`` gathered, the padding dropped: ``[N, ...]``."""
        out = out.contiguous()
        if dist.get_backend(self.group) == "nccl":
            gathered = out.new_empty(self.world * per, *out.shape[1:])
            dist.all_gather_into_tensor(gathered, out, group=self.group)
            parts = gathered.split(per)
        else:
            parts = [torch.empty_like(out) for _ in range(self.world)]
            dist.all_gather(parts, out, group=self.group)
        sizes = [b - a for a, b in balanced_chunks(N, self.world)]
        return torch.cat([p[:s] for p, s in zip(parts, sizes)])

    def _call(
        self, x: torch.Tensor, step_index: torch.Tensor, row_args: dict[str, torch.Tensor], start: int, stop: int
    ) -> torch.Tensor:
        kw = {k: v[start:stop] for k, v in row_args.items()}
        if self.with_rows:
            kw["rows"] = torch.arange(start, stop, device=step_index.device)
        return self.model(x[start:stop], step_index[start:stop], **kw)


def init_process_group(timeout_s: float = 120.0) -> tuple[int, int, torch.device]:
    """Initialise from torchrun's environment (NCCL on CUDA, gloo otherwise) with a timeout, so a rank that dies
    or hangs makes the others fail with an error instead of waiting forever. Returns ``(rank, world, device)``."""
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    rank, world = dist.get_rank(), dist.get_world_size()
    if backend == "nccl":
        local = rank % torch.cuda.device_count()
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")
