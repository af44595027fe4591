"""Plain-torch reference of the Anderson Gram pass: the one of the TAA references (``ops/taa/naive.py``)."""

from ...taa.naive import anderson_gram

__all__ = ["anderson_gram"]
