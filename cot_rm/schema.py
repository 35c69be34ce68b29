"""The data records (README, Data formats), validated on load and written atomically.

    pointwise  {"id", "video", "prompt", "scores": {dim: number}, "meta": {...}}
    pairwise   {"id", "prompt", "video_a", "video_b", "preference": "A"|"B"|"tie",
                "dims": {dim: "A"|"B"|"tie"}, "meta": {...}}   (+ "prompt_b" when the prompts differ)
    judgment   {"id", "scores", "answer_scores", "rationale", "frames_cited", "tool_calls",
                "parse_error", "model", "protocol_version"}   (+ "scores_std", "answer_probs")

Every record may carry "split" (train/val/test). Video paths are relative to the JSONL file unless
absolute (or a URL); loaders resolve them. A bad line is an error naming `file:line` and the reason:
nothing is skipped silently.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PREFERENCES = ("A", "B", "tie")
SPLITS = ("train", "val", "test")


class SchemaError(ValueError):
    """One or more bad records; the message lists each as `file:line: reason`."""


@dataclass
class PointwiseRecord:
    id: str
    video: str
    prompt: str
    scores: dict[str, float]
    meta: dict = field(default_factory=dict)
    split: str | None = None


@dataclass
class PairRecord:
    id: str
    prompt: str
    video_a: str
    video_b: str
    preference: str
    dims: dict[str, str] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    prompt_b: str | None = None
    split: str | None = None


@dataclass
class JudgmentRecord:
    id: str
    scores: dict[str, float] | None
    answer_scores: dict[str, float] | None
    rationale: str
    frames_cited: list[int]
    tool_calls: list[dict]
    parse_error: str | None
    model: str
    protocol_version: str
    scores_std: dict[str, float] | None = None  # an uncertainty head's std, on the scale of `scores`
    answer_probs: dict[str, dict | None] | None = None  # per dimension {"probs": {score: p}, "expected"}


Record = PointwiseRecord | PairRecord | JudgmentRecord
_KINDS = {"pointwise": PointwiseRecord, "pairwise": PairRecord, "judgment": JudgmentRecord}
_REQUIRED = {
    "pointwise": ("id", "video", "prompt", "scores"),
    "pairwise": ("id", "prompt", "video_a", "video_b", "preference"),
    "judgment": (
        "id",
        "scores",
        "answer_scores",
        "rationale",
        "frames_cited",
        "tool_calls",
        "parse_error",
        "model",
        "protocol_version",
    ),
}


def detect_kind(obj: dict) -> str:
    if "video_a" in obj or "video_b" in obj:
        return "pairwise"
    if "answer_scores" in obj or "protocol_version" in obj:
        return "judgment"
    return "pointwise"


def parse_record(obj: Any, kind: str = "auto", base_dir: Path | None = None) -> Record:
    """Validate one decoded JSON object; raise ValueError(reason) when it breaks the schema."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    kind = detect_kind(obj) if kind == "auto" else kind
    if kind not in _KINDS:
        raise ValueError(f"unknown record kind {kind!r}; expected one of {list(_KINDS)}")
    cls = _KINDS[kind]
    allowed = set(cls.__dataclass_fields__)
    missing = [k for k in _REQUIRED[kind] if k not in obj]
    if missing:
        raise ValueError(f"missing key {missing[0]!r} for a {kind} record")
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} for a {kind} record (allowed: {sorted(allowed)})")
    rec = cls(**obj)
    _CHECKS[kind](rec)
    if getattr(rec, "split", None) not in (None, *SPLITS):
        raise ValueError(f"split must be one of {SPLITS}, got {rec.split!r}")
    if base_dir is not None:
        for key in ("video", "video_a", "video_b"):
            if hasattr(rec, key):
                setattr(rec, key, resolve_media(getattr(rec, key), base_dir))
    return rec


def resolve_media(ref: str, base_dir: Path) -> str:
    """A path relative to the data file becomes absolute; absolute paths and URLs stay as they are."""
    if "://" in ref or os.path.isabs(ref):
        return ref
    return os.path.normpath(os.path.join(base_dir, ref))


def _text(value: Any, name: str, allow_empty: bool = False) -> None:
    if not isinstance(value, str) or (not allow_empty and not value.strip()):
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")


def _scores(value: Any, name: str) -> None:
    if not isinstance(value, dict) or not value:
        raise ValueError(f"{name} must be a non-empty object of dimension -> number, got {value!r}")
    for dim, v in value.items():
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise ValueError(f"{name}[{dim!r}] must be a finite number, got {v!r}")


def _meta(value: Any) -> None:
    if not isinstance(value, dict):
        raise ValueError(f"meta must be an object, got {type(value).__name__}")


def _check_pointwise(r: PointwiseRecord) -> None:
    _text(r.id, "id")
    _text(r.video, "video")
    _text(r.prompt, "prompt")
    _scores(r.scores, "scores")
    _meta(r.meta)


