"""Running statistics survive a restart: saved atomically, restored exactly, and a bad file is refused by name."""

import json

import numpy as np
import pytest

from rmkit.moments import load_moments, save_moments
from rmkit.shaping import RunningMoments


def test_saved_statistics_restore_exactly_and_keep_merging_as_if_never_stopped(tmp_path):
    """[1, 2, 3] then [10]: a restart in between gives the same moments as one uninterrupted run."""
    before = RunningMoments()
    before.update(np.array([1.0, 2.0, 3.0]))
    save_moments(before, tmp_path / "stats.json")
    restored = load_moments(tmp_path / "stats.json", RunningMoments())
    assert restored.state_dict() == before.state_dict()
    uninterrupted = RunningMoments()
    uninterrupted.update(np.array([1.0, 2.0, 3.0]))
    assert restored.update(np.array([10.0])) == pytest.approx(uninterrupted.update(np.array([10.0])))


def test_no_file_yet_keeps_the_seed(tmp_path):
    seed = RunningMoments(mean=2.0, std=3.0)
    assert load_moments(tmp_path / "absent.json", seed) is seed and (seed.mean, seed.std) == (2.0, 3.0)


def test_the_file_is_one_json_object_and_a_failed_write_leaves_the_old_one(tmp_path, monkeypatch):
    running = RunningMoments()
    running.update(np.array([4.0, 6.0]))
    path = save_moments(running, tmp_path / "stats.json")
    assert json.loads(path.read_text()) == running.state_dict()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", crash)
    running.update(np.array([100.0]))
    with pytest.raises(OSError):
        save_moments(running, path)
    assert json.loads(path.read_text())["mean"] == 5.0 and list(tmp_path.iterdir()) == [path]


@pytest.mark.parametrize("text", ['{"mean": 1', '{"mean": 0, "var": 1, "std": 1}', '[1, 2]',
                                  '{"mean": 0, "var": 1, "std": 0, "count": 2}', '{"mean": NaN, "var": 1, "std": 1, "count": 2}'])
def test_a_file_that_is_not_saved_statistics_is_refused_naming_it(tmp_path, text):
    (tmp_path / "stats.json").write_text(text)
    with pytest.raises(ValueError, match=f"^{tmp_path / 'stats.json'}: .*(start afresh)"):
        load_moments(tmp_path / "stats.json", RunningMoments())
