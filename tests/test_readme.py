"""Every ```python block of README.md and docs/*.md runs as written (CPU, tiny or shipped models), so a snippet
that breaks fails CI. A block that needs a GPU or a download says so on the line before it:

    <!-- readme-test: skip (why) -->

and is reported as skipped; a block that loads a hub model or uses CUDA without that marker fails here."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SKIP = re.compile(r"<!--\s*readme-test:\s*skip\b\s*\(?(.*?)\)?\s*-->")
NEEDS_MORE = re.compile(r'from_pretrained|\("cuda"\)|\.cuda\(\)|torchrun')


def blocks():
    out = []
    for path in FILES:
        text = path.read_text()
        for m in re.finditer(r"^```python\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL):
            line = text.count("\n", 0, m.start()) + 1
            before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
            skip = SKIP.search(before)
            out.append(pytest.param(m.group(1), skip.group(1) if skip else None, id=f"{path.relative_to(ROOT)}:{line}"))
    return out


BLOCKS = blocks()


def test_blocks_found():
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("code,skip_reason", BLOCKS)
def test_code_block(code, skip_reason, tmp_path, monkeypatch):
    if skip_reason is not None:
        pytest.skip(f"marked in the document: {skip_reason or 'skip'}")
    assert not NEEDS_MORE.search(code), "needs a download or a GPU: mark it with <!-- readme-test: skip (why) -->"
    monkeypatch.chdir(tmp_path)  # files the snippet writes land here
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from paratriton.solvers import tolerance

    monkeypatch.setattr(tolerance, "_warned", set())  # each snippet warns as it would in a fresh process
    with warnings.catch_warnings(record=True) as caught:
        warnings.filterwarnings("always", module="paratriton")  # ours every time; the others as configured
        exec(compile(code, "<snippet>", "exec"), {"__name__": "__readme__"})
    ours = [f"{w.category.__name__}: {w.message}" for w in caught if "paratriton" in (w.filename or "")]
    assert not ours, f"a documented example warns as written: {ours}"  # the reader would see it
    for w in caught:  # third-party ones passed the filters already: shown as they are
        warnings.showwarning(w.message, w.category, w.filename, w.lineno)
