"""The time x sequence layout (gloo on the CPU): rows split over time groups, tokens over the ranks of a group
(diffusers' Ulysses attention), and the sample equals the one-process sequential one."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

pytest.importorskip("diffusers")

L, TXT, B, STEPS = 16, 8, 2, 6  # image tokens, text tokens, trajectories, steps


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _flux():
    from paratriton.testing.tiny_pipelines import tiny_denoiser

    return tiny_denoiser("flux")


def _flux_pipe(transformer):
    """A tiny FluxPipeline (prompt embeddings passed in) around ``transformer``."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    from paratriton.testing.tiny_pipelines import FLUX_VAE_SCALE, assemble, flux_vae

    return assemble(
        FluxPipeline,
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=flux_vae(**FLUX_VAE_SCALE),
        transformer=transformer,
    )


def _pipe_call():
    g = torch.Generator().manual_seed(103)
    return {
        "prompt_embeds": torch.randn(B, TXT, 32, generator=g),  # two prompts: the rows' conditioning differs
        "pooled_prompt_embeds": torch.randn(B, 32, generator=g),
        # true CFG: two branches of B rows each, so a window call's rows are (branch, step, prompt)
        "negative_prompt_embeds": torch.randn(B, TXT, 32, generator=g),
        "negative_pooled_prompt_embeds": torch.randn(B, 32, generator=g),
        "true_cfg_scale": 2.0,
        "height": 8,
        "width": 8,  # 16 image tokens after Flux's 2 x 2 packing
        "num_inference_steps": STEPS,
        "guidance_scale": 1.0,
        "output_type": "latent",
    }


def _denoiser(net, text, pooled, ts, seen):
    """The transformer as a denoiser of rows ``x [n, L, 4]`` at steps ``s [n]`` (per-row timesteps), float64 out."""
    ids = torch.stack(torch.meshgrid(torch.zeros(1), torch.arange(4.0), torch.arange(4.0), indexing="ij"), -1)
    img_ids, txt_ids = ids.reshape(L, 3), torch.zeros(TXT, 3)
    net.x_embedder.register_forward_pre_hook(lambda m, a: seen.append(tuple(a[0].shape[:2])))

    def den(x, s, rows=None):
        rows = torch.arange(x.shape[0]) if rows is None else rows
        with torch.no_grad():
            out = net(
                hidden_states=x.float(),
                encoder_hidden_states=text[rows % B],  # per-trajectory prompts: the global rows pick them
                pooled_projections=pooled[rows % B],
                timestep=ts[s],
                img_ids=img_ids,
                txt_ids=txt_ids,
                return_dict=False,
            )[0]
        return out.double()

    return den


def _solve_problem(g):
    """The prompts, initial noise, step noise, schedule and timesteps every layout solves, and the one-process
    sequential sample: ``(text, pooled, x_T, noise, cf, ts, ref)``."""
    import paratriton as pt
    from paratriton.testing.gaussian_mixture import default_schedule

    text, pooled = torch.randn(B, TXT, 32, generator=g), torch.randn(B, 32, generator=g)
    x_T = torch.randn(B, L, 4, generator=g, dtype=torch.float64)
    noise = torch.randn(STEPS, B, L, 4, generator=g, dtype=torch.float64)
    cf, ts = default_schedule(STEPS, eta=1.0), torch.linspace(0.95, 0.05, STEPS)
    ref = pt.solve(_denoiser(_flux(), text, pooled, ts, []), cf, x_T, noise, method="sequential").sample
    return text, pooled, x_T, noise, cf, ts, ref


