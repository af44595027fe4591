"""A ``torch.compile``d network inside the device-resident samplers: same samples as the eager network.

On the CPU the compile uses ``backend="aot_eager"`` (no C++ toolchain needed) with ``fullgraph=True``, so a graph
break in what the samplers hand the network fails the test. On CUDA (skipped in CI) inductor compiles for real:
``mode="default"`` is captured inside paratriton's graphs, ``mode="reduce-overhead"`` (inductor's own CUDA graphs,
which cannot be nested in a capture) runs uncaptured around them with a warning.
"""

import warnings

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

import paratriton as pt
from paratriton._cuda_graph import NestedCUDAGraphError, _watch_cudagraph_trees, capture
from paratriton.solvers import make_solver
from paratriton.solvers.graphed_sequential import GraphedSequential


class TinyEps(torch.nn.Module):
    """A conv net with a step embedding and a class branch: enough structure for dynamo to trace."""

    def __init__(self, channels: int = 3, steps: int = 1000) -> None:
        super().__init__()
        self.inp = torch.nn.Conv2d(channels, 16, 3, padding=1)
        self.emb = torch.nn.Embedding(steps, 16)
        self.out = torch.nn.Conv2d(16, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.inp(x) + self.emb(t)[:, :, None, None] * cond.to(x.dtype)[:, None, None, None]
        return 0.3 * self.out(torch.nn.functional.silu(h))


def guided(net: torch.nn.Module, coeffs: pt.SamplerCoefficients, device: torch.device) -> pt.ClassifierFreeGuidance:
    ts = coeffs.timesteps.to(device, torch.long)

    def branches(x, s, cond):
        return net(x.float(), ts[s], cond).to(x.dtype)

    return pt.ClassifierFreeGuidance(branches, 3.0, pass_branch=True)


def setup(kind: str, T: int, device: torch.device):
    sched = DDIMScheduler(clip_sample=False) if kind == "ddim" else DDPMScheduler(clip_sample=False)
    cf = pt.coefficients_from_scheduler(sched, T)
    torch.manual_seed(0)
    net = TinyEps().to(device).eval().requires_grad_(False)
    g = torch.Generator().manual_seed(1)
    x_T = torch.randn(1, 3, 7, 5, generator=g, dtype=torch.float64).to(device)  # odd spatial sizes
    noise = torch.randn(T, 1, 3, 7, 5, generator=g, dtype=torch.float64).to(device) if kind == "ddpm" else None
    return cf, net, x_T, noise


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def StaticTAA(method="taa", **kw):
    return make_solver(method, cuda_graph=True, **kw)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("kind", ["ddim", "ddpm"])
@pytest.mark.parametrize("solver", [dict(), dict(method="picard", window=4), dict(method="fp", window=5, order=2)])
def test_static_taa_with_compiled_network_matches_eager(kind, solver, floor_warning):
    cf, net, x_T, noise = setup(kind, 12, torch.device("cpu"))
    compiled = torch.compile(net, backend="aot_eager", fullgraph=True, dynamic=False)
    kw = dict(tol_abs=1e-7, tol_rel=1e-7, **solver)
    ref = StaticTAA(**kw).solve(guided(net, cf, x_T.device), cf, x_T, noise)
    sampler = StaticTAA(**kw)
    model = guided(compiled, cf, x_T.device)
    got = sampler.solve(model, cf, x_T, noise)
    again = sampler.solve(model, cf, x_T, noise)  # buffers reused, compiled shapes reused
    assert got.converged and got.iterations == ref.iterations
    assert rel(got.trajectory, ref.trajectory) < 1e-5
    torch.testing.assert_close(again.trajectory, got.trajectory, rtol=0, atol=0)
    seq = pt.solve(guided(net, cf, x_T.device), cf, x_T, noise, method="sequential")
    assert rel(got.sample, seq.sample) < 1e-4  # and the sequential sampler's image


@pytest.mark.parametrize("kind", ["ddim", "ddpm"])
def test_graphed_sequential_with_compiled_network_matches_eager(kind):
    cf, net, x_T, noise = setup(kind, 9, torch.device("cpu"))
    compiled = torch.compile(net, backend="aot_eager", fullgraph=True, dynamic=False)
    ref = GraphedSequential(guided(net, cf, x_T.device), cf, x_T, noise, state_dtype=torch.float64).run()
    got = GraphedSequential(guided(compiled, cf, x_T.device), cf, x_T, noise, state_dtype=torch.float64).run()
    assert rel(got.trajectory, ref.trajectory) < 1e-6


def test_cudagraph_tree_watch_sees_calls_inside_the_block_only(monkeypatch):
    trees = pytest.importorskip("torch._inductor.cudagraph_trees")
    calls = []
    monkeypatch.setattr(trees.CUDAGraphTreeManager, "_run", lambda self, *a, **k: calls.append(a) or "out")
    manager = object.__new__(trees.CUDAGraphTreeManager)
    with _watch_cudagraph_trees() as seen:
        assert not seen
        assert manager._run([1], function_id=0) == "out"  # the spy passes the call and its result through
    assert seen == [True] and calls == [([1],)]
    with _watch_cudagraph_trees() as seen:
        pass
    assert not seen
    manager._run([2])  # restored: calls after the block are not watched
    assert not seen and calls[-1] == ([2],)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (inductor, CUDA graphs)")


@cuda
@pytest.mark.parametrize("kind", ["ddim", "ddpm"])
def test_inductor_default_mode_is_captured_with_the_iteration(kind):
    cf, net, x_T, noise = setup(kind, 16, torch.device("cuda"))
    compiled = torch.compile(net, mode="default", fullgraph=True, dynamic=False)
    ref = StaticTAA(method="picard", window=6).solve(guided(net, cf, x_T.device), cf, x_T, noise)
    sampler = StaticTAA(method="picard", window=6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning: the compiled network is captured
        got = sampler.solve(guided(compiled, cf, x_T.device), cf, x_T, noise)
    assert sampler._graphs and not sampler._uncaptured
    assert got.iterations == ref.iterations and rel(got.trajectory, ref.trajectory) < 1e-5


@cuda
@pytest.mark.parametrize("mode", ["reduce-overhead", "max-autotune"])
def test_inductor_cudagraph_modes_run_uncaptured_with_a_warning(mode):
    cf, net, x_T, noise = setup("ddpm", 16, torch.device("cuda"))
    compiled = torch.compile(net, mode=mode, fullgraph=True, dynamic=False)
    model = guided(compiled, cf, x_T.device)
    ref = StaticTAA(method="picard", window=6).solve(guided(net, cf, x_T.device), cf, x_T, noise)
    sampler = StaticTAA(method="picard", window=6)
    with pytest.warns(RuntimeWarning, match="records CUDA graphs of its own"):
        got = sampler.solve(model, cf, x_T, noise)
    again = sampler.solve(model, cf, x_T, noise)  # no second capture attempt, same answer
    assert sampler._uncaptured and not sampler._graphs
    assert got.iterations == ref.iterations and rel(got.trajectory, ref.trajectory) < 1e-5
    torch.testing.assert_close(again.trajectory, got.trajectory, rtol=0, atol=0)
    with pytest.warns(RuntimeWarning, match="records CUDA graphs of its own"):
        seq = GraphedSequential(model, cf, x_T, noise, state_dtype=torch.float64)
    assert seq.graph is None
    eager_seq = GraphedSequential(guided(net, cf, x_T.device), cf, x_T, noise, state_dtype=torch.float64).run()
    assert rel(seq.run().sample, eager_seq.sample) < 1e-5
    with pytest.raises(NestedCUDAGraphError):  # the bare capture refuses before any capture starts
        capture(lambda: model(x_T.expand(2, 3, 7, 5), torch.tensor([0, 1], device="cuda")))
    assert torch.ones(1, device="cuda").add_(1).item() == 2.0  # the CUDA context is intact
