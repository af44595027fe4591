"""Re-exports for one release: the step noise is drawn by ``paratriton.schedulers`` (``stock_draws``,
``draw_step_noise``)."""

from __future__ import annotations

from .schedulers import draw_step_noise, stock_draws

__all__ = ["stock_draws", "draw_step_noise"]
