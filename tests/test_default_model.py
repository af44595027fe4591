"""The shipped default model: loads offline on the CPU, samples the right classes, and TAA reproduces sequential."""

import os

import pytest
import torch

import paratriton
from paratriton.models import WEIGHTS_DIR, default_scheduler, load_classifier, load_default, read_config

pytestmark = pytest.mark.skipif(not os.path.exists(os.path.join(WEIGHTS_DIR, "model.safetensors")),
                                reason="the default model's weights are not shipped in this checkout")


@pytest.fixture(scope="module")
def pipe():
    return load_default(device="cpu")


def test_config_and_size(pipe):
    cfg = read_config()
    n = sum(p.numel() for p in pipe.unet.parameters())
    assert 10e6 <= n <= 40e6
    assert os.path.getsize(os.path.join(WEIGHTS_DIR, "model.safetensors")) <= 25 * 2**20
    assert pipe.num_classes == cfg["num_classes"] == 10 and pipe.null_class == 10
    assert pipe.sample_shape == (1, 32, 32)
    assert cfg["quality"]["pass"] and cfg["quality"]["by_guidance_scale"][str(cfg["default_guidance_scale"])][
        "min_per_class"] >= 0.9


def test_pipeline_loop_matches_sequential_and_taa(pipe):
    """diffusers' scheduler loop == paratriton sequential == ParaTAA (to the solver tolerance), with CFG."""
    labels = [0, 7]
    kw = dict(num_inference_steps=10, output_type="pt")
    loop = pipe(labels, generator=torch.Generator().manual_seed(1), **kw).images
    seq = pipe(labels, generator=torch.Generator().manual_seed(1), method="sequential", **kw)
    taa = pipe(labels, generator=torch.Generator().manual_seed(1), method="taa", tol_abs=1e-4, tol_rel=1e-4, **kw)
    assert seq.result.iterations == 10 and taa.result.converged
    assert (loop - seq.images).abs().max() < 1e-4
    assert (taa.images - seq.images).square().mean().sqrt() < 1e-3
    assert taa.result.iterations <= 10


def test_ddpm_taa_equals_sequential(pipe):
    coeffs = paratriton.coefficients_from_scheduler(default_scheduler("ddpm"), 8)
    model = pipe.denoiser(coeffs, [2, 5], guidance_scale=1.0)
    x_T, noise = pipe.problem(2, 8, torch.Generator().manual_seed(2))
    seq = paratriton.solve(model, coeffs, x_T, noise, method="sequential")
    taa = paratriton.solve(model, coeffs, x_T, noise, method="taa", tol_abs=1e-5, tol_rel=1e-5)
    assert taa.converged
    assert (taa.sample - seq.sample).square().mean().sqrt() < 1e-4


def test_class_accuracy_small_sample(pipe):
    """Samples of class c are classified as c (the shipped classifier, trained on the real digits)."""
    clf = load_classifier("cpu")
    labels = torch.arange(10).repeat(2)
    images = pipe(labels, num_inference_steps=20, generator=torch.Generator().manual_seed(3), output_type="pt").images
    assert images.shape == (20, 1, 32, 32) and images.min() >= -1 and images.max() <= 1
    acc = (clf.predict(images) == labels).float().mean().item()
    assert acc >= 0.9, acc


def test_bad_labels(pipe):
    with pytest.raises(ValueError, match="class_labels"):
        pipe([11], num_inference_steps=2)
