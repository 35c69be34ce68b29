"""The HTML critique: every cited frame beside the sentence that cites it, model text escaped, one section
per video; and the page rendered by headless Chromium with its images (a screenshot and the DOM)."""

from __future__ import annotations

import base64
import io
import os
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from cot_rm.judge.html import build_report, split_sentences, write_report
from cot_rm.media.video import Sampling
from cot_rm.protocol import PROTOCOL_VERSION, JudgeSpec

SAMPLING = Sampling(num_frames=8, max_pixels=56 * 56)
CRITIQUE = (
    "The square is sharp in frame 3. Between frames 8 and 12 it jumps ahead, which breaks physics! "
    "The gradient stays smooth throughout."
)


def _judgment(rationale=CRITIQUE, **kw) -> dict:
    scores = {"visual_quality": 4.2, "text_alignment": 3.0, "physical_consistency": 1.8, "overall": 2.5}
    return {"id": "clip", "scores": scores, "answer_scores": {d: round(v) for d, v in scores.items()},
            "rationale": rationale, "frames_cited": [3, 8, 12],
            "tool_calls": [{"frames": [8, 12], "error": None}, {"frames": [99], "error": "frame 99 is out of range"},
                           {"frames": [], "error": "unknown_tool: 'zoom'", "request": '{"name": "zoom", "x": "<b>"}'}],
            "parse_error": None, "model": "tiny", "protocol_version": PROTOCOL_VERSION, **kw}  # fmt: skip


class _Page(HTMLParser):
    """Collects each critique row (its paragraph text and the frames of its images) and every image."""

    def __init__(self):
        super().__init__()
        self.sents, self.imgs, self._depth, self._in_p = [], [], 0, False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a)
        if tag == "div" and a.get("class") == "sent":
            self.sents.append({"text": "", "frames": []})
            self._depth = 1
        elif self._depth:
            self._depth += tag == "div"
            self._in_p = self._in_p or tag == "p"
            if tag == "img":
                self.sents[-1]["frames"].append(int(a["data-frame"]))

    def handle_endtag(self, tag):
        if self._depth and tag == "div":
            self._depth -= 1
        self._in_p = self._in_p and tag != "p"

    def handle_data(self, data):
        if self._in_p:
            self.sents[-1]["text"] += data


def _parse(page: str) -> _Page:
    parser = _Page()
    parser.feed(page)
    return parser