def _check_pair(r: PairRecord) -> None:
    _text(r.id, "id")
    _text(r.prompt, "prompt")
    _text(r.video_a, "video_a")
    _text(r.video_b, "video_b")
    if r.prompt_b is not None:
        _text(r.prompt_b, "prompt_b")
    if r.preference not in PREFERENCES:
        raise ValueError(f"preference must be one of {PREFERENCES}, got {r.preference!r}")
    if not isinstance(r.dims, dict):
        raise ValueError(f"dims must be an object of dimension -> A|B|tie, got {r.dims!r}")
    for dim, v in r.dims.items():
        if v not in PREFERENCES:
            raise ValueError(f"dims[{dim!r}] must be one of {PREFERENCES}, got {v!r}")
    if r.dims.get("overall", r.preference) != r.preference:
        raise ValueError(
            f"dims['overall'] is {r.dims['overall']!r} but preference is {r.preference!r}: "
            "preference is the overall label, give it once or make them agree"
        )
    _meta(r.meta)


def _check_judgment(r: JudgmentRecord) -> None:
    _text(r.id, "id")
    for name in ("scores", "answer_scores"):
        if getattr(r, name) is not None:
            _scores(getattr(r, name), name)
    _text(r.rationale, "rationale", allow_empty=True)
    if not isinstance(r.frames_cited, list) or any(
        isinstance(f, bool) or not isinstance(f, int) for f in r.frames_cited
    ):
        raise ValueError(f"frames_cited must be a list of integers, got {r.frames_cited!r}")
    if not isinstance(r.tool_calls, list):
        raise ValueError(f"tool_calls must be a list, got {r.tool_calls!r}")
    if r.parse_error is not None:
        _text(r.parse_error, "parse_error")
    _text(r.model, "model")
    _text(r.protocol_version, "protocol_version")
    if r.answer_scores is None and r.parse_error is None:
        raise ValueError("answer_scores is null but parse_error is null too: say why it did not parse")
    if r.scores_std is not None:
        _scores(r.scores_std, "scores_std")
    if r.answer_probs is not None and not isinstance(r.answer_probs, dict):
        raise ValueError(
            f"answer_probs must be null or an object of dimension -> probabilities, got {r.answer_probs!r}"
        )
    for dim, entry in (r.answer_probs or {}).items():
        _answer_probs(entry, f"answer_probs[{dim!r}]")


def _answer_probs(entry: Any, name: str) -> None:
    if entry is None:
        return
    if not isinstance(entry, dict) or set(entry) != {"probs", "expected"}:
        raise ValueError(f'{name} must be null or {{"probs": {{score: p}}, "expected": x}}, got {entry!r}')
    _scores(entry["probs"], f"{name}['probs']")
    if abs(sum(entry["probs"].values()) - 1.0) > 1e-6:
        raise ValueError(f"{name}['probs'] must sum to 1, got {sum(entry['probs'].values())}")


_CHECKS = {"pointwise": _check_pointwise, "pairwise": _check_pair, "judgment": _check_judgment}


def iter_jsonl(
    path: str | os.PathLike, kind: str = "auto", resolve: bool = True, lines: bool = False
) -> Iterator:
    """Records of a JSONL file one by one (with `lines`, (line number, record) pairs); raises SchemaError
    at the first bad line (`file:line: reason`)."""
    path = Path(path)
    base = path.resolve().parent if resolve else None
    with _open(path) as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue  # blank lines (a trailing newline) carry no record
            try:
                rec = parse_record(_decode(line), kind, base)
            except ValueError as err:
                raise SchemaError(f"{path}:{lineno}: {err}") from None
            yield (lineno, rec) if lines else rec


def read_jsonl(path: str | os.PathLike, kind: str = "auto", resolve: bool = True) -> list[Record]:
    """All records of a JSONL file; every bad line is reported (up to 20 listed), none skipped."""
    path = Path(path)
    base = path.resolve().parent if resolve else None
    records, errors, seen = [], [], {}
    with _open(path) as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = parse_record(_decode(line), kind, base)
            except ValueError as err:
                errors.append(f"{path}:{lineno}: {err}")
                continue
            if rec.id in seen:
                errors.append(f"{path}:{lineno}: duplicate id {rec.id!r} (first on line {seen[rec.id]})")
                continue
            seen[rec.id] = lineno
            records.append(rec)
    if errors:
        more = f"\n... and {len(errors) - 20} more" if len(errors) > 20 else ""
        raise SchemaError(f"{len(errors)} bad line(s):\n" + "\n".join(errors[:20]) + more)
    return records


def _open(path: Path):
    if not path.exists():
        raise SchemaError(f"{path}: no such file")
    if path.is_dir():
        raise SchemaError(f"{path}: is a directory, expected a JSONL file")
    return open(path, encoding="utf-8")


def _decode(line: str) -> Any:
    try:
        return json.loads(line.rstrip("\r\n"))  # so a missing brace is reported at the line's end
    except json.JSONDecodeError as err:
        raise ValueError(f"invalid JSON ({err.msg} at column {err.colno})") from None


def to_dict(record: Record) -> dict:
    """The record as JSON-ready dict; optional keys that are unset are left out."""
    d = asdict(record)
    for key in ("split", "prompt_b"):
        if key in d and d[key] is None:
            del d[key]
    return d


def write_jsonl(path: str | os.PathLike, records: Iterable[Record | dict]) -> int:
    """Write records atomically (temp file + rename): readers never see half a file. Returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    n = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for rec in records:
                obj = rec if isinstance(rec, dict) else to_dict(rec)
                fh.write(json.dumps(obj, ensure_ascii=False) + "\n")
                n += 1
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the mode open() would
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return n


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it; put it straight back
    os.umask(mask)
    return mask
