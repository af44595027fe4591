"""The analytic test model's denoiser is the exact posterior mean of its noised density."""

import math

import pytest
import torch

from paratriton.testing import GaussianMixture
from paratriton.testing.gaussian_mixture import default_schedule


def log_density(gm, x, alpha, sigma):
    """log p(x) of the noised mixture, written independently of GaussianMixture.posterior_mean."""
    mu = gm.means.reshape(gm.means.shape[0], -1)
    xf = x.reshape(x.shape[0], -1)
    var = alpha**2 * gm.std**2 + sigma**2
    D = xf.shape[1]
    comp = -((xf[:, None] - alpha * mu[None]) ** 2).sum(-1) / (2 * var) - 0.5 * D * math.log(2 * math.pi * var)
    return torch.logsumexp(gm.log_weights[None] + comp, dim=1)


@pytest.mark.parametrize("shape", [(3,), (2, 3, 3), (1, 4, 4)])
@pytest.mark.parametrize("alpha,sigma", [(0.99, 0.14), (0.6, 0.8), (0.05, 0.9987)])
def test_eps_is_scaled_score(shape, alpha, sigma):
    # Tweedie: E[eps | x] = -sigma * grad log p(x)
    gm = GaussianMixture.random(shape, 4, std=0.4, seed=3)
    x = alpha * gm.sample(5, torch.Generator().manual_seed(0)) + sigma * torch.randn(5, *shape, dtype=torch.float64)
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(log_density(gm, x, alpha, sigma).sum(), x)
    al, sg = torch.full((5,), alpha, dtype=torch.float64), torch.full((5,), sigma, dtype=torch.float64)
    x0 = gm.posterior_mean(x.detach(), al, sg)
    eps = (x.detach() - alpha * x0) / sigma
    torch.testing.assert_close(eps, -sigma * grad, rtol=1e-9, atol=1e-10)


def test_prediction_types_agree():
    cf = default_schedule(10)
    gm = GaussianMixture.random((2, 2), 3)
    x = torch.randn(10, 2, 2, dtype=torch.float64)
    s = torch.arange(10)
    outs = {}
    for pt_ in ("epsilon", "sample", "v_prediction", "flow"):
        outs[pt_] = gm.denoiser(type(cf)(**{**cf.__dict__, "prediction_type": pt_}))(x, s)
    al, sg = cf.signal_scale[:, None, None], cf.noise_scale[:, None, None]
    torch.testing.assert_close(outs["v_prediction"], al * outs["epsilon"] - sg * outs["sample"])
    torch.testing.assert_close(outs["flow"], outs["epsilon"] - outs["sample"])
    torch.testing.assert_close(x, al * outs["sample"] + sg * outs["epsilon"])


def test_sequential_ddpm_samples_the_mixture():
    # exact denoiser + DDPM sampler: the samples' mean is close to the mixture's mean (a property that can fail)
    import paratriton as pt

    cf = default_schedule(100, eta=1.0)
    gm = GaussianMixture.random((2,), 2, std=0.2, seed=1, scale=3.0)
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(400, 2, generator=g, dtype=torch.float64)
    noise = torch.randn(100, 400, 2, generator=g, dtype=torch.float64)
    out = pt.solve(gm.denoiser(cf), cf, x_T, noise, method="sequential").sample
    mean = (gm.log_weights.exp()[:, None] * gm.means).sum(0)
    assert (out.mean(0) - mean).abs().max() < 0.35
    # each sample lands near one of the two components
    d = torch.cdist(out, gm.means).min(1).values
    assert (d < 1.0).float().mean() > 0.95
