"""SRDS: Self-Refining Diffusion Samplers (Selvam, Merchant, Ermon, NeurIPS 2024) -- Parareal over sampler steps.

The ``T`` fine steps are any ``StepOperator``: ``x_i = a_i x_{i+1} + sum_{j<k} b[i, j] M_{i+j} + c_i xi_i`` with
the model called as ``m_i = m(s_i x_{i+1}, i)`` and the tap output ``M_i = u_i m_i + v_i x_{i+1}`` (``s``: the
input scale, ``u, v``: ``output_scale, output_mix``). One-tap samplers (DDIM, DDPM, flow-match Euler) have ``k = 1``,
``s = u = 1``, ``v = 0``: ``x_i = a_i x_{i+1} + b_i m(x_{i+1}, i) + c_i xi_i``. The multistep operators of
``schedulers.traced`` (DPM-Solver++, UniPC, PNDM, Heun, LMS, DEIS, Euler ...) read the outputs of up to ``k - 1``
earlier steps as well; their per-step order (warm-up, ``lower_order_final``) is in ``b`` by *global* step, so
nothing below depends on where a block starts. The steps are cut into ``K`` blocks of ``S = T / K`` steps. Block
``q`` (``q = K-1`` is the first, noisiest one) runs steps ``i = h-1 .. l`` (``h = (q+1)S``, ``l = qS``): it maps
its start boundary ``X_{q+1} = x_h`` to its end boundary ``X_q = x_l``; ``X_K = x_T`` and ``X_0 = x_0`` is the
sample. Iteration indices are superscripts: ``X^p_q`` is boundary ``q`` after ``p`` Parareal iterations.

Fine solver ``F_q(X, H)``: the ``S`` exact sampler steps of block ``q`` from ``X`` with the pre-drawn noise, where
``H = (M_h, .., M_{h+k-2})`` are the tap outputs of the ``k - 1`` steps above the block's start (none for
``k = 1``; ``b[i, j] = 0`` for ``i + j >= T``, so the first block needs none). Besides ``x_l`` it leaves its final
*ring*, the tap outputs ``(M_l, .., M_{l+k-2})`` it ends with: its own for the block's last steps, the tail of
``H`` where ``k - 1 > S``. Exact ``X`` and ``H`` give the exact ``x_l`` and the exact ring.

Coarse solver ``G_q(X)`` (one model call; it carries the state only, no history): "the same sampler with the
block's first timestep jumping across the whole block". Evaluate the model once at the block start with the
block's first step index ``h - 1``, form the clean-sample estimate ``x0_hat = p_{h-1} s_{h-1} X + q_{h-1} m(s_{h-1}
X, h-1)`` (``p, q`` from the prediction type and the model input's level: ``x0_prediction``), hold ``x0_hat``
fixed over the block and unroll the recursion. Each tap output rewritten in ``x0_hat`` (substitute ``m_n =
(x0_hat - p_n s_n x_{n+1}) / q_n``) is ``M_n = w_n x_{n+1} + z_n x0_hat`` with ``w_n = v_n - u_n p_n s_n / q_n``,
``z_n = u_n / q_n`` (data-prediction taps: ``M_n = x0_hat``); a tap above the block's start reads the block's
first one, ``M_{h-1}``. Every state of the block is then ``x_n = A'_n X + B'_n x0_hat + E_n``, scalars run by
``x_n = a_n x_{n+1} + sum_j b[n, j] M_{n+j} + c_n xi_n`` on the pairs ``(A', B')`` from ``(1, 0)`` at ``x_h``, and::

    G_q(X) = A'_q X + B'_q x0_hat + E_q = (A'_q + B'_q p_{h-1} s_{h-1}) X + B'_q q_{h-1} m(s_{h-1} X, h-1) + E_q
           =: A_q X + B_q m(s_{h-1} X, h-1) + E_q

(``E_q``: the same recursion on the noise alone). For one-tap samplers this is ``x_i = a'_i x_{i+1} + b'_i x0_hat
+ c_i xi_i``, ``a'_i = a_i - b_i p_i / q_i``, ``b'_i = b_i / q_i``: ``A'_q = prod a'_i``, ``B'_q = sum_j (prod_{i<j}
a'_i) b'_j``. Why freeze ``x0_hat``: every supported step is "move to the next noise level given ``x0_hat``", and
these moves compose exactly with ``x0_hat`` fixed -- DDIM's deterministic step telescopes to DDIM's single step
from ``t_h`` to ``t_l`` (the paper's coarse solver; the same jump as freezing epsilon), the DDPM posterior means
compose to the posterior mean of the big jump ``q(x_l | x_h, x0)`` (the forward process is Markov given ``x0``),
flow-matching Euler becomes the straight line to ``x0_hat``, and a multistep step with all its data predictions
equal is its first-order (DDIM) step. Freezing the raw epsilon instead gives the same DDIM jump but, for DDPM, a
jump with the same ``A`` and a different ``B`` that is not the big posterior step (DDPM's per-step posterior means
do not compose with epsilon held fixed): on the analytic model (DDPM, tol 1e-3) Parareal then needed 5 of 5 (T=25)
and 9 of 10 (T=100) iterations, against 3 and 4 with ``x0_hat`` frozen. (If some ``|q_i|`` is ~0 the tap output
itself is frozen instead.) The coarse solver need not be accurate: Parareal's correction makes the fixed point
exact whatever ``G`` is, as long as the fine solves are exact given exact inputs; ``G``'s accuracy only sets the
number of iterations.

Two consequences used below:

* The coarse call ``m(s_{h-1} X, h-1)`` is the model output at the block's start with its first step index, i.e.
  *exactly the first model evaluation of the fine solve* ``F_q`` from the same start. We evaluate it once and
  use it for both (one NFE and one sequential model call saved per block and iteration compared with the
  textbook accounting).
* The noise term ``E_q`` cancels in the correction ``G_q(X^p) - G_q(X^{p-1}) = A_q (X^p - X^{p-1}) +
  B_q (m^p - m^{p-1})``: it only shapes the predictor (iteration 0; composing the DDPM posteriors with ``x0_hat``
  fixed, it makes the predictor a sample of the big jump's posterior). Computing the difference this way also
  avoids cancellation between two large coarse values.

Parareal (``K`` blocks, ``p = 1, 2, ...``)::

    predictor:  X^0_K = x_T,  X^0_q = G_q(X^0_{q+1})                         (K sequential calls)
    fine:       Y^p_q = F_q(X^{p-1}_{q+1}, H^{p-1}_q)   for every unfinished block, batched in one call per fine step
    corrector:  X^p_q = Y^p_q + G_q(X^p_{q+1}) - G_q(X^{p-1}_{q+1})           (sequential sweep, q = K-1 .. 0)
    stop:       RMS(X^p_0 - X^{p-1}_0) <= max(tol_abs, tol_rel * posterior_std_0) for every trajectory,
                or p = K (then the result is exact).

History (``k > 1``; ``_history_source``): ``H^p_q``, read by the solve of block ``q`` from ``X^p_{q+1}``, is the
final ring of block ``q+1``'s solve from ``X^{p'}_{q+2}`` with ``p' = p - 1`` -- the solve whose result ``Y^p_{q+1}``
formed this start, so it has finished before this solve begins in either schedule (for one-step blocks ``p' = p``:
the solve from ``X^p_{q+2}`` is the very call that formed ``X^p_{q+1}``; ``p'`` is capped at ``K - q - 2``, block
``q+1``'s last solve). Where no such solve exists (``p' < 0``: the solves from the predictor), the block's own first
tap output ``M_{h-1}`` stands in for every missing tap. The rule is data independent, so both schedules below do the
same arithmetic.

Exactness, hence the fixed point: ``X^p_q`` is exact for ``q >= K - p`` (after ``p`` iterations the ``p+1``
boundaries nearest ``x_T``, i.e. the starts of blocks ``K-1 .. K-1-p``, equal the sequential sampler's), and so is
the final ring of every solve from an exact start. Induction on ``p``: block ``K-1``'s solves read no history and
start from ``x_T``, so ``Y^p_{K-1}`` and their rings are exact for every ``p``. If the claim holds up to ``p - 1``,
the solve of block ``q >= K - p`` from ``X^{p-1}_{q+1}`` (exact: ``q + 1 >= K - p + 1``) reads the ring of block
``q+1``'s solve from ``X^{p-2}_{q+2}`` (exact: ``q + 2 >= K - p + 2``), so ``Y^p_q`` is the sequential ``x_{qS}``
with its exact ring; and a block whose start was exact is not corrected (``X^{p-1}_{q+1} = X^p_{q+1}``, the
correction is 0), so ``X^p_q = Y^p_q`` is exact. At ``p = K`` the whole trajectory is the sequential sampler's;
conversely the sequential trajectory with its own tap outputs as histories is a fixed point (every ``Y`` equals its
boundary and every correction is 0), and the stand-in histories only ever enter iterates that are not yet exact.
Blocks whose start is already exact are not solved again and need no correction, so iteration ``p`` fine-solves
``K - p + 1`` blocks and its sweep makes ``K - p`` sequential coarse calls; at ``p = K`` the sample is exact and
there is no sweep. For one-tap samplers and one-step blocks ``G_q = F_q``, so the predictor is already the sequential
sampler and one iteration confirms it; with ``k > 1`` the fine step also reads the history the coarse one lacks, so
it is not.

Two schedules of the same computations (identical arithmetic, so identical results):

* ``SRDS`` (plain): predictor; then per iteration ``S - 1`` batched fine calls (the first fine evaluation was
  the previous sweep's coarse call) and a sweep of ``K - p`` single-block calls. Sequential model calls for ``P``
  iterations: ``K + P (S - 1) + P K - P (P + 1) / 2``.
* ``SRDSPipelined`` (wavefront): every evaluation runs in the first model call after its input exists; a block's
  next fine solve starts as soon as its corrected start is known, so the coarse/first-fine evaluations of some
  blocks share a call with fine evaluations of others. Sequential model calls for ``P`` iterations:
  ``P S + K - P`` (``= T`` at ``P = K``: never more than the sequential sampler). Work for later iterations that
  is in flight when the stopping test passes is counted in the NFE.

In both, "critical path" is the number of batched model calls made, each counted as one latency unit whatever its
batch size (``SRDSResult.rows_per_call`` gives the batch sizes so that the assumption can be judged). A multistep
solve keeps one ring of ``k - 1`` tap outputs ``[k-1, B, D]`` per running fine solve and per finished one not yet
read (about two per block).

The schedules are data independent, so they are built on the host before the first model call and their index
tensors are copied to the device once; the only host-device sync per iteration is the stopping test (with a
non-finite flag riding along).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..model import Denoiser
from ..schedulers.operator import StepOperator, one_tap_view
from ..schedulers.prediction import x0_prediction
from ._common import (
    IterationInfo,
    ModelCaller,
    NonFiniteError,
    SolveResult,
    _check_int,
    check_problem,
    exclusive,
    set_common_options,
)
from .tolerance import Tolerance

__all__ = [
    "SRDS",
    "SRDSPipelined",
    "SRDSResult",
    "Round",
    "build_schedule",
    "default_blocks",
    "allowed_blocks",
    "coarse_coefficients",
    "critical_path_model",
    "srds_benchmark",
    "main",
]


# ------------------------------------------------------------------------------------------------------------
# result type
# ------------------------------------------------------------------------------------------------------------
@dataclass
class SRDSResult(SolveResult):
    """``SolveResult`` plus SRDS' latency accounting (all other fields keep their meaning, except:)

    iterations:     Parareal iterations ``P`` (corrector sweeps; the predictor is iteration 0 and is not counted)
    nfe:            model evaluations per trajectory, including the predictor and in-flight pipelined work
    residuals:      ``[iterations, T]``: at boundary steps ``qS`` the largest (over the batch) RMS of the Parareal
                    correction ``X^p_q - Y^p_q`` -- the order-1 residual of step ``qS`` on the trajectory whose
                    block interiors come from iteration ``p``'s fine solves (0 for the newly exact boundary);
                    NaN elsewhere (interior steps are consistent along their fine solve by construction; blocks
                    already exact are not touched)
    critical_path:  batched model calls made, i.e. sequential model-call rounds (the latency in model calls)
    blocks:         number of blocks ``K``
    increments:     ``[iterations]`` float64: per iteration the stopping statistic, the largest over the batch of
                    ``RMS(X^p_0 - X^{p-1}_0)``
    rows_per_call:  evaluations per trajectory in each model call (a call's batch is ``rows * B``)
    converged:      the sample's Parareal increment met the sample tolerance (``Tolerance.sample_threshold``), or
                    the result is exact (``p = K``)
    trajectory:     boundaries ``x_{qS}`` are the Parareal iterates ``X^p_q``; the states inside a block are those
                    of the last fine solve through it, which started from the previous iterate of its start
                    boundary, so only the sample and the boundaries carry the tolerance. Use ``sample``; the
                    engine's methods return a trajectory whose every step passed its residual test.
    """

    critical_path: int = 0
    blocks: int = 0
    increments: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.float64))
    rows_per_call: list[int] = field(default_factory=list)

    @property
    def max_rows_per_call(self) -> int:
        return max(self.rows_per_call, default=0)


# ------------------------------------------------------------------------------------------------------------
# block counts and the coarse step
# ------------------------------------------------------------------------------------------------------------
def allowed_blocks(num_steps: int) -> list[int]:
    """The divisors of ``num_steps``: the block counts SRDS accepts."""
    return [d for d in range(1, num_steps + 1) if num_steps % d == 0]


def default_blocks(num_steps: int) -> int:
    """The divisor of ``num_steps`` closest to ``sqrt(num_steps)`` (the smaller one on a tie).

    For a prime ``num_steps`` that is 1 (a single fine solve: the sequential sampler plus one coarse call).
    """
    r = math.sqrt(num_steps)
    return min(allowed_blocks(num_steps), key=lambda d: (abs(d - r), d))


def _check_blocks(blocks: int | None, num_steps: int) -> int:
    if blocks is None:
        return default_blocks(num_steps)
    blocks = _check_int("blocks", blocks, 1)
    if num_steps % blocks:
        raise ValueError(
            f"blocks must divide the number of steps T={num_steps}; allowed values: "
            f"{allowed_blocks(num_steps)}, got {blocks}"
        )
    return blocks


def _tap_form(coeffs: StepOperator) -> tuple[torch.Tensor, ...]:
    """``a [T], b [T, k], c [T], s [T], u [T], v [T]`` (float64, CPU) of ``x_i = a_i x_{i+1} + sum_j b[i, j]
    M_{i+j} + c_i xi_i`` with ``m_i = model(s_i x_{i+1}, i)`` and ``M_i = u_i m_i + v_i x_{i+1}`` (one-tap
    operators: ``k = 1``, ``s = u = 1``, ``v = 0``)."""
    cpu = lambda t: t.to("cpu", torch.float64)  # noqa: E731
    b = cpu(coeffs.b)
    b = b[:, None] if b.ndim == 1 else b
    return (
        cpu(coeffs.a),
        b,
        cpu(coeffs.c),
        cpu(coeffs.input_scale),
        cpu(coeffs.output_scale),
        cpu(coeffs.output_mix),
    )


def _frozen_steps(coeffs: StepOperator) -> tuple[torch.Tensor, ...]:
    """Each tap output written in a frozen quantity ``F``: ``M_n = w_n x_{n+1} + z_n F``, where ``F = f_n x_{n+1} +
    g_n m_n`` is what the block's first evaluation gives (all ``[T]``, float64, CPU).

    ``F = x0_hat`` (substitute ``m_n = (x0_hat - p_n s_n x_{n+1}) / q_n``): ``w = v - u p s / q``, ``z = u / q``,
    ``f = p s``, ``g = q``. If some ``|q_n|`` is too small to divide by, the tap output itself is frozen
    (``w = 0``, ``z = 1``, ``f = v``, ``g = u``).
    """
    _, _, _, s, u, v = _tap_form(coeffs)
    p, q = x0_prediction(coeffs)
    if bool(torch.isfinite(p).all() and torch.isfinite(q).all() and (q.abs() > 1e-12).all()):
        return v - u * p * s / q, u / q, p * s, q
    return torch.zeros_like(u), torch.ones_like(u), v, u


def _frozen_blocks(
    coeffs: StepOperator, blocks: int, state: torch.Tensor, frozen, noise: torch.Tensor | None = None
) -> torch.Tensor:
    """Every block's ``S`` steps with ``F`` frozen, batched over blocks: ``state [K, *R]`` is the value at each
    block's start, ``frozen`` the ``F`` part (broadcast to ``state``), ``noise [T, *R]`` adds ``c_n xi_n``.

    The taps of a step read the frozen-world tap outputs of the block's earlier steps; a tap above the block's
    start reads the block's first tap output (no history: the coarse map carries the state only).
    """
    a, b_host, c, _, _, _ = _tap_form(coeffs)
    w, z, _, _ = _frozen_steps(coeffs)
    T, k = b_host.shape
    S = T // blocks
    dev, dt = state.device, state.dtype
    # [S, K, 1, ..] per-block scalars, on the device once (no per-step host->device copies)
    a, b, c, w, z = (
        t.view(blocks, S, *t.shape[1:]).transpose(0, 1).to(dev, dt).reshape(S, blocks, *t.shape[1:])
        for t in (a, b_host, c, w, z)
    )
    col = lambda t: t.view(blocks, *[1] * (state.ndim - 1))  # noqa: E731 -- [K] -> broadcast over state
    ring: list[torch.Tensor] = []  # frozen-world tap outputs M_{n+1}, M_{n+2}, ... newest first
    for s in range(S - 1, -1, -1):  # step (q+1)S-1 first: the order the sampler runs them
        n = torch.arange(blocks) * S + s
        M = col(w[s]) * state + col(z[s]) * frozen
        if s == S - 1:
            ring = [M] * (k - 1)
        taps = [M, *ring]
        new = col(a[s]) * state
        for j in range(k):
            if bool((b_host[n, j] != 0).any()):
                new = new + col(b[s, :, j]) * taps[j]
        if noise is not None:
            new = new + col(c[s]) * noise[n.to(noise.device)].to(dt)
        ring = taps[: k - 1]
        state = new
    return state


def coarse_coefficients(coeffs: StepOperator, blocks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The coarse jump of every block: ``G_q(X) = A_q X + B_q m(s X, (q+1)S-1) + E_q``.

    Returns ``A [K], B [K]`` (float64, CPU); ``E_q`` is ``_coarse_noise``. Block ``q`` covers steps ``qS ..
    (q+1)S-1``; see the module docstring for the derivation.
    """
    T = coeffs.num_steps
    S = T // blocks
    _, _, f, g = _frozen_steps(coeffs)
    one = torch.zeros(blocks, 2, dtype=torch.float64)
    one[:, 0] = 1.0
    frozen = torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    end = _frozen_blocks(coeffs, blocks, one, frozen)  # x_{qS} = A' X + B' F
    first = torch.arange(blocks) * S + S - 1  # the block's first step: where F is evaluated
    return end[:, 0] + end[:, 1] * f[first], end[:, 1] * g[first]


def _coarse_noise(coeffs: StepOperator, xi: torch.Tensor, blocks: int, dtype: torch.dtype) -> torch.Tensor:
    """``E [K, B, D]``: the pre-drawn noise ``xi [T, B, D]`` carried through each block's frozen steps."""
    zero = torch.zeros(blocks, *xi.shape[1:], dtype=dtype, device=xi.device)
    return _frozen_blocks(coeffs, blocks, zero, 0.0, xi)


# ------------------------------------------------------------------------------------------------------------
# the schedule: which evaluations share which model call
# ------------------------------------------------------------------------------------------------------------
@dataclass
class Round:
    """One batched model call.

    rows:   evaluations ``(q, p, j)``: fine step ``j`` (0-based) of block ``q``'s solve from ``X^p_{q+1}``; ``j = 0``
            is the model call at the block start, shared by the coarse step ``G_q(X^p_{q+1})``
    forms:  boundaries ``(q, p)`` whose value ``X^p_q`` is known after this call, in the order they are formed
    """

    rows: list[tuple[int, int, int]]
    forms: list[tuple[int, int]]


def build_schedule(
    blocks: int, block_size: int, max_iters: int, *, pipelined: bool, warm_start: bool = False
) -> list[Round]:
    """Simulate the dependency graph of SRDS up to iteration ``min(max_iters, blocks)`` and return its rounds.

    Plain: fine steps ``j >= 1`` of the solves from ``X^p`` wait until the sweep of iteration ``p`` has formed
    ``X^p_0``. Pipelined: every evaluation runs as soon as its input exists. ``warm_start``: every ``X^0_q`` is
    given (no predictor sweep; the coarse values at ``X^0`` are evaluated in one batched call).
    Pure Python, data independent (the numerics in ``SRDS.solve`` follow it call by call).
    """
    K, S = blocks, block_size
    P = min(max_iters, K)
    lastp = [-1] * K  # latest iteration formed, per boundary 0..K-1 (boundary K = x_T is exact for every p)
    e0_done: set[tuple[int, int]] = set()  # (q, p): model evaluated at X^p_{q+1} (coarse G_q(X^p_{q+1}) known)
    y_known: set[tuple[int, int]] = set()  # (q, p): Y^p_q = F_q(X^{p-1}_{q+1}) known
    chains: dict[tuple[int, int], int] = {}  # (q, p) -> next fine step j of the solve from X^p_{q+1}
    pending: list[tuple[int, int]] = [(K - 1, 0)]  # E0 evaluations whose input exists
    if warm_start:
        lastp = [0] * K
        pending = [(q, 0) for q in range(K - 1, -1, -1)]
    rounds: list[Round] = []

    def form() -> list[tuple[int, int]]:
        formed = []
        for q in range(K - 1, -1, -1):  # boundary q depends on q+1: sweep towards x_0
            p = lastp[q] + 1
            if p > min(P, K - q):  # X^p_q for p > K-q equals the exact X^{K-q}_q: never formed again
                continue
            if p == 0:
                ok = (q, 0) in e0_done
            elif q >= K - p:  # start X^{p-1}_{q+1} is exact: the correction vanishes, X^p_q = Y^p_q
                ok = (q, p) in y_known
            else:
                ok = (q, p) in e0_done and (q, p) in y_known and (q, p - 1) in e0_done
            if ok:
                lastp[q] = p
                formed.append((q, p))
                if q >= 1:
                    pending.append((q - 1, p))
        return formed

    while lastp[0] < P:
        rows = [(q, p, 0) for q, p in pending]
        pending.clear()
        for (q, p), j in sorted(chains.items(), key=lambda kv: (kv[0][1], -kv[0][0])):
            if pipelined or lastp[0] >= p:
                rows.append((q, p, j))
        if not rows:
            raise RuntimeError(
                f"SRDS schedule stalled (blocks={K}, block_size={S}, max_iters={max_iters}); this is a bug"
            )
        for q, p, j in rows:
            last = j == S - 1
            if j == 0:
                e0_done.add((q, p))
                if not last and p + 1 <= min(P, K - q):  # the fine solve from X^p_{q+1} is still needed
                    chains[(q, p)] = 1
            else:
                chains[(q, p)] = j + 1
            if last:
                chains.pop((q, p), None)
                y_known.add((q, p + 1))
        formed = []
        while True:
            new = form()
            if not new:
                break
            formed += new
        rounds.append(Round(rows, formed))
    return rounds


def _history_source(q: int, p: int, blocks: int, block_size: int) -> int | None:
    """Whose tap outputs the fine solve of block ``q`` from ``X^p_{q+1}`` reads for the steps above its start: the
    final ring of block ``q+1``'s solve from ``X^{p'}_{q+2}``, ``p' = min(p - 1, K - q - 2)`` (``p' = min(p, K - q -
    2)`` for one-step blocks, whose solve from ``X^p_{q+2}`` is the very call that formed ``X^p_{q+1}``), or None
    (first block: no steps above it; ``p' < 0``: no solve has finished yet). Data independent, and finished before
    it is read in both schedules, so plain and pipelined do the same arithmetic."""
    if q + 1 >= blocks:
        return None
    src = min(p - (block_size > 1), blocks - q - 2)
    return src if src >= 0 else None


def critical_path_model(num_steps: int, blocks: int, iterations: int, *, pipelined: bool) -> int:
    """Closed form of the sequential model calls for ``iterations`` Parareal iterations (cold start)."""
    K, S, P = blocks, num_steps // blocks, min(iterations, blocks)
    if pipelined:
        return P * S + K - P
    return K + P * (S - 1) + P * K - P * (P + 1) // 2


# ------------------------------------------------------------------------------------------------------------
# the solver
# ------------------------------------------------------------------------------------------------------------
class SRDS:
    """Parareal over blocks of sampler steps (plain schedule); ``SRDSPipelined`` is the wavefront schedule.

    blocks:    number of blocks ``K``, any divisor of ``T`` (default: the divisor closest to ``sqrt(T)``)
    tol:       stop when ``RMS(X^p_0 - X^{p-1}_0) <= tol`` for every trajectory (default 1e-3: the target RMS
               distance of the sample to the sequential one, as for every method)
    tol_abs, tol_rel: the expert form: ``max(tol_abs, tol_rel * posterior_std_0)`` instead of ``tol``
    tolerance: the three as one ``Tolerance`` (what the registry passes) instead of ``tol``/``tol_abs``/``tol_rel``
    max_iters: at most this many Parareal iterations (never more than ``K``: at ``p = K`` the result is exact).

    The plain schedule costs ``K + P (S - 1) + P K - P (P + 1) / 2`` sequential model calls for ``P`` iterations,
    more than the ``T`` of the sequential sampler when many iterations are needed (at ``P = K`` always, for
    ``K > 1``). When that can happen (the worst case over ``P <= max_iters``) ``SRDS`` runs the pipelined schedule
    instead: the same arithmetic and the same result, at ``P S + K - P <= T`` calls; ``method`` then reads
    ``"srds(pipelined)"``. So no SRDS run costs more sequential model calls than the sequential sampler.
    state_dtype: float64 (default) or float32
    callback:  ``callback(IterationInfo)`` after every iteration; ``info.sample`` is the current ``X^p_0``,
               ``info.trajectory [T+1, B, *S]`` the latest estimate of every state, ``info.residual_rms
               [hi - lo, B]`` the corrections at boundary steps (NaN elsewhere, see ``SRDSResult``),
               ``info.frozen_from = (K - p) S``: the steps from there up are exact
    backend:   accepted for compatibility with the other solvers ("torch" or "triton"); SRDS has no fused ops
               (its per-call work is a few affine tensor ops), so both run the same code
    """

    method = "srds"
    pipelined = False

    def __init__(
        self,
        *,
        blocks: int | None = None,
        tol: float | None = None,
        tol_abs: float | None = None,
        tol_rel: float | None = None,
        max_iters: int | None = None,
        state_dtype: torch.dtype | None = None,
        callback: Callable[[IterationInfo], None] | None = None,
        backend: str = "torch",
        tolerance: Tolerance | None = None,
    ) -> None:
        if backend not in ("torch", "triton"):
            raise ValueError(f"backend must be 'torch' or 'triton', got {backend!r}")
        self.blocks = None if blocks is None else _check_int("blocks", blocks, 1)
        if tolerance is None:
            tolerance = Tolerance(tol, tol_abs, tol_rel)
        elif (tol, tol_abs, tol_rel) != (None, None, None):
            raise TypeError("pass tolerance (a Tolerance) or tol/tol_abs/tol_rel, not both")
        set_common_options(self, tolerance, max_iters, state_dtype or torch.float64, callback)

    window_shrunk_to: int | None = None

    def _call_rows(self, call: ModelCaller, inp: torch.Tensor, steps: torch.Tensor, dev: torch.device) -> torch.Tensor:
        """One batched model call on ``inp [n, B, D]``; out of memory splits it into calls of half as many steps
        (rows are independent, so the outputs, and the answer, do not change) and keeps that limit for the solve."""
        n = inp.shape[0]
        while True:
            lim = min(n, self.window_shrunk_to or n)
            try:
                if lim == n:
                    return call(inp, steps)
                return torch.cat([call(inp[i : i + lim], steps[i : i + lim]) for i in range(0, n, lim)])
            except torch.OutOfMemoryError as e:
                if lim == 1:
                    raise torch.OutOfMemoryError(
                        f"out of memory even with one step ({inp.shape[1]} trajectories) per model call: {e}"
                    ) from e
                self.window_shrunk_to = max(1, lim // 2)
                warnings.warn(
                    f"out of memory with {lim} steps per model call: continuing with {self.window_shrunk_to}",
                    RuntimeWarning,
                    stacklevel=3,
                )
                if dev.type == "cuda":
                    torch.cuda.empty_cache()

    @torch.no_grad()
    def solve(
        self,
        model: Denoiser,
        coeffs: StepOperator,
        x_T: torch.Tensor,
        noise: torch.Tensor | None = None,
        init: torch.Tensor | None = None,
    ) -> SRDSResult:
        """See ``_solve``; one solve at a time per solver object, no autograd."""
        with exclusive(self):
            return self._solve(model, coeffs, x_T, noise, init)

    def _solve(
        self,
        model: Denoiser,
        coeffs: StepOperator,
        x_T: torch.Tensor,
        noise: torch.Tensor | None = None,
        init: torch.Tensor | None = None,
    ) -> SRDSResult:
        """Sample ``B`` trajectories from ``x_T [B, *sample_shape]``.

        noise: ``[T, B, *sample_shape]`` pre-drawn standard normals (required when the sampler adds noise).
        init:  optional warm start ``[T, B, ...]`` (or ``[T+1, ...]``) guess of ``x_0 .. x_{T-1}``; its block
               boundaries ``x_{qS}`` replace the predictor (one batched call instead of ``K`` sequential ones).
               The result is still the exact sample of this problem.
        Returns an ``SRDSResult`` (state dtype tensors on ``x_T``'s device).
        """
        check_problem(one_tap_view(coeffs), x_T, noise, init)
        self.window_shrunk_to = None  # rows (steps) per model call after running out of memory; reset every solve
        T, B, shape = coeffs.num_steps, x_T.shape[0], tuple(x_T.shape[1:])
        K = _check_blocks(self.blocks, T)
        S = T // K
        D = math.prod(shape)
        dev, dt = x_T.device, self.state_dtype
        P = K if self.max_iters is None else min(self.max_iters, K)
        k = int(coeffs.taps)
        if S == 1 and k == 1:  # one-step one-tap blocks: G_q = F_q, so the predictor is already the sequential
            P = min(P, 1)  # sampler; one iteration confirms it instead of K redundant sweeps (k > 1: F_q reads
            # the history, G_q does not, so the predictor is not exact)
        warm = init is not None
        # the plain schedule only where even its worst case stays within T sequential calls (see the class doc)
        pipelined = self.pipelined or critical_path_model(T, K, P, pipelined=False) - (K - 1 if warm else 0) > T
        rounds = build_schedule(K, S, P, pipelined=pipelined, warm_start=warm)

        a, bm, c, s_in, u_out, v_out = (t.to(dev, dt) for t in _tap_form(coeffs))
        b, b_hist = bm[:, 0], bm[:, 1:]  # own output; the k-1 earlier outputs (history ring)
        # identity maps (one-tap operators, raw taps) skip their multiplies
        s_in = None if bool((s_in == 1).all()) else s_in
        u_out, v_out = (None, None) if bool((u_out == 1).all() and (v_out == 0).all()) else (u_out, v_out)
        stochastic = coeffs.is_stochastic
        xi = None if noise is None else noise.reshape(T, B, D)
        A_h, Bc_h = coarse_coefficients(coeffs, K)
        A_q, B_q = A_h.tolist(), Bc_h.tolist()  # host floats: scalar multiplies need no device read
        threshold0 = self.tolerance.sample_threshold(coeffs)
        E = _coarse_noise(coeffs, xi.to(dt), K, dt) if (stochastic and not warm) else None

        # every index the rounds need, built on the host and copied to the device once (a per-round host->device
        # copy of a fresh tensor would synchronise the stream)
        flat: list[int] = []
        meta = []  # per round: (offset of steps, n rows, offset of interior rows, n interior)
        for rd in rounds:
            steps = [(q + 1) * S - 1 - j for q, _, j in rd.rows]
            iters = [p if j == 0 else p + 1 for _, p, j in rd.rows]
            inner = [r for r, (_, _, j) in enumerate(rd.rows) if j < S - 1]
            o = len(flat)
            flat += steps + iters + inner + [steps[r] for r in inner]
            meta.append((o, len(steps), o + 2 * len(steps), len(inner)))
        idx = torch.tensor(flat, dtype=torch.long).to(dev)

        x = torch.empty(T + 1, B, D, dtype=dt, device=dev)
        x[T] = x_T.reshape(B, D)
        X: dict[tuple[int, int], torch.Tensor] = {(K, 0): x[T]}  # boundary states X^p_q
        if warm:
            x[:T] = init[:T].reshape(T, B, D).to(device=dev, dtype=dt)
            for q in range(K):
                X[(q, 0)] = x[q * S].clone()
        else:
            x[:T] = x[T]  # placeholder until the first fine solves overwrite it (as the window solvers do)
        m0: dict[tuple[int, int], torch.Tensor] = {}  # model output at X^p_{q+1}, step (q+1)S-1
        state: dict[tuple[int, int], torch.Tensor] = {}  # running state of the fine solve from X^p_{q+1}
        ring: dict[tuple[int, int], torch.Tensor] = {}  # its last k-1 tap outputs [k-1, B, D], newest first
        hist: dict[tuple[int, int], torch.Tensor] = {}  # the final ring of a finished fine solve, for block q-1
        Y: dict[tuple[int, int], torch.Tensor] = {}  # Y^p_q
        res = torch.full((P, T, B), float("nan"), dtype=torch.float64, device=dev)
        bad_count = torch.zeros(T, dtype=torch.int64, device=dev)  # non-finite model outputs per step
        bad_iter = torch.full((T,), P + 1, dtype=torch.int64, device=dev)  # earliest iteration they served
        call = ModelCaller(model, shape, B, coeffs=coeffs, device=x_T.device)
        rms = lambda v: v.square().mean(dim=-1).sqrt()  # noqa: E731 -- [B, D] -> [B], RMS per element

        nfe, done_iters, converged = 0, 0, False
        increments: list[float] = []
        windows: list[tuple[int, int]] = []
        rows_per_call: list[int] = []
        for rd, (o, n, oi, ni) in zip(rounds, meta):
            steps, iters = idx[o : o + n], idx[o + n : o + 2 * n]
            inp = torch.stack([X[(q + 1, p)] if j == 0 else state[(q, p)] for q, p, j in rd.rows])
            out = self._call_rows(call, inp if s_in is None else s_in[steps, None, None] * inp, steps, dev).to(dt)
            nfe += n
            rows_per_call.append(n)
            flag = (~torch.isfinite(out)).reshape(n, -1).any(dim=1)
            bad_count.index_add_(0, steps, flag.long())
            bad_iter.scatter_reduce_(0, steps, torch.where(flag, iters, P + 1), "amin")
            M = out if u_out is None else u_out[steps, None, None] * out + v_out[steps, None, None] * inp
            new = a[steps, None, None] * inp + b[steps, None, None] * M
            if k > 1:
                # a solve's first step takes the final ring of block q+1's solve _history_source names (exact
                # once this solve's start is; see the module doc); without one its own first output stands in
                rings = []
                for r, (q, p, j) in enumerate(rd.rows):
                    # (a coarse-only evaluation, p = P, has no fine solve: its stand-in ring is never used)
                    src_p = _history_source(q, p, K, S) if j == 0 and p + 1 <= min(P, K - q) else None
                    if j:
                        rings.append(ring.pop((q, p)))
                    elif src_p is None:
                        rings.append(M[r].expand(k - 1, *M.shape[1:]))
                    else:
                        rings.append(hist[(q + 1, src_p)])
                        for old in [key for key in hist if key[0] == q + 1 and key[1] < src_p]:
                            del hist[old]  # later solves read the same or a newer one
                rg = torch.stack(rings)  # [n, k-1, B, D]
                new = new + torch.einsum("nj,njbd->nbd", b_hist[steps], rg)
                rg = torch.cat([M[:, None], rg[:, :-1]], dim=1)  # the rings after this step
            if xi is not None and stochastic:
                new = new + c[steps, None, None] * xi[steps].to(dt)
            if ni:
                x.index_copy_(0, idx[oi + ni : oi + 2 * ni], new.index_select(0, idx[oi : oi + ni]))
            for r, (q, p, j) in enumerate(rd.rows):
                if j == 0:
                    m0[(q, p)] = out[r]
                if p + 1 > min(P, K - q):  # a coarse-only evaluation: Y^{p+1}_q is never used (as in the schedule)
                    continue
                if j == S - 1:
                    Y[(q, p + 1)] = new[r]
                    state.pop((q, p), None)
                    if k > 1 and q >= 1:
                        hist[(q, p)] = rg[r]
                else:
                    state[(q, p)] = new[r]
                    if k > 1:
                        ring[(q, p)] = rg[r]
            for q, p in rd.forms:
                if p == 0:  # predictor: the coarse jump itself
                    Xn = A_q[q] * X[(q + 1, 0)] + B_q[q] * m0[(q, 0)]
                    if E is not None:
                        Xn = Xn + E[q]
                elif q >= K - p:  # exact start: nothing to correct
                    Xn = Y.pop((q, p))
                    res[p - 1, q * S] = 0.0
                    m0.pop((q, p - 1), None)
                else:  # Parareal corrector; E_q cancels in G(X^p) - G(X^{p-1})
                    y = Y.pop((q, p))
                    corr = A_q[q] * (X[(q + 1, p)] - X[(q + 1, p - 1)]) + B_q[q] * (m0[(q, p)] - m0[(q, p - 1)])
                    Xn = y + corr
                    res[p - 1, q * S] = rms(corr).to(torch.float64)
                    m0.pop((q, p - 1), None)
                    if q + 1 < K:
                        X.pop((q + 1, p - 1), None)
                X[(q, p)] = Xn
                x[q * S] = Xn
                if q == 0 and p >= 1:
                    # the one host sync of the iteration: the stopping statistic and a non-finite flag
                    inc = rms(Xn - X.pop((0, p - 1))).amax()
                    inc_val, nbad = torch.stack([inc.to(torch.float64), bad_count.sum().to(torch.float64)]).tolist()
                    if nbad or not math.isfinite(inc_val):
                        self._raise_nonfinite(bad_count, bad_iter, p)
                    done_iters = p
                    increments.append(inc_val)
                    hi = min(T, (K - p + 1) * S)
                    windows.append((0, hi))
                    converged = p >= K or inc_val <= threshold0
                    if self.callback is not None:
                        self.callback(
                            IterationInfo(p, (0, hi), (K - p) * S, res[p - 1, :hi].to(dt), x.reshape(T + 1, B, *shape))
                        )
                    if converged:  # several iterations can finish in one call (one-step blocks)
                        break
            if converged or done_iters >= P:
                break

        traj = x.reshape(T + 1, B, *shape)
        return SRDSResult(
            sample=traj[0],
            trajectory=traj,
            iterations=done_iters,
            nfe=nfe,
            residuals=res[:done_iters].amax(dim=-1).cpu(),
            converged=converged,
            method=self.method if pipelined == self.pipelined else self.method + "(pipelined)",
            window_history=windows,
            critical_path=call.calls,
            blocks=K,
            increments=torch.tensor(increments, dtype=torch.float64),
            rows_per_call=rows_per_call,
        )

    @staticmethod
    def _raise_nonfinite(bad_count: torch.Tensor, bad_iter: torch.Tensor, iteration: int) -> None:
        steps = bad_count.nonzero().flatten().tolist()
        if not steps:
            raise NonFiniteError(
                f"the SRDS iterates are NaN/inf in iteration {iteration} (they diverged; the model "
                "outputs were finite); the sampler stopped and returns no image"
            )
        its = bad_iter[steps].tolist()
        desc = ", ".join(f"step {s} (iteration {i})" for s, i in list(zip(steps, its))[:8])
        raise NonFiniteError(
            f"the model output is NaN/inf at {desc}{' ...' if len(steps) > 8 else ''}; "
            f"detected at the end of iteration {iteration}; the sampler stopped and returns no image"
        )


class SRDSPipelined(SRDS):
    """SRDS with the wavefront schedule: each evaluation runs in the first model call after its input exists."""

    method = "srds_pipelined"
    pipelined = True


# ------------------------------------------------------------------------------------------------------------
# benchmark hook
# ------------------------------------------------------------------------------------------------------------
def srds_benchmark(
    num_steps: tuple[int, ...] = (25, 100, 1000),
    *,
    eta: float = 0.0,
    tol: float = 1e-3,
    batch: int = 2,
    seed: int = 0,
    blocks: int | None = None,
) -> list[dict]:
    """Latency of SRDS on the analytic default problem (``python -m paratriton sample``'s Gaussian mixture, shape
    ``[batch, 4, 8, 8]``, ``default_schedule(T, eta)``), one row per ``T``.

    Runs both schedules to ``tol`` (``tol_abs = tol_rel = tol``) and reports: blocks ``K``, iterations ``P``, the
    RMS error vs the sequential sampler after each iteration (identical for both schedules: same arithmetic),
    sequential model calls and NFE per trajectory for plain and pipelined, the speedup in sequential model calls
    (``T / calls``), and the peers' latency model for the plain schedule, ``K + P (T/K + K)``.
    """
    from ..testing import GaussianMixture
    from ..testing.gaussian_mixture import default_schedule
    from .sequential import solve_sequential

    rows = []
    for T in num_steps:
        coeffs = default_schedule(T, eta=eta)
        gm = GaussianMixture.random((4, 8, 8), num_components=6, seed=seed)
        model = gm.denoiser(coeffs)
        g = torch.Generator().manual_seed(seed)
        x_T = torch.randn(batch, *gm.sample_shape, generator=g, dtype=torch.float64)
        noise = torch.randn(T, *x_T.shape, generator=g, dtype=torch.float64)
        ref = solve_sequential(model, coeffs, x_T, noise).sample
        errs: list[float] = []
        cb = lambda info: errs.append((info.sample - ref).square().mean().sqrt().item())  # noqa: E731
        plain = SRDS(blocks=blocks, tol_abs=tol, tol_rel=tol, callback=cb).solve(model, coeffs, x_T, noise)
        pipe = SRDSPipelined(blocks=blocks, tol_abs=tol, tol_rel=tol).solve(model, coeffs, x_T, noise)
        K, P = plain.blocks, plain.iterations
        assert pipe.iterations == P and pipe.converged == plain.converged
        rows.append(
            {
                "T": T,
                "K": K,
                "P": P,
                "err_per_iter": " ".join(f"{e:.0e}" for e in errs),
                # the paper's plain schedule's cost (SRDS runs the pipelined one when this can exceed T)
                "calls_plain": critical_path_model(T, K, P, pipelined=False),
                "plain_ran_as": plain.method,
                "calls_pipe": pipe.critical_path,
                "nfe_plain": plain.nfe,
                "nfe_pipe": pipe.nfe,
                "speedup_plain": f"{T / critical_path_model(T, K, P, pipelined=False):.2f}",
                "speedup_pipe": f"{T / pipe.critical_path:.2f}",
                "peers_plain": K + P * (T // K + K),
                "calls_P1": f"{critical_path_model(T, K, 1, pipelined=False)}/"
                f"{critical_path_model(T, K, 1, pipelined=True)}",
            }
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    """``python -m paratriton.solvers.srds [--steps 25 100 1000] [--eta 0] [--tol 1e-3]``: a markdown table."""
    import argparse

    ap = argparse.ArgumentParser(description="SRDS latency (sequential model calls) on the analytic model")
    ap.add_argument("--steps", type=int, nargs="+", default=[25, 100, 1000])
    ap.add_argument("--eta", type=float, default=0.0)
    ap.add_argument("--tol", type=float, default=1e-3)
    ap.add_argument("--blocks", type=int, default=None)
    args = ap.parse_args(argv)
    out = srds_benchmark(tuple(args.steps), eta=args.eta, tol=args.tol, blocks=args.blocks)
    print(f"eta={args.eta}, tol={args.tol}")
    print("| " + " | ".join(out[0]) + " |\n|" + "---|" * len(out[0]))
    for row in out:
        print("| " + " | ".join(map(str, row.values())) + " |")


if __name__ == "__main__":
    main()
