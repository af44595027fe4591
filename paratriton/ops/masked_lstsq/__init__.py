from .naive import masked_lstsq

__all__ = ["masked_lstsq"]
