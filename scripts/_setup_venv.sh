# Sourced by quickstart.sh and test.sh: create .venv if missing and install the package.
# TORCH_SPEC overrides the torch pin (the default CPU build keeps a CPU machine from
# pulling a multi-GB CUDA build); EXTRAS picks optional dependencies, e.g. "[test]".
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
fi
.venv/bin/python -m pip install -q -e ".${EXTRAS:-}"
