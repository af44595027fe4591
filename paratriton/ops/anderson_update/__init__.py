from .naive import anderson_update

__all__ = ["anderson_update"]
