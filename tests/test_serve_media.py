"""`cot-rm serve`'s media handling on the bare app (no engine): /v1/judge with http(s) video URLs fetched
from a local http server started here (a clip, a non-video, a 404, one too big, one too slow, a
redirect), and the media URLs of proxied chat completions checked against the allowed root before an
(echoing) stand-in engine sees them. The real server's share is in test_serve.py."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

PROMPT = "a red square slides to the right"
SLOW_S = 3.0  # the /slow route's stall; the bare app's fetch timeout is well under it


class MediaHTTP:
    """A threaded http.server over `folder`, plus `/slow/NAME` (stalls SLOW_S before answering),
    `/redirect/NAME` (302 to NAME) and a POST route echoing the JSON body (a stand-in engine)."""

    def __init__(self, folder: Path):
        class Handler(SimpleHTTPRequestHandler):
            def __init__(self, *a, **kw):
                super().__init__(*a, directory=str(folder), **kw)

            def do_GET(self):  # noqa: N802 (http.server's naming)
                if self.path.startswith("/slow/"):
                    time.sleep(SLOW_S)
                    self.path = self.path[5:]
                elif self.path.startswith("/redirect/"):
                    self.send_response(302)
                    self.send_header("Location", self.path[9:])
                    self.end_headers()
                    return
                super().do_GET()

            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args):
                pass

        class Server(ThreadingHTTPServer):
            def handle_error(self, request, client_address):  # a client that hung up (413): not news
                if not isinstance(sys.exc_info()[1], ConnectionError):
                    super().handle_error(request, client_address)

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def media_site(folder: Path, clip: Path, too_big_bytes: int) -> MediaHTTP:
    """`folder` filled with clip.mp4, notes.mp4 (text), big.mp4 (too_big_bytes of zeros), and served."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(clip, folder / "clip.mp4")
    (folder / "notes.mp4").write_text("not a video at all\n")
    (folder / "big.mp4").write_bytes(b"\0" * too_big_bytes)
    return MediaHTTP(folder)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from conftest import write_mp4

    base = tmp_path_factory.mktemp("serve_media")
    root, outside = base / "allowed", base / "outside"
    root.mkdir()
    outside.mkdir()
    clip = write_mp4(root / "clip.mp4", num_frames=16, fps=8)
    (outside / "secret.png").write_bytes(b"\x89PNG not really")
    (root / "link.png").symlink_to(outside / "secret.png")
    (root / "pic.png").write_bytes(b"\x89PNG not really")
    site = media_site(base / "site", clip, too_big_bytes=2 * 2**20)
    yield {"root": Path(os.path.realpath(root)), "clip": clip, "outside": outside, "site": site}
    site.close()


class _Served:
    """Stands in for the engine + head: records the file each judgment got (and that it existed)."""

    def __init__(self):
        self.seen: list[tuple[str, bool, bytes]] = []

    async def run(self, rid, path, prompt, on_event=None):
        self.seen.append((rid, Path(path).is_file(), Path(path).read_bytes()[:64]))
        return {"id": rid, "scores": {"overall": 3.0}}


def _app(files, tmp_path, engine_url="http://unused", **settings):
    from cot_rm.serve import Settings, create_app

    served = _Served()
    uploads = tmp_path / "uploads"
    uploads.mkdir(exist_ok=True)
    s = Settings(files["root"], uploads, None, max_upload_bytes=2**20, fetch_timeout_s=1.0, **settings)
    return create_app(s, served, engine_url, max_active=4), served, uploads


def _post(app, route: str, bodies: list) -> list[httpx.Response]:
    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app", timeout=60) as client:
            async with app.router.lifespan_context(app):
                return [await client.post(route, json=b) for b in bodies]

    return asyncio.run(go())


