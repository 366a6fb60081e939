"""read_rows: any container → (origin, row dict) pairs; knows nothing about preference formats or their keys. Also
the project's one home for writing JSON files: write_jsonl and write_json (atomic), and MetricsLog (metrics.jsonl).

Containers: .jsonl, .json, .csv, .parquet, a `datasets` save_to_disk folder, a `datasets.Dataset`, a list of dicts,
or a `datasets.load_dataset` source: a hub name ("NAME" or "NAME:SPLIT", split 'train' by default) or a local folder
of data files that save_to_disk did not write. The text formats may be gzip-compressed (.jsonl.gz, .json.gz, .csv.gz),
read as a stream.
Each row comes with its origin, "path:line" (1-based line for JSONL/CSV, 1-based row index for JSON/Parquet/datasets;
"<memory>:i" in memory), so that every error can name where it is. Heavy readers (pyarrow, datasets) load on first use.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import json
import math
import os
import tempfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".jsonl.gz", ".json.gz", ".csv.gz")


class DataError(ValueError):
    """Bad input data; the message starts with "<file>:<line>: " (or "<file>: " for whole-file problems)."""


def short_repr(value: Any) -> str:
    """repr(value), cut to 60 characters for error messages."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def read_rows(source: Any) -> Iterator[tuple[str, dict]]:
    """Yield (origin, row) from any supported container, origin "path:line" (or row index; "<memory>:i").

    Args:
        source: path to .jsonl/.json/.csv/.parquet or a save_to_disk folder; a `datasets.Dataset`; a list of dicts.

    Raises:
        DataError: for unreadable files and rows that are not JSON objects.
    """
    for origin, row in rows_or_errors(source):
        if isinstance(row, DataError):
            raise row
        yield origin, row


def rows_or_errors(source: Any) -> Iterator[tuple[str, dict | DataError]]:
    """Like read_rows, but a bad row comes back as its DataError, so that a caller can skip it (skip_bad).

    Raises:
        DataError: for problems with the whole source (a missing or unsupported file, bad JSON, a DatasetDict).
    """
    if isinstance(source, list):
        return _objects("<memory>", enumerate(source, 1))
    if type(source).__module__.split(".")[0] == "datasets":
        return _dataset_rows("<memory>", source)
    if not isinstance(source, str | Path):
        raise TypeError(f"source is a {type(source).__name__}; pass a path, a datasets.Dataset or a list of dicts.")
    path = Path(source)
    if path.is_dir() and not any((path / f).exists() for f in SAVED_MARKERS):
        return _hub_rows(str(source))  # a dataset folder of data files, read by datasets.load_dataset
    if path.is_dir():
        return _dataset_rows(str(source), None)
    if not path.exists():
        folder = str(source).rpartition(":")[0]
        local = path.suffix.lower() in SUFFIXES or path.is_absolute() or str(source).startswith(".")
        if local and not (folder and Path(folder).is_dir()):
            raise DataError(f"{source}: no such file. Check the path.")
        return _hub_rows(str(source))  # a hub name, or FOLDER:SPLIT
    suffix = "".join(path.suffixes[-2:]).lower() if path.suffix.lower() == ".gz" else path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(f"{source}: unsupported file type {suffix!r}. Supported: {', '.join(SUFFIXES)}, or a folder "
                        "written by datasets' save_to_disk.")
    reader = {".jsonl": _jsonl_rows, ".json": _json_rows, ".csv": _csv_rows, ".parquet": _parquet_rows}
    read = reader[suffix.removesuffix(".gz")]
    return _gunzip_errors(path, read) if suffix.endswith(".gz") else read(path)


def _open_bytes(path: Path):
    """A binary stream of the file's content, decompressed on the fly when its name ends in .gz."""
    return gzip.open(path, "rb") if path.suffix.lower() == ".gz" else path.open("rb")


def _open_text(path: Path, newline: str | None = None):
    """A text stream of the file, decompressed on the fly when its name ends in .gz."""
    if path.suffix.lower() == ".gz":
        return gzip.open(path, "rt", encoding="utf-8-sig", newline=newline)
    return path.open(encoding="utf-8-sig", newline=newline)


