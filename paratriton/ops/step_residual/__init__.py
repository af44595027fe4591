from .naive import step_residual

__all__ = ["step_residual"]
