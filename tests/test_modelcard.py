"""The model card: `rmkit train` writes README.md whose numbers are eval.json's, in the hub's layout; its plain
transformers recipe gives rmkit's rewards; `rmkit eval --report` puts its results in (once, however often it runs)."""

from __future__ import annotations

import json
import re
import time

import pytest
import yaml

from conftest import make_model_dir
from rmkit.cli import main
from rmkit.config import load_config
from rmkit.modelcard import EVAL_START, append_evaluation, data_licence, write_model_card
from rmkit.training import train

MIT = "MIT License\n\nCopyright (c) 2022 Someone\n"
APACHE = "                                 Apache License\n                           Version 2.0, January 2004\n"


def write_source(root, name, licence, n=60):
    folder = root / name
    folder.mkdir()
    rows = [{"prompt": f"{name} question {i}?", "chosen": f"A careful answer {i}." + " More." * (i % 4),
             "rejected": "No." if i % 2 else f"banana {i}"} for i in range(n)]
    (folder / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "LICENSE").write_text(licence)
    return folder / "pairs.jsonl"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("card")
    paths = [write_source(root, "alpha", MIT), write_source(root, "beta", APACHE)]
    cfg = load_config(None, [f"data.paths=[{paths[0]},{paths[1]}]", "data.val_fraction=0.25", "data.test_fraction=0.25",
                             "data.max_length=64", "model.path=tiny-llama", f"train.out_dir={root / 'run'}",
                             "train.batch_size=8", "train.max_steps=3", "train.eval_every=1000", "train.save_every=1000"])
    started = time.perf_counter()
    run = train(cfg)
    (run / "seconds.txt").write_text(str(time.perf_counter() - started))
    return run


def card_parts(path):
    text = path.read_text()
    _, front, body = text.split("---\n", 2)
    return yaml.safe_load(front), body


def table_row(body, label):
    """The cells of the results row whose first cell is `label`."""
    row = next(line for line in body.splitlines() if line.startswith(f"| {label} |"))
    return [c.strip() for c in row.strip("|").split("|")][1:]


def test_train_writes_a_hub_layout_card_whose_numbers_are_eval_json(run):
    report = json.loads((run / "eval.json").read_text())
    card = json.loads((run / "model" / "rmkit.json").read_text())
    front, body = card_parts(run / "model" / "README.md")
    assert front["library_name"] == "transformers" and front["pipeline_tag"] == "text-classification"
    assert "base_model" not in front  # tiny-llama is a random test model, not a hub model
    assert front["license"] == "other" and front["license_name"] == "apache-2.0-and-mit"  # two data licences
    for split in ("test", "val"):
        for source, s in report[split]["by_source"].items():
            n, acc, interval, baseline = table_row(body, f"{split} · {source}")
            assert (int(n), acc, baseline) == (s["n_pairs"], f"{s['accuracy']:.3f}", f"{s['length_baseline_accuracy']:.3f}")
            assert interval == "{:.3f}–{:.3f}".format(*s["accuracy_ci95"])
        n, acc, interval, baseline = table_row(body, f"{split} · all")
        assert (int(n), acc) == (report[split]["n_pairs"], f"{report[split]['accuracy']:.3f}")
        assert interval == "{:.3f}–{:.3f}".format(*report[split]["accuracy_ci95"])
        assert baseline == f"{report[split]['length_baseline_accuracy']:.3f}"
        for flag in report[split]["flags"]:
            assert flag["message"] in body
    assert f"**T = {card['temperature']:.4g}**" in body and card["temperature"] == report["calibration"]["temperature"]
    sources = report["run"]["sources"]
    assert {s["licence"] for s in sources.values()} == {"mit", "apache-2.0"}
    for name, s in sources.items():
        assert f"| {name} (`{s['path']}`) | {s['licence']} | {s['train']} | {s['val']} | {s['test']} |" in body
        assert s["val"] == report["val"]["by_source"][name]["n_pairs"]
    assert f"({report['run']['wall_time_s']:.0f} s) on {report['run']['hardware']}" in body
    outside = float((run / "seconds.txt").read_text())  # train() as timed by its caller
    assert 0.5 * outside <= report["run"]["wall_time_s"] <= outside + 0.1
    assert report["run"]["steps"] == 3 and "3 optimiser steps" in body


@pytest.mark.parametrize("backbone, finetune", [("tiny-llama", "full"), ("tiny-llama", "lora"), ("tiny-bert", "full")])
def test_the_cards_plain_transformers_recipe_gives_rmkits_reward(tmp_path, backbone, finetune):
    """Chat template + last token, a PEFT adapter, and plain template + CLS: the card's snippet, pasted as it is."""
    from rmkit.scoring import Scorer

    model = make_model_dir(tmp_path, backbone, finetune=finetune)
    body = write_model_card(model).read_text()
    code = re.findall(r"```python\n(.*?)```", body, re.S)[1].replace("MODEL_DIR", str(model))
    scope = {}
    exec(code, scope)
    expected = Scorer.load(model).score([scope["prompt"]], [scope["response"]])[0]
    assert scope["reward"] == pytest.approx(expected, abs=1e-4)


def test_rmkit_eval_report_puts_its_results_in_the_card_once(run, tmp_path, capsys):
    data = yaml.safe_load((run / "config.yaml").read_text())["data"]["paths"][1]
    out = tmp_path / "eval.json"
    assert main(["eval", str(run / "model"), data, "--report", str(tmp_path / "report"), "--out", str(out)]) == 0
    assert "model card:" in capsys.readouterr().out
    report = json.loads(out.read_text())
    append_evaluation(run / "model", report)  # a second run replaces the section
    _, body = card_parts(run / "model" / "README.md")
    assert body.count(EVAL_START) == 1 and body.count("## Evaluation (rmkit eval)") == 1
    (name, r), = report["datasets"].items()
    n, acc, interval, baseline = table_row(body[body.index(EVAL_START):], name)
    assert (int(n), acc, baseline) == (r["n_pairs"], f"{r['accuracy']:.3f}", f"{r['length_baseline_accuracy']:.3f}")
    assert "## Held-out results" in body  # the training card is kept


def test_a_model_without_a_card_gets_a_minimal_one_before_the_eval_section(llama_dir, tmp_path):
    import shutil

    model = shutil.copytree(llama_dir, tmp_path / "m")
    report = {"temperature": 1.0, "datasets": {"x": {"kind": "pairs", "n_pairs": 4, "accuracy": 0.5,
                                                     "accuracy_ci95": [0.15, 0.85], "length_baseline_accuracy": 0.25,
                                                     "flags": []}}}
    append_evaluation(model, report)
    front, body = card_parts(model / "README.md")
    assert front["pipeline_tag"] == "text-classification" and "| x | 4 | 0.500 | 0.150–0.850 | 0.250 |" in body
    write_model_card(model)  # rewriting from rmkit.json alone drops the eval section
    assert EVAL_START not in (model / "README.md").read_text()


def test_vendored_data_licences_are_read_from_their_license_files():
    assert data_licence("data/hh-rlhf-harmless/pairs.jsonl") == "mit"
    assert data_licence("data/pandalm/pairs.jsonl") == "apache-2.0"
    assert data_licence("no/such/pairs.jsonl") == "unknown"
