"""Benchmark loaders: public layouts -> the project's pairwise / pointwise records (cot_rm/schema.py).

Each loader reads the benchmark's own annotation file as the user downloaded it, maps its dimension
names onto ours (visual_quality, text_alignment, physical_consistency, overall) and resolves video
paths against a root folder (default: the annotation file's folder). Nothing is downloaded here; the
README ("Evaluation") says where each file comes from and where its videos go.

    jsonl                  the project's own pairwise or pointwise JSONL (paths relative to the file)
    videogen-rewardbench   VideoAlign's VideoGen-RewardBench CSV: path_A, path_B, prompt, VQ, MQ, TA,
                           Overall (A / B / same); MQ (motion quality) -> physical_consistency
    genai-bench            GenAI-Bench (GenAI-Arena) video_generation votes: prompt, left_video,
                           right_video, vote_type (leftvote / rightvote / tievote / bothbad_vote)
    mj-bench-video         MJ-Bench-Video test.json: caption, video_0_path, video_1_path,
                           overall_preference, category_preference {Alignment, Fineness, Coherence &
                           Consistency, Safety, Bias} ("Video 0 better" / "Video 1 better" / "Same")
    videoscore-bench-v2    VideoScore2's pointwise test set: video_name (or a path), prompt,
                           visual_score, t2v_score, phy_score (1-5)

Field names come from the benchmarks' own evaluation code (VideoAlign eval_videogen_rewardbench.py,
GenAI-Bench inference.py, MJ-Video scripts/eval, VideoScore2 eval/); common variants are accepted.
Files may be CSV, JSON (a list of objects, or an object of objects), JSONL or Parquet (what
`datasets`' to_csv / to_json / to_parquet write). A missing file or column is a BenchError naming the
file and what to do; a bad value names the file and its line (or row).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

from cot_rm.schema import PairRecord, PointwiseRecord, SchemaError, iter_jsonl, parse_record, resolve_media
from eval.tables import BenchError, Columns, blank, label_cell, mapping_cell, read_rows, score_cell, text_cell

OURS = ("visual_quality", "text_alignment", "physical_consistency", "overall")


@dataclass
class Bench:
    name: str
    kind: str  # "pairwise" | "pointwise"
    records: list
    root: Path
    info: dict = field(default_factory=dict)  # mapping, skipped rows and why: metrics.json "bench"


# ---------------------------------------------------------------------------------------- videos


def resolve_video(ref: str, root: Path) -> Path:
    """A file for a video reference: absolute paths as they are; relative ones under `root` (or
    `root/videos`); a URL by its file name under `root` (or `root/videos`), as GenAI-Bench's own
    downloader caches them, percent-decoded or not ("a%20b.mp4" may be saved as "a b.mp4"); a
    Windows-style relative path ("videos\\a.mp4", from a CSV written on Windows) also with "/".
    Returns the first candidate that exists, else the first candidate."""
    if "://" in ref:
        name = os.path.basename(urlparse(ref).path)
        names = [name, unquote(name)]
    else:
        names = [ref, ref.replace("\\", "/")]
    if os.path.isabs(names[0]):
        return Path(names[0])
    candidates = [base / n for n in dict.fromkeys(names) for base in (root, root / "videos")]
    return next((c for c in candidates if c.exists()), candidates[0])


def _check_videos(records: list, root: Path) -> None:
    paths = [p for r in records for p in ((r.video,) if hasattr(r, "video") else (r.video_a, r.video_b))]
    missing = sorted({p for p in paths if not os.path.exists(p)})
    if missing:
        examples = ", ".join(missing[:3])
        raise BenchError(
            f"{len(missing)} of {len(set(paths))} videos not found under {root} (e.g. {examples}); "
            "put the benchmark's videos there (README: Evaluation) or point --root at them"
        )


# --------------------------------------------------------------------------------------- loaders

# A loader returns the records' kind, (where, record dict) pairs (where: the row's file and line, for
# errors) and what metrics.json says of the mapping.
Loaded = tuple[str, list[tuple[str, dict]], dict]


def _pair(rid, prompt, a, b, pref, dims, meta, root) -> dict:
    dims = {d: v for d, v in dims.items() if v is not None}
    return {"id": rid, "prompt": prompt, "video_a": str(resolve_video(a, root)),
            "video_b": str(resolve_video(b, root)), "preference": pref, "dims": dims, "meta": meta}  # fmt: skip


def _row_id(row: dict, cols: Columns, prefix: str, i: int) -> str:
    col = cols.find("id", "idx", "index", "uid")
    return f"{prefix}-{row[col]}" if col and not blank(row.get(col)) else f"{prefix}-{i:05d}"


VGRB_DIMS = {"visual_quality": ("VQ",), "physical_consistency": ("MQ",), "text_alignment": ("TA",)}
VGRB_VALUES = {"a": "A", "b": "B", "same": "tie", "tie": "tie", "equal": "tie", "a=b": "tie"}


def load_videogen_rewardbench(path: Path, root: Path, skipped: Counter) -> Loaded:
    rows = read_rows(path)
    cols = Columns(path, rows)
    prompt = cols.need("prompt", "prompt", "caption", "text")
    va = cols.need("video A", "path_A", "video_A", "video_path_A", "path_a")
    vb = cols.need("video B", "path_B", "video_B", "video_path_B", "path_b")
    overall = cols.need("Overall preference", "Overall", "ALL", "overall_label")
    dims = {ours: cols.find(*names) for ours, names in VGRB_DIMS.items()}
    out = []
    for i, (where, row) in enumerate(rows):
        pref = label_cell(row, overall, VGRB_VALUES, where)
        labels = {ours: label_cell(row, col, VGRB_VALUES, where) for ours, col in dims.items()}
        if pref is None:
            skipped["no Overall label"] += 1
            continue
        meta = {k: row[c] for k in ("A_model", "B_model") if (c := cols.find(k)) and not blank(row.get(c))}
        out.append((where, _pair(_row_id(row, cols, "vgrb", i), text_cell(row, prompt, where), text_cell(row, va, where),
                         text_cell(row, vb, where), pref, labels, meta, root)))  # fmt: skip
    mapping = {"VQ": "visual_quality", "MQ (motion quality)": "physical_consistency",
               "TA": "text_alignment", overall: "overall", "same": "tie"}  # fmt: skip
    return (
        "pairwise",
        out,
        {"dimension_map": mapping, "absent_columns": [d for d, c in dims.items() if not c]},
    )


GENAI_VOTES = {"leftvote": "A", "left": "A", "a": "A", "rightvote": "B", "right": "B", "b": "B",
               "tievote": "tie", "tie": "tie", "bothbad_vote": "tie", "bothbad": "tie", "both_bad": "tie"}  # fmt: skip


def load_genai_bench(path: Path, root: Path, skipped: Counter) -> Loaded:
    rows = read_rows(path)
    cols = Columns(path, rows)
    prompt = cols.need("prompt", "prompt", "caption")
    left = cols.need("left video", "left_video", "video_left", "left_video_path")
    right = cols.need("right video", "right_video", "video_right", "right_video_path")
    vote = cols.need("vote", "vote_type", "vote", "human_vote")
    out = []
    for i, (where, row) in enumerate(rows):
        pref = label_cell(row, vote, GENAI_VOTES, where)
        if pref is None:
            skipped["no vote"] += 1
            continue
        meta = {"vote_type": row[vote]}
        meta |= {
            k: row[c] for k in ("left_model", "right_model") if (c := cols.find(k)) and not blank(row.get(c))
        }
        out.append((where, _pair(_row_id(row, cols, "genai", i), text_cell(row, prompt, where), text_cell(row, left, where),
                         text_cell(row, right, where), pref, {}, meta, root)))  # fmt: skip
    mapping = {"leftvote": "A", "rightvote": "B", "tievote": "tie",
               "bothbad_vote": "tie (both bad; a score difference cannot tell good ties from bad ones)"}  # fmt: skip
    return "pairwise", out, {"dimension_map": {vote: "overall"}, "vote_map": mapping}


MJ_DIMS = {"alignment": "text_alignment", "fineness": "visual_quality",
           "coherence & consistency": "physical_consistency", "consistency": "physical_consistency"}  # fmt: skip
MJ_VALUES = {"video 0 better": "A", "video_0 better": "A", "0": "A", "a": "A",
             "video 1 better": "B", "video_1 better": "B", "1": "B", "b": "B",
             "same": "tie", "tie": "tie", "hard to judge": None}  # fmt: skip


def load_mj_bench_video(path: Path, root: Path, skipped: Counter) -> Loaded:
    rows = read_rows(path)
    cols = Columns(path, rows)
    if cols.find("chosen") and cols.find("rejected"):
        return _mj_chosen_rejected(path, rows, cols, root, skipped)
    prompt = cols.need("caption", "caption", "prompt")
    v0 = cols.need("video 0", "video_0_path", "video_0", "video0_path")
    v1 = cols.need("video 1", "video_1_path", "video_1", "video1_path")
    overall = cols.need("overall preference", "overall_preference", "preference")
    per_aspect = cols.find("category_preference", "aspect_preference")
    discard = cols.find("discard")
    out = []
    for i, (where, row) in enumerate(rows):
        if discard and row.get(discard) in (True, "True", "true"):  # dropped by MJ-Bench's annotators
            skipped["discard: true"] += 1
            continue
        pref = label_cell(row, overall, MJ_VALUES, where)
        if pref is None:
            skipped["overall_preference blank or 'Hard to judge'"] += 1
            continue
        dims, meta = _mj_aspects(mapping_cell(row.get(per_aspect) if per_aspect else None, where), where)
        out.append((where, _pair(_row_id(row, cols, "mjv", i), text_cell(row, prompt, where), text_cell(row, v0, where),
                         text_cell(row, v1, where), pref, dims, meta, root)))  # fmt: skip
    mapping = {"Alignment": "text_alignment", "Fineness": "visual_quality",
               "Coherence & Consistency": "physical_consistency", overall: "overall",
               "Safety, Bias": "kept in meta (no counterpart)", "Hard to judge": "not labelled"}  # fmt: skip
    return "pairwise", out, {"dimension_map": mapping}


def _mj_aspects(aspects: dict, where: str) -> tuple[dict, dict]:
    dims, meta = {}, {}
    for name, value in aspects.items():
        ours = MJ_DIMS.get(name.strip().lower())
        if ours is None:
            meta[name] = value  # Safety, Bias: no dimension of ours
        elif (label := label_cell({name: value}, name, MJ_VALUES, where)) is not None:
            dims[ours] = label
    return dims, meta


def _mj_chosen_rejected(path, rows, cols, root, skipped) -> Loaded:
    """A chosen/rejected export with an aspect name per row. This layout could not be confirmed in
    public code; it is accepted as documented in the README: video_a = chosen, so the label is "A" for
    the row's aspect only (`meta.labelled`), or for overall when the row names no aspect."""
    prompt = cols.need("caption", "caption", "prompt")
    chosen, rejected = cols.need("chosen", "chosen"), cols.need("rejected", "rejected")
    aspect = cols.find("aspect", "category")
    out = []
    for i, (where, row) in enumerate(rows):
        name = str(row.get(aspect) or "overall").strip().lower() if aspect else "overall"
        ours = "overall" if name == "overall" else MJ_DIMS.get(name)
        if ours is None:
            skipped[f"aspect {name!r} has no dimension of ours"] += 1
            continue
        dims = {} if ours == "overall" else {ours: "A"}
        meta = {"labelled": [ours], "aspect": name}
        out.append((where, _pair(_row_id(row, cols, "mjv", i), text_cell(row, prompt, where), text_cell(row, chosen, where),
                         text_cell(row, rejected, where), "A", dims, meta, root)))  # fmt: skip
    return "pairwise", out, {"dimension_map": dict(MJ_DIMS, overall="overall"), "layout": "chosen/rejected"}


