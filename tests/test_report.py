"""report.html is self-contained (every plot embedded, nothing fetched), and `rmkit eval` writes it, reads a run's
training curves, handles ratings files, and compares two models."""

import base64
import json
import re
import shutil

import numpy as np
import pytest

from rmkit.cli import main
from rmkit.data import PreferencePair, RatedResponse
from rmkit.evaluation import summarize, summarize_ratings
from rmkit.report import write_report

PNG = b"\x89PNG\r\n\x1a\n"


def _strict_json(path):
    def no_nan(token):
        raise ValueError(f"{path} holds {token}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=no_nan)


def _embedded_pngs(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def _synthetic_report():
    """60 random pairs (20 of them A/B rows) named with HTML in it, plus a 9-response ratings set."""
    rng = np.random.default_rng(0)
    pairs = [PreferencePair("p", "x" * int(rng.integers(1, 80)), "y" * int(rng.integers(1, 80)),
                            chosen_position="AB"[i % 2] if i < 20 else None, subset="ab" if i < 20 else "plain")
             for i in range(60)]
    chosen, rejected = rng.normal(0.5, 1, 60), rng.normal(0, 1, 60)
    rated = [RatedResponse("p", "z" * (i + 1), float(i % 5)) for i in range(9)]
    scores = np.arange(9.0) + rng.normal(0, 0.5, 9)
    report = {"model_dir": "runs/x/model", "temperature": 1.5, "flags": [], "training": None, "datasets": {
        "<script>alert(1)</script>": summarize(chosen, rejected, pairs, 1.5),
        "ratings": summarize_ratings(scores, rated)}}
    arrays = {"<script>alert(1)</script>": {
        "chosen": chosen, "rejected": rejected, "chosen_len": np.array([len(p.chosen) for p in pairs]),
        "rejected_len": np.array([len(p.rejected) for p in pairs])},
        "ratings": {"scores": scores, "ratings": np.array([r.score for r in rated]),
                    "lengths": np.array([len(r.response) for r in rated])}}
    rows = [{"step": s, "split": "train", "loss": 1 / s, "accuracy": 1 - 0.5 / s} for s in range(1, 6)]
    rows += [{"step": s, "split": "val", "loss": 0.8, "accuracy": 0.6} for s in (2, 4)]
    return report, arrays, rows


def test_report_html_embeds_every_plot_and_references_nothing_external(tmp_path):
    """Pairs: 5 plots; ratings: 3; training curves: 1 → 9 PNGs beside the page and the same 9 embedded in it."""
    report, arrays, rows = _synthetic_report()
    page_path = write_report(tmp_path, report, arrays, rows)
    page = page_path.read_text()
    files = sorted(tmp_path.glob("*.png"))
    embedded = _embedded_pngs(page)
    assert len(files) == 9 and len(embedded) == 9
    assert sorted(embedded) == sorted(f.read_bytes() for f in files)
    assert all(data.startswith(PNG) for data in embedded)
    assert "training-curves.png" in {f.name for f in files}
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page and "&lt;script&gt;" in page  # names are escaped; the page has no scripts


def test_report_json_beside_the_page_is_strict_json(tmp_path):
    """nan (for example Spearman of a constant) is written as null, which every JSON reader accepts."""
    report, arrays, _ = _synthetic_report()
    write_report(tmp_path, report, arrays)
    saved = _strict_json(tmp_path / "report.json")
    assert saved["datasets"]["ratings"]["kind"] == "ratings"
    assert not (tmp_path / "training-curves.png").exists()


@pytest.fixture()
def eval_data(tmp_path):
    ab = tmp_path / "ab.jsonl"
    ab.write_text("".join(json.dumps(r) + "\n" for r in [
        {"prompt": "Name a prime.", "response_A": "9", "response_B": "7", "preferred": "B"},
        {"prompt": "Capital of France?", "response_A": "Paris.", "response_B": "Lyon, I think.", "preferred": "A"},
        {"prompt": "2+2?", "response_A": "4", "response_B": "5", "preferred": "A", "subset": "math"},
        {"prompt": "Say hi.", "response_A": "bye", "response_B": "hi there", "preferred": "B"}]))
    ratings = tmp_path / "ratings.jsonl"
    ratings.write_text("".join(json.dumps({"prompt": "Name a prime.", "response": r, "score": s}) + "\n"
                               for r, s in [("7", 4), ("9", 0), ("2 is prime", 3), ("I don't know", 1)]))
    return ab, ratings


def test_eval_cli_writes_the_report_with_training_curves_for_a_run(llama_dir, eval_data, tmp_path, capsys):
    """A model at run/model with config.yaml and metrics.jsonl beside it gets the training curves and the gap."""
    run = tmp_path / "run"
    shutil.copytree(llama_dir, run / "model")
    (run / "config.yaml").write_text("model:\n  path: tiny-llama\n")
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
        {"step": 1, "split": "train", "loss": 0.7, "accuracy": 1.0}, {"step": 1, "split": "val", "loss": 0.7,
                                                                      "accuracy": 0.5}]))
    ab, ratings = eval_data
    out = tmp_path / "report"
    assert main(["eval", str(run / "model"), str(ab), str(ratings), "--report", str(out),
                 "--out", str(tmp_path / "eval.json")]) == 0
    saved = _strict_json(tmp_path / "eval.json")
    assert saved["datasets"]["ab"]["kind"] == "pairs" and saved["datasets"]["ab"]["position"]["n"] == 4
    assert saved["datasets"]["ratings"]["kind"] == "ratings"
    assert saved["training"]["gap"] == pytest.approx(0.5)
    assert [f["kind"] for f in saved["flags"]] == ["overfitting"]
    page = (out / "report.html").read_text()
    assert len(_embedded_pngs(page)) == len(list(out.glob("*.png"))) == 1 + 5 + 3
    stdout = capsys.readouterr().out
    assert "ab: accuracy" in stdout and "ratings: Spearman" in stdout and "! overfitting" in stdout


def test_eval_compare_of_a_model_with_itself_finds_no_difference(llama_dir, eval_data, tmp_path, capsys):
    """Same model twice: every pair agrees → diff 0, interval [0, 0], no discordant pairs → McNemar p = 1."""
    ab, _ = eval_data
    assert main(["eval", "--compare", str(llama_dir), str(llama_dir), str(ab), "--out", str(tmp_path / "c.json")]) == 0
    result = _strict_json(tmp_path / "c.json")["datasets"]["ab"]
    assert result["bootstrap"]["diff"] == 0 and result["bootstrap"]["ci_low"] == result["bootstrap"]["ci_high"] == 0
    assert result["mcnemar"]["p_value"] == 1.0 and result["n_pairs"] == 4
    assert "McNemar p = 1" in capsys.readouterr().out