def _decode(src: str) -> np.ndarray:
    assert src.startswith("data:image/jpeg;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).convert("RGB"))


def _red_x(img: np.ndarray) -> float:
    """Horizontal centre of the red square of conftest.write_mp4 (it moves right every frame)."""
    r, g, b = (img[..., c].astype(int) for c in range(3))
    return float(np.nonzero((r > 150) & (g < 90) & (b < 90))[1].mean())


def test_sentences_split_on_ends_and_lines():
    assert split_sentences("A is 1.5 s long. B!\nC? D") == ["A is 1.5 s long.", "B!", "C?", "D"]


def test_each_cited_frame_sits_beside_its_sentence(sample_mp4):
    page = _parse(build_report([(_judgment(), str(sample_mp4), "a red square")], SAMPLING))
    rows = {s["text"]: s["frames"] for s in page.sents}
    assert rows == {
        "The square is sharp in frame 3.": [3],
        "Between frames 8 and 12 it jumps ahead, which breaks physics!": [8, 12],
        "The gradient stays smooth throughout.": [],
    }
    by_frame = {int(a["data-frame"]): _decode(a["src"]) for a in page.imgs}
    # the right frames: the square is further right in frame 12 than in 8, and in 8 than in 3
    assert _red_x(by_frame[3]) < _red_x(by_frame[8]) < _red_x(by_frame[12])
    strip = [int(a["data-frame"]) for a in page.imgs][:8]
    assert strip == [0, 4, 9, 13, 18, 22, 27, 31]  # the 8 sampled frames, in order, before the critique


def test_model_text_is_escaped_and_the_page_needs_nothing_outside(sample_mp4):
    evil = 'Frame 2 looks fine.<script>alert(1)</script><img src="http://x.org/a.png" onerror="x()">'
    j = _judgment(rationale=evil, id='"><b>id')
    page = build_report([(j, str(sample_mp4), "a <i>red</i> square")], SAMPLING)
    assert "<script" not in page and "<b>" not in page and "<i>red" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    srcs = [a["src"] for a in _parse(page).imgs]
    assert srcs and all(s.startswith("data:image/jpeg;base64,") for s in srcs)  # no file or URL anywhere


def test_tool_trace_parse_errors_and_unreadable_videos(sample_mp4):
    garbled = _judgment(rationale="<think>frame 5 <answer>{", parse_error="unclosed_tag: <think> is never closed",
                        answer_scores=None, frames_cited=[], tool_calls=[])  # fmt: skip
    lost = {
        **_judgment(),
        "scores": None,
        "answer_scores": None,
        "parse_error": "video_error: x.mp4: no such file",
    }
    page = build_report(
        [(_judgment(), str(sample_mp4), "p"), (garbled, str(sample_mp4), "p"), (lost, "x.mp4", "p")], SAMPLING
    )
    assert page.count('<section class="video">') == 3
    assert "<code>select_frames([8, 12])</code>" in page and "tool error: frame 99 is out of range" in page
    assert (
        "<code>{&#34;name&#34;: &#34;zoom&#34;, &#34;x&#34;: &#34;&lt;b&gt;&#34;}</code>" in page
    )  # as asked
    assert "did not parse: unclosed_tag" in page and "&lt;think&gt;frame 5 &lt;answer&gt;{" in page
    assert "video_error: x.mp4: no such file" in page
    # the unparsed output is shown as text, not as a critique with cited frames
    assert [s["text"] for s in _parse(page).sents] == [s for s in split_sentences(CRITIQUE)]


def test_a_frame_outside_the_video_is_named_not_broken(sample_mp4):
    page = build_report([(_judgment(rationale="Frame 40 is missing."), str(sample_mp4), "p")], SAMPLING)
    assert "frame 40: not in this video (0–31)" in page


def test_sampled_judgments_show_mean_spread_and_draws(sample_mp4):
    j = _judgment()
    j["samples"] = {"k": 2, "temperature": 0.7, "top_p": 1.0, "seed": 0, "shown": 0, "n_parsed": 1,
                    "scores_std": dict.fromkeys(j["scores"], 0.25), "answer_scores_std": None,
                    "judgments": [_judgment(), _judgment(parse_error="empty")]}  # fmt: skip
    page = build_report([(j, str(sample_mp4), "p")], SAMPLING)
    assert "4.20 ± 0.25" in page and "2 draws at temperature 0.7" in page and "parse error: empty" in page


def test_head_std_and_answer_probs_are_shown(sample_mp4):
    probs = {"probs": {"1": 0.0, "2": 0.05, "3": 0.1, "4": 0.8, "5": 0.05}, "expected": 3.9}
    j = _judgment(scores_std=dict.fromkeys(["visual_quality", "text_alignment", "physical_consistency", "overall"], 0.6),
                  answer_probs={"visual_quality": probs, "text_alignment": None, "physical_consistency": probs,
                                "overall": probs})  # fmt: skip
    page = build_report([(j, str(sample_mp4), "p")], SAMPLING)
    assert "4.20 ± 0.60 (head std)" in page and page.count("E 3.90") == 3
    assert 'title="P(4) = 0.800"' in page and 'style="height:80.0%"' in page


# ------------------------------------------------------------------------------- headless Chromium


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        message = "chromium is not installed (Debian: apt-get install -y chromium; .ci/run installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)  # in CI the page must really be rendered
        pytest.skip(message)
    return exe


def _browse(exe: str, url: str, tmp_path, *flags) -> subprocess.CompletedProcess:
    # A fresh profile each time: with a shared one, a second Chromium hands its URL to the first.
    profile = tmp_path / f"profile{len(list(tmp_path.glob('profile*')))}"
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
           "--hide-scrollbars", *flags, url]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out


def _colourful(png) -> tuple[int, int]:
    """(distinct non-grey colours, red-square pixels): text and bars give few, video frames many."""
    px = np.asarray(Image.open(png).convert("RGB")).reshape(-1, 3).astype(int)
    chroma = px.max(1) - px.min(1)
    colours = len(np.unique(px[chroma > 30], axis=0))
    red = int(((px[:, 0] > 180) & (px[:, 1] < 70) & (px[:, 2] < 70)).sum())
    return colours, red


def test_chromium_renders_the_page_with_its_images(sample_mp4, tmp_path):
    exe = _chromium()
    entries = [(_judgment(), str(sample_mp4), "a red square"), (_judgment(id="again"), str(sample_mp4), "p")]
    page = write_report(tmp_path / "report.html", entries, SAMPLING, JudgeSpec())
    shot = tmp_path / "shot.png"
    _browse(exe, page.as_uri(), tmp_path, f"--screenshot={shot}", "--window-size=1200,2000")
    assert Image.open(shot).size == (1200, 2000)
    colours, red = _colourful(shot)
    assert colours > 5000 and red > 5000, (colours, red)  # 53k and 23k seen; without images ~200 each
    # the same page with its images removed fails that check: it is the frames that are seen
    bare = tmp_path / "bare.html"
    bare.write_text(page.read_text().replace('src="data:', 'data-gone="data:'))
    _browse(exe, bare.as_uri(), tmp_path, f"--screenshot={tmp_path / 'bare.png'}", "--window-size=1200,2000")
    assert max(_colourful(tmp_path / "bare.png")) < 1000
    # the DOM as the browser built it: every <img> is a data URI that decodes as a real frame
    imgs = _parse(_browse(exe, page.as_uri(), tmp_path, "--dump-dom").stdout).imgs
    assert len(imgs) == 2 * (8 + 3 + 2)  # per video: strip, cited frames, the tool call's frames
    for a in imgs:
        img = _decode(a["src"])
        assert img.shape[0] >= 28 and img.shape[1] >= 28 and img.std() > 10
