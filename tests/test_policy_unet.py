"""ConditionalUnet1D (paratriton/policies/unet1d.py): shapes, per-row timesteps, the horizon rule, the reference's
state-dict layout and the published parameter counts (counted on the meta device, nothing allocated)."""

from __future__ import annotations

import pytest
import torch

from paratriton.policies import ConditionalUnet1D

A, G, T = 4, 10, 16


def tiny(seed: int = 0, **kw) -> ConditionalUnet1D:
    torch.manual_seed(seed)
    cfg = dict(input_dim=A, global_cond_dim=G, diffusion_step_embed_dim=16, down_dims=(16, 32, 64))
    cfg.update(kw)
    return ConditionalUnet1D(**cfg).eval()


def n_params(**kw) -> int:
    with torch.device("meta"):
        net = ConditionalUnet1D(**kw)
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("horizon", [4, 8, 16, 64])
def test_shapes_and_dtype(horizon):
    net = tiny()
    x = torch.randn(3, horizon, A)
    cond = torch.randn(3, G)
    out = net(x, torch.tensor([5, 50, 99]), global_cond=cond)
    assert out.shape == (3, horizon, A) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    # the output depends on the sample, the timestep and the condition
    assert not torch.allclose(out, net(x, torch.tensor([6, 50, 99]), global_cond=cond))
    assert not torch.allclose(out, net(x, torch.tensor([5, 50, 99]), global_cond=cond + 1))


def test_per_row_timesteps_equal_row_by_row_calls():
    net = tiny()
    B = 6
    x = torch.randn(B, T, A)
    cond = torch.randn(B, G)
    t = torch.tensor([0, 1, 17, 42, 42, 99])
    with torch.no_grad():
        batched = net(x, t, global_cond=cond)
        rows = torch.cat([net(x[i : i + 1], t[i], global_cond=cond[i : i + 1]) for i in range(B)])
        as_int = torch.cat([net(x[i : i + 1], int(t[i]), global_cond=cond[i : i + 1]) for i in range(B)])
    torch.testing.assert_close(batched, rows, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rows, as_int, rtol=0, atol=0)


def test_scalar_timestep_broadcasts():
    net = tiny()
    x = torch.randn(5, T, A)
    cond = torch.randn(5, G)
    with torch.no_grad():
        ref = net(x, torch.full((5,), 37), global_cond=cond)
        for t in (37, torch.tensor(37), torch.tensor([37]), torch.tensor(37.0)):
            torch.testing.assert_close(net(x, t, global_cond=cond), ref, rtol=0, atol=0)


def test_bad_timestep_shape():
    net = tiny()
    with pytest.raises(ValueError, match="timestep"):
        net(torch.randn(3, T, A), torch.tensor([1, 2]), global_cond=torch.randn(3, G))


@pytest.mark.parametrize("horizon", [6, 10, 15, 17])
def test_horizon_must_divide(horizon):
    net = tiny()
    with pytest.raises(ValueError, match=r"horizon=\d+ must be divisible by 4"):
        net(torch.randn(2, horizon, A), 3, global_cond=torch.randn(2, G))


def test_horizon_rule_follows_depth():
    net = tiny(down_dims=(16, 32))  # one down-sampling: horizon must be even
    assert net.horizon_multiple == 2
    assert net(torch.randn(1, 6, A), 3, global_cond=torch.randn(1, G)).shape == (1, 6, A)
    with pytest.raises(ValueError, match="horizon=7 must be divisible by 2"):
        net(torch.randn(1, 7, A), 3, global_cond=torch.randn(1, G))


def test_condition_checks():
    net = tiny()
    x = torch.randn(2, T, A)
    with pytest.raises(ValueError, match="global_cond"):
        net(x, 3)
    with pytest.raises(ValueError, match="global_cond"):
        net(x, 3, global_cond=torch.randn(2, G + 1))
    with pytest.raises(NotImplementedError, match="local_cond"):
        net(x, 3, global_cond=torch.randn(2, G), local_cond=torch.randn(2, T, 3))
    # local_cond=None is the reference's call signature and is accepted
    assert net(x, 3, local_cond=None, global_cond=torch.randn(2, G)).shape == x.shape
    unconditional = tiny(global_cond_dim=None)
    assert unconditional(x, 3).shape == x.shape


