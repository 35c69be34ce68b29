"""The HTML critique: one self-contained page for a set of Judgments, one section per video.

Per video: a strip of the frames the model saw (index and time under each), the critique sentence by
sentence with every frame a sentence cites shown beside it (`protocol.cited_frames`, the one parser),
head and answer scores per dimension as bars (mean and std when sampled), and the tool trace (each
select_frames call with the frames it returned, or its error).

Self-contained on purpose: images are JPEG data URIs and the style is inline, so the page can be mailed
or attached to a run as one file; no JavaScript at all, and a Content-Security-Policy that forbids it,
because every piece of model text on it is untrusted (and escaped).
"""

from __future__ import annotations

import base64
import html
import io
import os
import re
from collections.abc import Sequence
from pathlib import Path

from cot_rm.protocol import JudgeSpec, cited_frames
from cot_rm.video import Sampling, VideoError, probe, read_frames_at, sample_indices

DISPLAY_PIXELS = 320 * 240  # frames are decoded once at this budget and shown at CSS sizes
MAX_CITED_SHOWN = 16  # images beside one sentence ("frames 0-500" would otherwise embed 500)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

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
    body = "\n".join(_section(j, path, prompt, sampling, spec) for j, path, prompt in entries)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head>\n"
        f"<body><h1>{_e(title)}</h1>\n{body}\n</body></html>\n"
    )


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


# ----------------------------------------------------------------------------------------- sections


def _section(j: dict, path: str, prompt: str, sampling: Sampling, spec: JudgeSpec) -> str:
    head = (
        f"<h2>{_e(j.get('id') or path)}</h2>"
        f'<div class="meta">{_e(path)}<br>prompt: <span class="prompt">{_e(prompt)}</span><br>'
        f"model: {_e(j.get('model'))} · protocol {_e(j.get('protocol_version'))}</div>"
    )
    if j.get("scores") is None:  # the video could not be read: nothing else to show
        return f'<section class="video">{head}<p class="err">{_e(j.get("parse_error"))}</p></section>'
    frames = _Frames(path, sampling, _wanted(j))
    parts = [
        head,
        "<h3>Frames the model saw</h3>" + _strip(frames),
        "<h3>Critique</h3>" + _critique(j, frames),
        "<h3>Scores</h3>" + _scores(j, spec),
        "<h3>Tool trace</h3>" + _trace(j, frames),
    ]
    if "samples" in j:
        parts.append("<h3>Sampled draws</h3>" + _draws(j["samples"], spec))
    return f'<section class="video">{"".join(parts)}</section>'


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
            self.sampled = sample_indices(self.total, self.fps, sampling)
            need = sorted({i for i in wanted if 0 <= i < self.total} | set(self.sampled))
            pics = read_frames_at(path, need, DISPLAY_PIXELS, sampling.family)
        except VideoError as err:  # judged earlier but unreadable now (moved, truncated): say so
            self.error = str(err)
            return
        self.uris = {i: _data_uri(p) for i, p in zip(need, pics, strict=True)}

    def figure(self, i: int) -> str:
        if i not in self.uris:
            why = f"not in this video (0–{self.total - 1})" if self.total else "not decoded"
            return f'<span class="missing">frame {i}: {why}</span>'
        caption = f"frame {i} · {i / self.fps:.2f} s"
        return (
            f'<figure><img src="{self.uris[i]}" alt="{caption}" data-frame="{i}">'
            f"<figcaption>{caption}</figcaption></figure>"
        )


def _strip(frames: _Frames) -> str:
    if frames.error:
        return f'<p class="err">frames unavailable: {_e(frames.error)}</p>'
    return '<div class="strip">' + "".join(frames.figure(i) for i in frames.sampled) + "</div>"


