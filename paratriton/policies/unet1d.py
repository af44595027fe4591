"""``ConditionalUnet1D``: the 1D temporal UNet of Diffusion Policy (Chi et al., 2023), re-implemented.

The network denoises an action chunk ``[B, horizon, action_dim]`` conditioned on a diffusion timestep and a global
observation vector. It follows the reference design exactly (same modules, same parameter shapes, same state-dict
names), so checkpoints of the reference's ``global_cond`` variant load into it:

- ``Conv1dBlock``: ``Conv1d(kernel_size, padding=kernel_size // 2) -> GroupNorm(n_groups) -> Mish``;
- ``ConditionalResidualBlock1D``: two ``Conv1dBlock``s with FiLM between them (per-channel ``scale * h + bias``
  predicted from the condition by ``Mish -> Linear``, or only a bias when ``cond_predict_scale=False``) and a 1x1
  residual convolution where the widths differ;
- the condition is ``[SinusoidalPosEmb(t) -> Linear(d, 4d) -> Mish -> Linear(4d, d) ; global_cond]``;
- ``len(down_dims)`` down stages (two residual blocks each, a stride-2 ``Downsample1d`` after all but the last), two
  middle blocks, ``len(down_dims) - 1`` up stages (skip concatenation, two residual blocks, a ``Upsample1d`` each),
  and a final ``Conv1dBlock -> Conv1d(1x1)``.

So ``horizon`` must be divisible by ``2 ** (len(down_dims) - 1)`` (4 for the usual three stages); the reference
fails on other horizons with a shape mismatch deep inside, this one raises a ``ValueError`` naming ``horizon``.

Unlike the reference, the timestep may be a 1-D tensor with one value per row (the parallel samplers evaluate many
rows at different timesteps in one call); a 0-d tensor or a Python number is broadcast to every row, as there.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

__all__ = [
    "SinusoidalPosEmb",
    "Conv1dBlock",
    "Downsample1d",
    "Upsample1d",
    "ConditionalResidualBlock1D",
    "ConditionalUnet1D",
]


class SinusoidalPosEmb(nn.Module):
    """Transformer-style sinusoidal embedding of a timestep: ``[B]`` (any real dtype) -> ``[B, dim]`` float32,
    ``[sin(t * f_i), cos(t * f_i)]`` with ``f_i = 10000 ** (-i / (dim / 2 - 1))``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim < 4 or dim % 2:
            raise ValueError(f"diffusion_step_embed_dim must be an even number >= 4, got {dim}")
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        step = math.log(10000.0) / (half - 1)
        freqs = torch.exp(torch.arange(half, device=t.device, dtype=torch.float32) * -step)
        angles = t.to(torch.float32)[:, None] * freqs[None, :]
        return torch.cat((angles.sin(), angles.cos()), dim=-1)


class Conv1dBlock(nn.Module):
    """``Conv1d -> GroupNorm -> Mish`` on ``[B, C_in, T] -> [B, C_out, T]`` (same length: odd kernel, padded)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, n_groups: int = 8) -> None:
        super().__init__()
        # state-dict keys block.0 (conv) / block.1 (norm), as the reference
        self.block = nn.Sequential(
            nn.Conv1d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
            nn.GroupNorm(n_groups, out_channels),
            nn.Mish(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class Downsample1d(nn.Module):
    """Stride-2 convolution (kernel 3, padding 1): ``[B, C, T] -> [B, C, ceil(T / 2)]``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(dim, dim, 3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample1d(nn.Module):
    """Transposed convolution (kernel 4, stride 2, padding 1): ``[B, C, T] -> [B, C, 2 T]``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose1d(dim, dim, 4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class ConditionalResidualBlock1D(nn.Module):
    """Two ``Conv1dBlock``s with FiLM conditioning between them and a residual path.

    ``x [B, C_in, T]``, ``cond [B, cond_dim]`` -> ``[B, C_out, T]``. With ``cond_predict_scale`` the condition
    predicts a per-channel scale and bias (``scale * h + bias``), otherwise only a bias."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        cond_dim: int,
        kernel_size: int = 3,
        n_groups: int = 8,
        cond_predict_scale: bool = False,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            [
                Conv1dBlock(in_channels, out_channels, kernel_size, n_groups=n_groups),
                Conv1dBlock(out_channels, out_channels, kernel_size, n_groups=n_groups),
            ]
        )
        self.cond_predict_scale = cond_predict_scale
        self.out_channels = out_channels
        cond_channels = 2 * out_channels if cond_predict_scale else out_channels
        self.cond_encoder = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, cond_channels))
        self.residual_conv = nn.Conv1d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        out = self.blocks[0](x)
        embed = self.cond_encoder(cond)[:, :, None]  # [B, cond_channels, 1]
        if self.cond_predict_scale:
            embed = embed.reshape(embed.shape[0], 2, self.out_channels, 1)
            out = embed[:, 0] * out + embed[:, 1]
        else:
            out = out + embed
        out = self.blocks[1](out)
        return out + self.residual_conv(x)


