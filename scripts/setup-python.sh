#!/usr/bin/env bash
# Create .venv at the repository root from uv.lock (the project, its dev group and the html extra).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python3 -m uv --version >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check "uv==0.13.9"
fi
python3 -m uv sync --frozen --all-extras --quiet
