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


def _rows(out: str) -> dict[str, list[str]]:
    lines = out.splitlines()
    k = next(i for i, l in enumerate(lines) if l.strip().startswith("method"))
    rows = {}
    for line in lines[k + 2 :]:
        if line.startswith("wrote"):
            break
        cells = re.split(r"\s{2,}", line.strip())
        rows[cells[0]] = cells[1:]
    return rows


def _check_table(rows, T):
    assert rows["sequential"][:2] == [str(T), str(T)]
    for name, cells in rows.items():
        it, nfe, wall, db, _, conv = cells[:6]
        assert 1 <= int(it) <= T and int(nfe) >= int(it) and float(wall) >= 0
        if name != "sequential":
            assert conv == "yes"
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


def test_main_gmm(tmp_path, capsys):
    assert main(["sample", "--model", "gmm", "--steps", "12", "--sampler", "ddpm", "--out", str(tmp_path)]) == 0
    rows = _rows(capsys.readouterr().out)
    assert set(rows) == {"sequential", "taa (h=auto)", "fp", "picard"}
    _check_table(rows, 12)
    assert (tmp_path / "convergence.png").exists()


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
    assert "``" not in r.stdout and ":func:" not in r.stdout