class ConditionalUnet1D(nn.Module):
    """Diffusion Policy's conditional 1D UNet (global conditioning; no local conditioning).

    Args:
        input_dim: action dimension ``A`` (channels of the denoised sequence).
        global_cond_dim: width ``G`` of the global condition (``n_obs_steps * obs_dim`` for low-dim policies), or
            ``None`` for a timestep-only network.
        diffusion_step_embed_dim: width of the timestep embedding (256 is the reference class default; its
            configs use 128).
        down_dims: channel widths of the down stages (``[256, 512, 1024]`` low-dim, ``[512, 1024, 2048]`` image).
        kernel_size: convolution kernel (odd; the reference configs use 5).
        n_groups: GroupNorm groups (every width must be divisible by it).
        cond_predict_scale: FiLM with scale and bias (the reference configs use ``True``).

    ``forward(sample [B, T, A], timestep, global_cond [B, G]) -> [B, T, A]`` in ``sample``'s dtype.

    The defaults of ``kernel_size`` and ``cond_predict_scale`` are those of the reference's configs (5, True), not
    of its class signature (3, False). Parameter counts (A = 2..10): ``[256, 512, 1024]`` with embedding 128 and
    G = 40..1042 has 63.6-77.9M; ``[512, 1024, 2048]`` with embedding 128 and G = 40..1042 has 248.9-277.6M.
    """

    def __init__(
        self,
        input_dim: int,
        global_cond_dim: int | None = None,
        diffusion_step_embed_dim: int = 256,
        down_dims: Sequence[int] = (256, 512, 1024),
        kernel_size: int = 5,
        n_groups: int = 8,
        cond_predict_scale: bool = True,
    ) -> None:
        super().__init__()
        down_dims = [int(d) for d in down_dims]
        if not down_dims:
            raise ValueError("down_dims must name at least one width")
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (same-length convolutions), got {kernel_size}")
        if any(d % n_groups for d in down_dims):
            raise ValueError(f"every width in down_dims={down_dims} must be divisible by n_groups={n_groups}")
        self.input_dim = int(input_dim)
        self.global_cond_dim = None if global_cond_dim is None else int(global_cond_dim)
        self.down_dims = tuple(down_dims)

        dsed = int(diffusion_step_embed_dim)
        self.diffusion_step_encoder = nn.Sequential(
            SinusoidalPosEmb(dsed),
            nn.Linear(dsed, dsed * 4),
            nn.Mish(),
            nn.Linear(dsed * 4, dsed),
        )
        cond_dim = dsed + (self.global_cond_dim or 0)

        def block(c_in: int, c_out: int) -> ConditionalResidualBlock1D:
            return ConditionalResidualBlock1D(
                c_in, c_out, cond_dim, kernel_size=kernel_size, n_groups=n_groups,
                cond_predict_scale=cond_predict_scale,
            )  # fmt: skip

        all_dims = [self.input_dim] + down_dims
        in_out = list(zip(all_dims[:-1], all_dims[1:]))
        self.down_modules = nn.ModuleList(
            nn.ModuleList(
                [
                    block(c_in, c_out),
                    block(c_out, c_out),
                    Downsample1d(c_out) if i < len(in_out) - 1 else nn.Identity(),
                ]
            )
            for i, (c_in, c_out) in enumerate(in_out)
        )
        mid = down_dims[-1]
        self.mid_modules = nn.ModuleList([block(mid, mid), block(mid, mid)])
        # every up stage upsamples (the reference's "is_last" test never fires): len(down_dims) - 1 of them
        self.up_modules = nn.ModuleList(
            nn.ModuleList([block(2 * c_out, c_in), block(c_in, c_in), Upsample1d(c_in)])
            for c_in, c_out in reversed(in_out[1:])
        )
        start = down_dims[0]
        self.final_conv = nn.Sequential(
            Conv1dBlock(start, start, kernel_size=kernel_size, n_groups=n_groups),
            nn.Conv1d(start, self.input_dim, 1),
        )

    @property
    def horizon_multiple(self) -> int:
        """The horizon must be a multiple of this (``2 ** number of down-samplings``)."""
        return 2 ** (len(self.down_dims) - 1)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | int | float,
        global_cond: torch.Tensor | None = None,
        **kwargs: object,
    ) -> torch.Tensor:
        """``sample [B, T, A]``, ``timestep`` (a number, a 0-d tensor, or ``[B]``: one timestep per row),
        ``global_cond [B, G]`` -> the prediction ``[B, T, A]``. ``local_cond=None`` is accepted and ignored (the
        reference's keyword); anything else raises."""
        local_cond = kwargs.pop("local_cond", None)
        if local_cond is not None:
            raise NotImplementedError("local_cond is not supported: this network is built for global conditioning")
        if kwargs:
            raise TypeError(f"unexpected keyword arguments: {sorted(kwargs)}")
        if sample.ndim != 3 or sample.shape[-1] != self.input_dim:
            raise ValueError(f"sample must be [B, horizon, {self.input_dim}], got {tuple(sample.shape)}")
        B, T, _ = sample.shape
        m = self.horizon_multiple
        if T % m:
            raise ValueError(
                f"horizon={T} must be divisible by {m} (2 ** (len(down_dims) - 1), down_dims="
                f"{list(self.down_dims)}): the down- and up-sampling stages must return to the same length"
            )

        t = timestep if torch.is_tensor(timestep) else torch.tensor(timestep, device=sample.device)
        t = t.to(sample.device)
        if t.ndim == 0:
            t = t.reshape(1).expand(B)
        elif t.ndim != 1 or t.shape[0] not in (1, B):
            raise ValueError(f"timestep must be 0-d, [1] or [B={B}], got shape {tuple(t.shape)}")
        else:
            t = t.expand(B)

        enc = self.diffusion_step_encoder
        emb = enc[0](t).to(enc[1].weight.dtype)  # the sinusoids in float32, then the network's dtype
        feature = enc[1:](emb).to(sample.dtype)
        if global_cond is not None:
            if self.global_cond_dim is None:
                raise ValueError("global_cond given to a network built with global_cond_dim=None")
            if global_cond.shape != (B, self.global_cond_dim):
                raise ValueError(f"global_cond must be [B={B}, {self.global_cond_dim}], got {tuple(global_cond.shape)}")
            feature = torch.cat([feature, global_cond.to(sample.dtype)], dim=-1)
        elif self.global_cond_dim is not None:
            raise ValueError(f"global_cond [B, {self.global_cond_dim}] is required by this network")

        x = sample.transpose(1, 2)  # [B, A, T]: channels first
        skips = []
        for res1, res2, down in self.down_modules:
            x = res2(res1(x, feature), feature)
            skips.append(x)
            x = down(x)
        for mid in self.mid_modules:
            x = mid(x, feature)
        for res1, res2, up in self.up_modules:
            x = torch.cat((x, skips.pop()), dim=1)
            x = up(res2(res1(x, feature), feature))
        x = self.final_conv(x)
        return x.transpose(1, 2)