def _critique(j: dict, frames: _Frames) -> str:
    if j.get("parse_error") is not None:  # show what the model wrote, as text: it is not a critique
        return (
            f'<p class="err">The output did not parse: {_e(j["parse_error"])}. Only the head scored it.</p>'
            f"<pre>{_e(j.get('rationale') or '')}</pre>"
        )
    rows = []
    for sentence in split_sentences(j.get("rationale") or ""):
        cited = cited_frames(sentence)
        pics = "".join(frames.figure(i) for i in cited[:MAX_CITED_SHOWN])
        if len(cited) > MAX_CITED_SHOWN:
            pics += f'<span class="missing">+{len(cited) - MAX_CITED_SHOWN} more cited</span>'
        rows.append(
            f'<div class="sent" data-cites="{" ".join(map(str, cited))}"><p>{_e(sentence)}</p>'
            f'<div class="cites">{pics}</div></div>'
        )
    return "".join(rows) or "<p>(empty critique)</p>"


def _scores(j: dict, spec: JudgeSpec) -> str:
    std = j.get("samples") or {}
    rows = ["<tr><th></th><th>head (scores)</th><th></th><th>answer (answer_scores)</th><th></th></tr>"]
    for d in spec.dimensions:
        cells = ""
        for key, cls in (("scores", "head"), ("answer_scores", "answer")):
            value = (j.get(key) or {}).get(d)
            spread = (std.get(f"{key}_std") or {}).get(d)
            cells += _bar(value, spread, spec, cls)
        rows.append(f"<tr><td>{_e(d)}</td>{cells}</tr>")
    return f'<table class="scores">{"".join(rows)}</table>'


def _bar(value: float | None, spread: float | None, spec: JudgeSpec, cls: str) -> str:
    if value is None:
        return '<td><div class="bar"></div></td><td class="meta">none</td>'
    span = spec.score_max - spec.score_min

    def pct(x: float) -> float:
        return max(0.0, min(100.0, 100 * (x - spec.score_min) / span))

    whisker, label = "", f"{value:.2f}"
    if spread:
        lo, hi = pct(value - spread), pct(value + spread)
        whisker, label = f'<i style="left:{lo:.1f}%;width:{hi - lo:.1f}%"></i>', f"{value:.2f} ± {spread:.2f}"
    return (
        f'<td><div class="bar {cls}"><span style="width:{pct(value):.1f}%"></span>{whisker}</div></td>'
        f"<td>{label}</td>"
    )


def _trace(j: dict, frames: _Frames) -> str:
    calls = j.get("tool_calls") or []
    if not calls:
        return "<p>No select_frames calls.</p>"
    items = []
    for call in calls:
        asked = f"select_frames([{', '.join(map(str, call.get('frames') or []))}])"
        if call.get("request"):  # a malformed call: what the model wrote
            asked = call["request"]
        if call.get("error") is not None:
            body = f'<div class="err">tool error: {_e(call["error"])}</div>'
        else:
            body = '<div class="calls">' + "".join(frames.figure(i) for i in call["frames"]) + "</div>"
        items.append(f"<li><code>{_e(asked)}</code>{body}</li>")
    return f'<ol class="trace">{"".join(items)}</ol>'


def _draws(samples: dict, spec: JudgeSpec) -> str:
    head = "".join(f"<th>{_e(d)}</th>" for d in spec.dimensions)
    rows = []
    for n, draw in enumerate(samples.get("judgments") or []):
        scores = draw.get("scores") or {}
        cells = "".join(f"<td>{_fmt(scores.get(d))}</td>" for d in spec.dimensions)
        status = "parsed" if draw.get("parse_error") is None else f"parse error: {draw['parse_error']}"
        rows.append(f"<tr><td>{n}</td>{cells}<td>{_e(status)}</td></tr>")
    note = (
        f"{samples.get('k')} draws at temperature {_e(samples.get('temperature'))}, seed "
        f"{_e(samples.get('seed'))}; {samples.get('n_parsed')} parsed; the critique above is draw "
        f"{samples.get('shown')}. Head scores per draw:"
    )
    return (
        f'<p class="meta">{note}</p><table class="draws"><tr><th>draw</th>{head}<th>output</th></tr>'
        f"{''.join(rows)}</table>"
    )


# ------------------------------------------------------------------------------------------ helpers


def _e(x) -> str:
    """Escape for HTML text and attributes: model output, prompts and paths are all untrusted."""
    return html.escape("" if x is None else str(x), quote=True)


def _fmt(x) -> str:
    return "—" if x is None else f"{x:.2f}"


def _data_uri(img) -> str:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
