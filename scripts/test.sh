#!/usr/bin/env bash
# Set up .venv with the test and doom extras and run the whole test suite.
set -euo pipefail
EXTRAS="[test,doom]" source "$(dirname "$0")/_setup_venv.sh"
.venv/bin/ruff check .
.venv/bin/python -m pytest -q "$@"