def _gunzip_errors(path: Path, read: Callable[[Path], Iterator[tuple[str, dict | DataError]]]
                   ) -> Iterator[tuple[str, dict | DataError]]:
    """read(path), with a damaged gzip stream raised as a DataError naming the file and the last row read before it."""
    last = f"{path}:0"
    try:
        for origin, row in read(path):
            last = origin
            yield origin, row
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise DataError(f"{path}:{int(last.rsplit(':', 1)[1]) + 1}: the gzip stream is damaged after row "
                        f"{last.rsplit(':', 1)[1]} ({type(e).__name__}: {e}). "
                        "Check that the file was copied completely, or decompress and fix it.") from None


def _objects(name: str, numbered: Iterable[tuple[int, Any]]) -> Iterator[tuple[str, dict | DataError]]:
    for i, row in numbered:
        ok = isinstance(row, dict)
        yield f"{name}:{i}", row if ok else DataError(f"{name}:{i}: row is {short_repr(row)}, not a JSON object.")


def _first_bad_byte(path: Path, chunk: int = 1 << 20) -> tuple[int, int, bytes]:
    """(byte offset, 1-based line, up to 4 bytes) of the first byte of `path` that is not UTF-8."""
    decoder, offset, newlines = codecs.getincrementaldecoder("utf-8")(), 0, 0
    with _open_bytes(path) as f:  # a .gz file: offsets in the decompressed text
        while True:
            data = f.read(chunk)
            pending = decoder.getstate()[0]  # bytes of a character cut by the previous chunk
            try:
                decoder.decode(data, final=not data)
            except UnicodeDecodeError as e:  # e.start counts from the pending bytes, then this chunk
                joined = pending + data
                line = newlines + joined.count(b"\n", 0, e.start) + 1
                return offset - len(pending) + e.start, line, joined[e.start : e.start + 4]
            if not data:
                return offset, newlines + 1, b""
            offset, newlines = offset + len(data), newlines + data.count(b"\n")


@contextmanager
def _utf8(path: Path) -> Iterator[None]:
    """Turn a UnicodeDecodeError in the block into a DataError naming the file, line and byte offset."""
    try:
        yield
    except UnicodeDecodeError:
        offset, line, bad = _first_bad_byte(path)
        with path.open("rb") as f:
            gzipped = f.read(2) == b"\x1f\x8b"
        hint = ("it is gzip-compressed: decompress it (gunzip) or name it *.gz" if gzipped and path.suffix != ".gz" else
                "save it as UTF-8 (for example `iconv -f latin1 -t utf-8`), or check that it is not a binary file")
        raise DataError(f"{path}:{line}: not UTF-8 text (byte offset {offset}: 0x{bad.hex()}); {hint}.") from None


def _jsonl_rows(path: Path) -> Iterator[tuple[str, dict | DataError]]:
    with _utf8(path), _open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                yield f"{path}:{lineno}", DataError(f"{path}:{lineno}: invalid JSON ({e}). Each line must be one "
                                                    "JSON object.")
                continue
            yield from _objects(str(path), [(lineno, row)])


def _json_rows(path: Path) -> Iterator[tuple[str, dict | DataError]]:
    try:
        with _utf8(path), _open_text(path) as f:
            data = json.loads(f.read())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: invalid JSON ({e}). Fix it, or use .jsonl for one row per line.") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise DataError(f"{path}: the top level is a {type(data).__name__}. A .json file must hold an array of "
                        'objects, or {"data": [...]}.')
    return _objects(str(path), enumerate(data, 1))


def _csv_cell(cell: str) -> Any:
    """An empty cell is absent; a cell that looks like a JSON list or object (chat messages) is parsed."""
    if not cell:
        return None
    if cell[0] in "[{":
        try:
            return json.loads(cell)
        except json.JSONDecodeError:
            pass  # ordinary text that happens to start with a bracket
    return cell


