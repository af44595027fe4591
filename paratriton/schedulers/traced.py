"""k-tap step operators traced from diffusers schedulers (multistep, sigma-space, Runge-Kutta).

The operator
------------
Every sampler here is written, exactly, as one affine recurrence over the *model evaluations*::

    x_i = a_i x_{i+1} + sum_{j<k} b[i, j] m_{i+j} + c_i xi_i,      m_n = model(input_scale_n * x_{n+1}, step n)

for ``i = T-1`` (first evaluation, noisiest) down to ``0`` (last). One step = one model evaluation = one
``scheduler.step()`` call, so ``T = len(scheduler.timesteps)``: Heun's two stages and PNDM's Runge-Kutta
warm-up evaluations are steps of their own, each with its own state. ``x_T`` is the initial latent exactly as the
stock loop starts it (already multiplied by ``init_noise_sigma``), ``x_{i}`` is what the ``(T-1-i)``-th
``step()`` call returns, and ``x_0`` the sample. ``m_{i+j}`` (``j >= 1``) are the raw model outputs of the
*earlier* (noisier) evaluations, already computed along the trajectory; ``b[i, j] = 0`` where ``i + j >= T``.

Why it is linear
----------------
Given the scheduler's scalar state (sigmas, alphas, the per-step solver order), every supported ``step()`` is a
linear map of ``(sample, model_output, noise)`` and of the history it keeps (earlier model outputs converted to data
or noise predictions, the previous sample for UniPC's corrector and PNDM's ``cur_sample``): conversions such as
``x0 = (x - sigma m) / alpha`` and the exponential-integrator / Adams / Runge-Kutta combinations only ever multiply
tensors by scalars and add them. By induction every state ``x_i`` is a fixed linear combination of ``x_T``, the model
outputs ``m_{i..T-1}`` and the step noises ``xi_{i..T-1}``: a lower-triangular "dense row" ``R_i``.

How the coefficients are found (the tracer)
-------------------------------------------
The scheduler is deep-copied (the user's is never touched), its float tensors are upcast to float64, and its own
loop (``scale_model_input``, ``step`` per timestep) is run once on *basis* tensors of shape ``[1, N, 1, 1]`` with
``N = 1 + 2T``: ``x_T = e_0``, the output of step ``i`` is ``e_{1+i}``, the noise drawn in step ``i`` (through
``randn_tensor``: the private copy's methods that call it get their own copy of the function, whose globals name the
tracer's supply, so the diffusers module and every other scheduler are untouched) is ``e_{1+T+i}``. Each traced
state's channel entries are then exactly its dense row ``R_i``. While tracing, a thread-local ``torch`` function mode
keeps float32 casts inside ``step()`` (diffusers upcasts ``sample`` to float32) and new tensors at float64, so the
trace is float64 throughout; the process's default dtype is never changed, so other threads are unaffected.

From the rows: ``a_i = R_i[x_T] / R_{i+1}[x_T]`` (the ``x_T`` weight of ``x_{i+1}`` must be nonzero), then
``r_i = R_i - a_i R_{i+1}`` has no ``x_T`` part and must be supported on ``M_i .. M_{i+k_i-1}`` and ``xi_i`` alone;
``k_i`` is the smallest such window (entries below ``1e-11`` of the row's scale count as zero), ``k = max_i k_i``,
``b[i, j] = r_i[M_{i+j}]``, ``c_i = r_i[xi_i]``.

What a tap reads (``M``): with the raw outputs ``M_n = m_n`` a multistep solver that combines *converted*
predictions (DPM-Solver++ on an epsilon model: ``D_n = (x_{n+1} - sigma_n m_n) / alpha_n``) has no finite
bandwidth, since ``D_{i+1}`` carries ``x_{i+2}``, whose elimination through step ``i+1`` brings in ``x_{i+3}``, and
so on (the raw-output taps decay geometrically over the whole history). So the tracer also tries the per-step affine
maps ``M_n = output_scale_n m_n + output_mix_n x_{n+1}`` that give the data prediction ``x0_hat`` and the noise
prediction ``eps_hat`` of step ``n`` (from the model-input levels and the prediction type): it feeds the loop
``m_n = (e_{1+n} - output_mix_n x_{n+1}) / output_scale_n`` so the rows are over ``M``, and keeps the kind with the
fewest taps (ties: an exact fit first, then raw, data, noise). DPM-Solver++ 2M then has ``k = 2``, with the
textbook coefficients (``a = sigma_t / sigma_s``, ``b_0 = -alpha_t (e^{-h} - 1)(1 + 1/(2r))``, ``b_1 = alpha_t
(e^{-h} - 1) / (2r)``). The solvers apply the map right after each model call (``tap_output``); it is part of "the
model" of step ``n`` and adds no unknowns. Because ``r_i`` is read off per *global* step, the warm-up
(lower orders at the start), ``lower_order_final``, ``euler_at_final``, the skipped last corrector of UniPC and
PNDM's switch from Runge-Kutta to PLMS are all in the coefficients already; nothing depends on a window position.
A loop that starts late (img2img's ``strength``, the refiner's ``denoising_start``: ``start > 0``) is traced
over ``timesteps[start:]`` after ``set_begin_index(start)``, as diffusers' ``get_timesteps`` runs it: the
history and warm-up restart at the loop's first step, the sigmas and ``lower_order_final`` follow the global index.
A state that needs the noise of another step (``r_i`` with weight on ``xi_j``, ``j != i``) is refused with an
error (it does not happen for the supported schedulers).

Linearity is verified, not assumed: the loop is run a second time on random dense tensors (``[2, 3, 4, 4]``, large
enough to trip clipping) with random model outputs and noises and must equal the rows' prediction; a nonlinear
option (thresholding, clip_sample, learned variances ...) that the option check did not name fails there.

The model call: ``input_scale_i`` is ``scale_model_input``'s factor (checked to be a scalar multiple of its input),
``signal_scale_i, noise_scale_i`` the levels of the model input ``z = input_scale_i x_{i+1} = signal x0 + noise
eps`` the scheduler assumes at that step (VP schedulers: ``alpha_t, sigma_t``; sigma-space schedulers:
``1/sqrt(1+sigma^2), sigma/sqrt(1+sigma^2)``), so the analytic Gaussian-mixture denoiser is exact.

Taps found (diffusers 0.42, ``k`` = the most any step reads; warm-up and final steps read fewer, ``step_taps``)
------------------------------------------------------------------------------------------------------------
Euler, Euler ancestral, CogVideoX's DDIM: 1 (raw). Heun: 2 (raw; ``T = 2N - 1`` evaluations, stage 2 reads its
stage-1 output).
DPM-Solver++ / SDE-DPM-Solver++ order 1/2/3: 1/2/3 (data). DPM-Solver (noise algorithm): order (raw). UniPC
order 1/2/3 (bh1 or bh2): 2/3/4 (data; its corrector at step ``i`` also reads the output at the predicted point;
``disable_corrector`` on every step: order). DEIS order 1/2/3: 1/2/3 (raw). LMS: 4 (raw). PNDM with
``skip_prk_steps``: 5 (raw; the PLMS history plus the repeated first evaluation, ``T = N + 1``); with the Runge-Kutta
warm-up: 13 (raw; ``T = N + 9``, the first PLMS steps read the first-stage outputs of the three RK steps, 4
evaluations apart; every later step reads 4).

Not supported (a ``ValueError`` names it): thresholding, ``clip_sample``, learned variances, UniPC ``solver_p``, a
``scale_model_input`` that is not a scalar multiple, any step nonlinear in its inputs, ``step()`` options beyond its
defaults (Euler's ``s_churn`` and friends are traced at 0), and the option sets on which the stock loop itself fails
(UniPC bh1 with ``final_sigmas_type='zero'`` gives NaN; order 3 without ``lower_order_final`` hits a singular solve;
PNDM's Runge-Kutta warm-up needs ``num_inference_steps >= 4``). Other schedulers (DPMSolverSinglestep, KDPM2, DDIM
inverse, ...) are not traced; singlestep and KDPM2 would fit the same tracer but are not verified here.

Noise (``EulerAncestralDiscreteScheduler``, ``DPMSolverMultistepScheduler`` with ``sde-*``)
-------------------------------------------------------------------------------------------
The stock loop draws one ``randn_tensor(model_output.shape, generator=..., device=..., dtype=...)`` per ``step()``
call, in evaluation order (step ``T-1`` first, then ``T-2``, ..., ``0``), shape = the latents' shape ``[B, *S]``,
dtype ``model_output.dtype`` for Euler ancestral and float32 for DPM-Solver SDE (``noise_dtype``); DPM-Solver SDE
draws at *every* step, also where the coefficient is 0 (the final step to sigma 0), so ``noise_draw_steps`` lists
every step that consumes a draw from the generator. To reproduce the stock image, draw ``xi_i`` for ``i`` in
``noise_draw_steps`` (in that order) with the same generator, shape and dtype, and pass ``noise [T, B, *S]`` with
``noise[i] = xi_i`` (zeros elsewhere).
"""

