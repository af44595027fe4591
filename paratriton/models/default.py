"""The shipped default model: a small class-conditional diffusion model of handwritten digits (32x32, 1 channel).

Trained by ``python/train_default_model.py`` on scikit-learn's 8x8 digits, upsampled to 32x32 and scaled to
[-1, 1]. The network is a diffusers ``UNet2DModel`` (10.1M parameters, epsilon prediction, class embedding with
``num_classes + 1`` entries: index ``num_classes`` is the null class of classifier-free guidance) that works on
the image cut into 4x4 patches (space-to-depth, as DiT's patchify: ``[1, 32, 32] -> [16, 8, 8]``), which keeps one
call cheap enough for the CPU. Everything here works offline: weights and configs ship in ``weights/``.

    from paratriton.models import load_default
    pipe = load_default()                                   # DigitsPipeline on CUDA if available, else CPU
    images = pipe([3, 1, 4], num_inference_steps=50).images # PIL images, sequential DDIM sampling
    images = pipe([3, 1, 4], method="taa").images           # the same samples through ParaTAA
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "DigitsPipeline",
    "load_default",
    "load_classifier",
    "DigitClassifier",
    "WEIGHTS_DIR",
    "UNET_CONFIG",
    "SCHEDULER_CONFIG",
    "NUM_CLASSES",
    "PATCH",
    "build_unet",
    "default_scheduler",
    "read_config",
    "verify_weights",
]

WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")
NUM_CLASSES = 10
PATCH = 4
IMAGE_SIZE = 32
CHANNELS = 1

UNET_CONFIG = dict(
    sample_size=IMAGE_SIZE // PATCH,
    in_channels=CHANNELS * PATCH * PATCH,
    out_channels=CHANNELS * PATCH * PATCH,
    block_out_channels=(64, 128, 256),
    down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "UpBlock2D"),
    layers_per_block=1,
    norm_num_groups=16,
    num_class_embeds=NUM_CLASSES + 1,
)

SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_schedule="linear",
    beta_start=1e-4,
    beta_end=0.02,
    prediction_type="epsilon",
    clip_sample=False,
)


def build_unet(config: dict | None = None):
    from diffusers import UNet2DModel

    return UNet2DModel(**(UNET_CONFIG if config is None else config))


def default_scheduler(kind: str = "ddim", config: dict | None = None):
    """A fresh diffusers scheduler of the default model's noise schedule: ``kind`` = "ddim" or "ddpm"."""
    from diffusers import DDIMScheduler, DDPMScheduler

    cfg = dict(SCHEDULER_CONFIG if config is None else config)
    if kind == "ddim":
        return DDIMScheduler(**cfg)
    if kind == "ddpm":
        return DDPMScheduler(**cfg)
    raise ValueError(f"kind must be 'ddim' or 'ddpm', got {kind!r}")


def read_config(weights_dir: str = WEIGHTS_DIR) -> dict:
    """The shipped ``config.json`` (model, scheduler, quality record and the weights' checksums)."""
    path = os.path.join(weights_dir, "config.json")
    try:
        with open(path) as f:
            cfg = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path} is missing: the package was installed without its weights (package data), "
            "or python/train_default_model.py has not been run"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is corrupt (not valid JSON: {e})") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{path} is corrupt: expected a JSON object, got {type(cfg).__name__}")
    return cfg


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_weights(path: str, config: dict) -> None:
    """Check ``path`` against the size and sha256 recorded under ``config["files"][basename]``; raises naming the
    file when it is truncated or corrupt. A file the config records no checksum for (a fresh training run) passes."""
    rec = (config.get("files") or {}).get(os.path.basename(path))
    if rec is None:
        return
    size = os.path.getsize(path)
    if "bytes" in rec and size != rec["bytes"]:
        raise ValueError(
            f"{path} is truncated or corrupt: {size} bytes, the config records {rec['bytes']}; "
            "reinstall the package (or re-fetch the file)"
        )
    if "sha256" in rec and _sha256(path) != rec["sha256"]:
        raise ValueError(
            f"{path} is corrupt: its sha256 does not match the one in config.json; reinstall the "
            "package (or re-fetch the file)"
        )