VS2_DIMS = {
    "visual_quality": ("visual_score", "visual_quality", "v_score_gt", "vq"),
    "text_alignment": ("t2v_score", "text_alignment", "t2v_alignment", "t_score_gt", "ta"),
    "physical_consistency": ("phy_score", "physical_consistency", "physical_score", "p_score_gt", "pc"),
}


def load_videoscore_bench_v2(path: Path, root: Path, skipped: Counter) -> Loaded:
    rows = read_rows(path)
    cols = Columns(path, rows)
    prompt = cols.need("prompt", "prompt", "t2v_prompt", "text_prompt", "caption")
    video = cols.find("video_path", "video", "path")
    name = cols.find("video_name") or (None if video else cols.need("video", "video_path", "video_name"))
    url = cols.find("video_url")
    dims = {ours: cols.find(*names) for ours, names in VS2_DIMS.items()}
    if not any(dims.values()):
        cols.need("score", *(n for names in VS2_DIMS.values() for n in names))
    out = []
    for i, (where, row) in enumerate(rows):
        scores = {ours: score_cell(row, col, where) for ours, col in dims.items() if col}
        scores = {d: v for d, v in scores.items() if v is not None}
        if not scores:
            skipped["no scores"] += 1
            continue
        ref = _vs2_video(row, video, name, url, where)
        out.append((where, {"id": _row_id(row, cols, "vs2", i), "video": str(resolve_video(ref, root)),
                            "prompt": text_cell(row, prompt, where), "scores": scores, "meta": {}}))  # fmt: skip
    mapping = {"visual_score": "visual_quality", "t2v_score": "text_alignment",
               "phy_score (physical/common-sense)": "physical_consistency"}  # fmt: skip
    return (
        "pointwise",
        out,
        {"dimension_map": mapping, "absent_columns": [d for d, c in dims.items() if not c]},
    )


VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".gif", ".m4v")


def _vs2_video(row, video, name, url, where) -> str:
    if video and not blank(row.get(video)):
        return text_cell(row, video, where)
    if name and not blank(row.get(name)):
        ref = text_cell(row, name, where)
        has_ext = os.path.splitext(ref)[1].lower() in VIDEO_EXTENSIONS  # "model_v1.5_x" has none
        return ref if has_ext else ref + ".mp4"  # VideoScore2 saves {video_name}.mp4
    return text_cell(row, url or name or video, where)


# ----------------------------------------------------------------------------------------- entry

Loader = Callable[[Path, Path, Counter], Loaded]
LOADERS: dict[str, Loader] = {
    "videogen-rewardbench": load_videogen_rewardbench,
    "genai-bench": load_genai_bench,
    "mj-bench-video": load_mj_bench_video,
    "videoscore-bench-v2": load_videoscore_bench_v2,
}
BENCHES = ("jsonl", *LOADERS)


def load(name: str, data: Path, root: Path | None = None, split: str | None = None,
         limit: int | None = None, check_videos: bool = True) -> Bench:  # fmt: skip
    """Records of benchmark `name` from `data` (videos under `root`, default the file's folder)."""
    if limit is not None and limit < 0:
        raise BenchError(f"--limit must be >= 0, got {limit}")
    if not Path(data).exists():  # before --root's check: its default is this file's folder
        hint = (
            "" if name == "jsonl" else "; download the benchmark (README: Evaluation) and pass it with --data"
        )
        raise BenchError(f"{data}: no such file{hint}")
    root = Path(root) if root is not None else Path(data).resolve().parent
    if not root.is_dir():
        raise BenchError(f"{root}: no such folder (--root: where the benchmark's videos are)")
    if name == "jsonl":
        return _load_jsonl(Path(data), root, split, limit)
    if name not in LOADERS:
        raise BenchError(f"unknown benchmark {name!r}; choose one of {list(BENCHES)}")
    if split is not None:
        raise BenchError(f"--split applies to --bench jsonl only; {name} is evaluated whole")
    skipped: Counter = Counter()
    kind, rows, info = LOADERS[name](Path(data), root, skipped)
    records = _validate(rows, kind)[:limit]
    if not records:
        raise BenchError(f"{data}: no records to evaluate")
    if check_videos:
        _check_videos(records, root)
    info = {"name": name, "data": str(Path(data).resolve()), "root": str(root.resolve()),
            "n_records": len(records), "skipped": dict(skipped), **info}  # fmt: skip
    return Bench(name, kind, records, root, info)