from __future__ import annotations

import contextlib
import copy
import math
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch.overrides import TorchFunctionMode

from .operator import MultistepCoefficients, check_steps
from .prediction import affine_prediction

__all__ = [
    "multistep_from_scheduler",
    "MULTISTEP_SCHEDULERS",
    "TRACED_SCHEDULERS",
    "TracedFacts",
    "FACTS",
    "float64_scheduler",
    "float64_mode",
]

_PNDM_PRK_MIN = 4  # PNDM's Runge-Kutta warm-up: diffusers' set_timesteps fails (numpy broadcast) below 4 steps


def _pndm_steps(cfg: Any, n: int) -> None:
    """PNDM's Runge-Kutta warm-up needs ``n >= 4`` steps (diffusers' own ``set_timesteps`` fails below that)."""
    if not cfg.skip_prk_steps and n < _PNDM_PRK_MIN:
        raise ValueError(
            f"PNDMScheduler with the Runge-Kutta warm-up (skip_prk_steps=False) needs num_inference_steps >= "
            f"{_PNDM_PRK_MIN}, got {n} (diffusers' own set_timesteps fails below that); use more steps or "
            "skip_prk_steps=True"
        )


@dataclass(frozen=True)
class TracedFacts:
    """What the tracer is told about one traced scheduler class (everything else it reads off the stock loop).

    levels:  how the levels ``x = alpha x0 + sigma eps`` of the state at a step are read: "sigma" (sigma space,
             variance exploding: ``alpha = 1``, ``sigma`` the scheduler's; the model sees ``x / sqrt(1 + sigma^2)``),
             "alpha_sigma" (the scheduler's ``_sigma_to_alpha_sigma_t`` of its sigma) or "alphas_cumprod"
             (``sqrt(alphas_cumprod[t])``, ``sqrt(1 - alphas_cumprod[t])`` by timestep; no sigmas).
    refused: ``(config key, what it is)`` pairs: options refused when set (not None), beyond the shared checks.
    steps:   ``(config, num_inference_steps) -> None``, raising where the stock loop cannot run that many steps.
    unread:  config keys of the shared checks that this scheduler's ``step()`` never reads (CogVideoX's DDIM keeps
             ``clip_sample`` and ``thresholding`` in its config but neither clips nor thresholds); the linearity
             re-run still verifies every traced step.
    """

    levels: str
    refused: tuple[tuple[str, str], ...] = ()
    steps: Callable[[Any, int], None] | None = None
    unread: tuple[str, ...] = ()


