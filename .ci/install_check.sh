#!/usr/bin/env bash
# CI: install the pack as users do (`pip install -r requirements.txt`, no --no-deps) into three venvs —
# fresh, one holding onnxruntime-gpu (InstantID/PuLID users), one holding the CPU onnxruntime (every
# insightface >= 1.0 install) — and check the rule (.ci/install_rule.py), then import the pack's core and
# detect faces. The venvs are hard-linked copies of one base venv holding the machine's CPU torch and numpy
# (pip replaces files, never writes into them, so the copies never touch the base). torch is held at the
# machine's CPU wheel by .ci/constraints.txt; nothing else is constrained.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${F2D_INSTALL_CHECK_DIR:-/tmp/f2d-install-check}
rm -rf "$WORK"
mkdir -p "$WORK"
python3 -m venv "$WORK/base"
"$WORK/base/bin/python" -m pip install -q torch==2.13.0 numpy 2>&1 | grep -v "is ignored" || true

status=0
for start in fresh onnxruntime-gpu onnxruntime; do
  venv="$WORK/$start"
  cp -al "$WORK/base" "$venv"
  py="$venv/bin/python"  # never bin/pip: its shebang names the base venv's python
  if [ "$start" != fresh ]; then "$py" -m pip install -q "$start" 2>&1 | grep -v "is ignored" || true; fi
  "$py" -m pip list --format=json > "$WORK/$start.before.json" 2>/dev/null
  "$py" -m pip install -q -c .ci/constraints.txt -r requirements.txt 2>&1 | grep -v "is ignored" || true
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
