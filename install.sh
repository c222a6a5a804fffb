#!/usr/bin/env bash
# One-command set-up: a virtual environment in .venv with medqk, torch (CPU), onnx, onnxruntime,
# Lava (lava-nc + lava-dl, with the Python 3.11 fix) and the test tools; then the main job on the
# embedded default model (skip it with --no-demo).
set -euo pipefail
cd "$(dirname "$0")"
run_demo=1
for arg in "$@"; do
  case "$arg" in
    --no-demo) run_demo=0 ;;
    -h|--help) echo "usage: bash install.sh [--no-demo]"; exit 0 ;;
    *) echo "install.sh: unknown option '$arg' (use --no-demo or --help)" >&2; exit 2 ;;
  esac
done

PY=${PYTHON:-python3}
VENV=.venv
if [ ! -x "$VENV/bin/python" ]; then
  echo "[medqk] creating $VENV with $($PY --version)"
  "$PY" -m venv "$VENV"
fi
pip=("$VENV/bin/python" -m pip --disable-pip-version-check -q)

# Re-install only when the files that define the install have changed.
stamp="$VENV/.medqk-install-stamp"
want=$(cat pyproject.toml setup.py install.sh deploy/lava_py311.py | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[medqk] installing torch (CPU) and numpy"
  # torch 2.13.0 is the CPU build this machine carries; an unpinned torch would pull a CUDA build.
  "${pip[@]}" install "torch==2.13.0" "numpy==1.26.4"
  echo "[medqk] installing medqk and its dependencies"
  "${pip[@]}" install -e ".[test]"
  echo "[medqk] installing Lava (lava-nc 0.10.0, lava-dl 0.6.0)"
  # Both declare Python <3.11 and pin numpy<2, networkx<=2.8.7, torch 2.3: install them without
  # those declarations; their real needs (numpy 1.26, scipy, asteval<0.10) come from medqk's own.
  "${pip[@]}" install --no-deps --ignore-requires-python "lava-nc==0.10.0" "lava-dl==0.6.0"
  "$VENV/bin/python" -m medqk.deploy.lava_py311
  echo "[medqk] installing the extra medqk[peers] (SpikingJelly, NeuroBench) without their declared dependencies"
  "${pip[@]}" install --no-deps $("$VENV/bin/python" -c \
    'import tomllib; print(" ".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["peers"]))')
  echo "$want" > "$stamp"
fi
"$VENV/bin/python" -c "import lava.magma.core.run_configs, lava.proc.conv.process, torch, onnxruntime, spikingjelly.activation_based.op_counter, neurobench.benchmarks" \
  || { echo "[medqk] install check failed: see the messages above" >&2; exit 1; }
echo "[medqk] installed: $VENV/bin/medqk"

if [ "$run_demo" = 1 ]; then
  "$VENV/bin/medqk" demo
fi
