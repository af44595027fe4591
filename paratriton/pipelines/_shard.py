"""``parallelize(..., mesh=layout)``: the pipeline's network with every window call's rows split over the layout's
time groups (``paratriton.mesh``), each group's tokens over its sequence ranks (the network's own context
parallelism, turned on by ``paratriton.mesh.enable_sequence_parallel``)."""

from __future__ import annotations

from typing import Any

import torch


class RowSharded:
    """``branches`` (``_PipelineDenoiser``) evaluated by ``mesh``'s time groups in balanced chunks of rows.

    A chunk loses its rows' positions; the global row indices map back to the stock call's conditioning rows, as
    the rows are ordered ``(branch, window position, sample)``: row ``i`` of ``N = g * W * B`` is branch
    ``i // (W * B)``, sample ``i % B``.
    """

    def __init__(self, branches: Any, mesh: Any) -> None:
        self.branches, self.mesh = branches, mesh

    def __call__(self, x: torch.Tensor, step_index: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """``rows``: each row's conditioning row, as ``_PipelineDenoiser`` takes it (CFG truncation names them);
        sliced with the chunk."""
        if rows is not None:
            return self.mesh.shard(self.branches)(x, step_index, rows=rows)
        g, B = self.branches.g, self.branches.B
        per_branch = x.shape[0] // g  # W * B

        def chunk(xc: torch.Tensor, sc: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            return self.branches(xc, sc, rows=(rows // per_branch) * B + rows % B)

        return self.mesh.shard(chunk, with_rows=True)(x, step_index)

    def __getattr__(self, name: str) -> Any:
        """Everything else (``dummy``, ``kwargs``, ``B``, ``ts_by_step``, ...) is the wrapped denoiser's."""
        if name in ("branches", "mesh"):  # not set yet (copy, pickle): no recursion
            raise AttributeError(name)
        return getattr(self.branches, name)
