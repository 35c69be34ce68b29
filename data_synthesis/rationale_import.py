"""Public rationale files (VideoScore2's released chain-of-thought records) as labelled records with
their rationales: what `cot-rm synthesize --teacher import:FILE` reads.

A file is a JSON array or JSON Lines of objects. A field mapping says which field holds what; the
default is VideoScore2's layout (`VIDEOSCORE2`):

    video_name, video_url, prompt, visual_score, t2v_score, phy_score (1-5), *_cmt_raw, thinking

The three scores become visual_quality, text_alignment and physical_consistency, and `overall` is
computed by the toy world's rule (the weakest dimension), as for every label of the synthesis stage.
The rationale is cleaned (`rationale_text`): label lines are cut, and the scores it states are kept for
the consistency filter. Videos are looked up under the video root by name (`NAME`, or `NAME.mp4` when
the name has no video extension), then by the URL's file name.

A malformed record is one `file:line: reason` error and is skipped; the rest of the file is read. A
missing video is counted, not fatal: its record is kept, so the pipeline reports it (`bad_video`) and
a rerun tries it again once the video is there.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import math
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

import yaml

from cot_rm.protocol import JudgeSpec
from cot_rm.schema import SPLITS, PointwiseRecord, SchemaError
from data_synthesis.rationale_text import clean, stated_scores
from data_synthesis.toyworld.world import overall_score

DIMENSIONS = ("visual_quality", "text_alignment", "physical_consistency")
# Our name -> the field that holds it ("" for none). `comments` is a glob over field names.
VIDEOSCORE2 = {
    "id": "",
    "video_name": "video_name",
    "video_url": "video_url",
    "prompt": "prompt",
    "visual_quality": "visual_score",
    "text_alignment": "t2v_score",
    "physical_consistency": "phy_score",
    "overall": "",
    "rationale": "thinking",
    "comments": "*_cmt_raw",
    "split": "",
}
VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".gif", ".m4v")
MAX_LISTED = 50  # malformed records and missing videos listed in the summary (all are counted)


@dataclass
class Rationale:
    text: str  # the critique: the record's rationale, cleaned
    stated: dict[str, list[float]]  # dimension -> the scores the text states for it
    label_lines: int  # lines that had label text cut from them
    unattributed: int  # score statements the text makes that no dimension could be given to


@dataclass
class Imported:
    path: Path
    video_root: Path
    mapping: dict[str, str]
    digest: str  # of the file's bytes: a resumed run must read the same rationales
    records: list[PointwiseRecord] = field(default_factory=list)
    rationales: dict[str, Rationale] = field(default_factory=dict)
    malformed: list[str] = field(default_factory=list)  # "file:line: reason"
    missing: list[str] = field(default_factory=list)  # video paths looked for and not found
    rows: int = 0

    def summary(self) -> dict:
        """The import's counts, for the synthesis summary (`import`)."""
        stated = Counter(d for r in self.rationales.values() for d in r.stated)
        return {
            "file": str(self.path),
            "video_root": str(self.video_root),
            "mapping": self.mapping,
            "rows": self.rows,
            "records": len(self.records),
            "malformed": len(self.malformed),
            "malformed_examples": self.malformed[:MAX_LISTED],
            "missing_videos": len(self.missing),
            "missing_examples": self.missing[:MAX_LISTED],
            "label_lines_stripped": sum(r.label_lines for r in self.rationales.values()),
            "rows_with_label_lines": sum(1 for r in self.rationales.values() if r.label_lines),
            "rows_stating_scores": sum(1 for r in self.rationales.values() if r.stated),
            "stated_scores": {d: stated[d] for d in DIMENSIONS if stated[d]},
            "unattributed_scores": sum(r.unattributed for r in self.rationales.values()),
        }

    def problems(self, most: int = 20) -> list[str]:
        """The malformed records (each `file:line: reason`) and the missing videos, as lines for stderr."""
        lines = [f"{m} (record skipped)" for m in self.malformed[:most]]
        if len(self.malformed) > most:
            lines.append(
                f"... and {len(self.malformed) - most} more malformed records (counted in the summary)"
            )
        if self.missing:
            lines.append(f"{len(self.missing)} of {len(self.records)} videos not found under {self.video_root} "
                         f"(e.g. {', '.join(self.missing[:3])}); their records are counted as bad_video, and a "
                         "rerun tries them again once the videos are there")  # fmt: skip
        return lines


# ------------------------------------------------------------------------------------------- mapping