# one row per traced scheduler, in the order ``TRACED_SCHEDULERS`` lists them
FACTS: dict[str, TracedFacts] = {
    "EulerDiscreteScheduler": TracedFacts("sigma"),
    "EulerAncestralDiscreteScheduler": TracedFacts("sigma"),
    "DPMSolverMultistepScheduler": TracedFacts("alpha_sigma"),
    "UniPCMultistepScheduler": TracedFacts("alpha_sigma", refused=(("solver_p", "another scheduler as predictor"),)),
    "HeunDiscreteScheduler": TracedFacts("sigma"),
    "PNDMScheduler": TracedFacts("alphas_cumprod", steps=_pndm_steps),
    "LMSDiscreteScheduler": TracedFacts("sigma"),
    "DEISMultistepScheduler": TracedFacts("alpha_sigma"),
    # CogVideoX-2b's: DDIM at eta 0 written as ``a_t x + b_t x0_hat`` on SNR-shifted levels (one tap)
    "CogVideoXDDIMScheduler": TracedFacts("alphas_cumprod", unread=("clip_sample", "thresholding")),
}
TRACED_SCHEDULERS = tuple(FACTS)
MULTISTEP_SCHEDULERS = TRACED_SCHEDULERS
# sigma-space (variance exploding) schedulers: the state is x = x0 + sigma eps, the model sees x / sqrt(1 + sigma^2)
_VE_SCHEDULERS = tuple(name for name, facts in FACTS.items() if facts.levels == "sigma")
_PREDICTIONS = {"epsilon": "epsilon", "v_prediction": "v_prediction", "sample": "sample", "flow_prediction": "flow"}
_TAP_TOL = 1e-11  # relative size below which a traced coefficient counts as exactly zero
_LINEAR_TOL = 1e-9  # relative mismatch of the random-input re-run that marks a step as nonlinear


# ------------------------------------------------------------------------------------ float64 tracing machinery
def float64_scheduler(scheduler: Any) -> Any:
    """A deep copy of ``scheduler`` whose floating-point tensors (sigmas, alphas_cumprod, float timesteps ...) are
    float64; the values are the scheduler's own (float32 sigmas stay the same numbers). Integer tensors are kept."""
    sched = copy.deepcopy(scheduler)
    for name, value in list(vars(sched).items()):
        if torch.is_tensor(value) and value.is_floating_point():
            setattr(sched, name, value.detach().to("cpu", torch.float64))
    return sched


