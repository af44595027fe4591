"""The second shipped model: a class-conditional DiT of 32x32 RGB crops of scikit-image's photographs.

Trained by ``python/train_dit.py`` on random 32x32 crops (scale jitter, horizontal flips) of the photographs that
scikit-image's wheel ships (``PHOTOGRAPHS``; the class of a crop is the photograph it was cut from; gray ones are
repeated to three channels), in [-1, 1]. The network is a diffusers ``DiTTransformer2DModel`` (``DIT_CONFIG``:
patch 2, so 256 tokens as in DiT-XL/2; adaLN-zero; epsilon prediction) with ``num_embeds_ada_norm = num_classes``:
its label tables have ``num_classes + 1`` rows and row ``num_classes`` is the null class of classifier-free
guidance, as index 1000 is for diffusers' ``DiTPipeline``. The noise schedule is the digits model's (linear betas
1e-4..0.02, 1000 steps). Weights (fp16 safetensors), config and the crop classifier of the quality check ship in
``weights_dit/``; everything works offline, on the CPU and on CUDA.

    from paratriton.models import load
    pipe = load("dit-crops")                                    # DiTCropsPipeline on CUDA if available, else CPU
    images = pipe([0, 5, 12], num_inference_steps=50).images    # PIL RGB images, diffusers' DDIM loop
    images = pipe([0, 5, 12], method="taa").images              # the same samples through ParaTAA

The pipeline has the digits pipeline's API (``paratriton.models.DigitsPipeline``): ``pipe.denoiser(coeffs, labels,
guidance_scale)`` is a paratriton model ``(x [N, 3, 32, 32], step_index [N]) -> eps [N, 3, 32, 32]`` and
``pipe.problem(B, T, generator)`` draws ``x_T [B, 3, 32, 32]`` and step noise ``[T, B, 3, 32, 32]``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from . import default as _digits

__all__ = [
    "PHOTOGRAPHS",
    "NUM_CLASSES",
    "IMAGE_SIZE",
    "DIT_CONFIG",
    "SCHEDULER_CONFIG",
    "WEIGHTS_DIR",
    "CropClassifier",
    "DiTCropsPipeline",
    "DiTCropsOutput",
    "build_dit",
    "load_photographs",
    "load_dit_crops",
    "load_crop_classifier",
    "read_dit_config",
    "to_pil_rgb",
]

WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights_dit")

# The photographs of scikit-image 0.26's wheel that load offline (no pooch download): class i is PHOTOGRAPHS[i].
# Colour first, then gray (repeated to RGB). Left out: synthetic images (colorwheel, checkerboard, logo, phantom,
# binary_blobs), `cat` (the same photograph as `chelsea`), images too small for 32x32 crops (lfw_subset,
# microaneurysms), the binary `horse`, `text` (nearly `page`), `clock` (80% of its crops are flat: motion blur)
# and every image that needs a download.
PHOTOGRAPHS: tuple[str, ...] = (
    "astronaut",
    "chelsea",
    "coffee",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "rocket",
    "motorcycle_left",
    "camera",
    "brick",
    "grass",
    "gravel",
    "moon",
    "coins",
    "page",
    "cell",
)
NUM_CLASSES = len(PHOTOGRAPHS)
IMAGE_SIZE = 32
CHANNELS = 3

DIT_CONFIG = dict(
    num_attention_heads=4,
    attention_head_dim=64,
    in_channels=CHANNELS,
    out_channels=CHANNELS,
    num_layers=9,
    sample_size=IMAGE_SIZE,
    patch_size=2,
    num_embeds_ada_norm=NUM_CLASSES,
    norm_type="ada_norm_zero",
    activation_fn="gelu-approximate",
    dropout=0.0,
    attention_bias=True,
    norm_elementwise_affine=False,
)

SCHEDULER_CONFIG = dict(_digits.SCHEDULER_CONFIG)


def load_photographs(names: Sequence[str] = PHOTOGRAPHS) -> list[np.ndarray]:
    """The photographs ``names`` from ``skimage.data`` as ``uint8 [H, W, 3]`` arrays (gray repeated to RGB).

    Needs scikit-image (the ``test`` extra); every name in ``PHOTOGRAPHS`` ships in its wheel (no download).
    """
    try:
        import skimage.data as data
    except ImportError as e:
        raise ImportError("load_photographs needs scikit-image: pip install scikit-image") from e
    out = []
    for name in names:
        if name not in PHOTOGRAPHS:
            raise ValueError(f"unknown photograph {name!r}; choose from {PHOTOGRAPHS}")
        img = data.stereo_motorcycle()[0] if name == "motorcycle_left" else getattr(data, name)()
        img = np.asarray(img)
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"skimage.data.{name}: expected uint8 [H, W, 3 or gray], got {img.dtype} {img.shape}")
        out.append(np.ascontiguousarray(img))
    return out


def build_dit(config: dict | None = None):
    """A fresh (randomly initialised) ``DiTTransformer2DModel`` of ``config`` (default ``DIT_CONFIG``)."""
    from diffusers import DiTTransformer2DModel

    return DiTTransformer2DModel(**(DIT_CONFIG if config is None else config))


class CropClassifier(torch.nn.Module):
    """A small CNN naming the photograph a 32x32 RGB crop in [-1, 1] came from (the quality check's judge).

    Three conv-BN-ReLU stages (64, 128, 256 channels, max-pooled), global average pooling, one linear layer.
    """

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        layers: list[torch.nn.Module] = []
        c_in = CHANNELS
        for c in (64, 128, 256):
            layers += [
                torch.nn.Conv2d(c_in, c, 3, padding=1, bias=False),
                torch.nn.BatchNorm2d(c),
                torch.nn.ReLU(),
                torch.nn.Conv2d(c, c, 3, padding=1, bias=False),
                torch.nn.BatchNorm2d(c),
                torch.nn.ReLU(),
                torch.nn.MaxPool2d(2),
            ]
            c_in = c
        self.features = torch.nn.Sequential(*layers)
        self.fc = torch.nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [N, 3, 32, 32]`` -> logits ``[N, num_classes]``."""
        return self.fc(self.features(x).mean((2, 3)))

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """``images [N, 3, 32, 32]`` in [-1, 1] (clamped here) -> predicted labels ``[N]``."""
        p = next(self.parameters())
        return self(images.to(p.device, p.dtype).clamp(-1, 1)).argmax(1)


def read_dit_config(weights_dir: str = WEIGHTS_DIR) -> dict:
    """The shipped ``config.json`` of the DiT (model, scheduler, data, training and quality records, checksums)."""
    if not os.path.exists(os.path.join(weights_dir, "config.json")):
        raise FileNotFoundError(
            f"{os.path.join(weights_dir, 'config.json')} is missing: the package was installed without its weights "
            "(package data), or python/train_dit.py has not been run"
        )
    return _digits.read_config(weights_dir)


def load_crop_classifier(device: str | torch.device | None = None, weights_dir: str = WEIGHTS_DIR) -> CropClassifier:
    """The shipped crop classifier (float32, eval mode)."""
    cfg = read_dit_config(weights_dir)
    clf = CropClassifier(int(cfg.get("num_classes", NUM_CLASSES)))
    path = os.path.join(weights_dir, "classifier.safetensors")
    _digits._load_state(clf, _digits._load_safetensors(path, cfg), path)
    return clf.to(device or "cpu").eval()


class DiTCropsPipeline(_digits.DigitsPipeline):
    """Class-conditional sampling of the DiT crops model, as a diffusers pipeline with the digits pipeline's API.

    ``pipe(class_labels, num_inference_steps=50, guidance_scale=..., eta=0.0, generator=None, method=None)``:
    ``method=None`` runs diffusers' own DDIM loop; ``method`` in ``paratriton.METHODS`` runs ``paratriton.solve`` on
    the same problem (same initial noise and step noise) and returns the same images to the solver tolerance.
    Labels are in ``[0, num_classes]``; ``num_classes`` is the null (unconditional) class.
    """

    model_cpu_offload_seq = "transformer"

    def __init__(self, transformer, scheduler) -> None:
        super(_digits.DigitsPipeline, self).__init__()  # DiffusionPipeline's: the modules are registered here
        self.register_modules(transformer=transformer, scheduler=scheduler)

    @property
    def unet(self):
        """The network (``transformer``), under the name the digits pipeline's methods use."""
        return self.transformer

    @property
    def num_classes(self) -> int:
        return int(self.transformer.config.num_embeds_ada_norm)

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        s = int(self.transformer.config.sample_size)
        return (int(self.transformer.config.in_channels), s, s)

    def eps(self, x: torch.Tensor, timesteps: torch.Tensor, class_labels: torch.Tensor) -> torch.Tensor:
        """Epsilon prediction for images ``x [N, 3, 32, 32]`` at ``timesteps [N]`` and labels ``[N]`` (the null
        class ``num_classes`` is the unconditional model). Returns ``x``'s dtype."""
        p = next(self.transformer.parameters())
        out = self.transformer(
            x.to(p.device, p.dtype), timestep=timesteps.to(p.device), class_labels=class_labels.to(p.device)
        ).sample
        return out.to(x.dtype)

    @torch.no_grad()
    def __call__(
        self,
        class_labels: Sequence[int] | torch.Tensor,
        num_inference_steps: int = 50,
        guidance_scale: float | None = None,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        output_type: str = "pil",
        method: str | None = None,
        scheduler=None,
        **solver_options,
    ):
        """As ``DigitsPipeline.__call__``; ``output_type="pt"`` gives ``images [B, 3, 32, 32]`` in [-1, 1], else a
        list of PIL RGB images."""
        out = super().__call__(
            class_labels,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            eta=eta,
            generator=generator,
            output_type="pt",
            method=method,
            scheduler=scheduler,
            **solver_options,
        )
        return DiTCropsOutput(out.images if output_type == "pt" else to_pil_rgb(out.images), out.result)


@dataclass
class DiTCropsOutput(_digits.ImagesOutput):
    """Output of the DiT crops model (``DiTCropsPipeline``): RGB 32x32 photo crops, ``[B, 3, 32, 32]`` for ``"pt"``."""


def to_pil_rgb(images: torch.Tensor) -> list:
    """``[B, 3, H, W]`` in [-1, 1] -> list of PIL RGB images."""
    from PIL import Image

    arr = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()
    return [Image.fromarray(a.numpy(), mode="RGB") for a in arr]


def load_dit_crops(
    device: str | torch.device | None = None, dtype: torch.dtype | None = None, weights_dir: str = WEIGHTS_DIR
) -> DiTCropsPipeline:
    """Load the shipped DiT crops model as a ready ``DiTCropsPipeline`` (offline; no download).

    device: default CUDA if available, else CPU. dtype: default float32 (the weights ship in float16 and are
    upcast; float16 and bfloat16 work on CUDA).
    """
    cfg = read_dit_config(weights_dir)
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.float32 if dtype is None else dtype
    try:
        dit = build_dit(cfg["dit"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{os.path.join(weights_dir, 'config.json')}: bad or missing 'dit' entry ({e})") from None
    path = os.path.join(weights_dir, "model.safetensors")
    _digits._load_state(dit, _digits._load_safetensors(path, cfg), path)
    dit = torch.nn.Module.to(dit, device, dtype).eval().requires_grad_(False)  # (diffusers' .to warns on dtype)
    from diffusers import DDIMScheduler

    pipe = DiTCropsPipeline(dit, DDIMScheduler(**cfg["scheduler"]))
    pipe._default_guidance_scale = float(cfg.get("default_guidance_scale", 2.0))
    pipe.set_progress_bar_config(disable=True)
    return pipe