class DigitClassifier(torch.nn.Module):
    """A small CNN classifying 32x32 digits in [-1, 1] (the quality check of the default model)."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.c1 = torch.nn.Conv2d(1, 32, 3, padding=1)
        self.c2 = torch.nn.Conv2d(32, 64, 3, padding=1)
        self.c3 = torch.nn.Conv2d(64, 64, 3, padding=1)
        self.fc1 = torch.nn.Linear(64 * 4 * 4, 128)
        self.fc2 = torch.nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.c1(x)), 2)
        x = F.max_pool2d(F.relu(self.c2(x)), 2)
        x = F.max_pool2d(F.relu(self.c3(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """``images [N, 1, 32, 32]`` in [-1, 1] (clamped here) -> predicted labels ``[N]``."""
        p = next(self.parameters())
        return self(images.to(p.device, p.dtype).clamp(-1, 1)).argmax(1)


def _load_safetensors(path: str, config: dict | None = None) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path} is missing: the package was installed without its weights "
            "(package data), or python/train_default_model.py has not been run"
        )
    if config is not None:
        verify_weights(path, config)
    try:
        return load_file(path)
    except Exception as e:  # safetensors raises its own error types for a bad header or a short file
        raise ValueError(f"{path} is truncated or corrupt (safetensors could not read it: {e})") from None


def _load_state(module: torch.nn.Module, sd: dict[str, torch.Tensor], path: str) -> None:
    try:
        module.load_state_dict({k: v.float() for k, v in sd.items()})
    except RuntimeError as e:
        raise ValueError(f"{path} does not match the model its config.json describes: {e}") from None


def load_classifier(device: str | torch.device | None = None, weights_dir: str = WEIGHTS_DIR) -> DigitClassifier:
    """The shipped digit classifier (float32, eval mode)."""
    clf = DigitClassifier()
    path = os.path.join(weights_dir, "classifier.safetensors")
    cfg = read_config(weights_dir) if os.path.exists(os.path.join(weights_dir, "config.json")) else None
    _load_state(clf, _load_safetensors(path, cfg), path)
    return clf.to(device or "cpu").eval()


def _pipeline_base():
    from diffusers import DiffusionPipeline

    return DiffusionPipeline


@dataclass
class ImagesOutput:
    """What a shipped model's pipeline returns: ``images`` (PIL images, or a tensor ``[B, C, H, W]`` in [-1, 1] for
    ``output_type="pt"``) and ``result`` (the ``paratriton.SolveResult`` when a paratriton method ran, else None)."""

    images: list
    result: object = None


@dataclass
class DigitsOutput(ImagesOutput):
    """Output of the digits model (``DigitsPipeline``): gray 32x32 digits, ``[B, 1, 32, 32]`` for ``"pt"``."""


class DigitsPipeline(_pipeline_base()):
    """Class-conditional sampling of the default model, as a diffusers pipeline.

    ``pipe(class_labels, num_inference_steps=50, guidance_scale=..., eta=0.0, generator=None, method=None)``:
    ``method=None`` runs diffusers' own scheduler loop; ``method`` in ``paratriton.METHODS`` runs ``paratriton.solve``
    on the same problem (same initial noise and step noise) and returns the same images to the solver tolerance.
    """

    model_cpu_offload_seq = "unet"

    def __init__(self, unet, scheduler) -> None:
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    # -- the network on 32x32 images -----------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return int(self.unet.config.num_class_embeds) - 1

    @property
    def null_class(self) -> int:
        return self.num_classes

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        s = int(self.unet.config.sample_size) * PATCH
        return (int(self.unet.config.in_channels) // (PATCH * PATCH), s, s)

    def eps(self, x: torch.Tensor, timesteps: torch.Tensor, class_labels: torch.Tensor) -> torch.Tensor:
        """Epsilon prediction for images ``x [N, 1, 32, 32]`` at ``timesteps [N]`` and labels ``[N]`` (the null
        class ``num_classes`` is the unconditional model). Returns ``x``'s dtype."""
        p = next(self.unet.parameters())
        h = F.pixel_unshuffle(x.to(p.device, p.dtype), PATCH)
        out = self.unet(h, timesteps.to(p.device), class_labels=class_labels.to(p.device)).sample
        return F.pixel_shuffle(out, PATCH).to(x.dtype)

    def labels(self, class_labels) -> torch.Tensor:
        """``class_labels`` as a ``[B]`` int64 CPU tensor; an error naming the argument and the range otherwise (no
        silent truncation: 2.7 is not 2)."""
        try:
            raw = torch.as_tensor(class_labels).reshape(-1).cpu()
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(
                f"class_labels must be ints in [0, {self.num_classes}] ({self.num_classes} = unconditional), got "
                f"{class_labels!r}"
            ) from None
        integral = not raw.is_complex() and raw.dtype != torch.bool and bool((raw == raw.round()).all())
        if raw.numel() == 0 or not integral:
            shown = raw.tolist() if torch.is_tensor(class_labels) else class_labels
            raise ValueError(
                f"class_labels must be ints in [0, {self.num_classes}] ({self.num_classes} = unconditional), got "
                f"{shown!r}"
            )
        lab = raw.to(torch.long)
        if lab.min() < 0 or lab.max() > self.num_classes:
            raise ValueError(
                f"class_labels must be in [0, {self.num_classes}] ({self.num_classes} = unconditional), "
                f"got {lab.tolist()}"
            )
        return lab

    def denoiser(self, coeffs, class_labels, guidance_scale: float | None = None):
        """A paratriton denoiser ``model(x, step_index)`` for ``B = len(class_labels)`` trajectories.

        Rows are step-major (``row % B`` is the trajectory), so row ``r`` gets label ``class_labels[r % B]``.
        ``guidance_scale`` 1 calls the conditional model only; otherwise classifier-free guidance with one batched
        call of ``2N`` rows (``paratriton.ClassifierFreeGuidance``).
        """
        from ..model import ClassifierFreeGuidance

        scale = self.default_guidance_scale if guidance_scale is None else float(guidance_scale)
        param = next(self.unet.parameters())
        compute_dtype, dev = param.dtype, param.device  # a bf16/fp16 network: the solvers stop at its floor
        lab = self.labels(class_labels)
        B = lab.numel()
        # every indexing tensor lives on the network's device: no host copy inside a call (CUDA graph capture)
        ts, lab = coeffs.timesteps.to(dev, torch.long), lab.to(dev)

        def conditional(x: torch.Tensor, step_index: torch.Tensor) -> torch.Tensor:
            rows = torch.arange(x.shape[0], device=dev) % B
            return self.eps(x, ts[step_index.to(dev)], lab[rows])

        conditional.compute_dtype = compute_dtype
        if scale == 1.0:
            return conditional

        def branches(x2: torch.Tensor, step2: torch.Tensor) -> torch.Tensor:
            n = x2.shape[0] // 2
            rows = torch.arange(n, device=dev) % B
            y = torch.cat([torch.full((n,), self.null_class, dtype=torch.long, device=dev), lab[rows]])
            return self.eps(x2, ts[step2.to(dev)], y)

        branches.compute_dtype = compute_dtype
        return ClassifierFreeGuidance(branches, scale)

    @property
    def default_guidance_scale(self) -> float:
        return float(getattr(self, "_default_guidance_scale", 2.0))

    def problem(
        self,
        batch: int,
        num_inference_steps: int,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float64,
        device: str | torch.device = "cpu",
    ):
        """Initial noise ``x_T [B, 1, 32, 32]`` and step noise ``[T, B, 1, 32, 32]``, drawn on the CPU (the same on
        every device for one seed)."""
        x_T = torch.randn(batch, *self.sample_shape, generator=generator, dtype=torch.float64)
        noise = torch.randn(num_inference_steps, batch, *self.sample_shape, generator=generator, dtype=torch.float64)
        return x_T.to(device, dtype), noise.to(device, dtype)

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
        import paratriton

        from ..schedulers import one_tap_family
        from ..schedulers.operator import check_steps

        if output_type not in ("pil", "pt"):
            raise ValueError(f"output_type must be 'pil' or 'pt', got {output_type!r}")
        lab = self.labels(class_labels)
        B, T = lab.numel(), check_steps(num_inference_steps)
        scheduler = self.scheduler if scheduler is None else scheduler
        device = next(self.unet.parameters()).device
        x_T, noise = self.problem(B, T, generator, device=device)
        coeffs = paratriton.coefficients_from_scheduler(
            scheduler, T, **({"eta": eta} if getattr(one_tap_family(scheduler), "takes_eta", False) else {})
        )
        model = self.denoiser(coeffs, lab, guidance_scale)
        result = None
        if method is None:  # diffusers' own loop, with the same noise as paratriton's problem
            if type(scheduler).__name__ != "DDIMScheduler":
                raise ValueError(
                    "method=None (diffusers' scheduler loop) supports DDIMScheduler only; "
                    "pass method='sequential' (or a parallel method) for other schedulers"
                )
            import copy

            sch = copy.deepcopy(scheduler)
            sch.set_timesteps(T)
            x = x_T
            for k, t in enumerate(sch.timesteps):
                i = T - 1 - k
                m = model(x, torch.full((B,), i, dtype=torch.long))
                x = sch.step(m, t, x, eta=eta, variance_noise=noise[i] if eta > 0 else None).prev_sample
            sample = x
        else:
            result = paratriton.solve(model, coeffs, x_T, noise, method=method, **solver_options)
            sample = result.sample
        sample = sample.float().clamp(-1, 1)
        if output_type == "pt":
            return DigitsOutput(sample.cpu(), result)
        return DigitsOutput(to_pil(sample), result)


