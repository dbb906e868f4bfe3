#!/usr/bin/env bash
# CI: install the pack as users do (`pip install -r requirements.txt`, no --no-deps) into three venvs —
# fresh, one holding onnxruntime-gpu (InstantID/PuLID users), one holding the CPU onnxruntime (every
# insightface >= 1.0 install) — and check the rule (.ci/install_rule.py), then import the pack's core and
# detect faces. The venvs are hard-linked copies of one base venv holding the machine's CPU torch, torchvision
# and numpy, as a ComfyUI venv does (pip replaces files, never writes into them, so the copies never touch the
# base). The pack's install is the README's `pip install -r requirements.txt` exactly, with no constraints;
# install_rule.py then checks that it kept the venv's torch, torchvision and numpy.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${F2D_INSTALL_CHECK_DIR:-/tmp/f2d-install-check}
rm -rf "$WORK"
mkdir -p "$WORK"
# pip's output without the index's "is ignored" lines, and pip's own exit status (pipefail; grep's is dropped)
quiet() { "$@" 2>&1 | { grep -v "is ignored" || true; }; }
python3 -m venv "$WORK/base"
# The user's ComfyUI venv: ComfyUI's requirements.txt installs torch and torchvision (here the machine's CPU
# builds, held by the constraints only while the base is made), and numpy.
quiet "$WORK/base/bin/python" -m pip install -q -c .ci/constraints.txt torch torchvision numpy

status=0
for start in fresh onnxruntime-gpu onnxruntime; do
  venv="$WORK/$start"
  cp -al "$WORK/base" "$venv"
  py="$venv/bin/python"  # never bin/pip: its shebang names the base venv's python
  if [ "$start" != fresh ]; then quiet "$py" -m pip install -q "$start"; fi
  "$py" -m pip list --format=json > "$WORK/$start.before.json" 2>/dev/null
  if ! quiet "$py" -m pip install -q -r requirements.txt; then  # the README's line, as written
    echo "$start: the README's install failed"
    status=1
  fi
  "$py" -m pip list --format=json > "$WORK/$start.after.json" 2>/dev/null
  "$py" .ci/install_rule.py "$start" "$WORK/$start.before.json" "$WORK/$start.after.json" || status=1
  if ! "$py" -c "import torchvision" 2>/dev/null; then  # the CUDA torchvision wheel on CPU torch (see .ci/run)
    site=$("$py" -c "import site; print(site.getsitepackages()[0])")
    cp .ci/torchvision_cpu_shim.py "$site/_torchvision_cpu_shim.py"
    echo "import _torchvision_cpu_shim" > "$site/_torchvision_cpu_shim.pth"
  fi
  "$py" .ci/install_smoke.py || status=1
done
rm -rf "$WORK"
exit $status
