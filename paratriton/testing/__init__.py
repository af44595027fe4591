"""Test models with exactly known denoisers (float64, any sample shape)."""

from .gaussian_mixture import GaussianMixture

__all__ = ["GaussianMixture"]
