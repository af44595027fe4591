from .naive import order_k_residual

__all__ = ["order_k_residual"]
