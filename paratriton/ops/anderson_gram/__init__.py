from .naive import anderson_gram

__all__ = ["anderson_gram"]