def mapping_from(pairs: Sequence[str] = (), file: str | None = None) -> dict[str, str]:
    """VideoScore2's mapping, overridden by a mapping file (YAML or JSON: `key: field`) and then by
    `key=field` pairs (`key=` maps nothing to that key)."""
    mapping = dict(VIDEOSCORE2)
    if file:
        try:
            loaded = yaml.safe_load(Path(file).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as err:
            raise ValueError(f"{file}: cannot read the field mapping ({err})") from None
        if not isinstance(loaded, dict):
            raise ValueError(f"{file}: a field mapping is an object of key: field")
        mapping.update(_checked(loaded, file))
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq:
            raise ValueError(f"--map {pair!r}: expected KEY=FIELD, e.g. --map rationale=cot")
        mapping.update(_checked({key.strip(): value.strip()}, "--map"))
    if not mapping["video_name"] and not mapping["video_url"]:
        raise ValueError("the field mapping names no video field: map video_name or video_url")
    if not mapping["prompt"] or not mapping["rationale"] or not any(mapping[d] for d in DIMENSIONS):
        raise ValueError(
            "the field mapping needs prompt, rationale and at least one of " + ", ".join(DIMENSIONS)
        )
    return mapping


def _checked(items: dict, where: str) -> dict[str, str]:
    unknown = sorted(set(items) - set(VIDEOSCORE2))
    if unknown:
        raise ValueError(
            f"{where}: unknown mapping key {unknown[0]!r}; the keys are {', '.join(VIDEOSCORE2)}"
        )
    return {k: "" if v is None else str(v) for k, v in items.items()}


def _get(obj: dict, path: str):
    """The value at a dotted field path ("labels.visual"), or None."""
    for part in path.split("."):
        if not isinstance(obj, dict) or part not in obj:
            return None
        obj = obj[part]
    return obj


# --------------------------------------------------------------------------------------------- rows


def read_import(path: str | os.PathLike, video_root: str | os.PathLike | None = None,
                mapping: dict[str, str] | None = None, spec: JudgeSpec = JudgeSpec()) -> Imported:  # fmt: skip
    """Every record of an import file that can be used; the others listed as malformed."""
    path = Path(path)
    if not path.is_file():
        raise SchemaError(
            f"{path}: no such file" if not path.exists() else f"{path}: is a folder, not a file"
        )
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")  # a BOM, as Windows tools write it, is not data
    except UnicodeDecodeError as err:
        raise SchemaError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    root = Path(video_root) if video_root is not None else path.resolve().parent
    if not root.is_dir():
        raise SchemaError(f"{root}: no such folder (--video-root: where the records' videos are)")
    out = Imported(path, root, mapping or dict(VIDEOSCORE2), hashlib.sha256(raw).hexdigest()[:16])
    seen: dict[str, str] = {}
    for where, obj in _rows(path, text):
        out.rows += 1
        try:
            rec, rationale = _record(obj, where, out.mapping, root, spec)
            if rec.id in seen:
                raise ValueError(f"duplicate id {rec.id!r} (first at {seen[rec.id]}); map a unique field "
                                 "with --map id=FIELD")  # fmt: skip
        except ValueError as err:
            out.malformed.append(f"{where}: {err}")
            continue
        seen[rec.id] = where
        out.records.append(rec)
        out.rationales[rec.id] = rationale
        if not os.path.exists(rec.video):
            out.missing.append(rec.video)
    return out


def _rows(path: Path, text: str) -> Iterator[tuple[str, object]]:
    """(where, decoded object or the ValueError that stands for it) per record of the file."""
    if text.lstrip().startswith("["):
        yield from _array_rows(path, text)
        return
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            yield f"{path}:{lineno}", json.loads(line)
        except json.JSONDecodeError as err:
            yield f"{path}:{lineno}", ValueError(f"invalid JSON ({err.msg} at column {err.colno})")


def _array_rows(path: Path, text: str) -> Iterator[tuple[str, object]]:
    """The items of a JSON array one by one, each with its line, so a bad item costs only itself."""
    decoder, i, item = json.JSONDecoder(), _skip_space(text, text.index("[") + 1), 0
    while i < len(text) and text[i] != "]":
        where = f"{path}:{text.count(chr(10), 0, i) + 1} (item {item})"
        try:
            obj, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError as err:
            end = _value_end(text, i)
            if end is None:  # no way to tell where the item ends: the rest cannot be read
                raise SchemaError(f"{path}:{err.lineno}: invalid JSON ({err.msg} at column {err.colno}); "
                                  f"item {item} and those after it cannot be read: fix the file") from None  # fmt: skip
            obj = ValueError(f"invalid JSON ({err.msg} at line {err.lineno} column {err.colno})")
        yield where, obj
        item, i = item + 1, _skip_space(text, end)
        if i < len(text) and text[i] == ",":
            i = _skip_space(text, i + 1)
        elif i < len(text) and text[i] != "]":
            line = text.count("\n", 0, i) + 1
            raise SchemaError(f"{path}:{line}: expected ',' or ']' after item {item - 1}; fix the file")
    if i >= len(text) or text[i + 1 :].strip():
        raise SchemaError(f"{path}: the JSON array is not closed by ']' at its end; fix the file")


def _skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    return i


def _value_end(text: str, i: int) -> int | None:
    """Where the bracketed value that starts at `i` ends (brackets counted outside strings), or None."""
    if i >= len(text) or text[i] not in "{[":
        return None
    depth, in_string, escaped = 0, False, False
    for j in range(i, len(text)):
        c = text[j]
        if in_string:  # inside a string only an unescaped quote matters
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in "{[":
            depth += 1
        elif c in "}]":
            depth -= 1
            if depth == 0:
                return j + 1
    return None


# ------------------------------------------------------------------------------------------ records


def _record(obj, where: str, mapping: dict, root: Path, spec: JudgeSpec) -> tuple[PointwiseRecord, Rationale]:
    """One row as a labelled record and its rationale; ValueError(reason) when it cannot be used."""
    if isinstance(obj, ValueError):
        raise obj
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    name, url = _text(obj, mapping["video_name"], blank=True), _text(obj, mapping["video_url"], blank=True)
    if not name and not url:
        fields = " or ".join(repr(mapping[k]) for k in ("video_name", "video_url") if mapping[k])
        raise ValueError(f"no video: {fields} is missing or empty")
    prompt = _text(obj, mapping["prompt"])
    scores = _scores(obj, mapping, spec)
    text, cut = clean(_text(obj, mapping["rationale"]))
    if not text:
        raise ValueError(f"{mapping['rationale']!r} holds no rationale once label lines are cut")
    stated = stated_scores(text, spec.score_min, spec.score_max)
    video = find_video(name, url, root)
    comments = {
        k: v for k, v in obj.items() if mapping["comments"] and fnmatch.fnmatch(k, mapping["comments"])
    }
    meta = {"import": {"source": where, "video_name": name, "video_url": url, "comments": comments}}
    rid = _text(obj, mapping["id"]) if mapping["id"] else _stem(name or urlparse(url).path)
    rec = PointwiseRecord(rid, str(video), prompt, scores, meta, _split(obj, mapping["split"]))
    return rec, Rationale(text, stated.scores, cut, stated.unattributed)


def _text(obj: dict, key: str, blank: bool = False) -> str:
    value = _get(obj, key) if key else None
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # numeric ids and names
    if value is None:
        if blank:
            return ""
        raise ValueError(f"{key!r} is missing")
    if not isinstance(value, str) or not (value.strip() or blank):
        raise ValueError(f"{key!r} must be a non-empty string, got {value!r}")
    return value.strip()


def _scores(obj: dict, mapping: dict, spec: JudgeSpec) -> dict[str, float]:
    scores = {}
    for dim in (*DIMENSIONS, "overall"):
        if not mapping[dim]:
            continue
        value = _get(obj, mapping[dim])
        if isinstance(value, str):  # "3", as CSV-born files write numbers
            try:
                value = float(value) if value.strip() else None
            except ValueError:
                pass
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        if value is None:
            raise ValueError(f"{mapping[dim]!r} (the {dim} label) is missing")
        if problem := spec.label_problem(dim, value):
            raise ValueError(f"{mapping[dim]!r}: {problem}")
        scores[dim] = value
    if "overall" not in scores:
        scores["overall"] = overall_score(scores)
    return scores


def _split(obj: dict, key: str) -> str | None:
    if not key or _get(obj, key) in (None, ""):
        return None
    value = _get(obj, key)
    if value not in SPLITS:
        raise ValueError(f"{key!r} must be one of {SPLITS}, got {value!r}")
    return value


def _stem(name: str) -> str:
    base = os.path.basename(unquote(name).replace("\\", "/"))
    stem, ext = os.path.splitext(base)
    return stem if ext.lower() in VIDEO_EXTENSIONS else base


def find_video(name: str, url: str, root: Path) -> Path:
    """The record's video under `root`: by name (`NAME`, `NAME.mp4` when it has no video extension),
    then by the URL's file name (as saved, or percent-decoded). The first candidate when none exists."""
    candidates = []
    if name:
        has_ext = os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS  # "model_v1.5_x" has none
        candidates += (
            [root / name] if has_ext else [root / f"{name}.mp4", root / name]
        )  # an absolute name stays
    if url:
        base = os.path.basename(urlparse(url).path)
        candidates += [root / base, root / unquote(base)] if base else []
    found = next((c for c in candidates if c.is_file()), candidates[0])
    return Path(os.path.abspath(found))
