"""Models shipped with paratriton: the default class-conditional digits diffusion model (see ``default.py``)."""

from .default import (
    NUM_CLASSES,
    PATCH,
    SCHEDULER_CONFIG,
    UNET_CONFIG,
    WEIGHTS_DIR,
    DigitClassifier,
    DigitsPipeline,
    build_unet,
    default_scheduler,
    load_classifier,
    load_default,
    read_config,
    to_pil,
    verify_weights,
)

__all__ = [
    "load_default",
    "load_classifier",
    "DigitsPipeline",
    "DigitClassifier",
    "build_unet",
    "default_scheduler",
    "read_config",
    "verify_weights",
    "to_pil",
    "NUM_CLASSES",
    "PATCH",
    "UNET_CONFIG",
    "SCHEDULER_CONFIG",
    "WEIGHTS_DIR",
]
