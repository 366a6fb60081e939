"""calibrate(model_dir, val_pairs): fit the temperature T of P(A preferred) = σ((r_A − r_B) / T) on validation pairs
and store it in the model's rmkit.json, where scoring, `rmkit compare` and `rmkit eval` read it.

Fit T on a validation split, never on the data you report: calibration numbers on the fitting set are optimistic.
Knows the model directory and its card; knows nothing of training or HTTP.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rmkit import metrics
from rmkit.data import read_pairs
from rmkit.model import CARD_FILE, ModelCard, read_card, write_card
from rmkit.scoring import Scorer

log = logging.getLogger(__name__)

MIN_PAIRS = 50
"""Below this many validation pairs the fitted temperature is noisy; calibrate still fits it, with a warning."""


def write_temperature(model_dir: str | Path, temperature: float) -> ModelCard:
    """Set `temperature` in model_dir/rmkit.json atomically (temp file + rename); other keys, unknown ones included,
    are kept as they are. Returns the updated card."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    read_card(model_dir)  # the checks of loading: an rmkit model directory, in a format this rmkit reads
    raw = json.loads((Path(model_dir) / CARD_FILE).read_text())
    raw["temperature"] = float(temperature)
    card = ModelCard.model_validate(raw)  # refuse to write a card that would no longer load
    write_card(model_dir, raw)
    return card


def _summary(report: dict[str, Any]) -> dict[str, float]:
    return {k: report[k] for k in ("temperature", "ece", "brier", "log_loss")}


def calibrate(model_dir: str | Path, pairs: Sequence[Any] | str | Path, scorer: Any = None,
              scores: tuple[Sequence[float], Sequence[float]] | None = None) -> dict[str, Any]:
    """Fit T on preference pairs by maximum likelihood (`metrics.fit_temperature`) and write it to rmkit.json.

    Args:
        model_dir: the rmkit model directory to calibrate.
        pairs: validation PreferencePairs, or a file `read_pairs` reads.
        scorer: a Scorer already loaded from `model_dir` (saves a load); its card is updated to the new T.
        scores: (chosen, rejected) rewards of `pairs` from this model at T = 1, when the caller already has them
            (saves scoring them again).

    Returns:
        {"temperature", "previous_temperature", "n_pairs", "before", "after"}, before/after holding the
        temperature, ECE, Brier score and log-loss of P(chosen preferred) on these pairs at T = 1 and at the fit.
    """
    if isinstance(pairs, str | Path):
        pairs = read_pairs(pairs)
    if not pairs:
        raise ValueError("no pairs to calibrate on; pass the validation split")
    scorer = scorer if scorer is not None else Scorer.load(model_dir)
    chosen, rejected = scores if scores is not None else scorer.score_pairs(pairs)
    delta = np.asarray(chosen) - np.asarray(rejected)
    temperature = metrics.fit_temperature(delta)
    if len(pairs) < MIN_PAIRS:
        log.warning("calibrating on %d pairs (< %d): the temperature %.3g is noisy", len(pairs), MIN_PAIRS, temperature)
    if temperature <= metrics.T_BOUNDS[0] * 1.01:
        log.warning("fitted temperature %.3g is the lower bound %g: (nearly) every pair is right, so the likelihood "
                    "keeps improving as T → 0; calibrate on more, harder validation pairs", temperature,
                    metrics.T_BOUNDS[0])
    elif temperature >= metrics.T_BOUNDS[1] * 0.99:
        log.warning("fitted temperature %.3g is the upper bound %g: the margins carry little or no information on "
                    "these pairs (accuracy near or below 50%%), so the best probabilities are all near 0.5",
                    temperature, metrics.T_BOUNDS[1])
    previous = scorer.card.temperature
    scorer.card = write_temperature(model_dir, temperature)
    log.info("calibrated %s: T %.3g → %.3g on %d pairs", model_dir, previous, temperature, len(pairs))
    return {"temperature": temperature, "previous_temperature": previous, "n_pairs": len(pairs),
            "before": _summary(metrics.calibration_report(delta, 1.0)),
            "after": _summary(metrics.calibration_report(delta, temperature))}
