#!/usr/bin/env bash
# Set up, then run the default test suite (tiny random models; the `slow` real-backbone tests are opt-in: -m slow).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
