#!/usr/bin/env bash
# The main job on the embedded default: train on the vendored preference data with the packaged MiniLM backbone,
# evaluate on the held-out split next to the length-only baseline, then score and compare with the new model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
.venv/bin/rmkit train configs/default.yaml "$@"
.venv/bin/rmkit score runs/default/model examples/rollouts.jsonl --out runs/default/scored.jsonl
.venv/bin/rmkit compare runs/default/model --prompt "How do I boil an egg?" \
  --response "Put the egg in boiling water for 9 minutes, then cool it in cold water." \
  --response "Eggs are a food."
