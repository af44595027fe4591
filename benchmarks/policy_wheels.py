"""Wheels of the policy's simulator for a GPU machine without network (Python 3.12, manylinux x86_64), slimmed.

    python benchmarks/policy_wheels.py --dest .whl          # on a machine with PyPI access; .whl/ is git-ignored

Downloads (``pip download --no-deps --only-binary=:all:`` for CPython 3.12, manylinux x86_64) the packages the
simulator needs that the lent GPU machines do not already have: metaworld, mujoco, gymnasium, glfw (imported by
gymnasium's MuJoCo renderer module even when nothing is rendered) and farama-notifications. Their other
dependencies (numpy, scipy, pillow, imageio, absl-py, etils, cloudpickle, typing-extensions) are preinstalled
there and are not carried: ``.ci/gpu`` installs every carried wheel with ``--no-deps`` into a folder that would
shadow the machine's own builds. PyOpenGL is not needed without rendering.

The metaworld wheel is 37 MB, 33 MB of it rendering textures (PNG). MuJoCo loads them when it compiles a model but
they play no part in the physics, so the slimmed wheel keeps every file and name and shrinks each texture image
32x per side (at least 4x4 pixels, aspect kept); its RECORD is rewritten to match. The simulation is bitwise the
same (checked by ``--check``: expert rollouts with the slim and the full package give bitwise identical observations).
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import io
import os
import subprocess
import sys
import zipfile

PY_TAGS = [
    "--python-version", "3.12", "--implementation", "cp",
    "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64",
]  # fmt: skip
PACKAGES = ["metaworld==3.1.1", "mujoco==3.3.0", "gymnasium==1.4.0", "glfw==2.11.0", "farama-notifications==0.0.6"]


def download(dest: str, packages: list[str]) -> None:
    for spec in packages:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", *PY_TAGS, "-d", dest, spec]
        print(" ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def slim_wheel(path: str, factor: int = 32, min_side: int = 4) -> tuple[int, int]:
    """Rewrite the wheel at ``path`` in place with every ``.png`` under ``assets/`` shrunk ``factor`` times per side;
    returns (bytes before, bytes after)."""
    from PIL import Image

    before = os.path.getsize(path)
    with zipfile.ZipFile(path) as zin:
        entries = [(info, zin.read(info)) for info in zin.infolist()]
    changed: dict[str, bytes] = {}
    for info, data in entries:
        name = info.filename
        if name.endswith(".png") and "/assets/" in name:
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            if max(w, h) <= 64:  # already small (or already slimmed): slimming twice changes nothing
                continue
            size = (max(min_side, w // factor), max(min_side, h // factor))
            buf = io.BytesIO()
            im.resize(size, Image.Resampling.BOX if im.mode != "P" else Image.Resampling.NEAREST).save(buf, "PNG")
            changed[name] = buf.getvalue()
    record_name = next(info.filename for info, _ in entries if info.filename.endswith(".dist-info/RECORD"))
    rows = list(csv.reader(io.StringIO(dict((i.filename, d) for i, d in entries)[record_name].decode())))
    out_rows = []
    for row in rows:
        if row and row[0] in changed:
            row = [row[0], _record_hash(changed[row[0]]), str(len(changed[row[0]]))]
        out_rows.append(row)
    rec = io.StringIO()
    csv.writer(rec, lineterminator="\n").writerows(out_rows)
    changed[record_name] = rec.getvalue().encode()
    tmp = path + ".tmp"
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zout:
        for info, data in entries:
            zout.writestr(info, changed.get(info.filename, data), compress_type=zipfile.ZIP_DEFLATED)
    os.replace(tmp, path)
    return before, os.path.getsize(path)


def check(slim_wheel_path: str) -> None:
    """Expert rollouts with the slim metaworld (installed into a temporary folder first on sys.path) equal those of
    the installed full package."""
    import tempfile

    code = (
        "import hashlib, json, numpy as np, sys; sys.path.insert(0, {root!r});"
        "from paratriton.policies.metaworld_task import expert_rollout; import metaworld;"
        "r = [expert_rollout('push-v3', seed=s)['obs'] for s in range(3)];"
        "print(json.dumps([metaworld.__file__, hashlib.sha256(np.concatenate(r).tobytes()).hexdigest(), len(r)]))"
    ).format(root=os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    with tempfile.TemporaryDirectory() as site:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", site,
                        slim_wheel_path], check=True)  # fmt: skip
        full = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
        env = dict(os.environ, PYTHONPATH=site)
        slim = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env).stdout
    print("full:", full.strip())
    print("slim:", slim.strip())
    import json

    a, b = json.loads(full), json.loads(slim)
    if a[0] == b[0] or a[1:] != b[1:]:
        raise SystemExit("the slim package was not used, or its rollouts differ")
    print("identical rollouts with the slim metaworld")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dest", default=".whl")
    ap.add_argument("--no-download", action="store_true", help="only slim (and check) the metaworld wheel in --dest")
    ap.add_argument("--check", action="store_true", help="compare rollouts of the slim and the installed metaworld")
    args = ap.parse_args(argv)
    os.makedirs(args.dest, exist_ok=True)
    if not args.no_download:
        download(args.dest, PACKAGES)
    mw = os.path.join(args.dest, "metaworld-3.1.1-py3-none-any.whl")
    before, after = slim_wheel(mw)
    print(f"{mw}: {before / 1e6:.1f} MB -> {after / 1e6:.1f} MB")
    if args.check:
        check(mw)
    total = 0
    for name in sorted(os.listdir(args.dest)):
        if name.endswith(".whl"):
            size = os.path.getsize(os.path.join(args.dest, name))
            total += size
            print(f"{size / 1e6:8.2f} MB  {name}")
    print(f"{total / 1e6:8.2f} MB  total")


if __name__ == "__main__":
    main()
