"""``benchmarks/plan_families.py``: its tiny CPU path plans and times three families (AudioLDM2's UNet with two
cross-attention inputs, Wan video, FLUX.1 Kontext's image tokens) into complete rows, and its real-shape parameter
counts (built on the meta device) are the published models' sizes."""

from __future__ import annotations

import json
import os
import sys

import pytest

pytest.importorskip("diffusers")
pytest.importorskip("transformers", reason="diffusers' text pipelines need transformers")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))

import plan_families  # noqa: E402

FIELDS = ("family", "shape", "steps", "scheduler", "params", "choice", "predicted_ms", "measured_ms", "sequential_ms",
          "speedup", "reason")  # fmt: skip


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")
def test_tiny_run_writes_one_complete_row_per_family(tmp_path, capsys):
    out = tmp_path / "plan.json"
    families = ["audioldm2", "wan", "kontext"]
    report = plan_families.main(["--tiny", "--steps", "3", "--reps", "1", "--out", str(out), "--families", *families])
    rows = report["rows"]
    assert [r["family"] for r in rows] == families
    for r in rows:
        assert "error" not in r, r.get("error")
        assert all(k in r for k in FIELDS)
        assert r["steps"] == 3 and r["params"] > 0 and r["measured_ms"] > 0 and r["sequential_ms"] > 0
        assert r["speedup"] == pytest.approx(r["sequential_ms"] / r["measured_ms"])
        if r["choice"] == "sequential":
            assert r["window"] is None and r["speedup"] == 1.0 and r["reason"].startswith("sequential")
        else:
            assert r["choice"] == f"{r['method']} W={r['window']}" and r["reason"].startswith(r["method"])
    assert rows[0]["scheduler"] == "ddim" and rows[1]["shape"] == "32x64x5f"
    assert json.loads(out.read_text())["rows"] == json.loads(json.dumps(rows))  # the file holds every row
    table = capsys.readouterr().out.splitlines()[-4:]
    assert table[0].startswith("family") and [line.split()[0] for line in table[1:]] == families


def test_real_shape_parameter_counts_are_the_published_sizes(tmp_path):
    rows = plan_families.main(["--params", "--families", "flux", "audioldm2", "--out", str(tmp_path / "p.json")])
    params = {r["family"]: r["params"] for r in rows["params"]}
    assert params["flux"] == pytest.approx(11.9e9, rel=0.01)  # FLUX.1-dev: 11.9B
    assert params["audioldm2"] == pytest.approx(350e6, rel=0.02)  # AudioLDM2's UNet: 350M
    assert rows["params"][0]["weights_gib"] == pytest.approx(2 * params["flux"] / 2**30)
