"""The main job ``python -m paratriton sample`` runs quickly, writes its PNGs and prints a sane table."""

import os
import re
import subprocess
import sys
import time

import pytest
from PIL import Image

from paratriton.__main__ import main
from paratriton.models import WEIGHTS_DIR

HAVE_WEIGHTS = os.path.exists(os.path.join(WEIGHTS_DIR, "model.safetensors"))


def _rows(out: str) -> dict[str, dict[str, str]]:
    """The printed table: {method: {column: cell}}."""
    lines = out.splitlines()
    k = next(i for i, l in enumerate(lines) if l.strip().startswith("method"))
    head = re.split(r"\s{2,}", lines[k].strip())
    rows = {}
    for line in lines[k + 2 :]:
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) != len(head):
            break  # the notes under the table
        rows[cells[0]] = dict(zip(head, cells))
    return rows


def _check_table(rows, T):
    seq = rows["sequential"]
    assert seq["iterations"] == str(T) and seq["NFE/sample"] == str(T) and seq["iters/steps"] == "1.00"
    for name, r in rows.items():
        it, nfe = int(r["iterations"]), int(r["NFE/sample"])
        wall = float(next(v for c, v in r.items() if c.startswith("wall [s]")))
        assert 1 <= it <= T and nfe >= it and wall >= 0
        assert abs(float(r["iters/steps"]) - it / T) < 0.006
        if name != "sequential":
            assert r["converged"] == "yes"
            db = r["PSNR vs seq [dB]"]
            assert db == "inf" or float(db) > 30.0, (name, db)