def to_pil(images: torch.Tensor):
    """``[B, 1, H, W]`` in [-1, 1] -> list of PIL grayscale images."""
    from PIL import Image

    arr = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
    return [Image.fromarray(a[0].numpy(), mode="L") for a in arr]


def load_default(
    device: str | torch.device | None = None, dtype: torch.dtype | None = None, weights_dir: str = WEIGHTS_DIR
) -> DigitsPipeline:
    """Load the shipped default model as a ready ``DigitsPipeline`` (offline; no download).

    device: default CUDA if available, else CPU. dtype: default float32 (the weights ship in float16 and are
    upcast; float16 works on CUDA).
    """
    cfg = read_config(weights_dir)
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.float32 if dtype is None else dtype
    try:
        unet = build_unet(cfg["unet"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{os.path.join(weights_dir, 'config.json')}: bad or missing 'unet' entry ({e})") from None
    path = os.path.join(weights_dir, "model.safetensors")
    _load_state(unet, _load_safetensors(path, cfg), path)
    unet = torch.nn.Module.to(unet, device, dtype).eval().requires_grad_(False)  # (diffusers' .to warns on dtype)
    from diffusers import DDIMScheduler

    pipe = DigitsPipeline(unet, DDIMScheduler(**cfg["scheduler"]))
    pipe._default_guidance_scale = float(cfg.get("default_guidance_scale", 2.0))
    pipe.set_progress_bar_config(disable=True)
    return pipe