def _worker(rank, world, port, out_path, layouts):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from pipeline_parts import checked_call

        import paratriton as pt
        from paratriton.mesh import enable_sequence_parallel, init_mesh

        text, pooled, x_T, noise, cf, ts, ref = _solve_problem(torch.Generator().manual_seed(0))
        call = _pipe_call()
        stock = checked_call(_flux_pipe(_flux()), call).images
        results = {}
        for time, seq in layouts:
            layout = init_mesh(time, seq)
            seen = []
            net = enable_sequence_parallel(_flux(), layout)
            den = layout.shard(_denoiser(net, text, pooled, ts, seen), with_rows=True)
            res = pt.solve(den, cf, x_T, noise, method="taa", tol_abs=1e-6, tol_rel=1e-6)
            # the same through the pipeline: parallelize(..., mesh=layout) on a context-parallel transformer
            pipe_seen = []
            net = enable_sequence_parallel(_flux(), layout)
            net.x_embedder.register_forward_pre_hook(lambda m, a, seen=pipe_seen: seen.append(tuple(a[0].shape[:2])))
            par = pt.parallelize(_flux_pipe(net), "taa", window=5, mesh=layout, tol_abs=1e-6, tol_rel=1e-6)
            image = checked_call(par, call).images
            results[(time, seq)] = {
                "sample": res.sample,
                "converged": res.converged,
                "seen": seen,
                "image": image,
                "image_converged": par.paratriton.last_result.converged,
                "pipe_seen": pipe_seen,
            }
        torch.save({"ref": ref, "stock": stock, "results": results}, f"{out_path}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize(
    "world,layouts", [(2, [(2, 1), (1, 2)]), (4, [(2, 2)])], ids=["2procs-time2-seq2", "4procs-time2xseq2"]
)
def test_time_by_sequence_solve_matches_one_process(tmp_path, world, layouts):
    out = str(tmp_path / "res")
    mp.start_processes(_worker, args=(world, _free_port(), out, layouts), nprocs=world, start_method="spawn")
    ranks = [torch.load(f"{out}.{r}") for r in range(world)]
    for layout in layouts:
        time, seq = layout
        first = ranks[0]["results"][layout]["sample"]
        for r, res in enumerate(ranks):
            got = res["results"][layout]
            assert got["converged"]
            assert torch.equal(got["sample"], first)  # identical state on every rank
            assert (got["sample"] - res["ref"]).abs().max() <= 1e-4, (layout, r)
            tokens = {n for _, n in got["seen"]} | {n for _, n in got["pipe_seen"]}
            assert tokens == {L // seq}, (layout, tokens)  # each rank saw its share of the image tokens
            # parallelize(pipe, "taa", mesh=...) returns the stock pipeline's sample
            assert got["image_converged"]
            assert (got["image"] - res["stock"]).abs().max() <= 1e-4, (layout, r)
        # the rows of a window call are split over the time groups: group g's ranks see the same row counts
        for r in range(world):
            peer = (r // seq) * seq  # the first rank of r's time group
            assert [n for n, _ in ranks[r]["results"][layout]["seen"]] == [
                n for n, _ in ranks[peer]["results"][layout]["seen"]
            ]
        if time > 1:
            rows = [sum(n for n, _ in ranks[g * seq]["results"][layout]["seen"]) for g in range(time)]
            assert max(rows) - min(rows) <= len(ranks[0]["results"][layout]["seen"])  # balanced, within 1 per call


def test_mesh_option_is_checked_before_sampling():
    from paratriton.mesh import Mesh2D
    from paratriton.pipelines._options import check_method_and_options

    layout = Mesh2D(mesh=None, time=1, sequence=1, time_group=None)
    with pytest.raises(TypeError, match="paratriton.mesh.Mesh2D"):
        check_method_and_options("taa", {"mesh": "2x2"})
    with pytest.raises(ValueError, match="window='auto'"):
        check_method_and_options("taa", {"mesh": layout, "window": "auto"})
    with pytest.raises(ValueError, match="cuda_graph=True"):
        check_method_and_options("taa", {"mesh": layout, "cuda_graph": True})
    check_method_and_options("taa", {"mesh": layout, "window": 4})  # a fixed window: accepted


def _choose_worker(rank, world, port, out_path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        import paratriton as pt
        from paratriton.mesh import choose_layout, disable_sequence_parallel, enable_sequence_parallel, init_mesh

        g = torch.Generator().manual_seed(0)
        text, pooled, x_T, noise, cf, ts, ref = _solve_problem(g)
        rows = torch.randn(STEPS * B, L, 4, generator=g, dtype=torch.float64)
        steps = torch.arange(STEPS).repeat_interleave(B)
        plain = _denoiser(_flux(), text, pooled, ts, [])(rows, steps)

        net = _flux()
        seen = []
        den = _denoiser(net, text, pooled, ts, seen)  # the window call every layout is timed on
        layout, measured = choose_layout(net, lambda lay, m: lay.shard(den, with_rows=True)(rows, steps), reps=2)
        chosen = (layout.time, layout.sequence)
        res = pt.solve(layout.shard(den, with_rows=True), cf, x_T, noise, method="taa", tol_abs=1e-6, tol_rel=1e-6)
        disable_sequence_parallel(net)
        after = den(rows, steps)  # context parallelism removed: the plain network again
        enable_sequence_parallel(net, init_mesh(1, world))  # and it can be enabled again
        again = layout.shard(den, with_rows=True)(rows, steps) if chosen == (1, world) else None
        torch.save(
            {"chosen": chosen, "measured": measured, "sample": res.sample, "converged": res.converged, "ref": ref,
             "plain": plain, "after": after, "again": again},
            f"{out_path}.{rank}",
        )  # fmt: skip
    finally:
        dist.destroy_process_group()


def test_choose_layout_measures_every_layout_and_keeps_the_fastest(tmp_path):
    """``choose_layout`` times time-only and sequence-only on 2 ranks, every rank chooses the same (the fastest
    of the slowest ranks' medians), the chosen layout's solve is the sequential sample, and
    ``disable_sequence_parallel`` gives back the plain network."""
    world, out = 2, str(tmp_path / "choose")
    mp.start_processes(_choose_worker, args=(world, _free_port(), out), nprocs=world, start_method="spawn")
    ranks = [torch.load(f"{out}.{r}") for r in range(world)]
    first = ranks[0]
    assert set(first["measured"]) == {(2, 1), (1, 2)}
    assert first["chosen"] == min(first["measured"], key=first["measured"].get)
    for res in ranks:
        assert res["chosen"] == first["chosen"] and res["measured"] == first["measured"]
        assert res["converged"] and (res["sample"] - res["ref"]).abs().max() <= 1e-4
        assert torch.equal(res["after"], res["plain"])
        if res["again"] is not None:
            assert (res["again"] - res["plain"]).abs().max() <= 1e-5


def test_layouts_are_every_factorisation():
    from paratriton.mesh import layouts

    assert layouts(1) == [(1, 1)]
    assert layouts(4) == [(4, 1), (2, 2), (1, 4)]
    assert layouts(6) == [(6, 1), (3, 2), (2, 3), (1, 6)]
    with pytest.raises(ValueError, match="world must be >= 1"):
        layouts(0)
