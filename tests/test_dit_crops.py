"""The shipped DiT crops model: loads offline on the CPU, TAA reproduces the sequential sampler, and its training
script runs (a few CPU steps of a tiny config, loss decreasing)."""

import importlib.util
import json
import os

import pytest
import torch

import paratriton
from paratriton.models import (
    DiTCropsPipeline,
    load,
    load_crop_classifier,
    load_dit_crops,
)
from paratriton.models import dit_crops as dc
from paratriton.models.default import verify_weights

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAVE_WEIGHTS = os.path.exists(os.path.join(dc.WEIGHTS_DIR, "model.safetensors"))
needs_weights = pytest.mark.skipif(not HAVE_WEIGHTS, reason="the DiT crops weights are not shipped in this checkout")


@pytest.fixture(scope="module")
def pipe():
    return load_dit_crops(device="cpu")


@pytest.fixture
def two_threads():
    """The 12M-parameter DiT's matrix products use both cores of the CI machine (conftest sets one thread)."""
    n = torch.get_num_threads()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield
    torch.set_num_threads(n)


@needs_weights
def test_config_size_and_checksums(pipe):
    cfg = dc.read_dit_config()
    n = sum(p.numel() for p in pipe.transformer.parameters())
    assert 10e6 <= n <= 13.1e6 and n == cfg["training"]["parameters"]
    assert os.path.getsize(os.path.join(dc.WEIGHTS_DIR, "model.safetensors")) <= 25 * 2**20
    assert type(pipe.transformer).__name__ == "DiTTransformer2DModel"
    assert pipe.num_classes == cfg["num_classes"] == dc.NUM_CLASSES == 16 and pipe.null_class == 16
    assert cfg["classes"] == list(dc.PHOTOGRAPHS)
    assert pipe.sample_shape == (3, 32, 32)
    # the checksums tie the recorded quality figures to these files
    for name in ("model.safetensors", "classifier.safetensors"):
        rec = cfg["files"][name]
        assert rec["bytes"] == os.path.getsize(os.path.join(dc.WEIGHTS_DIR, name)) and len(rec["sha256"]) == 64
        verify_weights(os.path.join(dc.WEIGHTS_DIR, name), cfg)
    q = cfg["quality"]
    assert q["pass"] and q["by_guidance_scale"][str(cfg["default_guidance_scale"])]["accuracy"] >= 0.8
    assert cfg["classifier"]["held_out_accuracy_real"] >= 0.9


@needs_weights
def test_taa_equals_sequential_with_guidance(pipe, two_threads):
    """4 images, DDIM-10 with the default guidance: ParaTAA == the sequential sampler to the tolerance, and both
    equal diffusers' own scheduler loop."""
    labels = [0, 3, 9, 15]
    coeffs = paratriton.coefficients_from_scheduler(dc_scheduler(), 10, eta=0.0)
    model = pipe.denoiser(coeffs, labels)
    x_T, noise = pipe.problem(4, 10, torch.Generator().manual_seed(1))
    seq = paratriton.solve(model, coeffs, x_T, noise, method="sequential")
    taa = paratriton.solve(model, coeffs, x_T, noise, method="taa", tol_abs=1e-4, tol_rel=1e-4)
    assert seq.sample.shape == taa.sample.shape == (4, 3, 32, 32)
    assert torch.isfinite(seq.sample).all() and torch.isfinite(taa.sample).all()
    assert seq.iterations == 10 and taa.converged and taa.iterations <= 10
    assert (taa.sample - seq.sample).square().mean().sqrt() < 1e-3
    loop = pipe(labels, num_inference_steps=10, generator=torch.Generator().manual_seed(1), output_type="pt").images
    assert (loop - seq.sample.float().clamp(-1, 1)).abs().max() < 1e-4


def dc_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(**dc.SCHEDULER_CONFIG)


