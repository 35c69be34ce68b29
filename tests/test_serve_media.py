"""`cot-rm serve`'s media handling on the bare app (no engine): /v1/judge with http(s) video URLs fetched
from a local http server started here (a clip, a non-video, a 404, one too big, one too slow, a
redirect), the media URLs of proxied chat completions checked against the allowed root before an
(echoing) stand-in engine sees them, and the media-URL policy: its address classifier on literal
addresses, loopback targets refused on every URL route with nothing sent to them, redirects checked
hop by hop, the domain allowlist, connections pinned to the checked address. Every server here
listens on a loopback address and every name used resolves to loopback: nothing leaves the machine.
The real server's share is in test_serve.py."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import os
import shutil
import ssl
import subprocess
import sys
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, unquote

import httpx
import pytest

from cot_rm.serve.media_policy import MediaPolicy

PROMPT = "a red square slides to the right"
SLOW_S = 3.0  # the /slow route's stall; the bare app's fetch timeout is well under it
TRUSTED = MediaPolicy(allow_private=True)  # --allow-private-media-urls: the local test servers may be fetched


class MediaHTTP:
    """A threaded http.server over `folder` on a loopback `host`, plus `/slow/NAME` (stalls SLOW_S
    before answering), `/redirect/NAME` (302 to NAME), `/goto/QUOTED-URL` (302 to that URL) and a POST
    route echoing the JSON body (a stand-in engine). `requests` records every request it got:
    (method, path, Host header)."""

    def __init__(
        self, folder: Path, host: str = "127.0.0.1", port: int = 0, tls: ssl.SSLContext | None = None
    ):
        site = self
        self.requests: list[tuple[str, str, str]] = []

        class Handler(SimpleHTTPRequestHandler):
            def __init__(self, *a, **kw):
                super().__init__(*a, directory=str(folder), **kw)

            def do_GET(self):  # noqa: N802 (http.server's naming)
                site.requests.append(("GET", self.path, self.headers.get("host", "")))
                if self.path.startswith("/slow/"):
                    time.sleep(SLOW_S)
                    self.path = self.path[5:]
                elif self.path.startswith(("/redirect/", "/goto/")):
                    self.send_response(302)
                    where = self.path[9:] if self.path.startswith("/redirect/") else unquote(self.path[6:])
                    self.send_header("Location", where)
                    self.end_headers()
                    return
                super().do_GET()

            def do_POST(self):  # noqa: N802
                site.requests.append(("POST", self.path, self.headers.get("host", "")))
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

        self.httpd = Server((host, port), Handler)
        self.httpd.daemon_threads = True
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.url = f"{'https' if tls else 'http'}://{host}:{self.port}"
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
    (base / "site" / "pic.png").write_bytes(b"\x89PNG not really")
    yield {"root": Path(os.path.realpath(root)), "clip": clip, "outside": outside, "site": site,
           "site_dir": base / "site"}  # fmt: skip
    site.close()


class _Served:
    """Stands in for the engine + head: records the file each judgment got (and that it existed)."""

    def __init__(self):
        self.seen: list[tuple[str, bool, bytes]] = []

    async def run(self, rid, path, prompt, on_event=None, draws=None):
        self.seen.append((rid, Path(path).is_file(), Path(path).read_bytes()[:64]))
        return {"id": rid, "scores": {"overall": 3.0}}


def _app(files, tmp_path, engine_url="http://unused", **settings):
    from cot_rm.serve.app import create_app
    from cot_rm.serve.deps import Settings

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
    app, served, uploads = _app(files, tmp_path, media_policy=TRUSTED)
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


def _goto(site: str, url: str) -> str:
    """A URL on `site` that redirects to `url`."""
    return f"{site}/goto/{quote(url, safe='')}"


def _chat(*parts: dict) -> dict:
    return {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}, *parts]}]}


def test_chat_media_under_the_root_only_and_rewritten_to_the_real_file(files, tmp_path):
    app, _, _ = _app(files, tmp_path, engine_url=files["site"].url)  # the site echoes POSTed bodies
    root, outside = files["root"], files["outside"]
    pic, clip = f"file://{root}/pic.png", f"file://{root}/clip.mp4"
    allowed = _chat({"type": "image_url", "image_url": {"url": pic}},
                    {"type": "video_url", "video_url": {"url": f"{root}/./clip.mp4"}},
                    {"type": "image_url", "image_url": "data:image/png;base64,AAAA"})  # fmt: skip
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

    async def run(self, rid, path, prompt, on_event=None, draws=None):
        from cot_rm.media.video import VideoError

        raise VideoError(path, "decoding failed after frame 16; re-export the video")


def test_odd_requests_get_a_4xx_not_a_500(files, tmp_path):
    app, served, _ = _app(files, tmp_path)
    clip = str(files["root"] / "clip.mp4")
    cases = {
        "broken URL": (400, {"video": "http://[::1/x.mp4", "prompt": PROMPT}, "not a valid URL"),
        "NUL byte": (400, {"video": clip + "\0x", "prompt": PROMPT}, "NUL byte"),
        "data: URL": (400, {"video": "data:video/mp4;base64,AAAA", "prompt": PROMPT}, "upload the file"),
        "unknown field": (400, {"video": clip, "prompt": PROMPT, "greedy": False}, "unknown field(s) ['greedy']"),
        "temperature alone": (400, {"video": clip, "prompt": PROMPT, "temperature": 0.7}, "add samples"),
        "huge body": (413, {"video": clip, "prompt": PROMPT, "pad": "a" * 2**20}, "over 1 MB"),
    }  # fmt: skip
    responses = _post(app, "/v1/judge", [body for _, body, _ in cases.values()])
    for (name, (status, _, says)), r in zip(cases.items(), responses, strict=True):
        assert r.status_code == status and says in r.json()["error"], (name, r.status_code, r.text)
    assert served.seen == []
    (r,) = _post(app, "/v1/judge?stream=abc", [{"video": clip, "prompt": PROMPT}])
    assert r.status_code == 400 and r.json()["error"].startswith("bad request: query stream: ")


def test_a_streamed_video_error_says_what_the_plain_answer_says(files, tmp_path):
    from cot_rm.serve.app import create_app
    from cot_rm.serve.deps import Settings

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
    from cot_rm.serve.app import create_app
    from cot_rm.serve.deps import Settings

    app = create_app(Settings(files["root"], tmp_path, None), None, "http://unused", ready=lambda: False)

    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            return await client.get("/health")

    r = asyncio.run(go())
    assert r.status_code == 503 and r.json() == {"error": "starting"} and r.headers["retry-after"] == "5"


# ------------------------------------------------------------------------------ the media-URL policy


REFUSED = {  # literal address -> the kind the default rule names
    "127.0.0.1": "loopback", "127.8.9.10": "loopback", "::1": "loopback",
    "::ffff:127.0.0.1": "loopback",  # IPv4-mapped IPv6 is judged as its IPv4 address
    "0.0.0.0": "unspecified", "::": "unspecified",
    "10.1.2.3": "private", "172.16.0.1": "private", "172.31.255.255": "private", "192.168.1.1": "private",
    "fc00::1": "private", "fd12:3456::1": "private", "fec0::1": "private", "::ffff:10.0.0.1": "private",
    "64:ff9b::a00:1": "private",  # NAT64 of 10.0.0.1
    "2002:c0a8:101::1": "private",  # 6to4 of 192.168.1.1
    "169.254.169.254": "link-local", "fe80::1": "link-local", "::ffff:169.254.169.254": "link-local",
    "224.0.0.1": "multicast", "239.255.255.250": "multicast", "ff02::1": "multicast",
    "100.64.0.1": "shared (carrier-grade NAT)", "100.127.255.254": "shared (carrier-grade NAT)",
    "240.0.0.1": "reserved", "255.255.255.255": "reserved", "::127.0.0.1": "reserved",
    "0.1.2.3": "special-purpose", "192.0.2.1": "special-purpose", "198.18.0.1": "special-purpose",
    "2001:db8::1": "special-purpose",
}  # fmt: skip
PUBLIC = ["8.8.8.8", "1.1.1.1", "11.0.0.1", "172.32.0.1", "192.169.0.1", "100.128.0.1", "2606:4700:4700::1111",
          "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1"]  # fmt: skip


def test_the_address_classifier_on_literal_addresses():
    """No connection, no DNS: the classifier alone, on IPv4 and IPv6 literals."""
    from cot_rm.serve.media_policy import address_rule

    for text, kind in REFUSED.items():
        said = address_rule(ipaddress.ip_address(text))
        assert said is not None and kind in said, (text, said)
    for text in PUBLIC:
        assert address_rule(ipaddress.ip_address(text)) is None, text


def test_the_policy_options_parse(capsys):
    import argparse

    from cot_rm.serve.cli import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    base = ["--model", "m", "--allowed-media-root", "r"]
    args = parser.parse_args(base)
    assert args.allowed_media_domains == frozenset() and not args.allow_private_media_urls and args.media_urls
    args = parser.parse_args([*base, "--allowed-media-domains", "Videos.Example.com., cdn.example.org,[::1]",
                              "--allow-private-media-urls"])  # fmt: skip
    assert args.allowed_media_domains == {"videos.example.com", "cdn.example.org", "::1"}
    assert args.allow_private_media_urls
    for bad in ("https://a.example", "a.example:8080", "a.example/videos", " , "):
        with pytest.raises(SystemExit):
            parser.parse_args([*base, "--allowed-media-domains", bad])
        assert "--allowed-media-domains" in capsys.readouterr().err, bad


def _media_urls(body: dict) -> list[str]:
    """Every media URL in a chat body, as the engine would read them."""
    from cot_rm.serve.media import _media_refs

    return [holder[field] for holder, field in _media_refs(body)]


def test_loopback_urls_are_refused_on_every_url_route_with_nothing_fetched(files, tmp_path):
    """By default: /v1/judge (plain, streamed, with the report) and the chat route (video_url and
    image_url, both forms) answer 403 naming the rule; the local server (also the stand-in engine)
    records no request. With --allow-private-media-urls the same loopback URL is judged."""
    site = MediaHTTP(files["site_dir"])
    try:
        app, served, uploads = _app(files, tmp_path, engine_url=site.url)
        port = site.port
        urls = {
            f"{site.url}/clip.mp4": "resolves to 127.0.0.1, a loopback address",
            f"http://localhost:{port}/clip.mp4": "a loopback address",
            f"http://[::ffff:7f00:1]:{port}/clip.mp4": "resolves to ::ffff:7f00:1 (IPv4 127.0.0.1), a loopback",
            f"http://2130706433:{port}/clip.mp4": "resolves to 127.0.0.1, a loopback address",  # 127.0.0.1 in decimal
            f"http://0.0.0.0:{port}/clip.mp4": "an unspecified address",
        }
        judge = [{"video": u, "prompt": PROMPT} for u in urls]
        responses = _post(app, "/v1/judge", judge) + _post(app, "/v1/judge?stream=1&report=1", judge)
        chat = [_chat({"type": "video_url", "video_url": {"url": u}}) for u in urls]
        chat += [_chat({"type": "image_url", "image_url": u}) for u in urls]
        responses += _post(app, "/v1/chat/completions", chat)
        for r, (url, says) in zip(responses, [*urls.items()] * 4, strict=True):
            error = r.json()["error"]
            assert r.status_code == 403 and url in error and says in error, (url, r.status_code, r.text)
            assert "--allow-private-media-urls" in error
        assert site.requests == [] and served.seen == [] and list(uploads.iterdir()) == []
        assert app.state.admission.active == 0

        trusted, served, _ = _app(files, tmp_path, engine_url=site.url, media_policy=TRUSTED)
        (r,) = _post(trusted, "/v1/judge", [{"video": f"{site.url}/clip.mp4", "prompt": PROMPT}])
        assert r.status_code == 200, r.text
        assert served.seen == [(f"{site.url}/clip.mp4", True, files["clip"].read_bytes()[:64])]
        assert site.requests == [("GET", "/clip.mp4", f"127.0.0.1:{port}")]
    finally:
        site.close()


def _public(monkeypatch, *public: str) -> None:
    """Let the classifier take these loopback addresses for public ones (stand-ins for internet hosts:
    a test server must listen on loopback); every other address is classified as usual."""
    from cot_rm.serve import media_policy

    real, stand_ins = media_policy.address_rule, {ipaddress.ip_address(a) for a in public}
    monkeypatch.setattr(media_policy, "address_rule", lambda ip: None if ip in stand_ins else real(ip))


def test_a_redirect_to_a_refused_address_is_refused(files, tmp_path, monkeypatch):
    """The first hop is allowed (127.0.0.1 stands for a public host); where it redirects is checked
    again: to another loopback address or to another scheme, refused, and nothing reaches it."""
    _public(monkeypatch, "127.0.0.1")
    front, inner = MediaHTTP(files["site_dir"]), MediaHTTP(files["site_dir"], host="127.0.0.2")
    try:
        app, served, uploads = _app(files, tmp_path, engine_url=front.url)
        (ok,) = _post(app, "/v1/judge", [{"video": _goto(front.url, "/clip.mp4"), "prompt": PROMPT}])
        assert ok.status_code == 200, ok.text  # a redirect that stays on the allowed host is followed
        targets = {  # where the first hop redirects -> what the refusal says
            f"{inner.url}/clip.mp4": f"redirects to {inner.url}/clip.mp4, which resolves to 127.0.0.2, a loopback",
            f"http://[::ffff:7f00:2]:{inner.port}/clip.mp4": "which resolves to ::ffff:7f00:2 (IPv4 127.0.0.2), a loopback",
            f"file://{files['root']}/clip.mp4": f"redirects to file:{files['root']}/clip.mp4, not an http(s) URL",
        }  # fmt: skip
        judge = [{"video": _goto(front.url, t), "prompt": PROMPT} for t in targets]
        chat = [_chat({"type": "video_url", "video_url": {"url": _goto(front.url, t)}}) for t in targets]
        responses = _post(app, "/v1/judge", judge) + _post(app, "/v1/chat/completions", chat)
        for r, says in zip(responses, [*targets.values()] * 2, strict=True):
            assert r.status_code == 403 and says in r.json()["error"], r.text
        assert inner.requests == []  # the refused hop received nothing
        assert {method for method, *_ in front.requests} == {"GET"}  # nor was the engine called
        assert list(uploads.iterdir()) == [] and app.state.admission.active == 0
    finally:
        front.close()
        inner.close()


def test_allowed_domains_refuse_every_other_host_on_every_hop(files, tmp_path):
    """--allowed-media-domains localhost with --allow-private-media-urls: localhost is fetched (the name
    in the Host header, the connection to its checked address), 127.0.0.1 is another host, first hop or
    redirect."""
    from cot_rm.serve.media_policy import parse_domains

    site = MediaHTTP(files["site_dir"])
    try:
        policy = MediaPolicy(allow_private=True, domains=parse_domains("localhost"))
        app, served, _ = _app(files, tmp_path, engine_url=site.url, media_policy=policy)
        named = f"http://localhost:{site.port}"
        (ok,) = _post(app, "/v1/judge", [{"video": f"{named}/clip.mp4", "prompt": PROMPT}])
        assert ok.status_code == 200, ok.text
        assert site.requests == [("GET", "/clip.mp4", f"localhost:{site.port}")]
        refused = {f"{site.url}/clip.mp4": "", _goto(named, f"{site.url}/clip.mp4"): "redirects to "}
        responses = _post(app, "/v1/judge", [{"video": u, "prompt": PROMPT} for u in refused])
        responses += _post(app, "/v1/chat/completions", [_chat({"type": "image_url", "image_url": {"url": u}})
                                                         for u in refused])  # fmt: skip
        for r, says in zip(responses, [*refused.values()] * 2, strict=True):
            error = r.json()["error"]
            assert (
                r.status_code == 403
                and "the host 127.0.0.1 is not one of this server's allowed media" in error
            )
            assert f"{says}{site.url}/clip.mp4" in error, error
        hosts = {host for _, _, host in site.requests}
        assert hosts == {f"localhost:{site.port}"}  # 127.0.0.1 was never asked for anything
    finally:
        site.close()


def _same_port_pair(folder: Path) -> tuple[MediaHTTP, MediaHTTP]:
    """Two servers on one port: 127.0.0.2 and 127.0.0.1 (where the system resolver sends localhost)."""
    for _ in range(5):
        first = MediaHTTP(folder, host="127.0.0.2")
        try:
            return first, MediaHTTP(folder, host="127.0.0.1", port=first.port)
        except OSError:  # that port is taken on 127.0.0.1: try another
            first.close()
    pytest.skip("no port free on both 127.0.0.2 and 127.0.0.1")


def test_the_request_goes_to_the_address_that_was_checked(files, tmp_path, monkeypatch):
    """DNS rebinding: `localhost` first answers 127.0.0.2 (standing for a public address), then
    127.0.0.1 (standing for an internal service, on the same port). The name is resolved once, and
    the request goes to the address checked, under its name; the internal server receives nothing."""
    from cot_rm.serve import media_policy

    _public(monkeypatch, "127.0.0.2")
    asked = []

    async def rebinding(host, port):
        asked.append(host)
        return [ipaddress.ip_address("127.0.0.2" if len(asked) == 1 else "127.0.0.1")]

    monkeypatch.setattr(media_policy, "resolve", rebinding)
    public, internal = _same_port_pair(files["site_dir"])
    try:
        app, served, _ = _app(files, tmp_path)
        url = f"http://localhost:{public.port}/clip.mp4"
        (r,) = _post(app, "/v1/judge", [{"video": url, "prompt": PROMPT}])
        assert r.status_code == 200, r.text
        assert asked == ["localhost"] and internal.requests == []
        assert public.requests == [("GET", "/clip.mp4", f"localhost:{public.port}")]
    finally:
        public.close()
        internal.close()


def test_chat_media_urls_reach_the_engine_as_bytes_fetched_here(files, tmp_path):
    """The chat route downloads http(s) media under the policy and sends the engine the bytes: the
    stand-in engine (which echoes what it got) sees only data: and file:// media under the root, and
    every GET the site served came before the engine's POST. The downloads are gone afterwards and
    share one request's size limit."""
    from cot_rm.serve.media import FETCHED_DATA_URL

    site = MediaHTTP(files["site_dir"])
    try:
        app, _, uploads = _app(files, tmp_path, engine_url=site.url, media_policy=TRUSTED)
        root = files["root"]
        body = _chat({"type": "image_url", "image_url": {"url": f"{site.url}/pic.png"}},
                     {"type": "video_url", "video_url": f"{site.url}/redirect/clip.mp4"},
                     {"type": "image_url", "image_url": {"url": f"file://{root}/pic.png"}})  # fmt: skip
        (r,) = _post(app, "/v1/chat/completions", [body])
        assert r.status_code == 200, r.text
        got = _media_urls(r.json())

        def data(path: Path) -> str:
            return FETCHED_DATA_URL + base64.b64encode(path.read_bytes()).decode()

        assert got == [data(files["site_dir"] / "pic.png"), data(files["clip"]), f"file://{root}/pic.png"]
        assert all(u.startswith(("data:", f"file://{root}/")) for u in got)  # nothing for the engine to fetch
        assert [(m, p) for m, p, _ in site.requests] == [("GET", "/pic.png"), ("GET", "/redirect/clip.mp4"),
                                                         ("GET", "/clip.mp4"), ("POST", "/v1/chat/completions")]  # fmt: skip
        assert list(uploads.iterdir()) == []

        (files["site_dir"] / "part.bin").write_bytes(b"\1" * (600 * 2**10))  # two of them: over 1 MB
        twice = _chat(*[{"type": "image_url", "image_url": {"url": f"{site.url}/part.bin"}}] * 2)
        (r,) = _post(app, "/v1/chat/completions", [twice])
        assert r.status_code == 413 and "more than 1 MB" in r.json()["error"], r.text
        assert list(uploads.iterdir()) == [] and app.state.admission.active == 0
    finally:
        site.close()


