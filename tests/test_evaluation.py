"""Tests for rmkit.evaluation: the pair report as a pure function of rewards, worked by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rmkit.data import PreferencePair
from rmkit.evaluation import format_summary, response_length, summarize
from rmkit.rows import write_json


def test_summary_of_three_pairs_worked_by_hand():
    """Δ = [2, −1, 0]: accuracy 1/3 (a tie counts as wrong); margin mean 1/3."""
    pairs = [PreferencePair("Q", "long answer here", "no"), PreferencePair("Q", "a", "b c"),
             PreferencePair("Q", "x", "y")]
    report = summarize(np.array([2.0, 0.0, 1.0]), np.array([0.0, 1.0, 1.0]), pairs)
    assert report["n_pairs"] == 3 and report["accuracy"] == pytest.approx(1 / 3)
    assert report["margin"]["mean"] == pytest.approx(1 / 3)
    low, high = report["accuracy_ci95"]
    assert 0 < low < 1 / 3 < high < 1
    assert "accuracy 0.333" in format_summary("test", report)


def test_response_length_counts_characters_of_text_or_messages():
    assert response_length("a b  c") == 6
    assert response_length([{"role": "assistant", "content": "a b"}, {"role": "assistant", "content": None}]) == 3


def test_reports_are_written_with_nan_as_null(tmp_path):
    path = write_json({"x": math.nan, "y": [1.0, math.inf]}, tmp_path / "r.json")
    assert path.read_text() == '{\n  "x": null,\n  "y": [\n    1.0,\n    null\n  ]\n}\n'