class _Float64Mode(TorchFunctionMode):
    """Keeps a scheduler's ``step()`` in float64 without touching the process's default dtype.

    A torch function mode is thread-local, so only the calls of the thread that entered it see it: every float32
    (and float16/bfloat16) dtype argument becomes float64, and a result that came out in a low float dtype although
    no low-precision tensor went in (a factory without a dtype, ``int_tensor * 0.5``: the default dtype's doing) is
    computed again with float64 (a factory's ``dtype=``; Python floats as float64 0-d tensors otherwise).
    """

    _LOW = (torch.float32, torch.float16, torch.bfloat16)
    _FACTORIES = frozenset(
        {
            torch.tensor,
            torch.as_tensor,
            torch.scalar_tensor,
            torch.zeros,
            torch.ones,
            torch.empty,
            torch.full,
            torch.arange,
            torch.linspace,
            torch.logspace,
            torch.rand,
            torch.randn,
        }
    )

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        args = tuple(torch.float64 if isinstance(a, torch.dtype) and a in self._LOW else a for a in args)
        if kwargs.get("dtype") in self._LOW:
            kwargs["dtype"] = torch.float64
        out = func(*args, **kwargs)
        if not (torch.is_tensor(out) and out.dtype in self._LOW) or kwargs.get("dtype") is not None:
            return out
        leaves = torch.utils._pytree.tree_leaves((args, kwargs))
        if any(torch.is_tensor(t) and t.dtype in self._LOW for t in leaves):
            return out  # a low-precision input: the step's own choice (the tracer's inputs are float64)
        if func in self._FACTORIES:
            return func(*args, **{**kwargs, "dtype": torch.float64})

        def wide(v):
            return torch.tensor(v, dtype=torch.float64) if type(v) is float else v

        args, kwargs = torch.utils._pytree.tree_map(wide, (args, kwargs))
        return func(*args, **kwargs)


@contextlib.contextmanager
def float64_mode() -> Iterator[None]:
    """Run a scheduler's ``step()`` in float64 in this thread: float32 casts inside it (``sample.to(torch.float32)``)
    and new tensors stay float64. Nothing process-wide changes (the default dtype is never set): other threads,
    tracing or not, are unaffected."""
    with _Float64Mode():
        yield


@contextlib.contextmanager
def _private_noise(sched: Any, supply) -> Iterator[None]:
    """Make ``sched`` (a private copy) draw its ``randn_tensor`` noise from ``supply(shape, dtype)``.

    Every method of its class (and bases) that calls ``randn_tensor`` gets, on this instance only, a copy of the
    function whose globals name ``supply`` as ``randn_tensor``; the diffusers module, the class and every other
    scheduler (in any thread) still draw from the real one. Removed on exit."""

    def fake(shape, generator=None, device=None, dtype=None, layout=None):
        return supply(tuple(shape), dtype)

    names = []
    for klass in type(sched).__mro__:
        for name, fn in vars(klass).items():
            if name in names or not isinstance(fn, types.FunctionType) or "randn_tensor" not in fn.__code__.co_names:
                continue
            if getattr(type(sched), name) is not fn:
                continue  # overridden lower in the MRO: the override is the one called
            private = types.FunctionType(
                fn.__code__, {**fn.__globals__, "randn_tensor": fake}, fn.__name__, fn.__defaults__, fn.__closure__
            )
            private.__kwdefaults__ = fn.__kwdefaults__
            setattr(sched, name, types.MethodType(private, sched))
            names.append(name)
    try:
        yield
    finally:
        for name in names:
            delattr(sched, name)


def _scalar_scale(z: torch.Tensor, x: torch.Tensor, name: str) -> float:
    """The ``s`` with ``z = s x`` (``scale_model_input`` must be a scalar multiple)."""
    xf, zf = x.reshape(-1), z.reshape(-1)
    s = float((zf @ xf) / (xf @ xf))
    if not bool(((zf - s * xf).abs() <= 1e-12 * max(zf.abs().max().item(), 1e-300)).all()):
        raise ValueError(f"{name}.scale_model_input is not a scalar multiple of its input: not supported")
    return s


