"""Models shipped with paratriton: the default class-conditional digits diffusion model (``default.py``), a
class-conditional DiT of 32x32 RGB crops of scikit-image's photographs (``dit_crops.py``) and a low-dimensional
diffusion policy of a Meta-World task (``policy.py``).

    from paratriton.models import load
    pipe = load()             # "digits", the default: DigitsPipeline
    pipe = load("dit-crops")  # DiTCropsPipeline, the same API
    policy = load("policy")   # DiffusionUnetLowdimPolicy: policy.predict_action(obs [B, 2, 39]) -> [B, 8, 4]
"""

from __future__ import annotations

import torch

from .default import (
    NUM_CLASSES,
    PATCH,
    SCHEDULER_CONFIG,
    UNET_CONFIG,
    WEIGHTS_DIR,
    DigitClassifier,
    DigitsOutput,
    DigitsPipeline,
    ImagesOutput,
    build_unet,
    default_scheduler,
    load_classifier,
    load_default,
    read_config,
    to_pil,
    verify_weights,
)
from .dit_crops import (
    CropClassifier,
    DiTCropsOutput,
    DiTCropsPipeline,
    load_crop_classifier,
    load_dit_crops,
)
from .policy import (
    POLICY_WEIGHTS_DIR,
    DiffusionUnetLowdimPolicy,
    LimitsNormalizer,
    build_policy,
    load_policy,
    save_policy,
)

MODELS = ("digits", "dit-crops", "policy")


def load(name: str = "digits", device: str | torch.device | None = None, dtype: torch.dtype | None = None):
    """A shipped model, ready (offline): ``"digits"`` (the default, ``load_default``: 32x32 gray digits,
    10 classes), ``"dit-crops"`` (``load_dit_crops``: 32x32 RGB crops, 16 classes) or ``"policy"``
    (``load_policy``: a ``DiffusionUnetLowdimPolicy`` with ``predict_action(obs, generator=None, method=...)``).
    ``device`` defaults to CUDA if available, else the CPU; ``dtype`` to float32. The two image pipelines take
    ``(class_labels, num_inference_steps, guidance_scale, generator, method, ...)`` and give
    ``pipe.denoiser(coeffs, labels)`` / ``pipe.problem(B, T)``."""
    if name == "digits":
        return load_default(device=device, dtype=dtype)
    if name == "dit-crops":
        return load_dit_crops(device=device, dtype=dtype)
    if name == "policy":
        return load_policy(device=device, dtype=dtype)
    raise ValueError(f"name must be one of {MODELS}, got {name!r}")


def load_model_classifier(name: str = "digits", device: str | torch.device | None = None):
    """The classifier of a shipped model's quality check: ``DigitClassifier`` or ``CropClassifier``."""
    if name == "digits":
        return load_classifier(device)
    if name == "dit-crops":
        return load_crop_classifier(device)
    if name == "policy":
        raise ValueError("the policy has no classifier: its quality check is a closed-loop success rate")
    raise ValueError(f"name must be one of {MODELS}, got {name!r}")


__all__ = [
    "load",
    "load_model_classifier",
    "MODELS",
    "load_default",
    "load_dit_crops",
    "load_policy",
    "save_policy",
    "build_policy",
    "DiffusionUnetLowdimPolicy",
    "LimitsNormalizer",
    "POLICY_WEIGHTS_DIR",
    "load_crop_classifier",
    "DiTCropsPipeline",
    "DiTCropsOutput",
    "DigitsOutput",
    "ImagesOutput",
    "CropClassifier",
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