def _self_signed(folder: Path, name: str) -> tuple[Path, Path]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    if shutil.which("openssl") is None:
        pytest.skip("no openssl to make a test certificate")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", f"/CN={name}", "-addext", f"subjectAltName=DNS:{name}"],
                   check=True, capture_output=True)  # fmt: skip
    return cert, key


def test_https_is_verified_for_the_name_while_connecting_to_the_checked_address(files, tmp_path, monkeypatch):
    """The request goes to the checked IP, the certificate is checked against the URL's name: a
    certificate for localhost is taken for https://localhost, not for https://127.0.0.1."""
    from cot_rm.serve import media as serve_media

    cert, key = _self_signed(tmp_path, "localhost")
    served_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    served_tls.load_cert_chain(cert, key)
    trust = ssl.create_default_context(cafile=str(cert))  # the one change: trust the test certificate
    monkeypatch.setattr(serve_media, "pinned_client", lambda t: httpx.AsyncClient(
        transport=httpx.AsyncHTTPTransport(verify=trust), timeout=t, follow_redirects=False))  # fmt: skip
    site = MediaHTTP(files["site_dir"], tls=served_tls)
    try:
        app, served, _ = _app(files, tmp_path, media_policy=TRUSTED)
        named = f"https://localhost:{site.port}/clip.mp4"
        ok, wrong_name = _post(
            app, "/v1/judge", [{"video": u, "prompt": PROMPT} for u in (named, site.url + "/clip.mp4")]
        )
        assert ok.status_code == 200, ok.text
        assert site.requests == [("GET", "/clip.mp4", f"localhost:{site.port}")]
        assert wrong_name.status_code == 400 and "could not fetch" in wrong_name.json()["error"], (
            wrong_name.text
        )
    finally:
        site.close()