# ------------------------------------------------------------------------------------------------- option checks
def _check_options(scheduler: Any) -> None:
    name = type(scheduler).__name__
    cfg = scheduler.config
    supported = (
        "supported: EulerDiscrete (sigmas: default/Karras/exponential/beta, any timestep_spacing/timestep_type), "
        "EulerAncestralDiscrete, DPMSolverMultistep (dpmsolver/dpmsolver++/sde-dpmsolver/sde-dpmsolver++, orders "
        "1-3, midpoint/heun, lower_order_final, euler_at_final, Karras/exponential/beta/lu/flow sigmas, "
        "final_sigmas_type), UniPCMultistep (bh1/bh2, orders 1-3, disable_corrector, predict_x0), HeunDiscrete, "
        "PNDM (PRK or skip_prk_steps), LMSDiscrete, DEISMultistep, CogVideoXDDIM; prediction types epsilon, "
        "v_prediction, sample "
        "(and flow_prediction where the scheduler has it), no thresholding or clipping"
    )
    unread = FACTS[name].unread
    if getattr(cfg, "thresholding", False) and "thresholding" not in unread:
        raise ValueError(
            f"{name}(thresholding=True) makes the step nonlinear in the model output (a per-sample quantile) and is "
            f"not supported by parallel samplers; set thresholding=False ({supported})"
        )
    if getattr(cfg, "clip_sample", False) and "clip_sample" not in unread:
        raise ValueError(
            f"{name}(clip_sample=True) makes the step nonlinear in the model output and is not supported by "
            f"parallel samplers; set clip_sample=False ({supported})"
        )
    vt = getattr(cfg, "variance_type", None)
    if vt in ("learned", "learned_range"):
        raise ValueError(
            f"{name}(variance_type={vt!r}) splits the model output into mean and variance channels and is not "
            "supported by parallel samplers; use variance_type=None with a model predicting only the mean "
            f"({supported})"
        )
    for key, what in FACTS[name].refused:
        if getattr(cfg, key, None) is not None:
            raise ValueError(f"{name}({key}=...) ({what}) is not supported ({supported})")
    pt = cfg.prediction_type
    if pt not in _PREDICTIONS:
        raise ValueError(f"{name}(prediction_type={pt!r}) is not supported; use one of {tuple(_PREDICTIONS)}")


# --------------------------------------------------------------------------------------------------- the tracer
@dataclass
class _Probe:
    """What one plain run of the loop tells about the scheduler (per step ``i``, float64)."""

    input_scale: torch.Tensor  # [T]
    timesteps: torch.Tensor  # [T]
    level_alpha: torch.Tensor  # [T+1]: state levels x_i = alpha_i x0 + sigma_i eps (i = T: the initial state)
    level_sigma: torch.Tensor  # [T+1]
    draws: list[int]  # steps that drew noise, in draw order
    noise_dtype: str | None


def _state_level(sched: Any, name: str, n: int, t: Any) -> tuple[float, float]:
    """``(alpha, sigma)`` of the state the model is called on at scheduler index ``n`` (timestep ``t``)."""
    levels = FACTS[name].levels
    if levels == "alphas_cumprod":
        ac = float(sched.alphas_cumprod[int(t)])
        return math.sqrt(ac), math.sqrt(1.0 - ac)
    idx = sched.step_index if getattr(sched, "step_index", None) is not None else n
    sigma = sched.sigmas[idx]
    if levels == "sigma":
        return 1.0, float(sigma)
    alpha_t, sigma_t = sched._sigma_to_alpha_sigma_t(sigma)
    return float(alpha_t), float(sigma_t)


def _final_level(sched: Any, name: str) -> tuple[float, float]:
    """``(alpha, sigma)`` of the sample ``x_0`` (the state after the last step)."""
    levels = FACTS[name].levels
    if levels == "alphas_cumprod":
        ac = float(sched.final_alpha_cumprod)
        return math.sqrt(ac), math.sqrt(max(1.0 - ac, 0.0))
    sigma = sched.sigmas[-1]
    if levels == "sigma":
        return 1.0, float(sigma)
    alpha_t, sigma_t = sched._sigma_to_alpha_sigma_t(sigma)
    return float(alpha_t), float(sigma_t)


def _run_loop(sched: Any, x: torch.Tensor, outputs, noises, record: dict | None, start: int = 0) -> list[torch.Tensor]:
    """The stock loop on ``sched`` (float64 mode) over ``sched.timesteps[start:]``: ``outputs(n, x, z)`` is
    evaluation ``n``'s model output (``n`` counts from the loop's first step) for the state ``x`` and model input
    ``z``, ``noises(n, shape)`` its ``randn_tensor`` draw; returns the states after each evaluation (``[x_T,
    x_{T-1}, ..., x_0]``)."""
    name = type(sched).__name__
    states = [x]
    current = [0]
    timesteps = sched.timesteps[start:]

    def supply(shape, dtype):
        n = current[0]
        if record is not None:
            record.setdefault("draws", []).append(n)
            record.setdefault("dtypes", []).append(dtype)
        return noises(n, shape)

    with _private_noise(sched, supply), float64_mode():
        for n, t in enumerate(timesteps):
            current[0] = n
            z = sched.scale_model_input(x, t)
            if record is not None:
                record.setdefault("scale", []).append(_scalar_scale(z, x, name))
                record.setdefault("level", []).append(_state_level(sched, name, start + n, t))
            try:
                x = sched.step(outputs(n, x, z), t, x, return_dict=False)[0]
            except (RuntimeError, ValueError, IndexError, ZeroDivisionError) as e:
                raise ValueError(
                    f"{name}{_options_text(sched)}.step fails in its own loop at call {n + 1} of "
                    f"{len(timesteps)} ({type(e).__name__}: {e}): the stock sampler does not run with these "
                    "options, so there is nothing to reproduce"
                ) from e
            states.append(x)
    return states


