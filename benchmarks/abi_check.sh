#!/usr/bin/env bash
# Cross-version check of the stable-ABI extension: install a paratriton wheel built on another machine against
# another torch (e.g. the CPU machine's torch 2.13) beside this machine's torch (e.g. 2.11), without touching that
# torch, and run the extension's op tests against the installed wheel (not this checkout's sources).
#
# Usage: benchmarks/abi_check.sh [WHEEL] [pytest args...]
#   WHEEL: default .whl/abi/paratriton-*-abi3-*.whl. Other wheels directly under .whl/ (e.g. a carried diffusers)
#   are installed beside it. Writes abi_check.txt under $OUT (or /tmp). Exit status: pytest's.
# The wheel must come from the same commit as this checkout's tests/ (checked: its _backends.py must match).
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
wheel=${1:-$(ls .whl/abi/paratriton-*abi3*.whl 2>/dev/null | head -1)}
[ $# -gt 0 ] && shift
if [ -z "$wheel" ] || [ ! -f "$wheel" ]; then
  echo "abi_check: no wheel (pass one, or put it at .whl/abi/paratriton-*-abi3-*.whl)" >&2
  exit 2
fi
out="${OUT:-/tmp}"
site=$(mktemp -d /tmp/abi_site.XXXXXX)
work=$(mktemp -d /tmp/abi_tests.XXXXXX)
extra=$(ls .whl/*.whl 2>/dev/null)
# --target: a private directory on PYTHONPATH; --no-deps: this machine's torch (and anything else) stays as it is
python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" "$wheel" $extra || exit 2
python3 - "$wheel" "$root/paratriton/_backends.py" <<'EOF' || exit 2
import sys, zipfile
shipped = zipfile.ZipFile(sys.argv[1]).read("paratriton/_backends.py")
if shipped != open(sys.argv[2], "rb").read():
    sys.exit("abi_check: the wheel's paratriton/_backends.py differs from this checkout's: build the wheel from the "
             "same commit as these tests")
EOF
cp -r tests pyproject.toml "$work/"  # outside the checkout: `import paratriton` must find the wheel, not ./paratriton
cd "$work"
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" PARATRITON_REQUIRE_EXT=1
{
  python3 -c "
import torch, paratriton
from paratriton import _C, _backends
print('torch', torch.__version__, 'cuda', torch.version.cuda)
print('paratriton from', paratriton.__file__)
print('_C', _C.__file__, 'built with torch', _C.BUILT_WITH_TORCH, 'target', _C.TORCH_TARGET)
print('status', _backends.extension_status())
print('backends', paratriton.backends())
"
  python3 -m pytest -q -p no:cacheprovider -rfEs --tb=short tests/test_cpp_ext.py "$@"
} > "$out/abi_check.txt" 2>&1
rc=$?
grep -E "^(torch|_C|status|FAILED|ERROR)" "$out/abi_check.txt" | head -40
tail -3 "$out/abi_check.txt"
rm -rf "$site" "$work"
exit $rc
