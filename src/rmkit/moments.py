"""Running reward statistics on disk: save a RunningMoments as one JSON object, written atomically, and restore it, so
that a restarted server (or RL run) keeps its normalisation instead of learning it again. Knows nothing of models,
HTTP or how the statistics are used.

File: {"mean": float, "var": float, "std": float, "count": float} on one line (valid JSON and one-row JSONL).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from rmkit.rows import write_jsonl
from rmkit.shaping import RunningMoments

KEYS = ("mean", "var", "std", "count")


def save_moments(running: RunningMoments, path: str | Path) -> Path:
    """Write the statistics atomically (temp file + rename): a crash mid-write leaves the previous file whole."""
    return write_jsonl([running.state_dict()], path)


def load_moments(path: str | Path, seed: RunningMoments) -> RunningMoments:
    """The statistics saved at `path` loaded into `seed`, or `seed` unchanged when there is no file yet.

    Raises:
        ValueError: naming the file, when it is not a saved RunningMoments (bad JSON, missing or non-finite keys).
    """
    path = Path(path)
    if not path.exists():
        return seed
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the running statistics ({exc}); delete it to start afresh") from None
    ok = isinstance(state, dict) and set(state) == set(KEYS) and all(
        isinstance(state[k], int | float) and not isinstance(state[k], bool) and math.isfinite(state[k]) for k in KEYS)
    if not ok or state["count"] <= 0 or state["var"] < 0 or state["std"] <= 0:
        raise ValueError(f"{path}: not saved running statistics; expected finite {', '.join(KEYS)} (count and std "
                         "positive). Delete it to start afresh, or fix it.")
    seed.load_state_dict(state)
    return seed
