"""Sharding the model call over ranks (gloo on the CPU) changes nothing in the result."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from paratriton.distributed import balanced_chunks


@pytest.mark.parametrize("n,world", [(10, 3), (2, 4), (7, 1), (0, 2), (8, 8)])
def test_balanced_chunks(n, world):
    ch = balanced_chunks(n, world)
    sizes = [b - a for a, b in ch]
    assert len(ch) == world and sum(sizes) == n and max(sizes) - min(sizes) <= 1
    assert all(ch[i][1] == ch[i + 1][0] for i in range(world - 1))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, out_path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        import paratriton as pt
        from paratriton.distributed import ShardedDenoiser
        from paratriton.testing import GaussianMixture
        from paratriton.testing.gaussian_mixture import default_schedule

        cf = default_schedule(20, eta=1.0)
        gm_u, gm_c = GaussianMixture.random((2, 3), 3, seed=1), GaussianMixture.random((2, 3), 3, seed=2)
        calls = []

        def branches(x2, s2):  # rows: [uncond; cond] halves, possibly split across ranks
            calls.append(x2.shape[0])
            return gm_c.denoiser(cf)(x2, s2) * 0.5 + gm_u.denoiser(cf)(x2, s2) * 0.5 + 0.1 * x2

        g = torch.Generator().manual_seed(0)
        x_T = torch.randn(3, 2, 3, generator=g, dtype=torch.float64)
        noise = torch.randn(20, 3, 2, 3, generator=g, dtype=torch.float64)
        # a real two-branch model: the conditional rows (flagged by the guidance wrapper) add a per-trajectory
        # label (row % B, B = 3); sharded, each rank gets its chunk of the flags and the global row indices
        labels = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)

        def two_branch(x2, s2, cond, rows=None):
            rows = torch.arange(x2.shape[0]) if rows is None else rows
            return branches(x2, s2) + 0.3 * (cond.to(x2.dtype) * labels[rows % 3]).view(-1, 1, 1)

        model = pt.ClassifierFreeGuidance(ShardedDenoiser(two_branch, with_rows=True), 2.0, pass_branch=True)
        res = pt.solve(model, cf, x_T, noise, method="taa", tol_abs=1e-9, tol_rel=1e-9)
        ref = pt.solve(
            pt.ClassifierFreeGuidance(two_branch, 2.0, pass_branch=True), cf, x_T, noise, method="sequential"
        )
        torch.save(
            {"sample": res.sample, "ref": ref.sample, "iters": res.iterations, "calls": calls}, f"{out_path}.{rank}"
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 3])
def test_sharded_solve_matches_single_process(tmp_path, world):
    out = str(tmp_path / "res")
    mp.start_processes(_worker, args=(world, _free_port(), out), nprocs=world, start_method="spawn")
    results = [torch.load(f"{out}.{r}") for r in range(world)]
    for r in results:
        assert torch.equal(r["sample"], results[0]["sample"])  # identical state on every rank
        assert (r["sample"] - r["ref"]).square().mean().sqrt() <= 1e-7
    # the rank's share of every batched call is balanced
    for r in results[1:]:
        assert all(abs(a - b) <= 1 for a, b in zip(r["calls"], results[0]["calls"]))


def _faulty_worker(rank, world, port, out_path, fault):
    import datetime
    import time

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=5))
    from paratriton.distributed import ShardedDenoiser

    model = ShardedDenoiser(lambda x, s: 2 * x)
    x = torch.randn(4, 3)
    model(x, torch.zeros(4, dtype=torch.long))  # one healthy call
    if rank == 1:
        if fault == "dies":
            os._exit(1)
        time.sleep(60)  # hangs
        os._exit(0)
    t0 = time.monotonic()
    try:
        model(x, torch.zeros(4, dtype=torch.long))
        outcome = "no error"
    except Exception as e:  # noqa: BLE001 -- any clear error will do; it must come, and soon
        outcome = f"{type(e).__name__}: {e}"
    with open(out_path, "w") as f:
        f.write(f"{time.monotonic() - t0:.2f}\n{outcome}")
    os._exit(0)


@pytest.mark.parametrize("fault", ["dies", "hangs"])
def test_a_dead_or_hung_rank_fails_the_others_within_the_timeout(tmp_path, fault):
    out = str(tmp_path / "rank0.txt")
    ctx = mp.start_processes(
        _faulty_worker, args=(2, _free_port(), out, fault), nprocs=2, start_method="spawn", join=False
    )
    ctx.processes[0].join(timeout=45)
    for p in ctx.processes:
        if p.is_alive():
            p.kill()
    elapsed, outcome = open(out).read().split("\n", 1)
    assert outcome != "no error"
    assert float(elapsed) < 30, (elapsed, outcome)


def _wrong_chunk_worker(rank, world, port, out_path, delta):
    import datetime
    import time

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=20))
    import paratriton as pt
    from paratriton.distributed import ShardedDenoiser
    from paratriton.testing import GaussianMixture
    from paratriton.testing.gaussian_mixture import default_schedule

    cf = default_schedule(10, eta=0.0)
    den = GaussianMixture.random((2, 3), 3, seed=1).denoiser(cf)

    def model(x, s):  # rank 1 returns one row too few (delta=-1) or too many (+1)
        out = den(x, s)
        if rank == 1 and delta < 0:
            return out[:-1]
        if rank == 1 and delta > 0:
            return torch.cat([out, out[-1:]])
        return out

    x_T = torch.randn(2, 2, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t0 = time.monotonic()
    try:
        pt.solve(ShardedDenoiser(model), cf, x_T, method="taa")
        outcome = "no error"
    except Exception as e:  # noqa: BLE001 -- the test reads the type and message
        outcome = f"{type(e).__name__}: {e}"
    with open(f"{out_path}.{rank}", "w") as f:
        f.write(f"{time.monotonic() - t0:.2f}\n{outcome}")
    dist.destroy_process_group()


@pytest.mark.parametrize("delta", [-1, 1])
def test_a_chunk_of_the_wrong_size_is_an_error_on_every_rank(tmp_path, delta):
    """Was padded or trimmed into place: ``converged=True`` 22-143 RMS off. Now the rank with the bad chunk raises
    naming itself and the shapes, and the others stop on the NaN rows it sends instead of waiting."""
    out = str(tmp_path / "res")
    mp.start_processes(_wrong_chunk_worker, args=(2, _free_port(), out, delta), nprocs=2, start_method="spawn")
    (t0, o0), (t1, o1) = (open(f"{out}.{r}").read().split("\n", 1) for r in range(2))
    assert o1.startswith("ValueError") and "rank 1 of 2" in o1, o1
    assert "[10, 2, 3]" in o1 and f"[{10 + delta}, 2, 3]" in o1, o1  # the first call: 10 steps x 2 trajectories
    assert o0.startswith("NonFiniteError"), o0
    assert float(t0) < 15 and float(t1) < 15
