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


NOT_UTF8 = [  # (suffix, bytes, line, byte offset of the first bad byte)
    (".jsonl", b'{"a": "ok"}\n{"a": "caf\xe9"}\n', 2, 22),
    (".json", b'[{"a": "ok"},\n {"a": "na\xefve"}]', 2, 24),
    (".csv", b'a,b\nx,y\n"multi\nline",caf\xe9\n', 4, 24),
    (".jsonl", b"\xef\xbb\xbf" + b'{"a": 1}\n' * 3 + b"\xff\xfe", 4, 30),  # a UTF-8 BOM, then stray bytes
]


@pytest.mark.parametrize(("suffix", "raw", "line", "offset"), NOT_UTF8)
def test_a_file_that_is_not_utf8_names_file_line_and_byte_offset(tmp_path, suffix, raw, line, offset):
    path = tmp_path / f"latin1{suffix}"
    path.write_bytes(raw)
    assert raw[offset] >= 0x80 and raw[:offset].count(b"\n") + 1 == line  # the table itself is right
    with pytest.raises(DataError) as err:
        list(rows_or_errors(path))  # a whole-file problem: even skip_bad cannot read past an unknown encoding
    assert str(err.value).startswith(f"{path}:{line}: not UTF-8 text (byte offset {offset}: 0x{raw[offset]:02x}")
    assert "iconv" in str(err.value)


def test_a_binary_file_is_named_and_a_gzip_one_is_recognised(tmp_path):
    import gzip

    packed = tmp_path / "pairs.jsonl"
    packed.write_bytes(gzip.compress(b'{"a": 1}\n'))
    with pytest.raises(DataError, match=rf"^{packed}:1: not UTF-8 text \(byte offset 1: 0x8b.*gunzip"):
        list(read_rows(packed))
    noise = tmp_path / "noise.csv"
    noise.write_bytes(b"a,b\n" * 300_000 + bytes(range(128, 256)))  # 1.2 MB: the offset search reads in chunks
    with pytest.raises(DataError, match=rf"^{noise}:300001: not UTF-8 text \(byte offset 1200000: 0x80818283"):
        list(read_rows(noise))


def test_the_first_bad_byte_is_found_across_chunk_boundaries(tmp_path):
    """A two-byte character cut by the chunk boundary is not an error; the real bad byte comes later."""
    path = tmp_path / "x.jsonl"
    path.write_bytes(b"a" * 7 + "é".encode() + b"\nbb\x80")  # é spans bytes 7 and 8; chunk size 8 cuts it
    assert rows._first_bad_byte(path, chunk=8) == (12, 2, b"\x80")
    assert rows._first_bad_byte(path, chunk=3) == (12, 2, b"\x80")
    path.write_bytes(b"fine \xc3\xa9")
    assert rows._first_bad_byte(path, chunk=6) == (7, 1, b"")  # no bad byte: the end of the file

def _gzip(path, text: str) -> None:
    import gzip

    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(text)


@pytest.mark.parametrize("name, text", [
    ("rows.jsonl.gz", '{"a": 1}\n{"a": 2}\n'),
    ("rows.json.gz", '[{"a": 1}, {"a": 2}]'),
    ("rows.csv.gz", "a\n1\n2\n"),
])
def test_gzip_containers_read_like_their_plain_versions(tmp_path, name, text):
    path = tmp_path / name
    _gzip(path, text)
    got = [(origin, row) for origin, row in read_rows(path)]
    line = 2 if name.endswith(".csv.gz") else 1  # CSV counts the header line
    assert [o for o, _ in got] == [f"{path}:{line}", f"{path}:{line + 1}"]
    assert [str(r["a"]) for _, r in got] == ["1", "2"]


def test_a_bad_row_inside_jsonl_gz_is_named_by_file_and_line(tmp_path):
    path = tmp_path / "rows.jsonl.gz"
    _gzip(path, '{"a": 1}\n{oops\n')
    with pytest.raises(DataError, match=rf"^{path}:2: invalid JSON"):
        list(read_rows(path))


def test_a_truncated_gzip_file_is_a_data_error_naming_the_file(tmp_path):
    path = tmp_path / "rows.jsonl.gz"
    _gzip(path, "".join(f'{{"a": {i}, "pad": "{"x" * 50}"}}\n' for i in range(2000)))
    path.write_bytes(path.read_bytes()[:-200])  # cut the end off, as an interrupted copy would
    with pytest.raises(DataError, match=rf"^{path}:\d+: the gzip stream is damaged"):
        list(read_rows(path))


def test_a_plain_file_named_gz_is_a_data_error(tmp_path):
    path = tmp_path / "rows.jsonl.gz"
    path.write_text('{"a": 1}\n')
    with pytest.raises(DataError, match=rf"^{path}:1: the gzip stream is damaged"):
        list(read_rows(path))


def test_gz_of_an_unsupported_type_names_the_supported_ones(tmp_path):
    path = tmp_path / "rows.txt.gz"
    _gzip(path, "x")
    with pytest.raises(DataError, match=r"unsupported file type '\.txt\.gz'.*\.jsonl\.gz"):
        list(read_rows(path))


def test_non_utf8_text_inside_jsonl_gz_names_the_decompressed_line(tmp_path):
    import gzip

    path = tmp_path / "rows.jsonl.gz"
    with gzip.open(path, "wb") as f:
        f.write(b'{"a": 1}\n{"a": "caf' + b"\xe9" + b'"}\n')
    with pytest.raises(DataError, match=rf"^{path}:2: not UTF-8 text .*iconv"):
        list(read_rows(path))
