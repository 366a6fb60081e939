"""rmkit: Bradley-Terry reward models from human preference data. Imports nothing heavy: names load on first use."""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "PreferencePair": "rmkit.data",
    "read_pairs": "rmkit.data",
    "bradley_terry_loss": "rmkit.loss",
    "load_config": "rmkit.config",
    "TrainConfig": "rmkit.config",
    "train": "rmkit.training",
    "evaluate": "rmkit.evaluation",
    "Scorer": "rmkit.scoring",
    "render": "rmkit.encoding",
    "calibrate": "rmkit.calibration",
    "RewardClient": "rmkit.client",
    "create_app": "rmkit.server",
    "reward_function": "rmkit.rl",
    "RewardModelEnvironment": "rmkit.rl",
    "kl_shaped_rewards": "rmkit.shaping",
    "run_grpo": "rmkit.grpo",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'rmkit' has no attribute {name!r}")
