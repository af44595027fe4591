"""diffusers integration: ``parallelize(pipe, method="taa", **options)`` solves a stock pipeline's denoising loop in
parallel. diffusers is imported only when a pipeline is parallelized, so ``import paratriton`` stays light."""

from ._specs import SUPPORTED_PIPELINES
from ._wrap import ParallelPipelineMixin, parallelize

__all__ = ["parallelize", "ParallelPipelineMixin", "SUPPORTED_PIPELINES"]