@needs_weights
def test_load_by_name_and_pil_output(pipe):
    assert dc.NUM_CLASSES == len(dc.PHOTOGRAPHS)
    p = load("dit-crops", device="cpu")
    assert isinstance(p, DiTCropsPipeline) and p.default_guidance_scale == pipe.default_guidance_scale
    with pytest.raises(ValueError, match="name must be one of"):
        load("dit-xl")
    images = pipe([1, 16], num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images
    assert [im.mode for im in images] == ["RGB", "RGB"] and images[0].size == (32, 32)
    clf = load_crop_classifier("cpu")
    assert clf.predict(torch.zeros(2, 3, 32, 32)).shape == (2,)
    with pytest.raises(ValueError, match="class_labels"):
        pipe([17], num_inference_steps=2)


@needs_weights
@pytest.mark.parametrize("output_type", ["pt", "pil"])
def test_each_model_returns_its_own_output_type(pipe, output_type):
    """A shipped model's output says which model it is: DiTCropsOutput / DigitsOutput (both ImagesOutput), with the
    model's channels, and the SolveResult of the paratriton method that ran."""
    from paratriton.models import DigitsOutput, DiTCropsOutput, ImagesOutput, load_default

    g = torch.Generator().manual_seed(0)
    out = pipe([1, 5], num_inference_steps=3, generator=g, output_type=output_type, method="taa")
    assert type(out) is DiTCropsOutput and isinstance(out, ImagesOutput)
    assert out.result.converged and out.result.sample.shape == (2, 3, 32, 32)
    if output_type == "pt":
        assert out.images.shape == (2, 3, 32, 32) and out.images.abs().max() <= 1
    else:
        assert [im.mode for im in out.images] == ["RGB", "RGB"]
    digits = load_default(device="cpu")([3], num_inference_steps=3, generator=g, output_type=output_type)
    assert type(digits) is DigitsOutput and digits.result is None  # diffusers' own loop ran (method=None)
    assert (digits.images.shape == (1, 1, 32, 32)) if output_type == "pt" else digits.images[0].mode == "L"


@needs_weights
def test_corrupt_weights_are_an_error_naming_the_file(tmp_path):
    import shutil

    for name in ("config.json", "model.safetensors", "classifier.safetensors"):
        shutil.copy(os.path.join(dc.WEIGHTS_DIR, name), tmp_path / name)
    path = tmp_path / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=rf"{path}.* is corrupt: its sha256 does not match"):
        load_dit_crops(device="cpu", weights_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="train_dit.py"):
        load_dit_crops(device="cpu", weights_dir=str(tmp_path / "nowhere"))


def test_photographs_load_offline():
    pytest.importorskip("skimage")
    photos = dc.load_photographs()
    assert len(photos) == dc.NUM_CLASSES
    for a in photos:
        assert a.dtype.name == "uint8" and a.ndim == 3 and a.shape[2] == 3 and min(a.shape[:2]) >= 191


def _train_dit():
    spec = importlib.util.spec_from_file_location("train_dit", os.path.join(ROOT, "python", "train_dit.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_training_script_smoke(tmp_path):
    """A few CPU steps of a tiny DiT on three photographs: the loss decreases, and everything is written and loads."""
    pytest.importorskip("skimage")
    train = _train_dit()
    tiny = json.dumps({"num_layers": 1, "num_attention_heads": 2, "attention_head_dim": 16})
    argv = [
        "--out", str(tmp_path), "--classes", "astronaut,grass,page", "--dit-config", tiny,
        "--bank-per-class", "128", "--held-out-per-class", "8", "--steps", "30", "--batch", "32", "--lr", "2e-3",
        "--warmup", "3", "--log-every", "5", "--classifier-steps", "2", "--classifier-batch", "16",
        "--quality-per-class", "1", "--quality-steps", "2", "--guidance", "2.0",
    ]  # fmt: skip
    rc = train.main(argv)
    assert rc in (0, 1)  # the quality check of a 30-step model may fail; it must run
    cfg = json.loads((tmp_path / "config.json").read_text())
    curve = [loss for _, loss in cfg["training"]["loss_curve"]]
    assert len(curve) == 6 and curve[-1] < 0.8 * curve[0], curve
    assert cfg["num_classes"] == 3 and "quality" in cfg and (tmp_path / "samples.png").exists()
    p = load_dit_crops(device="cpu", weights_dir=str(tmp_path))
    out = p(
        [0, 2, 3], num_inference_steps=3, method="taa", generator=torch.Generator().manual_seed(0), output_type="pt"
    )
    assert out.images.shape == (3, 3, 32, 32) and out.result.converged
