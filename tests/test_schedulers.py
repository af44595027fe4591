"""``paratriton.schedulers``: the lists built from the families, and each one-tap family's noise rule against the
stock ``step`` loop it mirrors (which steps draw ``randn_tensor``, in which dtype)."""

from __future__ import annotations

import ast
from pathlib import Path

import diffusers
import pytest
import torch

from paratriton import schedulers
from paratriton.schedulers.traced import FACTS, _private_noise

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")


def test_the_lists_are_built_from_the_families_and_facts() -> None:
    assert schedulers.ONE_TAP_SCHEDULERS == ("DDIMScheduler", "DDPMScheduler", "FlowMatchEulerDiscreteScheduler")
    assert (
        schedulers.TRACED_SCHEDULERS
        == tuple(FACTS)
        == (
            "EulerDiscreteScheduler",
            "EulerAncestralDiscreteScheduler",
            "DPMSolverMultistepScheduler",
            "UniPCMultistepScheduler",
            "HeunDiscreteScheduler",
            "PNDMScheduler",
            "LMSDiscreteScheduler",
            "DEISMultistepScheduler",
            "CogVideoXDDIMScheduler",
        )
    )
    assert schedulers.SUPPORTED_SCHEDULERS == schedulers.ONE_TAP_SCHEDULERS + schedulers.TRACED_SCHEDULERS
    for name in schedulers.ONE_TAP_SCHEDULERS:
        family = schedulers.one_tap_family(name)
        assert family.scheduler == name and family.noise_dtype in ("model", "float32")
        assert hasattr(diffusers, name)
    for name, facts in FACTS.items():
        assert facts.levels in ("sigma", "alpha_sigma", "alphas_cumprod") and hasattr(diffusers, name)
    assert schedulers.one_tap_family("EulerDiscreteScheduler") is None


def test_loop_eta() -> None:
    ddim, ddpm = schedulers.one_tap_family("DDIMScheduler"), schedulers.one_tap_family("DDPMScheduler")
    assert ddim.loop_eta(None) == 0.0 and ddim.loop_eta(0.3) == 0.3
    assert ddpm.loop_eta(None) is None and ddpm.loop_eta(0.3) is None


CASES = [
    ("DDPMScheduler", {}, None),
    ("DDPMScheduler", {"timestep_spacing": "trailing"}, None),
    ("DDIMScheduler", {}, 0.0),
    ("DDIMScheduler", {}, 0.5),
    ("FlowMatchEulerDiscreteScheduler", {"stochastic_sampling": True}, None),
    ("FlowMatchEulerDiscreteScheduler", {}, None),
]


@pytest.mark.parametrize("name, config, eta", CASES, ids=[f"{n}-{c}-{e}" for n, c, e in CASES])
def test_stock_draws_follow_the_stock_loop(name: str, config: dict, eta: float | None) -> None:
    """The family's rule names exactly the steps whose stock ``step`` draws noise, in draw order, and its dtype."""
    sched = getattr(diffusers, name)(**config)
    T = 6
    sched.set_timesteps(T)
    coeffs = schedulers.coefficients_from_scheduler(sched, eta=eta)
    drawn: list[tuple[int, torch.dtype]] = []
    k = [0]

    def supply(shape: tuple, dtype: torch.dtype) -> torch.Tensor:
        drawn.append((T - 1 - k[0], dtype))
        return torch.zeros(shape, dtype=dtype)

    x = torch.randn(1, 2, 3, 3, dtype=torch.float64)
    step_kwargs = {} if eta is None else {"eta": eta}
    with _private_noise(sched, supply):
        for k[0], t in enumerate(sched.timesteps):
            m = torch.randn_like(x)  # a float64 model output: "model" dtype draws are float64, float32 ones are not
            x = sched.step(m, t, x, return_dict=False, **step_kwargs)[0].to(torch.float64)
    draws, in_float32 = schedulers.stock_draws(sched, coeffs, sched.timesteps, eta)
    assert draws == [i for i, _ in drawn]
    assert {dtype for _, dtype in drawn} <= ({torch.float32} if in_float32 else {torch.float64})


def test_every_traced_scheduler_has_a_parity_config() -> None:
    """A facts row without a parity test against its stock loop is not supported: ``tests/test_multistep.py``'s
    ``CONFIGS`` (each traced and stepped against the scheduler's own ``step()``) names every traced scheduler."""
    tree = ast.parse((Path(__file__).parent / "test_multistep.py").read_text())
    configs = next(
        node.value
        for node in tree.body
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "CONFIGS" for t in node.targets)
    )
    named = {elt.elts[0].value for elt in configs.elts if isinstance(elt, ast.Tuple)}
    assert set(schedulers.TRACED_SCHEDULERS) <= named
