"""Annotation tables as users download or export them: CSV / TSV / JSON / JSONL / Parquet rows, each with
where it came from (`file:line`, `file: row N`, `file: item K`) so that every error names its row, and
the cell readers the benchmark loaders share (text, preference label, score, aspect mapping)."""

from __future__ import annotations

import ast
import csv
import json
from pathlib import Path

import pyarrow.parquet as pq


class BenchError(Exception):
    """A one-line, user-facing reason the benchmark cannot be loaded."""


def read_rows(path: Path) -> list[tuple[str, dict]]:
    """(where, row) for each row of a CSV / JSON / JSONL / Parquet file; `where` is `file:line`."""
    if not path.exists():
        raise BenchError(
            f"{path}: no such file; download the benchmark (README: Evaluation) and pass it with --data"
        )
    if path.is_dir():
        raise BenchError(f"{path}: is a folder; pass the annotation file itself with --data")
    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".tsv"):
            return _csv_rows(path, "\t" if suffix == ".tsv" else ",")
        if suffix == ".jsonl":
            return _jsonl_rows(path)
        if suffix == ".json":
            return _json_rows(path)
        if suffix == ".parquet":
            return [(f"{path}: row {i}", row) for i, row in enumerate(pq.read_table(path).to_pylist(), 1)]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise BenchError(f"{path}: cannot read it ({err})") from None
    except ValueError as err:  # pyarrow's ArrowInvalid: not a Parquet file, or a damaged one
        raise BenchError(f"{path}: cannot read it as {suffix[1:]} ({err})") from None
    raise BenchError(f"{path}: unsupported file type {suffix!r}; expected .csv, .json, .jsonl or .parquet")


def _csv_rows(path: Path, delimiter: str) -> list[tuple[str, dict]]:
    with open(path, encoding="utf-8-sig", newline="") as fh:
        reader = csv.DictReader(fh, delimiter=delimiter)
        rows = []
        for row in reader:
            if None in row:  # more cells than header columns
                raise BenchError(f"{path}:{reader.line_num}: more values than the header has columns")
            if None in row.values() and any(v is not None for v in row.values()):  # fewer cells
                raise BenchError(f"{path}:{reader.line_num}: fewer values than the header has columns")
            rows.append((f"{path}:{reader.line_num}", row))
        return rows


def _jsonl_rows(path: Path) -> list[tuple[str, dict]]:
    rows = []
    with open(path, encoding="utf-8-sig") as fh:  # a BOM, as Windows tools write it, is not data
        for lineno, line in enumerate(fh, 1):
            if line.strip():
                rows.append((f"{path}:{lineno}", _decode(line, f"{path}:{lineno}")))
    return rows


def _json_rows(path: Path) -> list[tuple[str, dict]]:
    text = path.read_text(encoding="utf-8-sig")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        if err.msg == "Extra data":  # JSON Lines under a .json name, as `datasets`' to_json writes it
            return _jsonl_rows(path)
        data = _decode(text, str(path))
    if isinstance(data, dict):  # an object of objects, keyed by id (the key becomes the id)
        return [
            (f"{path}: item {k!r}", {"id": k, **v} if isinstance(v, dict) else v) for k, v in data.items()
        ]
    if isinstance(data, list):
        return [(f"{path}: item {i}", row) for i, row in enumerate(data)]
    raise BenchError(f"{path}: expected a JSON list (or object) of records, got {type(data).__name__}")


def _decode(text: str, where: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise BenchError(
            f"{where}: invalid JSON ({err.msg} at line {err.lineno} column {err.colno})"
        ) from None


def blank(v) -> bool:
    """An absent label: None, an empty cell, or NaN (pandas writes missing cells as NaN)."""
    return v is None or (isinstance(v, str) and not v.strip()) or (isinstance(v, float) and v != v)


class Columns:
    """Case-insensitive column lookup over a file's rows, with variants; absent -> a clear error."""

    def __init__(self, path: Path, rows: list[tuple[str, dict]]):
        self.path = path
        for where, row in rows:
            if not isinstance(row, dict):
                raise BenchError(f"{where}: expected an object, got {type(row).__name__}")
        self.keys = {k.lower(): k for _, row in rows for k in row}

    def find(self, *names: str) -> str | None:
        return next((self.keys[n.lower()] for n in names if n.lower() in self.keys), None)

    def need(self, what: str, *names: str) -> str:
        if (col := self.find(*names)) is None:
            found = ", ".join(sorted(self.keys.values())[:20]) or "none"
            raise BenchError(
                f"{self.path}: no {what} column (expected one of {list(names)}; found: {found}); "
                "is this the right file for this --bench?"
            )
        return col


def text_cell(row: dict, col: str, where: str) -> str:
    v = row.get(col)
    if isinstance(v, dict) and "path" in v:  # a `datasets` Video/Image feature exported as {"path": ...}
        v = v["path"]
    if blank(v) or not isinstance(v, str):
        raise BenchError(f"{where}: {col} must be a non-empty string, got {v!r}")
    return v.strip()


def label_cell(row: dict, col: str | None, values: dict[str, str | None], where: str) -> str | None:
    """A preference cell as "A" / "B" / "tie", or None when blank (or mapped to None: not judged)."""
    if col is None or blank(raw := row.get(col)):
        return None
    key = str(raw).strip().lower()
    if key not in values:
        allowed = sorted(values)
        raise BenchError(f"{where}: {col} = {raw!r} is not a known preference (expected one of {allowed})")
    return values[key]


def mapping_cell(value, where: str) -> dict:
    """MJ-Bench's per-aspect labels: a dict (JSON, Parquet), or its text (a CSV export: JSON, or the Python
    repr that `datasets`' to_csv writes); blank: none."""
    if blank(value) or isinstance(value, dict):
        return value or {}
    try:
        parsed = json.loads(value)
    except (TypeError, ValueError):
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parsed = None
    if not isinstance(parsed, dict):
        raise BenchError(
            f"{where}: category_preference {str(value)[:80]!r} is not an aspect -> label mapping"
        )
    return parsed


def score_cell(row: dict, col: str, where: str) -> float | None:
    v = row.get(col)
    if blank(v):
        return None
    try:
        if isinstance(v, bool):  # float(True) is 1.0: a score column holding booleans is the wrong column
            raise TypeError
        x = float(v)
    except (TypeError, ValueError):
        raise BenchError(f"{where}: {col} = {v!r} is not a number") from None
    if x != x or x in (float("inf"), float("-inf")):
        raise BenchError(f"{where}: {col} = {v!r} is not a finite number")
    return x