def _csv_rows(path: Path) -> Iterator[tuple[str, dict | DataError]]:
    with _utf8(path), _open_text(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        while True:
            start = reader.line_num + 1  # a quoted cell may span lines: report where the row starts
            cells = next(reader, None)
            if cells is None:
                return
            if not cells:
                continue
            if len(cells) != len(header):
                yield f"{path}:{start}", DataError(f"{path}:{start}: {len(cells)} cells but the header has "
                                                   f"{len(header)}. Quote cells that contain commas or newlines.")
                continue
            yield f"{path}:{start}", {h: _csv_cell(c) for h, c in zip(header, cells, strict=True)}


def _parquet_rows(path: Path) -> Iterator[tuple[str, dict | DataError]]:
    import pyarrow.parquet as pq

    try:
        batches = pq.ParquetFile(path).iter_batches()
    except Exception as e:  # pyarrow raises several types for a corrupt file
        raise DataError(f"{path}: cannot read Parquet ({e}). Check that the file is complete.") from e
    i = 0
    for batch in batches:
        for row in batch.to_pylist():
            i += 1
            yield f"{path}:{i}", row


SAVED_MARKERS = ("state.json", "dataset_info.json", "dataset_dict.json")  # what save_to_disk writes


def _hub_rows(spec: str) -> Iterator[tuple[str, dict | DataError]]:
    """Rows of `datasets.load_dataset(NAME, split=SPLIT)` for "NAME" or "NAME:SPLIT" (split 'train' by default):
    a hub name (downloaded, or from the datasets cache when offline) or a local folder of data files."""
    import datasets

    name, _, split = spec.rpartition(":") if ":" in spec and not Path(spec).exists() else (spec, "", "train")
    try:
        dataset = datasets.load_dataset(name, split=split or "train")
    except Exception as e:  # datasets raises many kinds (not found, offline, bad split): one DataError for all
        if Path(spec).is_dir():
            raise DataError(f"{spec}: a folder, but not one written by datasets' save_to_disk, nor one of data files "
                            f"that datasets.load_dataset reads ({type(e).__name__}: {e}).") from e
        raise DataError(f"{spec}: neither a file nor a loadable datasets name ({type(e).__name__}: {e}). Give a "
                        f"{'/'.join(SUFFIXES)} file, a save_to_disk folder, or a datasets name as NAME or "
                        "NAME:SPLIT.") from e
    return _objects(f"{name}[{split or 'train'}]", enumerate(dataset, 1))


def _dataset_rows(name: str, dataset: Any) -> Iterator[tuple[str, dict | DataError]]:
    import datasets

    if dataset is None:
        try:
            dataset = datasets.load_from_disk(name)
        except FileNotFoundError as e:
            raise DataError(f"{name}: a folder, but not one written by datasets' save_to_disk ({e}). Pass such a "
                            f"folder or a {'/'.join(SUFFIXES)} file.") from e
    if isinstance(dataset, datasets.DatasetDict | datasets.IterableDatasetDict):
        splits = ", ".join(dataset)
        raise DataError(f"{name}: a DatasetDict with splits {splits}; pass one split, e.g. "
                        f"{name}/{next(iter(dataset), 'train')} (or dataset['train'] in memory).")
    return _objects(name, enumerate(dataset, 1))


def write_jsonl(rows: Iterable[dict[str, Any]], path: str | Path) -> Path:
    """Write one JSON object per line, atomically (temp file + rename): readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _json_safe(obj: Any) -> Any:
    """nan and ±inf → None (JSON has no such numbers), recursively through dicts and lists."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    return obj


def write_json(obj: Any, path: str | Path) -> Path:
    """Write JSON atomically (temp file + rename): a reader never sees half a file. nan and inf are written null."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(_json_safe(obj), f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
    return path


class MetricsLog:
    """A run's metrics.jsonl, append-only, one row per line (nan/inf written null); on resume, lines past the
    checkpoint's step are dropped first. `enabled=False` (other ranks) writes nothing."""

    def __init__(self, path: Path, resume_step: int | None = None, enabled: bool = True):
        self.path, self.enabled = path, enabled
        if enabled and resume_step is not None and path.exists():
            kept = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= resume_step]
            path.write_text("".join(line + "\n" for line in kept))
        elif enabled:
            path.write_text("")

    def write(self, **row: Any) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(_json_safe(row)) + "\n")
