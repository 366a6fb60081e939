"""Tests for rmkit.rows on its own; every container, read through read_pairs, is covered in test_data.py."""

import subprocess
import sys

import pytest

from rmkit import data, rows
from rmkit.rows import DataError, read_rows, rows_or_errors, short_repr


def test_rmkit_data_re_exports_read_rows_and_data_error_unchanged():
    assert data.read_rows is rows.read_rows and data.DataError is rows.DataError


def test_rows_or_errors_yields_a_bad_row_in_place_as_its_data_error(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text('{"a": 1}\n{oops\n[1, 2]\n{"b": 2}\n')
    got = list(rows_or_errors(path))
    assert [origin for origin, _ in got] == [f"{path}:{i}" for i in (1, 2, 3, 4)]
    assert (got[0][1], got[3][1]) == ({"a": 1}, {"b": 2})
    assert isinstance(got[1][1], DataError) and str(got[1][1]).startswith(f"{path}:2: invalid JSON")
    assert str(got[2][1]) == f"{path}:3: row is [1, 2], not a JSON object."


def test_read_rows_raises_at_the_first_bad_row_after_yielding_the_good_ones(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n"text"\n')
    it = read_rows(path)
    assert next(it) == (f"{path}:1", {"a": 1})
    with pytest.raises(DataError, match=rf"^{path}:2: row is 'text', not a JSON object"):
        next(it)


def test_rows_keep_every_key_they_do_not_know_about():
    """rows knows no formats: any dict passes through untouched, nulls included."""
    row = {"question": "q", "answer": None, "extra": [1, {"x": 2}]}
    assert list(read_rows([row])) == [("<memory>:1", row)]


def test_short_repr_cuts_long_values_to_sixty_characters():
    assert short_repr("hi") == "'hi'"
    assert short_repr("x" * 100) == "'" + "x" * 56 + "..."  # 1 + 56 + 3 = 60 characters


def test_importing_rmkit_rows_loads_no_heavy_library():
    code = "import sys, rmkit.rows; print(sorted({'torch', 'transformers', 'datasets', 'pyarrow'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
