"""The main job ``python -m paratriton sample`` runs quickly, writes its PNGs and prints a sane table."""

import os
import re
import subprocess
import sys

import pytest
from PIL import Image

from paratriton.__main__ import main
from paratriton.models import WEIGHTS_DIR

HAVE_WEIGHTS = os.path.exists(os.path.join(WEIGHTS_DIR, "model.safetensors"))


def _rows(out: str) -> dict[str, list[str]]:
    lines = out.splitlines()
    k = next(i for i, l in enumerate(lines) if l.strip().startswith("method"))
    rows = {}
    for line in lines[k + 2:]:
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
    assert main(["sample", "--steps", "8", "--batch", "2", "--methods", "taa", "picard", "fp:k=1",
                 "--out", str(tmp_path), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    rows = _rows(out)
    assert set(rows) == {"sequential", "taa (h=2)", "picard", "fp:k=1"}
    _check_table(rows, 8)
    for f in ("samples.png", "convergence.png"):
        im = Image.open(tmp_path / f)
        assert im.width > 100 and im.height > 50


def test_main_gmm(tmp_path, capsys):
    assert main(["sample", "--model", "gmm", "--steps", "12", "--sampler", "ddpm", "--out", str(tmp_path)]) == 0
    rows = _rows(capsys.readouterr().out)
    assert set(rows) == {"sequential", "taa (h=2)", "fp", "picard"}
    _check_table(rows, 12)
    assert (tmp_path / "convergence.png").exists()


def test_main_cli_help():
    r = subprocess.run([sys.executable, "-m", "paratriton", "sample", "--help"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and "--model" in r.stdout
