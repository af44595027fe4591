"""Plain-torch reference of the window fixed-point step on the order-k equations."""

from __future__ import annotations

import torch

from .._window import order1_rows, window_rows
from ..order_k_residual.naive import order_k_residual


def masked_order_k(
    x: torch.Tensor,
    model_out: torch.Tensor,
    noise: torch.Tensor | None,
    a: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    lo: torch.Tensor,
    top: torch.Tensor,
    order: int,
    unit_weights: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Order-k residuals ``R [H, B, D]`` of steps ``lo .. lo+H-1`` with every order-1 residual above ``top`` set to
    zero (those steps are frozen), the states ``x[idx]``, the row indices ``idx`` and the mask ``idx <= top``."""
    H = model_out.shape[0]
    idx = window_rows(lo, H)
    live = idx <= top
    r, xw = order1_rows(x, model_out, noise, a, b, c, idx)
    r = torch.where(live[:, None, None], r, torch.zeros((), dtype=r.dtype, device=r.device))
    R = order_k_residual(r, a.index_select(0, idx), min(order, H), unit_weights)
    return R, xw, idx, live


def window_fixed_point(
    x: torch.Tensor,
    model_out: torch.Tensor,
    noise: torch.Tensor | None,
    a: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    lo: torch.Tensor,
    top: torch.Tensor,
    order: int,
    unit_weights: bool = False,
) -> None:
    """In place ``x_s += R_s`` for ``lo <= s <= top``; steps above ``top`` keep their value.

    Shapes as ``window_residual``; ``order``: k of the order-k equations (``>= H`` sums the whole window);
    ``unit_weights``: Picard's unit weights instead of the affine ones. At ``s = top``, ``R = r``, so the top step
    takes the exact sequential step from its frozen neighbour.
    """
    R, xw, idx, live = masked_order_k(x, model_out, noise, a, b, c, lo, top, order, unit_weights)
    x.index_copy_(0, idx, torch.where(live[:, None, None], xw + R, xw))
