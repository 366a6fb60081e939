#!/usr/bin/env bash
# The main job on the embedded default: train on the vendored preference data with the packaged MiniLM backbone,
# print held-out accuracy per source next to the length-only baseline, then P(chosen preferred) on the hand-written
# sanity panel (examples/sanity_panel.jsonl; a smoke check, never tuned on), and score example rollouts.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
.venv/bin/rmkit train configs/default.yaml "$@"
echo "sanity panel (hand-written pairs; the first answer of each should win):"
.venv/bin/rmkit eval runs/default/model examples/sanity_panel.jsonl --show-pairs
.venv/bin/rmkit score runs/default/model examples/rollouts.jsonl --out runs/default/scored.jsonl
