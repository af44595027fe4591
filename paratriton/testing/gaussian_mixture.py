"""A Gaussian mixture data distribution whose exact denoiser is known in closed form."""

from __future__ import annotations

import torch

from ..schedulers.operator import SamplerCoefficients, StepOperator


class GaussianMixture:
    """Data ``x0 ~ sum_k w_k N(mu_k, s^2 I)``; noised ``x = alpha x0 + sigma eps`` stays a Gaussian mixture, so
    ``E[x0 | x]`` and ``E[eps | x]`` are exact softmax-weighted sums.

    means: ``[K, *sample_shape]``; weights: ``[K]`` (normalised here); std: the per-component std ``s``.
    """

    def __init__(self, means: torch.Tensor, weights: torch.Tensor | None = None, std: float = 0.5) -> None:
        if means.ndim < 2:
            raise ValueError(f"means must have shape [K, *sample_shape], got {list(means.shape)}")
        if std <= 0:
            raise ValueError(f"std must be > 0, got {std}")
        self.means = means.to(torch.float64)
        K = means.shape[0]
        w = torch.ones(K, dtype=torch.float64) if weights is None else weights.to(torch.float64)
        if w.shape != (K,) or (w <= 0).any():
            raise ValueError(f"weights must be [K] = [{K}] positive numbers")
        self.log_weights = (w / w.sum()).log().to(self.means.device)
        self.std = float(std)

    @classmethod
    def random(
        cls, sample_shape: tuple[int, ...], num_components: int = 4, std: float = 0.3, seed: int = 0, scale: float = 1.0
    ) -> "GaussianMixture":
        g = torch.Generator().manual_seed(seed)
        means = scale * torch.randn(num_components, *sample_shape, generator=g, dtype=torch.float64)
        weights = torch.rand(num_components, generator=g, dtype=torch.float64) + 0.5
        return cls(means, weights, std)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.means.shape[1:])

    def to(self, device) -> "GaussianMixture":
        gm = GaussianMixture.__new__(GaussianMixture)
        gm.means, gm.log_weights, gm.std = self.means.to(device), self.log_weights.to(device), self.std
        return gm

    def posterior_mean(self, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """``E[x0 | x]`` for rows ``x [N, *S]`` with per-row levels ``alpha, sigma [N]`` (float64)."""
        N = x.shape[0]
        xf = x.reshape(N, -1).to(torch.float64)
        mu = self.means.reshape(self.means.shape[0], -1).to(xf.device)
        al, sg = alpha.to(xf)[:, None], sigma.to(xf)[:, None]
        var = al**2 * self.std**2 + sg**2  # [N, 1]
        D = xf.shape[1]
        diff = xf[:, None, :] - al[:, :, None] * mu[None]  # [N, K, D]
        logits = self.log_weights.to(xf.device)[None] - diff.square().sum(-1) / (2 * var) - 0.5 * D * var.log()
        post = torch.softmax(logits, dim=1)  # [N, K]
        x0_k = mu[None] + (al * self.std**2 / var)[:, :, None] * diff  # E[x0 | x, k]
        return torch.einsum("nk,nkd->nd", post, x0_k).reshape(x.shape)

    def denoiser(self, coeffs: StepOperator):
        """The exact model for a sampler: ``model(z, step_index)`` returning ``coeffs.prediction_type`` output.

        ``z`` is the *model input* of step ``step_index``: ``input_scale_i x_{i+1}`` (``x_{i+1}`` itself for the
        one-tap ``SamplerCoefficients``; sigma-space schedulers such as Euler call it on ``x / sqrt(1 + sigma^2)``),
        whose levels ``z = signal_scale_i x0 + noise_scale_i eps`` both operator kinds carry."""
        alpha_all, sigma_all = coeffs.signal_scale, coeffs.noise_scale
        pt = coeffs.prediction_type

        levels: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

        def model(x: torch.Tensor, step_index: torch.Tensor) -> torch.Tensor:
            # index on the model's device, from copies made on the first (uncaptured) call: no host sync or copy,
            # so the model can be captured in a CUDA graph
            if x.device not in levels:
                levels[x.device] = (alpha_all.to(x.device), sigma_all.to(x.device))
            al_all, sg_all = levels[x.device]
            al, sg = al_all[step_index], sg_all[step_index]
            x0 = self.posterior_mean(x, al, sg)
            bshape = (-1,) + (1,) * (x.ndim - 1)
            al, sg = al.view(bshape), sg.view(bshape)
            eps = (x.to(torch.float64) - al * x0) / sg
            if pt == "epsilon":
                out = eps
            elif pt == "sample":
                out = x0
            elif pt == "v_prediction":
                out = al * eps - sg * x0
            elif pt == "flow":
                out = eps - x0
            else:
                raise ValueError(f"prediction_type {pt!r} is not supported by GaussianMixture")
            return out.to(x.dtype)

        return model

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Exact samples of the data distribution, ``[n, *sample_shape]``."""
        k = torch.multinomial(self.log_weights.exp().cpu(), n, replacement=True, generator=generator)
        z = torch.randn(n, *self.sample_shape, generator=generator, dtype=torch.float64)
        return self.means.cpu()[k] + self.std * z


def default_schedule(
    num_steps: int, eta: float = 0.0, num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
) -> SamplerCoefficients:
    """DDIM (``eta``) coefficients of the linear-beta schedule with trailing spacing, without diffusers."""
    betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
    ac = torch.cumprod(1 - betas, 0)
    ts = torch.round(torch.arange(num_train_timesteps, 0, -num_train_timesteps / num_steps)).long().flip(0) - 1
    prev = ts - num_train_timesteps // num_steps
    ab_t = ac[ts]
    ab_prev = torch.where(prev >= 0, ac[prev.clamp_min(0)], torch.ones_like(ab_t))
    var = (1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev)
    std = eta * var.sqrt()
    alpha, sigma = ab_t.sqrt(), (1 - ab_t).sqrt()
    d = (1 - ab_prev - std**2).sqrt()
    a = ab_prev.sqrt() / alpha
    b = d - ab_prev.sqrt() * sigma / alpha
    return SamplerCoefficients(a, b, std, var.clamp_min(0).sqrt(), ts.double(), alpha, sigma, "epsilon")
