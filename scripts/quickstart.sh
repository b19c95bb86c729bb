#!/usr/bin/env bash
# Set up .venv and run the whole pipeline on the tiny preset (local Ray, data under rollouts/).
set -euo pipefail
source "$(dirname "$0")/_setup_venv.sh"
.venv/bin/worldmodels pipeline --preset tiny --run runs/tiny --data rollouts/tiny "$@"