@pytest.mark.skipif(not HAVE_WEIGHTS, reason="the default model's weights are not shipped in this checkout")
def test_main_default_model(tmp_path, capsys):
    assert (
        main(
            [
                "sample",
                "--steps",
                "8",
                "--batch",
                "2",
                "--methods",
                "taa",
                "picard",
                "fp:k=1",
                "--out",
                str(tmp_path),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    rows = _rows(out)
    assert set(rows) == {"sequential", "taa (h=auto)", "picard", "fp:k=1"}
    _check_table(rows, 8)
    for f in ("samples.png", "convergence.png"):
        im = Image.open(tmp_path / f)
        assert im.width > 100 and im.height > 50


def test_main_gmm_full(tmp_path, capsys):
    argv = ["sample", "--model", "gmm", "--steps", "12", "--sampler", "ddpm", "--full", "--repeats", "1"]
    assert main([*argv, "--device", "cpu", "--out", str(tmp_path)]) == 0
    rows = _rows(capsys.readouterr().out)
    assert set(rows) == {"sequential", "taa (h=auto)", "fp", "picard"}
    _check_table(rows, 12)
    assert (tmp_path / "convergence.png").exists()


def test_main_cpu_default_is_short_and_says_why(tmp_path, capsys):
    """On a CPU the default job is one parallel method and one run, and says in one line that wall-time gains need
    a GPU; no speedup column (a CPU cannot show one honestly), but iterations against steps and the distance."""
    assert main(["--model", "gmm", "--steps", "12", "--device", "cpu", "--no-progress", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    first = out.splitlines()[0]
    assert first.startswith("CPU: wall-time gains need a GPU") and "12 steps" in first
    assert "median of 1 run\n" in out and "after a warm-up run" not in out
    rows = _rows(out)
    assert set(rows) == {"sequential", "taa (h=auto)"}
    assert "speedup" not in rows["sequential"]
    _check_table(rows, 12)
    assert int(rows["taa (h=auto)"]["iterations"]) < 12  # fewer sequential iterations than steps
    assert float(rows["taa (h=auto)"]["RMS vs seq"]) <= 1e-3
    assert "h=auto: the solver's Anderson history" in out


def test_main_dit_crops(tmp_path, capsys):
    assert (
        main(
            [
                "--model",
                "dit-crops",
                "--steps",
                "6",
                "--batch",
                "2",
                "--labels",
                "12",
                "3",
                "--device",
                "cpu",
                "--no-progress",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "dit-crops model (DiTTransformer2DModel" in out and "3x32x32" in out and "classes [12, 3]" in out
    _check_table(_rows(out), 6)
    assert Image.open(tmp_path / "samples.png").width > 100


@pytest.mark.gpu
def test_main_on_cuda_is_graphed_and_reports_speedup(tmp_path, capsys):
    """By default on a CUDA machine: CUDA, CUDA graphs, the full method list and a speedup column over the graphed
    sequential sampler."""
    assert main(["--model", "gmm", "--steps", "12", "--repeats", "1", "--no-progress", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "CPU:" not in out and "device cuda" in out and "CUDA graphs" in out
    rows = _rows(out)
    assert set(rows) == {"sequential", "taa (h=auto)", "fp", "picard"}
    assert rows["sequential"]["speedup"] == "1.00x"
    assert all(float(r["speedup"].rstrip("x")) > 0 for r in rows.values())
    assert "speedup: wall time of the graphed sequential sampler" in out
    _check_table(rows, 12)


@pytest.mark.gpu
def test_main_on_cuda_runs_srds_eagerly_beside_graphed_methods(tmp_path, capsys):
    """SRDS has no CUDA-graphed form: on CUDA it runs eagerly, and its row says so."""
    argv = ["--model", "gmm", "--steps", "12", "--repeats", "1", "--no-progress", "--methods", "taa", "srds:blocks=3"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    rows = _rows(capsys.readouterr().out)
    assert set(rows) == {"sequential", "taa (h=auto)", "srds:blocks=3 (eager)"}
    _check_table(rows, 12)


def test_main_without_command_runs_sample():
    from paratriton.__main__ import parse_args

    args = parse_args(["--model", "gmm", "--device", "cpu"])
    assert args.cmd == "sample" and args.model == "gmm"
    assert args.methods == ["taa"] and args.repeats == 1 and args.warmup is False  # the CPU defaults
    full = parse_args(["sample", "--model", "gmm", "--device", "cpu", "--full"])
    assert full.methods == ["taa", "fp", "picard"] and full.repeats == 3 and full.warmup is True
    assert parse_args(["--model", "gmm", "--device", "cpu", "--methods", "fp", "--repeats", "2"]).repeats == 2


def test_cli_constants_match_the_models_and_solvers():
    import paratriton.__main__ as cli
    from paratriton.models import NUM_CLASSES, dit_crops
    from paratriton.solvers.registry import make_solver

    assert cli.NUM_CLASSES == {"digits": NUM_CLASSES, "dit-crops": dit_crops.NUM_CLASSES}
    make_solver("taa", history=cli.MAX_HISTORY)
    with pytest.raises(ValueError, match="history"):
        make_solver("taa", history=cli.MAX_HISTORY + 1)


def test_main_cli_help():
    r = subprocess.run(
        [sys.executable, "-m", "paratriton", "sample", "--help"], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0 and "--model" in r.stdout


# ---------------------------------------------------------------------------------------------------------------
# command-line errors: usage + one line naming the flag, exit status 2, before anything is sampled
# ---------------------------------------------------------------------------------------------------------------
CLI_ERRORS = [
    (["--out", "/dev/null/sub"], "--out"),
    (["--methods", "taa", "nonsense"], "--methods"),
    (["--methods", "sequential:w=3"], "--methods"),
    (["--methods", "taa:x=3"], "--methods"),
    (["--methods", "fp:k=0"], "--methods"),
    (["--methods", "srds:blocks=7"], "--methods"),
    (["--methods", "picard:h=2"], "--methods"),
    (["--batch", "0"], "--batch"),
    (["--window", "0"], "--window"),
    (["--window", "1000"], "--window"),
    (["--steps", "0"], "--steps"),
    (["--max-iters-baselines", "0"], "--max-iters-baselines"),
    (["--sampler", "ddpm", "--eta", "0.5"], "--eta"),
    (["--eta", "2"], "--eta"),
    (["--model", "gmm", "--labels", "3"], "--labels"),
    (["--model", "gmm", "--guidance", "2"], "--guidance"),
    (["--guidance", "inf"], "--guidance"),
    (["--guidance", "-1"], "--guidance"),
    (["--labels", "12"], "--labels"),
    (["--tol", "0"], "--tol"),
    (["--history", "0"], "--history"),
    (["--history", "9"], "--history"),
    (["--methods", "taa:h=9"], "--methods"),
    (["--methods", "taa:h=2,h=3"], "--methods"),
    (["--model", "dit-crops", "--labels", "16"], "--labels"),
    (["--model", "digits", "--labels", "12"], "--labels"),
    (["--methods", "srds", "--window", "3"], "--window"),
    (["--repeats", "0"], "--repeats"),
    (["--device", "tpu"], "--device"),
]


@pytest.mark.parametrize("argv,flag", CLI_ERRORS, ids=[" ".join(a) for a, _ in CLI_ERRORS])
def test_cli_error(argv, flag, capsys, monkeypatch):
    import paratriton.__main__ as cli

    def no_sampling(*a, **k):
        raise AssertionError("sampling started before the command line was checked")

    monkeypatch.setattr(cli, "sample", no_sampling)
    monkeypatch.setattr(cli, "build_problem", no_sampling)
    with pytest.raises(SystemExit) as e:
        cli.main(["sample", *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("usage:")
    assert err[-1].startswith("python -m paratriton sample: error: ") and flag in err[-1], err[-1]
    assert "Traceback" not in "\n".join(err) and "num_inference_steps" not in err[-1]


def test_cli_device_cuda_without_cuda(capsys, monkeypatch):
    import paratriton.__main__ as cli

    monkeypatch.setattr(cli.torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as e:
        cli.main(["sample", "--device", "cuda", "--model", "gmm"])
    assert e.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--device cuda" in last and "CUDA is not available" in last and "--device cpu" in last


def test_cli_error_subprocess_is_fast():
    """A real process: exit 2, one error line, no traceback, and far sooner than a sample would take."""
    t0 = time.perf_counter()
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "paratriton",
            "sample",
            "--methods",
            "sequential",
            "--model",
            "gmm",
            "--tol",
            "1e-3",
            "--window",
            "1000",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    elapsed = time.perf_counter() - t0
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "--window" in r.stderr.strip().splitlines()[-1]
    assert elapsed < 60, elapsed  # import time only: no model is loaded, nothing is sampled


def test_cli_methods_accepts_every_method(tmp_path, capsys):
    from paratriton import METHODS

    assert (
        main(
            [
                "sample",
                "--model",
                "gmm",
                "--steps",
                "6",
                "--batch",
                "1",
                "--repeats",
                "1",
                "--no-progress",
                "--methods",
                *METHODS,
                "srds:blocks=3",
                "taa:h=1,w=3",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    rows = _rows(capsys.readouterr().out)
    assert set(rows) == {
        "sequential",
        "fp",
        "picard",
        "aa (h=auto)",
        "taa (h=auto)",
        "srds",
        "srds_pipelined",
        "srds:blocks=3",
        "taa:h=1,w=3",
    }
    _check_table(rows, 6)


def test_cli_help_lists_methods_options_defaults():
    r = subprocess.run(
        [sys.executable, "-m", "paratriton", "sample", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert r.returncode == 0
    from paratriton import METHODS

    for m in METHODS:
        assert re.search(rf"^\s+{m}\s", r.stdout, flags=re.MULTILINE), m
    for key in ("w=", "k=", "h=", "it=", "blocks="):
        assert key in r.stdout
    assert "(default: 50)" in r.stdout and "(default: outputs)" in r.stdout
    assert r.stdout.count("(default: taa fp picard") == 1 and "(default: ['taa'" not in r.stdout
    assert "dit-crops" in r.stdout and "--full" in r.stdout and "--no-cuda-graph" in r.stdout
    assert "``" not in r.stdout and ":func:" not in r.stdout


@pytest.mark.parametrize(
    "spec,message",
    [
        ("fp:k=0", "--methods fp:k=0: k= must be in 1..50 (--steps), got 0"),
        ("taa:w=51", "--methods taa:w=51: w= must be in 1..50 (--steps), got 51"),
        ("taa:h=9", "--methods taa:h=9: h= must be in 1..8, got 9"),
        ("picard:it=0", "--methods picard:it=0: it= must be >= 1, got 0"),
        ("srds:blocks=7", "--methods srds:blocks=7: blocks= must divide --steps 50: one of 1, 2, 5, 10, 25, 50; got 7"),
        ("picard:h=2", "--methods picard:h=2: option h= does not apply to picard; options of picard: w=, it="),
    ],
)
def test_cli_method_keys_take_the_registry_ranges(spec, message):
    """The keys after a colon and their ranges come from the solver registry (``Option.key`` / ``Option.steps``)."""
    import paratriton.__main__ as cli

    with pytest.raises(cli._UsageError) as e:
        cli.parse_method(spec, 50)
    assert str(e.value) == message
    assert cli.parse_method("taa:h=8,w=50,k=1,it=3", 50) == (
        "taa",
        {"history": 8, "window": 50, "order": 1, "max_iters": 3},
    )
    assert cli.parse_method("srds_pipelined:blocks=25", 50) == ("srds_pipelined", {"blocks": 25})
