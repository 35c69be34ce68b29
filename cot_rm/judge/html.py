"""The HTML critique: one self-contained page for a set of Judgments, one section per video.

Per video: a strip of the frames the model saw (index and time under each), the critique sentence by
sentence with every frame a sentence cites shown beside it (`protocol.cited_frames`, the one parser),
head and answer scores per dimension as bars (± the head's predicted std, `scores_std`, and the spread of
the draws when sampled), the answer's probabilities over the scale (`answer_probs`) as a small histogram
with their expectation, and the tool trace (each select_frames call with the frames it returned, or its
error).

Self-contained on purpose: images are JPEG data URIs and the style is inline, so the page can be mailed
or attached to a run as one file; no JavaScript at all, and a Content-Security-Policy that forbids it,
because every piece of model text on it is untrusted (and escaped: the Jinja2 template
`templates/critique.html.jinja` autoescapes).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape

from cot_rm.media.images import image_data_url
from cot_rm.media.video import Sampling, VideoError, probe, read_frames_at, sample_indices
from cot_rm.protocol import JudgeSpec, cited_frames

DISPLAY_PIXELS = 320 * 240  # frames are decoded once at this budget and shown at CSS sizes
MAX_CITED_SHOWN = 16  # images beside one sentence ("frames 0-500" would otherwise embed 500)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

# Autoescaped (every piece of model text, prompt and path on the page is untrusted), whitespace trimmed.
TEMPLATE = Environment(
    loader=PackageLoader("cot_rm.judge", "templates"), autoescape=select_autoescape(["jinja"]),
    trim_blocks=True, lstrip_blocks=True,
).get_template("critique.html.jinja")  # fmt: skip

_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;background:#f3f3f0;color:#222}
h1{font-size:20px;margin:16px}
section.video{background:#fff;margin:16px;padding:12px 16px;border-radius:8px;box-shadow:0 1px 3px #0002}
h2{font-size:17px;margin:4px 0 8px;word-break:break-all}
h3{font-size:14px;margin:14px 0 6px;color:#555;text-transform:uppercase;letter-spacing:.04em}
.meta{color:#666;font-size:12px}
.prompt{font-style:italic}
.strip{display:flex;gap:4px;flex-wrap:wrap}
figure{margin:0;text-align:center;font-size:11px;color:#444}
figure img{display:block;border:1px solid #ccc}
.strip img{height:84px}
.sent{display:grid;grid-template-columns:minmax(0,1fr) auto;gap:12px;padding:6px 0;border-top:1px solid #eee}
.sent p{margin:0;line-height:1.45}
.cites{display:flex;gap:4px;flex-wrap:wrap;justify-content:flex-end}
.cites img{height:112px}
.trace img{height:72px}
.err{color:#a11;font-weight:600}
.missing{font-size:11px;color:#a11;border:1px dashed #a11;padding:4px;align-self:center}
pre{white-space:pre-wrap;background:#f7f7f7;padding:8px;border-radius:4px}
table.scores td,table.scores th{padding:2px 8px;font-size:13px;vertical-align:middle;text-align:left}
.bar{position:relative;background:#e8e8e8;height:12px;width:240px;border-radius:2px}
.bar span{position:absolute;left:0;top:0;height:100%;background:#3a8f5c;border-radius:2px}
.bar.answer span{background:#3a6a9f}
.bar i{position:absolute;top:-3px;height:18px;border-left:2px solid #222;border-right:2px solid #222}
.hist{display:flex;align-items:flex-end;gap:2px;height:22px}
.hist span{display:flex;flex-direction:column;justify-content:flex-end;width:14px;height:100%;font-size:9px;text-align:center;color:#555}
.hist b{display:block;background:#3a6a9f;min-height:1px}
ol.trace li{margin-bottom:6px}
.calls{display:flex;gap:4px;flex-wrap:wrap;margin-top:2px}
table.draws td,table.draws th{padding:2px 6px;font-size:12px;border-bottom:1px solid #eee}
"""


def split_sentences(text: str) -> list[str]:
    """Sentences (and lines) of a critique, for showing each one beside the frames it cites."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def build_report(
    entries: Sequence[tuple[dict, str, str]],
    sampling: Sampling = Sampling(),
    spec: JudgeSpec = JudgeSpec(),
    title: str = "cot-rm judgments",
) -> str:
    """The page for (Judgment, video path, prompt) entries; `sampling` is the checkpoint's, so the
    strip shows exactly the frames the model was shown."""
    videos = [_video(j, path, prompt, sampling, spec) for j, path, prompt in entries]
    return TEMPLATE.render(title=title, csp=_CSP, style=_STYLE, videos=videos, dims=spec.dimensions) + "\n"


def write_report(
    path: str | os.PathLike, entries: Sequence[tuple[dict, str, str]], sampling: Sampling, spec: JudgeSpec
) -> Path:
    """Write `build_report` to `path` atomically (a reader never sees half a page)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(build_report(entries, sampling, spec), encoding="utf-8")
    os.replace(tmp, path)
    return path


# ------------------------------------------------------------------ what the template shows, per video