def test_rows_are_independent():
    """GroupNorm normalises per sample: a row's output does not depend on the other rows of the batch."""
    net = tiny()
    x = torch.randn(4, T, A)
    cond = torch.randn(4, G)
    t = torch.tensor([3, 30, 60, 90])
    with torch.no_grad():
        a = net(x, t, global_cond=cond)
        x2, cond2 = x.clone(), cond.clone()
        x2[1:] = torch.randn(3, T, A) * 10
        cond2[1:] = 5.0
        b = net(x2, t, global_cond=cond2)
    torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=1e-5)


def test_bfloat16():
    net = tiny().to(torch.bfloat16)
    out = net(torch.randn(2, T, A, dtype=torch.bfloat16), torch.tensor([1, 2]), global_cond=torch.randn(2, G))
    assert out.dtype == torch.bfloat16 and out.shape == (2, T, A)


def test_reference_state_dict_layout():
    """The reference's parameter names and shapes (a checkpoint of its global-cond UNet loads with strict=True)."""
    sd = tiny().state_dict()
    expected = {
        "diffusion_step_encoder.1.weight": (64, 16),
        "diffusion_step_encoder.3.weight": (16, 64),
        "down_modules.0.0.blocks.0.block.0.weight": (16, A, 5),
        "down_modules.0.0.blocks.0.block.1.weight": (16,),
        "down_modules.0.0.cond_encoder.1.weight": (32, 16 + G),
        "down_modules.0.0.residual_conv.weight": (16, A, 1),
        "down_modules.0.2.conv.weight": (16, 16, 3),
        "down_modules.1.2.conv.weight": (32, 32, 3),
        "mid_modules.1.blocks.1.block.0.weight": (64, 64, 5),
        "up_modules.0.0.blocks.0.block.0.weight": (32, 128, 5),
        "up_modules.0.2.conv.weight": (32, 32, 4),
        "up_modules.1.0.residual_conv.weight": (16, 64, 1),
        "up_modules.1.2.conv.weight": (16, 16, 4),
        "final_conv.0.block.0.weight": (16, 16, 5),
        "final_conv.1.weight": (A, 16, 1),
    }
    for name, shape in expected.items():
        assert tuple(sd[name].shape) == shape, name
    assert not any(k.startswith("down_modules.2.2") for k in sd)  # the last down stage does not down-sample
    assert len(net_stages := {k.split(".")[1] for k in sd if k.startswith("up_modules")}) == 2, net_stages


def test_published_parameter_counts():
    # the counts of the reference network measured in shared/design/policies.md: image UNet (PushT image config:
    # 2 x (512 ResNet features + 2 agent positions), 2-d actions, step embedding 128) 277.2M; low-dim UNet (PushT
    # low-dim: 2 x 20-d observations, 2-d actions) 63.6M
    assert n_params(input_dim=2, global_cond_dim=1028, diffusion_step_embed_dim=128, down_dims=(512, 1024, 2048)) == (
        277_202_050
    )
    assert n_params(input_dim=2, global_cond_dim=40, diffusion_step_embed_dim=128, down_dims=(256, 512, 1024)) == (
        63_554_434
    )
    # the ranges of the brief: low-dim 64-78M (step embedding 256, the reference's low-dim configs), image 250-280M
    low = n_params(input_dim=10, global_cond_dim=40, diffusion_step_embed_dim=256, down_dims=(256, 512, 1024))
    assert 64e6 <= low <= 78e6, low
    image = n_params(input_dim=10, global_cond_dim=2 * 521, diffusion_step_embed_dim=128, down_dims=(512, 1024, 2048))
    assert 250e6 <= image <= 280e6, image
