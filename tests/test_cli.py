"""The CLI surface: every verb is listed, overrides may follow options, bad arguments exit 2 with a message."""

from __future__ import annotations

import pytest

from rmkit import cli

VERBS = ["train", "eval", "import", "calibrate", "select", "triage", "score", "serve", "compare", "export", "grpo", "collect",
         "rerank"]


def test_help_lists_every_verb(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert all(f"    {verb} " in out for verb in VERBS)
    assert set(cli.VERBS) == set(VERBS)


def test_overrides_may_follow_options(monkeypatch):
    seen = {}
    monkeypatch.setitem(cli.VERBS, "serve", lambda args: seen.update(vars(args)) or 0)
    assert cli.main(["serve", "model", "--port", "9000", "batch_size=8", "shaping.clip=null"]) == 0
    assert seen["port"] == 9000 and seen["overrides"] == ["batch_size=8", "shaping.clip=null"]


def test_an_unknown_option_exits_2_naming_it(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", "c.yaml", "optim.lr=1e-5", "--bogus"])
    assert exc.value.code == 2
    assert "--bogus" in capsys.readouterr().err


def test_a_missing_model_directory_is_a_clear_error_not_a_traceback(tmp_path, capsys):
    code = cli.main(["compare", str(tmp_path / "nope"), "--prompt", "p", "--response", "a", "--response", "b"])
    assert code == 2
    assert "rmkit compare: error:" in capsys.readouterr().err


def test_eval_show_pairs_prints_p_chosen_preferred_for_each_panel_pair(bert_dir, capsys):
    """The sanity panel: one line per pair with σ(Δ/T) and its subset; probabilities as scoring computes them."""
    import numpy as np

    from rmkit.data import read_pairs
    from rmkit.scoring import Scorer

    assert cli.main(["eval", str(bert_dir), "examples/sanity_panel.jsonl", "--show-pairs"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("P(chosen preferred)")]
    pairs = read_pairs("examples/sanity_panel.jsonl")
    chosen, rejected = Scorer.load(bert_dir).score_pairs(pairs)
    expected = 1 / (1 + np.exp(-(np.asarray(chosen) - np.asarray(rejected))))
    assert [float(line.split()[2]) for line in lines] == pytest.approx(expected.tolist(), abs=1e-3)
    assert len(lines) == 8 and "[over-refusal: answer benign vs refuse]" in lines[-1]