def test_judge_fetches_an_http_video_and_refuses_bad_urls(files, tmp_path):
    app, served, uploads = _app(files, tmp_path)
    site = files["site"].url
    ok = [
        {"video": f"{site}/clip.mp4", "prompt": PROMPT},
        {"video": f"{site}/redirect/clip.mp4", "prompt": PROMPT},
    ]
    bad = {
        "not a video": (415, f"{site}/notes.mp4"),
        "404": (404, f"{site}/nope.mp4"),
        "too big": (413, f"{site}/big.mp4"),
        "too slow": (408, f"{site}/slow/clip.mp4"),
        "nothing listens": (400, "http://127.0.0.1:9/clip.mp4"),
        "other scheme": (400, "ftp://127.0.0.1/clip.mp4"),
        "file:// outside the root": (403, f"file://{files['outside']}/secret.png"),
    }
    t0 = time.monotonic()
    responses = _post(app, "/v1/judge", [*ok, *({"video": u, "prompt": PROMPT} for _, u in bad.values())])
    assert time.monotonic() - t0 < 2 * SLOW_S + 10  # the slow one was cut at the fetch timeout (1 s)
    for r in responses[:2]:
        assert r.status_code == 200, r.text
    clip = files["clip"].read_bytes()[:64]
    assert served.seen == [(f"{site}/clip.mp4", True, clip), (f"{site}/redirect/clip.mp4", True, clip)]
    for (name, (status, _)), r in zip(bad.items(), responses[2:], strict=True):
        assert r.status_code == status and "error" in r.json(), (name, r.status_code, r.text)
    assert list(uploads.iterdir()) == []  # every download removed, judged or refused
    assert app.state.admission.active == 0  # and every slot given back


def test_media_urls_off_refuses_urls(files, tmp_path):
    app, served, _ = _app(files, tmp_path, media_urls=False)
    (r,) = _post(app, "/v1/judge", [{"video": f"{files['site'].url}/clip.mp4", "prompt": PROMPT}])
    assert r.status_code == 400 and "--no-media-urls" in r.json()["error"] and served.seen == []


def _chat(*parts: dict) -> dict:
    return {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}, *parts]}]}


def test_chat_media_under_the_root_only_and_rewritten_to_the_real_file(files, tmp_path):
    app, _, _ = _app(files, tmp_path, engine_url=files["site"].url)  # the site echoes POSTed bodies
    root, outside = files["root"], files["outside"]
    pic, clip = f"file://{root}/pic.png", f"file://{root}/clip.mp4"
    allowed = _chat({"type": "image_url", "image_url": {"url": pic}},
                    {"type": "video_url", "video_url": {"url": f"{root}/./clip.mp4"}},
                    {"type": "image_url", "image_url": "data:image/png;base64,AAAA"},
                    {"type": "image_url", "image_url": {"url": "https://example.invalid/a.png"}})  # fmt: skip
    refused = {
        "outside": (403, _chat({"type": "image_url", "image_url": {"url": f"file://{outside}/secret.png"}})),
        "../ escape": (
            403,
            _chat({"type": "image_url", "image_url": {"url": f"{root}/../outside/secret.png"}}),
        ),
        "symlink out": (403, _chat({"type": "image_url", "image_url": {"url": f"file://{root}/link.png"}})),
        "bare string form": (403, _chat({"type": "image_url", "image_url": f"file://{outside}/secret.png"})),
        "audio": (403, _chat({"type": "audio_url", "audio_url": {"url": str(outside / "secret.png")}})),
        "missing": (404, _chat({"type": "video_url", "video_url": {"url": f"file://{root}/none.mp4"}})),
        "other host": (400, _chat({"type": "image_url", "image_url": {"url": f"file://evil{root}/pic.png"}})),
        "other scheme": (400, _chat({"type": "video_url", "video_url": {"url": "ftp://h/clip.mp4"}})),
    }
    responses = _post(app, "/v1/chat/completions", [allowed, *(b for _, b in refused.values())])
    assert responses[0].status_code == 200, responses[0].text
    parts = responses[0].json()["messages"][0]["content"]
    assert parts[1]["image_url"]["url"] == pic and parts[2]["video_url"]["url"] == clip  # real paths
    assert parts[3]["image_url"] == "data:image/png;base64,AAAA"
    assert parts[4]["image_url"]["url"] == "https://example.invalid/a.png"  # the engine fetches it
    for (name, (status, _)), r in zip(refused.items(), responses[1:], strict=True):
        assert r.status_code == status and "error" in r.json(), (name, r.status_code, r.text)
    app_off, _, _ = _app(files, tmp_path, engine_url=files["site"].url, media_urls=False)
    (r,) = _post(
        app_off,
        "/v1/chat/completions",
        [_chat({"type": "image_url", "image_url": {"url": "http://x/a.png"}})],
    )
    assert r.status_code == 400 and json.loads(r.text)["error"]