def _options_text(sched: Any) -> str:
    """``(option=value, ...)``: the scheduler's non-default config entries."""
    cfg = dict(sched.config)
    defaulted = set(cfg.pop("_use_default_values", []))
    opts = ", ".join(f"{k}={v!r}" for k, v in cfg.items() if k not in defaulted and not k.startswith("_"))
    return f"({opts})"


def _basis(N: int, j: int) -> torch.Tensor:
    e = torch.zeros(1, N, 1, 1, dtype=torch.float64)
    e[0, j] = 1.0
    return e


def _probe(scheduler: Any, start: int = 0) -> _Probe:
    name = type(scheduler).__name__
    T = len(scheduler.timesteps) - start
    N = 1 + 2 * T
    record: dict = {}
    sched = float64_scheduler(scheduler)

    def noise(n: int, shape: tuple) -> torch.Tensor:
        if tuple(shape) != (1, N, 1, 1):
            raise ValueError(f"{name}.step drew noise of shape {shape}, not the sample's shape: not supported")
        return _basis(N, 1 + T + (T - 1 - n))

    _run_loop(sched, _basis(N, 0), lambda n, x, z: _basis(N, 1 + (T - 1 - n)), noise, record, start)
    draws = [T - 1 - n for n in record.get("draws", [])]
    if len(set(draws)) != len(draws):
        raise ValueError(f"{name}.step draws noise more than once per call: not supported")
    dtypes = set(record.get("dtypes", []))
    noise_dtype = None
    if dtypes:
        noise_dtype = "float32" if torch.float32 in dtypes else "model"
    lv = [_final_level(sched, name)] + [record["level"][T - 1 - i] for i in range(T)]  # lv[i]: level of x_i
    return _Probe(
        torch.tensor(record["scale"][::-1], dtype=torch.float64),
        torch.as_tensor(sched.timesteps[start:]).to(torch.float64).flip(0),
        torch.tensor([v[0] for v in lv], dtype=torch.float64),
        torch.tensor([v[1] for v in lv], dtype=torch.float64),
        draws,
        noise_dtype,
    )


