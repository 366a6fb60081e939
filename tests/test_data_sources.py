"""Preference data from `datasets`: a local dataset folder read through load_dataset (the offline stand-in for a hub
name), a NAME:SPLIT spec, a clear error for a name that cannot be loaded, and a Dataset passed to train()."""

from __future__ import annotations

import json

import pytest

from rmkit.data import DataError, read_pairs

ROWS = [{"prompt": f"Q{i}?", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(6)]


@pytest.fixture()
def dataset_folder(tmp_path):
    """A dataset repository as it sits on the hub: data files in a folder, one per split (no save_to_disk)."""
    folder = tmp_path / "my-prefs"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (folder / "data" / "test.jsonl").write_text(json.dumps(ROWS[0]) + "\n")
    return folder


def test_a_dataset_folder_is_read_through_load_dataset(dataset_folder):
    pairs = read_pairs(str(dataset_folder))
    assert [p.chosen for p in pairs] == [r["chosen"] for r in ROWS]
    assert pairs[0].origin.endswith("[train]:1")


def test_a_split_is_named_after_a_colon(dataset_folder):
    pairs = read_pairs(f"{dataset_folder}:test")
    assert [p.prompt for p in pairs] == ["Q0?"]


def test_a_name_that_cannot_be_loaded_is_a_data_error(tmp_path, dataset_folder):
    with pytest.raises(DataError, match="neither a file nor a loadable datasets name"):
        read_pairs(f"{dataset_folder}:nosuchsplit")
    with pytest.raises(DataError, match="no such file"):
        read_pairs(str(tmp_path / "missing.jsonl"))


def test_train_takes_a_dataset_in_memory(tmp_path):
    import datasets

    from rmkit.config import load_config
    from rmkit.training import train

    cfg = load_config(None, ["data.val_fraction=0", "data.test_fraction=0", "data.max_length=32",
                             "model.path=tiny-llama", f"train.out_dir={tmp_path / 'run'}", "train.batch_size=3",
                             "train.max_steps=2", "train.eval_every=1000", "train.save_every=1000"])
    run = train(cfg, sources=[datasets.Dataset.from_list(ROWS)])
    assert (run / "model" / "rmkit.json").exists()
    steps = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"train"' in x]
    assert steps and steps[-1]["step"] == 2