class _Undecodable(_Served):
    """The engine side finds the video undecodable mid-judgment (a file whose header reads fine)."""

    async def run(self, rid, path, prompt, on_event=None):
        from cot_rm.video import VideoError

        raise VideoError(path, "decoding failed after frame 16; re-export the video")


def test_odd_requests_get_a_4xx_not_a_500(files, tmp_path):
    app, served, _ = _app(files, tmp_path)
    clip = str(files["root"] / "clip.mp4")
    cases = {
        "broken URL": (400, {"video": "http://[::1/x.mp4", "prompt": PROMPT}, "not a valid URL"),
        "NUL byte": (400, {"video": clip + "\0x", "prompt": PROMPT}, "NUL byte"),
        "data: URL": (400, {"video": "data:video/mp4;base64,AAAA", "prompt": PROMPT}, "upload the file"),
        "unknown field": (400, {"video": clip, "prompt": PROMPT, "temperature": 0.7}, "unknown field(s) ['temperature']"),
        "huge body": (413, {"video": clip, "prompt": PROMPT, "pad": "a" * 2**20}, "over 1 MB"),
    }  # fmt: skip
    responses = _post(app, "/v1/judge", [body for _, body, _ in cases.values()])
    for (name, (status, _, says)), r in zip(cases.items(), responses, strict=True):
        assert r.status_code == status and says in r.json()["error"], (name, r.status_code, r.text)
    assert served.seen == []
    (r,) = _post(app, "/v1/judge?stream=abc", [{"video": clip, "prompt": PROMPT}])
    assert r.status_code == 400 and r.json()["error"].startswith("bad request: query stream: ")


def test_a_streamed_video_error_says_what_the_plain_answer_says(files, tmp_path):
    from cot_rm.serve import Settings, create_app

    uploads = tmp_path / "uploads"
    uploads.mkdir()
    app = create_app(Settings(files["root"], uploads, None), _Undecodable(), "http://unused", max_active=2)

    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app", timeout=60) as client:
            upload = {"file": ("mine.mp4", files["clip"].read_bytes(), "video/mp4")}
            streamed = await client.post("/v1/judge?stream=1", files=upload, data={"prompt": PROMPT})
            plain = await client.post("/v1/judge", files=upload, data={"prompt": PROMPT})
            return streamed, plain

    streamed, plain = asyncio.run(go())
    last = json.loads(streamed.text.strip().splitlines()[-1])
    assert plain.status_code == 415 and last == {
        "event": "error",
        "status": 415,
        "error": plain.json()["error"],
    }
    assert last["error"].startswith("video: mine.mp4: decoding failed") and str(uploads) not in streamed.text


def test_health_says_when_to_come_back_while_starting(files, tmp_path):
    from cot_rm.serve import Settings, create_app

    app = create_app(Settings(files["root"], tmp_path, None), None, "http://unused", ready=lambda: False)

    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            return await client.get("/health")

    r = asyncio.run(go())
    assert r.status_code == 503 and r.json() == {"error": "starting"} and r.headers["retry-after"] == "5"
