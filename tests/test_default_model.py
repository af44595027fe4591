"""The shipped default model: loads offline on the CPU, samples the right classes, and TAA reproduces sequential."""

import os

import pytest
import torch

import paratriton
from paratriton.models import WEIGHTS_DIR, default_scheduler, load_classifier, load_default, read_config, verify_weights

pytestmark = pytest.mark.skipif(
    not os.path.exists(os.path.join(WEIGHTS_DIR, "model.safetensors")),
    reason="the default model's weights are not shipped in this checkout",
)


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
    # (the config's own quality "pass" flag proves nothing about these weights: the checksum ties the quality
    # record to the files, and test_class_accuracy_small_sample measures the quality itself)
    for name in ("model.safetensors", "classifier.safetensors"):
        rec = cfg["files"][name]
        assert rec["bytes"] == os.path.getsize(os.path.join(WEIGHTS_DIR, name)) and len(rec["sha256"]) == 64
        verify_weights(os.path.join(WEIGHTS_DIR, name), cfg)


def _copy_weights(tmp_path):
    import shutil

    for name in ("config.json", "model.safetensors", "classifier.safetensors"):
        shutil.copy(os.path.join(WEIGHTS_DIR, name), tmp_path / name)
    return tmp_path


def test_corrupt_weights_are_an_error_naming_the_file(tmp_path):
    d = _copy_weights(tmp_path)
    path = d / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the tensor data: loads fine without the checksum
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=rf"{path}.* is corrupt: its sha256 does not match"):
        load_default(device="cpu", weights_dir=str(d))


def test_truncated_weights_are_an_error_naming_the_file(tmp_path):
    d = _copy_weights(tmp_path)
    path = d / "classifier.safetensors"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match=rf"{path}.* is truncated or corrupt"):
        load_classifier("cpu", weights_dir=str(d))
    # without a recorded checksum (a fresh training run's config) safetensors' own error still names the file
    import json

    cfg = json.loads((d / "config.json").read_text())
    del cfg["files"]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=rf"{path} is truncated or corrupt \(safetensors could not read it"):
        load_classifier("cpu", weights_dir=str(d))


def test_corrupt_config_is_an_error_naming_the_file(tmp_path):
    d = _copy_weights(tmp_path)
    (d / "config.json").write_text('{"unet": ')
    with pytest.raises(ValueError, match=rf"{d / 'config.json'} is corrupt"):
        load_default(device="cpu", weights_dir=str(d))


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


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["taa", "picard"])
def test_cuda_graph_on_the_shipped_pipeline(method):
    """Issue 32: ``cuda_graph=True`` on the digits pipeline failed in capture ("Cannot copy between CPU and CUDA
    tensors during CUDA graph capture": the denoiser indexed its timesteps and labels on the CPU). Now every
    indexing tensor lives on the network's device, and the graphed solve gives the sequential images. (TF32
    convolutions off for this comparison: with them the network's rounding, about 1e-2 RMS here, sets the distance.)"""
    cuda_pipe = load_default(device="cuda")
    labels = [0, 7, 3]
    kw = dict(num_inference_steps=20, output_type="pt")
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        seq = cuda_pipe(labels, generator=torch.Generator().manual_seed(1), method="sequential", **kw)
        par = cuda_pipe(labels, generator=torch.Generator().manual_seed(1), method=method, cuda_graph=True, **kw)
    assert par.result.converged and par.result.method.endswith("(graphed)")
    assert (par.images - seq.images).square().mean().sqrt() < 2e-3