def _video(j: dict, path: str, prompt: str, sampling: Sampling, spec: JudgeSpec) -> dict:
    v = {"id": j.get("id") or path, "path": path, "prompt": prompt, "model": _text(j.get("model")),
         "protocol": _text(j.get("protocol_version")), "parse_error": j.get("parse_error"),
         "unreadable": j.get("scores") is None}  # fmt: skip
    if v["unreadable"]:  # the video could not be read: nothing else to show
        return v
    frames = _Frames(path, sampling, _wanted(j))
    return {
        **v,
        "frames_error": frames.error,
        "strip": [frames.figure(i) for i in frames.sampled],
        "rationale": j.get("rationale") or "",
        "sentences": [_sentence(s, frames) for s in split_sentences(j.get("rationale") or "")],
        "scores": [_score_row(j, d, spec) for d in spec.dimensions],
        "calls": [_call(c, frames) for c in j.get("tool_calls") or []],
        "samples": _samples(j["samples"], spec) if "samples" in j else None,
    }


def _wanted(j: dict) -> set[int]:
    """Frames the page shows besides the sampled strip: cited ones and those the tool returned."""
    wanted = set()
    if j.get("parse_error") is None:
        for sentence in split_sentences(j.get("rationale") or ""):
            wanted.update(cited_frames(sentence)[:MAX_CITED_SHOWN])
    for call in j.get("tool_calls") or []:
        if call.get("error") is None:
            wanted.update(call.get("frames") or [])
    return wanted


class _Frames:
    """The video's frames the page needs, decoded once, as data URIs with their times."""

    def __init__(self, path: str, sampling: Sampling, wanted: set[int]):
        self.sampled: list[int] = []
        self.uris: dict[int, str] = {}
        self.fps, self.total, self.error = 1.0, 0, None
        try:
            info = probe(path)
            self.fps, self.total = info["fps"], info["total_frames"]
            self.sampled = sorted(set(sample_indices(self.total, self.fps, sampling)))
            need = sorted({i for i in wanted if 0 <= i < self.total} | set(self.sampled))
            pics = read_frames_at(path, need, DISPLAY_PIXELS, sampling.family)
        except VideoError as err:  # judged earlier but unreadable now (moved, truncated): say so
            self.error = str(err)
            return
        self.uris = {i: image_data_url(p, "JPEG") for i, p in zip(need, pics, strict=True)}

    def figure(self, i: int) -> dict:
        if i not in self.uris:
            return {
                "index": i,
                "why": f"not in this video (0–{self.total - 1})" if self.total else "not decoded",
            }
        return {"index": i, "uri": self.uris[i], "caption": f"frame {i} · {i / self.fps:.2f} s"}


def _sentence(text: str, frames: _Frames) -> dict:
    cited = cited_frames(text)
    return {"text": text, "cites": cited, "figures": [frames.figure(i) for i in cited[:MAX_CITED_SHOWN]],
            "more": max(0, len(cited) - MAX_CITED_SHOWN)}  # fmt: skip


def _score_row(j: dict, dim: str, spec: JudgeSpec) -> dict:
    spread = j.get("samples") or {}
    bars = {}
    for key, name in (("scores", "head"), ("answer_scores", "answer")):
        value = (j.get(key) or {}).get(dim)
        drawn = (spread.get(f"{key}_std") or {}).get(dim)
        predicted = (j.get("scores_std") or {}).get(dim) if key == "scores" else None
        bars[name] = None if value is None else _bar(value, drawn, spec, predicted)
    return {"dim": dim, **bars, "probs": _probs((j.get("answer_probs") or {}).get(dim))}


def _bar(value: float, spread: float | None, spec: JudgeSpec, std: float | None = None) -> dict:
    """A score as a bar: its length in percent of the scale and a ± whisker: the head's predicted std
    (`scores_std`) when it has one, else the draws' spread when sampled; the label gives both."""
    span = spec.score_max - spec.score_min

    def pct(x: float) -> float:
        return max(0.0, min(100.0, 100 * (x - spec.score_min) / span))

    label = (
        f"{value:.2f}" + (f" ± {std:.2f} (head std)" if std else "") + (f" ± {spread:.2f}" if spread else "")
    )
    width = std or spread
    if not width:
        return {"pct": pct(value), "whisker": None, "label": label}
    lo, hi = pct(value - width), pct(value + width)
    return {"pct": pct(value), "whisker": (lo, hi - lo), "label": label}


def _probs(entry: dict | None) -> dict | None:
    """The answer's probabilities over the scale as histogram columns, and their expectation."""
    if not entry:
        return None
    cols = [{"score": k, "pct": 100 * p, "title": f"P({k}) = {p:.3f}"} for k, p in entry["probs"].items()]
    return {"cols": cols, "label": f"E {entry['expected']:.2f}"}


def _call(call: dict, frames: _Frames) -> dict:
    # A malformed call shows what the model wrote; a valid one, the frames it returned.
    asked = call.get("request") or f"select_frames([{', '.join(map(str, call.get('frames') or []))}])"
    figures = [] if call.get("error") is not None else [frames.figure(i) for i in call["frames"]]
    return {"asked": asked, "error": call.get("error"), "figures": figures}


def _samples(samples: dict, spec: JudgeSpec) -> dict:
    draws = []
    for draw in samples.get("judgments") or []:
        scores = draw.get("scores") or {}
        status = "parsed" if draw.get("parse_error") is None else f"parse error: {draw['parse_error']}"
        draws.append({"scores": [_fmt(scores.get(d)) for d in spec.dimensions], "status": status})
    keys = ("k", "temperature", "seed", "n_parsed", "shown")
    return {**{k: _text(samples.get(k)) for k in keys}, "draws": draws}


# ------------------------------------------------------------------------------------------ helpers


def _text(x) -> str:
    return "" if x is None else str(x)


def _fmt(x) -> str:
    return "—" if x is None else f"{x:.2f}"
