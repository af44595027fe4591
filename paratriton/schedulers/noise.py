"""The step noise of stochastic samplers, drawn up front exactly as the stock ``scheduler.step`` calls would draw it.

A parallel solve needs every step's noise ``xi_i`` before the first iteration. diffusers' schedulers draw it inside
``step`` with ``randn_tensor`` (DDPM when ``t > 0``, DDIM when ``eta > 0``, flow-match Euler with
``stochastic_sampling``; the traced schedulers record their own draws as ``noise_draw_steps``), so drawing the same
shapes, in the same order, with the same generator and dtype reproduces the loop's noise. Which steps draw, and in
which dtype, is each scheduler family's rule (``stock_draws`` in ``paratriton.schedulers``); here the draws.
"""

from __future__ import annotations

import torch

__all__ = ["draw_step_noise", "GraphedDraws"]


def draw_step_noise(
    draws: list[int],
    T: int,
    rows: int,
    B: int,
    sample_shape: tuple[int, ...],
    generator,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor | None:
    """``[T, B, *S]`` float64 step noise: one ``randn_tensor((rows, *S))`` per step in ``draws`` (draw order), of
    which the first ``B`` rows are kept (DiT steps a ``[cond; uncond]`` pair and keeps the cond half). None when
    nothing is drawn."""
    # deferred: diffusers is heavy and optional (``import paratriton`` never imports it)
    from diffusers.utils.torch_utils import randn_tensor

    if not draws:
        return None
    drawn = [randn_tensor((rows, *sample_shape), generator=generator, device=device, dtype=dtype)[:B] for i in draws]
    noise = torch.zeros(T, B, *sample_shape, dtype=torch.float64, device=device)
    # one scatter, not a copy per step (a control loop draws 99 steps' noise every chunk)
    return noise.index_copy_(0, torch.tensor(draws, device=device), torch.stack(drawn).to(torch.float64))


def _indexed(device) -> torch.device:
    """``device`` with its index: ``cuda`` alone is the current CUDA device."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


class GraphedDraws:
    """The draws of ``draw_step_noise`` as one CUDA-graph replay, for a control loop that draws the same plan every
    chunk (99 ``randn`` launches and their host work cost ~1.5 ms a chunk; a replay costs one launch).

    Exactness is checked, not assumed: the first capture of a plan replays once and draws eagerly from the same
    generator state; the graph is kept only if both the noise and the generator's state after the draws are equal
    bit for bit, else that plan draws eagerly from then on. Graphed: the process's default CUDA generator
    (``generator=None``) and a CUDA ``torch.Generator`` seen for a second time (one made anew every chunk draws
    eagerly: capturing for it would cost more than it saves). A CPU generator or a list of them draws eagerly."""

    def __init__(self) -> None:
        # plan key -> (generator, (graph, static noise) or None); strong references, at most 16 of each (torch
        # 2.11's generators take no weak reference): an id is never reused while its generator is held here
        self._plans: dict[tuple, tuple] = {}
        self._seen: dict[int, torch.Generator] = {}

    def __call__(self, draws, T, rows, B, sample_shape, generator, device, dtype) -> torch.Tensor | None:
        device = _indexed(device)
        gen = self._graphable(generator, device)
        if gen is None or not draws:
            return draw_step_noise(draws, T, rows, B, sample_shape, generator, device, dtype)
        key = (tuple(draws), T, rows, B, tuple(sample_shape), str(device), dtype, id(gen))
        held, plan = self._plans.get(key, (None, None))
        if held is not gen:  # new
            if len(self._plans) >= 16:
                self._plans.clear()
            plan = self._capture(draws, T, rows, B, sample_shape, gen, device, dtype)
            self._plans[key] = (gen, plan)
            if plan is not None:  # _capture left the generator where the eager draws leave it
                return plan[1].clone()
        if plan is None:
            return draw_step_noise(draws, T, rows, B, sample_shape, generator, device, dtype)
        graph, static = plan
        graph.replay()
        return static.clone()  # the next replay rewrites ``static``

    def _graphable(self, generator, device: torch.device):
        if device.type != "cuda" or isinstance(generator, list):
            return None
        if generator is None:
            return torch.cuda.default_generators[device.index]
        if _indexed(generator.device) != device:
            return None
        if self._seen.get(id(generator)) is not generator:  # a generator made for one chunk: draw eagerly
            if len(self._seen) >= 16:
                self._seen.clear()
            self._seen[id(generator)] = generator
            return None
        return generator

    @staticmethod
    def _capture(draws, T, rows, B, sample_shape, gen, device, dtype):
        index = torch.tensor(draws, device=device)
        static = torch.zeros(T, B, *sample_shape, dtype=torch.float64, device=device)
        drawn = torch.empty(len(draws), rows, *sample_shape, dtype=dtype, device=device)
        start = gen.get_state()
        try:
            graph = torch.cuda.CUDAGraph()
            if gen is not torch.cuda.default_generators[device.index]:  # the default one is in every capture
                graph.register_generator_state(gen)
            with torch.cuda.graph(graph):
                for i in range(len(draws)):
                    drawn[i].normal_(generator=gen)
                static.index_copy_(0, index, drawn[:, :B].to(torch.float64))
            gen.set_state(start)  # a capture draws nothing, but leave no doubt
            graph.replay()
            after_graph = gen.get_state()
            gen.set_state(start)
            eager = draw_step_noise(draws, T, rows, B, sample_shape, gen, device, dtype)
        except Exception:  # an older torch, a generator a graph cannot take: never worse than eager draws
            gen.set_state(start)  # the caller draws eagerly
            return None
        if torch.equal(after_graph, gen.get_state()) and torch.equal(eager, static):
            return graph, static
        gen.set_state(start)  # the caller draws eagerly
        return None