def _trace_rows(scheduler: Any, u: torch.Tensor, v: torch.Tensor, start: int = 0) -> torch.Tensor:
    """``[T+1, N]`` dense rows of ``x_0 .. x_T`` over ``(x_T, M_0..M_{T-1}, xi_0..xi_{T-1})`` where the model output
    of step ``i`` is ``m_i = (M_i - v_i x_{i+1}) / u_i`` (``M_i = u_i m_i + v_i x_{i+1}`` the tap's output)."""
    T = len(scheduler.timesteps) - start
    N = 1 + 2 * T
    uh, vh = u.tolist(), v.tolist()

    def output(n: int, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        i = T - 1 - n
        return (_basis(N, 1 + i) - vh[i] * x) / uh[i]

    states = _run_loop(
        float64_scheduler(scheduler),
        _basis(N, 0),
        output,
        lambda n, shape: _basis(N, 1 + T + (T - 1 - n)),
        None,
        start,
    )
    return torch.stack([s.reshape(N).to(torch.float64) for s in states[::-1]])


def _check_linear(scheduler: Any, rows: torch.Tensor, u: torch.Tensor, v: torch.Tensor, start: int = 0) -> None:
    """Re-run the loop on random dense inputs; the rows must predict every state (else a nonlinear option)."""
    name = type(scheduler).__name__
    T = rows.shape[0] - 1
    g = torch.Generator().manual_seed(1234)
    shape = (2, 3, 4, 4)
    basis = torch.randn(1 + 2 * T, *shape, generator=g, dtype=torch.float64) * 3.0
    basis[0] *= 5.0  # x_T large, as in sigma space
    uh, vh = u.tolist(), v.tolist()

    def output(n: int, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        i = T - 1 - n
        return (basis[1 + i] - vh[i] * x) / uh[i]

    states = _run_loop(
        float64_scheduler(scheduler),
        basis[0].clone(),
        output,
        lambda n, s: basis[1 + T + (T - 1 - n)].clone(),
        None,
        start,
    )
    flat = basis.reshape(basis.shape[0], -1)
    for n, s in enumerate(states):
        i = T - n
        want = (rows[i] @ flat).reshape(shape)
        err = (s.to(torch.float64) - want).abs().max().item()
        scale = max((rows[i].abs() @ flat.abs()).max().item(), 1e-300)
        if not err <= _LINEAR_TOL * scale:
            raise ValueError(
                f"{name}{_options_text(scheduler)} is not linear in (sample, model output, noise) at "
                f"evaluation {n} (relative mismatch {err / scale:.2e}): some option makes the step nonlinear and "
                "parallel samplers cannot use it"
            )


def _fit_taps(name: str, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float] | str:
    """``a [T], b [T, k], c [T]`` and the largest relative weight dropped as zero from the dense rows, or the reason
    they do not fit the k-tap form."""
    T = rows.shape[0] - 1
    a = torch.zeros(T, dtype=torch.float64)
    c = torch.zeros(T, dtype=torch.float64)
    taps: list[torch.Tensor] = []
    dropped = 0.0
    for i in range(T - 1, -1, -1):
        nxt, cur = rows[i + 1], rows[i]
        scale_next = nxt.abs().max().item()
        if not abs(nxt[0].item()) > _TAP_TOL * scale_next:
            return f"the state x_{i + 1} has no weight on x_T, so step {i} is not a x_{{i+1}} + sum b M + c xi"
        a[i] = cur[0] / nxt[0]
        r = cur - a[i] * nxt
        scale = max(cur.abs().max().item(), abs(a[i].item()) * scale_next, 1e-300)
        small = r.abs() <= _TAP_TOL * scale
        dropped = max(dropped, r.abs()[small].sum().item() / scale)
        r = torch.where(small, torch.zeros_like(r), r)
        noise_part = r[1 + T :].clone()
        c[i] = noise_part[i]
        noise_part[i] = 0
        if bool((noise_part != 0).any()):
            others = (noise_part != 0).nonzero().flatten().tolist()
            return f"step {i} depends on the noise of step(s) {others[:6]} besides its own"
        m = r[1 : 1 + T]
        if bool((m[:i] != 0).any()):
            return f"step {i} reads a model output of a later step"
        nz = (m != 0).nonzero().flatten()
        k_i = int(nz.max()) - i + 1 if nz.numel() else 1
        taps.append(m[i : i + k_i])
    k = max(t.numel() for t in taps)
    b = torch.zeros(T, k, dtype=torch.float64)
    for i, t in zip(range(T - 1, -1, -1), taps):
        b[i, : t.numel()] = t
    return a, b, c, dropped


def _output_transforms(pt: str, probe: _Probe) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Candidate tap outputs ``M_i = u_i m_i + v_i x_{i+1}``: the raw output, the data prediction ``x0_hat`` and the
    noise prediction ``eps_hat`` (both affine in the model input ``z = s x`` for the step's levels)."""
    s = probe.input_scale
    al, sg = probe.level_alpha[1:] * s, probe.level_sigma[1:] * s  # model-input levels
    one, zero = torch.ones_like(s), torch.zeros_like(s)
    p, q, r, w = affine_prediction(pt, al, sg)
    out = {"raw": (one, zero)}
    for kind, (uu, vv) in (("data", (q, p * s)), ("noise", (w, r * s))):
        if bool(torch.isfinite(uu).all() & torch.isfinite(vv).all() & (uu != 0).all()):
            out[kind] = (uu, vv)
    return out


def _posterior_std(alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``[T]``: the std of ``x_i`` given ``x_{i+1}`` and ``x0`` when ``x_n = alpha_n x0 + sigma_n eps`` and the
    forward transition ``x_{i+1} | x_i`` is Gaussian: ``sigma_i sqrt(1 - (alpha_{i+1} sigma_i / (alpha_i
    sigma_{i+1}))^2)``. A step that keeps the level (Heun's second stage, PNDM's repeated Runge-Kutta evaluation)
    takes the value of the step before it in sampling order (the stage pair is one step of the noise schedule)."""
    a_t, s_t = alpha[:-1], sigma[:-1]  # x_i (less noisy)
    a_s, s_s = alpha[1:], sigma[1:]  # x_{i+1}
    ratio = torch.where(s_s > 0, (a_s * s_t) / (a_t * s_s).clamp_min(1e-300), torch.ones_like(s_s))
    post = (s_t * (1 - ratio.square()).clamp_min(0).sqrt()).nan_to_num(0.0)
    same = ((s_t - s_s).abs() <= 1e-12 * s_s.abs()) & ((a_t - a_s).abs() <= 1e-12 * a_s.abs()) & (s_t > 0)
    for i in range(post.shape[0] - 2, -1, -1):
        if bool(same[i]):
            post[i] = post[i + 1]
    return post


def _set_start(scheduler: Any, start: int) -> int:
    """Check ``start`` and set the (copied) scheduler's begin index to it, as img2img's ``get_timesteps`` does."""
    name = type(scheduler).__name__
    n = len(scheduler.timesteps)
    start = int(start)
    if not 0 <= start < n:
        raise ValueError(f"start must be in 0..{n - 1} (the {name} loop has {n} timesteps), got {start}")
    if not hasattr(scheduler, "set_begin_index"):
        return start  # PNDM: its step() follows the timesteps and its own counter, nothing to set
    begin = scheduler.begin_index
    if begin is None:
        if start > 0:
            scheduler.set_begin_index(start)
    elif int(begin) != start:
        raise ValueError(
            f"{name}.begin_index is {begin} but the loop starts at timestep index {start}: the scheduler would "
            "step with the sigmas of another step"
        )
    return start


def multistep_from_scheduler(
    scheduler: Any, num_inference_steps: int | None = None, *, start: int = 0, **set_timesteps_kwargs: Any
) -> MultistepCoefficients:
    """Trace ``scheduler`` (one of ``MULTISTEP_SCHEDULERS``) into a ``MultistepCoefficients``.

    With ``num_inference_steps`` a copy's ``set_timesteps`` is called (extra keyword arguments, e.g. ``mu``, are
    passed on); without it the scheduler must have its timesteps set. The scheduler is never modified.

    ``start``: the loop runs ``timesteps[start:]`` (``T = len(timesteps) - start``), as diffusers' img2img,
    inpainting and refiner pipelines run it: ``set_begin_index(start)`` first (where the scheduler has it and its
    begin index is unset), then ``step()`` from a fresh history, so the warm-up orders start at the loop's first
    step while the sigmas and ``lower_order_final`` follow the global step index.
    """
    name = type(scheduler).__name__
    if name not in MULTISTEP_SCHEDULERS:
        raise ValueError(f"scheduler {name} is not a traceable multistep scheduler; supported: {MULTISTEP_SCHEDULERS}")
    _check_options(scheduler)
    scheduler = copy.deepcopy(scheduler)
    if num_inference_steps is not None:
        n = check_steps(num_inference_steps)
        if FACTS[name].steps is not None:
            FACTS[name].steps(scheduler.config, n)
        scheduler.set_timesteps(n, **set_timesteps_kwargs)
    elif getattr(scheduler, "num_inference_steps", None) is None:
        raise ValueError(f"{name}.set_timesteps has not been called: pass num_inference_steps")
    if getattr(scheduler, "step_index", None) is not None or getattr(scheduler, "counter", 0):
        raise ValueError(f"{name} has already been stepped: pass a fresh scheduler (or num_inference_steps)")
    start = _set_start(scheduler, start)
    probe = _probe(scheduler, start)
    pt = _PREDICTIONS[scheduler.config.prediction_type]
    best: tuple | None = None
    reasons = []
    for kind, (u, v) in _output_transforms(pt, probe).items():
        rows = _trace_rows(scheduler, u, v, start)
        if not bool(torch.isfinite(rows).all()):
            i = int((~torch.isfinite(rows)).any(1).nonzero().max())
            raise ValueError(
                f"{name}{_options_text(scheduler)} gives NaN/inf states in its own step() loop (first at "
                f"step {i}, i.e. call {probe.timesteps.shape[0] - i}): the stock sampler fails with these options "
                "(e.g. UniPC bh1 with final_sigmas_type='zero'), so there is nothing to reproduce"
            )
        fit = _fit_taps(name, rows)
        if isinstance(fit, str):
            reasons.append(f"{kind} outputs: {fit}")
            continue
        # fewest taps; among equals an exact fit (nothing but rounding dropped) before a truncated one, then the
        # order raw, data, noise
        key = (fit[1].shape[1], fit[3] > 1e-14)
        if best is None or key < best[0]:
            best = (key, kind, (u, v, rows), fit)
    if best is None:
        raise ValueError(f"{name} does not fit the k-tap step operator: " + "; ".join(reasons))
    _, kind, (u, v, rows), (a, b, c, _) = best
    _check_linear(scheduler, rows, u, v, start)
    signal = probe.input_scale * probe.level_alpha[1:]
    noise = probe.input_scale * probe.level_sigma[1:]
    post = _posterior_std(probe.level_alpha, probe.level_sigma)
    return MultistepCoefficients(
        a,
        b,
        c,
        probe.input_scale,
        post,
        probe.timesteps,
        signal,
        noise,
        pt,
        kind,
        u,
        v,
        name,
        tuple(probe.draws),
        probe.noise_dtype,
    )