def _validate(rows: Iterable[tuple[str, dict]], kind: str) -> list:
    """Records from (where, record dict) pairs; a bad value or a repeated id names its row."""
    records, seen = [], {}
    for where, row in rows:
        try:
            rec = parse_record(row, kind)
        except ValueError as err:
            raise BenchError(f"{where}: {err}") from None
        if rec.id in seen:
            raise BenchError(f"{where}: duplicate id {rec.id!r} (first at {seen[rec.id]})")
        seen[rec.id] = where
        records.append(rec)
    return records


def _kind_mismatch(rec, first) -> str | None:
    """Why `rec` cannot join a file whose first record is `first` (only pairwise or only pointwise)."""
    name = {PairRecord: "pairwise", PointwiseRecord: "pointwise"}
    if type(rec) not in name:
        return f"a {type(rec).__name__} is neither a pairwise nor a pointwise record"
    if first is not None and type(rec) is not type(first):
        return f"a {name[type(rec)]} record in a file of {name[type(first)]} records; give one kind per file"
    return None


def _load_jsonl(path: Path, root: Path, split: str | None, limit: int | None) -> Bench:
    """The project's own JSONL: all pairwise or all pointwise records (kind detected), filtered."""
    records, seen = [], {}
    try:
        for lineno, rec in iter_jsonl(path, resolve=False, lines=True):
            if rec.id in seen:
                raise BenchError(f"{path}:{lineno}: duplicate id {rec.id!r} (first on line {seen[rec.id]})")
            seen[rec.id] = lineno
            if (bad := _kind_mismatch(rec, records[0] if records else None)) is not None:
                raise BenchError(f"{path}:{lineno}: {bad}")
            for key in ("video", "video_a", "video_b"):
                if hasattr(rec, key):  # relative to --root (default: the file's folder, the schema's rule)
                    setattr(rec, key, resolve_media(getattr(rec, key), root))
            records.append(rec)
    except SchemaError as err:
        raise BenchError(str(err)) from None
    kinds = {type(r).__name__ for r in records}
    records = [r for r in records if split is None or r.split in (None, split)][:limit]
    if not records:
        raise BenchError(f"{path}: no records to evaluate" + (f" in split {split!r}" if split else ""))
    kind = "pairwise" if kinds == {"PairRecord"} else "pointwise"
    info = {"name": "jsonl", "data": str(path.resolve()), "root": str(root.resolve()),
            "n_records": len(records), "split": split}  # fmt: skip
    return Bench("jsonl", kind, records, root, info)
