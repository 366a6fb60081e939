"""Calibration round trip: the fitted temperature lands in rmkit.json and every P(A preferred) afterwards uses it."""

import json
import math
import shutil

import numpy as np
import pytest

from rmkit import metrics
from rmkit.calibration import calibrate, write_temperature
from rmkit.cli import main
from rmkit.data import PreferencePair
from rmkit.model import read_card
from rmkit.scoring import Scorer, compare

PAIRS = [PreferencePair("Name a prime.", "7", "9"), PreferencePair("Capital of France?", "Paris.", "Lyon."),
         PreferencePair("2+2?", "4", "five"), PreferencePair("Say hi.", "hi there", "bye"),
         PreferencePair("Say hi.", "bye", "hi there")]  # both orders: some Δ < 0, so the fit has an interior optimum


@pytest.fixture()
def model_copy(llama_dir, tmp_path):
    return shutil.copytree(llama_dir, tmp_path / "model")


def test_calibrate_stores_the_maximum_likelihood_temperature_in_rmkit_json(model_copy):
    scorer = Scorer.load(model_copy, device="cpu")
    chosen, rejected = scorer.score_pairs(PAIRS)
    expected = metrics.fit_temperature(np.asarray(chosen) - np.asarray(rejected))
    result = calibrate(model_copy, PAIRS, scorer=scorer)
    assert result["temperature"] == pytest.approx(expected)
    assert read_card(model_copy).temperature == pytest.approx(expected)
    assert scorer.card.temperature == pytest.approx(expected)  # the scorer passed in sees the new T at once
    assert result["previous_temperature"] == 1.0 and result["n_pairs"] == 5
    assert result["after"]["log_loss"] <= result["before"]["log_loss"] + 1e-12  # the fit minimises exactly this


def test_compare_after_calibration_shows_sigma_of_delta_over_the_stored_t(model_copy):
    """P(A preferred over B) = σ((r_A − r_B) / T) with the T read back from rmkit.json by a fresh Scorer."""
    t = calibrate(model_copy, PAIRS)["temperature"]
    result = compare(Scorer.load(model_copy, device="cpu"), "Name a prime.", ["7", "9"])
    r_a, r_b = result["scores"]
    assert result["temperature"] == pytest.approx(t)
    assert result["p_first_preferred"][0] == pytest.approx(1 / (1 + math.exp(-(r_a - r_b) / t)))


def test_write_temperature_keeps_other_keys_and_refuses_non_positive_values(model_copy):
    card_path = model_copy / "rmkit.json"
    raw = json.loads(card_path.read_text())
    card_path.write_text(json.dumps({**raw, "written_by_a_newer_rmkit": 1}))
    write_temperature(model_copy, 2.5)
    saved = json.loads(card_path.read_text())
    assert saved["temperature"] == 2.5 and saved["written_by_a_newer_rmkit"] == 1
    assert {k: v for k, v in saved.items() if k not in ("temperature", "written_by_a_newer_rmkit")} == {
        k: v for k, v in raw.items() if k != "temperature"}
    with pytest.raises(ValueError, match="> 0"):
        write_temperature(model_copy, 0.0)


def test_calibrate_cli_reads_a_file_and_reports_before_and_after(model_copy, tmp_path, capsys):
    data = tmp_path / "val.jsonl"
    data.write_text("".join(json.dumps({"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}) + "\n"
                            for p in PAIRS))
    assert main(["calibrate", str(model_copy), str(data)]) == 0
    out = capsys.readouterr().out
    assert "before: T=1" in out and "after: T=" in out
    assert read_card(model_copy).temperature != 1.0
