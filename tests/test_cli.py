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
