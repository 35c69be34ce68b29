"""Teachers: the OpenAI-compatible client (against a scripted local fake and a real vLLM server) and
the local transformers teacher on the tiny Qwen2.5-VL."""

from __future__ import annotations

import base64
import io
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from cot_rm.protocol import ParseError, parse_turn
from data_synthesis.teachers.base import TeacherRequest, TeacherUnavailableError
from data_synthesis.teachers.factory import make_teacher
from data_synthesis.teachers.hf import HFTeacher
from data_synthesis.teachers.openai import OpenAITeacher, chat_messages


def frames(n: int, size: tuple[int, int] = (56, 56), shade: int = 0) -> list[Image.Image]:
    return [Image.new("RGB", size, ((40 * i + shade) % 256, 90, 200)) for i in range(n)]


def request(rid: str, text: str = "ok", n_images: int = 2, **kw) -> TeacherRequest:
    kw.setdefault("images", frames(n_images))
    captions = kw.pop("captions", [f"frame {4 * j} ({j / 2:.2f} s):" for j in range(len(kw["images"]))])
    return TeacherRequest(
        id=rid, system="You judge generated videos.", text=text, captions=captions, record=None, **kw
    )


# ------------------------------------------------------------------------- scripted fake server


class FakeOpenAI:
    """A local OpenAI-like server. The user turn's last text part picks a plan: a list of actions
    for attempts 1, 2, ... (then "ok"): "ok", "hang", "close", or an HTTP status code."""

    def __init__(self, plans: dict[str, list] | None = None, delay_s: float = 0.0):
        self.plans = plans or {}
        self.delay_s = delay_s
        self.attempts: dict[str, list[float]] = {}  # instruction -> arrival times
        self.bodies: list[dict] = []
        self.headers: list[dict] = []
        self.model_listings = 0
        self.inflight = self.max_inflight = 0
        self.lock = threading.Lock()
        self.release = threading.Event()  # frees "hang" handlers at teardown
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self):
        # A short poll interval: shutdown() waits up to one interval.
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def _next_action(self, key: str):
        with self.lock:
            times = self.attempts.setdefault(key, [])
            times.append(time.monotonic())
            plan = self.plans.get(key, [])
            return plan[len(times) - 1] if len(times) <= len(plan) else "ok"

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                fake.model_listings += 1
                self._json(200, {"object": "list", "data": [{"id": "fake-vlm"}, {"id": "other"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake.lock:
                    fake.bodies.append(body)
                    fake.headers.append({k.lower(): v for k, v in self.headers.items()})
                    fake.inflight += 1
                    fake.max_inflight = max(fake.max_inflight, fake.inflight)
                try:
                    self._answer(body)
                finally:
                    with fake.lock:
                        fake.inflight -= 1

            def _answer(self, body):
                key = body["messages"][-1]["content"][-1]["text"]
                action = fake._next_action(key)
                time.sleep(fake.delay_s)
                if action == "hang":
                    fake.release.wait(30)
                elif action == "close":
                    self.close_connection = True  # no response at all
                elif action == "reasoning":  # vLLM with a reasoning parser: the think body apart
                    message = {"role": "assistant", "reasoning_content": f"frame 3 of {key} is blurred",
                               "content": "<answer>{}</answer>"}  # fmt: skip
                    self._json(200, {"choices": [{"message": message}]})
                elif action == "ok":
                    reply = f"reply to {key} seed {body['seed']}"
                    self._json(200, {"choices": [{"message": {"role": "assistant", "content": reply}}]})
                else:
                    self._json(action, {"error": {"message": f"scripted {action}"}})

            def _json(self, code, obj):
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler


def fast_teacher(url: str, **kw) -> OpenAITeacher:
    kw.setdefault("model", "m")
    kw.setdefault("timeout_s", 5.0)
    return OpenAITeacher(url, **kw)


@pytest.mark.parametrize(
    ("plan", "tries", "text", "error"),
    [
        ([500, 503], 3, "reply to x seed 0", None),  # fails twice, then succeeds on the 3rd try
        ([429, 429], 3, "reply to x seed 0", None),  # rate-limited is retried
        (["close"], 2, "reply to x seed 0", None),  # dropped connection is retried
        ([500, 500, 500], 3, None, "HTTP 500 after 3 tries"),
        ([429, 429, 429], 3, None, "HTTP 429 after 3 tries"),
        ([400], 1, None, "HTTP 400: "),  # a client error is not retried
        ([404], 1, None, "HTTP 404: "),
    ],
)
def test_retry_counts(plan, tries, text, error):
    with FakeOpenAI({"x": plan}) as fake:
        (reply,) = fast_teacher(fake.url, max_retries=3).generate([request("a", "x")])
    assert len(fake.attempts["x"]) == tries
    assert reply.id == "a" and reply.text == text
    if error is None:
        assert reply.error is None
    else:
        assert reply.error.startswith(error)
    if 400 in plan:
        assert "scripted 400" in reply.error  # the server's reason is kept for the report


def test_timeout_is_retried_then_reported():
    with FakeOpenAI({"x": ["hang", "hang"], "y": ["hang"]}) as fake:
        teacher = fast_teacher(fake.url, timeout_s=0.3, max_retries=2)
        start = time.monotonic()
        x, y = teacher.generate([request("a", "x"), request("b", "y")])
        elapsed = time.monotonic() - start
    assert (x.text, x.error) == (None, "timeout after 2 tries")
    assert y.text == "reply to y seed 0" and y.error is None  # hung once, then answered
    assert len(fake.attempts["x"]) == 2 and len(fake.attempts["y"]) == 2
    assert 0.6 <= elapsed < 3.0  # two 0.3 s timeouts, not the server's 30 s hang


def test_exponential_backoff_between_tries():
    with FakeOpenAI({"x": [500, 500, 500]}) as fake:
        fast_teacher(fake.url, max_retries=3).generate([request("a", "x")])
    t = fake.attempts["x"]
    gaps = [t[1] - t[0], t[2] - t[1]]
    # The openai client's schedule: 0.5 s * 2**k, less up to 25% jitter, plus request overhead.
    assert 0.5 * 0.75 <= gaps[0] < 0.5 + 0.2
    assert 1.0 * 0.75 <= gaps[1] < 1.0 + 0.2


def test_connection_refused_is_counted_not_raised():
    with FakeOpenAI() as fake:
        url = fake.url  # the port is closed once the server is gone
    (reply,) = fast_teacher(url, max_retries=2).generate([request("a")])
    assert reply.text is None
    assert reply.error.startswith("connection error") and reply.error.endswith("after 2 tries")


def test_concurrency_limit_and_order():
    # Every request takes 0.2 s: with 9 requests and 3 workers, exactly 3 are in flight at a time.
    with FakeOpenAI(delay_s=0.2) as fake:
        reqs = [request(f"r{i}", f"t{i}", seed=i) for i in range(9)]
        start = time.monotonic()
        replies = fast_teacher(fake.url, concurrency=3).generate(reqs)
        elapsed = time.monotonic() - start
    assert fake.max_inflight == 3
    assert 0.6 <= elapsed < 1.5  # three waves of 0.2 s
    assert [r.id for r in replies] == [f"r{i}" for i in range(9)]
    assert [r.text for r in replies] == [f"reply to t{i} seed {i}" for i in range(9)]


def test_one_failure_does_not_spoil_the_batch():
    with FakeOpenAI({"bad": [400]}) as fake:
        reqs = [request("a", "x"), request("b", "bad"), request("c", "y", captions=["only one"])]
        a, b, c = fast_teacher(fake.url).generate(reqs)
    assert a.text == "reply to x seed 0"
    assert b.text is None and b.error.startswith("HTTP 400")
    assert c.text is None and "2 images but 1 captions" in c.error  # never sent


def test_reasoning_content_is_put_back_into_the_turn():
    with FakeOpenAI({"x": ["reasoning"]}) as fake:
        (reply,) = fast_teacher(fake.url).generate([request("a", "x")])
    assert reply.text == "<think>frame 3 of x is blurred</think>\n<answer>{}</answer>"


def test_payload_shape(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    images = frames(2, size=(30, 20), shade=7)
    with FakeOpenAI() as fake:
        teacher = fast_teacher(fake.url + "/v1/", temperature=0.3)
        teacher.generate([request("a", "judge it", images=images, seed=11, max_tokens=77)])
    body, headers = fake.bodies[0], fake.headers[0]
    assert headers["authorization"] == "Bearer sk-test"
    assert (body["model"], body["seed"], body["max_tokens"], body["temperature"]) == ("m", 11, 77, 0.3)
    system, user = body["messages"]
    assert system == {"role": "system", "content": "You judge generated videos."}
    kinds = [p["type"] for p in user["content"]]
    assert kinds == ["text", "image_url", "text", "image_url", "text"]  # caption before each frame
    assert [user["content"][i]["text"] for i in (0, 2, 4)] == [
        "frame 0 (0.00 s):",
        "frame 4 (0.50 s):",
        "judge it",
    ]
    url = user["content"][3]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    decoded = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert np.array_equal(np.asarray(decoded), np.asarray(images[1]))  # lossless: the pixels we sampled


def test_model_discovery_and_specs(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with FakeOpenAI() as fake:
        discovered = make_teacher(f"openai:{fake.url}")
        named = make_teacher(f"openai:{fake.url}/v1#my-model", concurrency=2)
        discovered.generate([request("a")])
    assert fake.model_listings == 1  # only the teacher without a model asked
    assert (discovered.name, discovered.model, named.model) == ("openai", "fake-vlm", "my-model")
    assert named.concurrency == 2 and named.base_url == fake.url + "/v1"
    assert "authorization" not in fake.headers[0]
    with pytest.raises(ValueError, match="unknown teacher"):
        make_teacher("gpt:http://x")
    with pytest.raises(TeacherUnavailableError, match="cannot list models"):
        OpenAITeacher("http://127.0.0.1:9", max_retries=1)


def test_make_teacher_model_sources():
    with FakeOpenAI() as fake:
        assert make_teacher(f"openai:{fake.url}#from-spec", model="from-kw").model == "from-spec"
        assert make_teacher(f"openai:{fake.url}", model="from-kw").model == "from-kw"
        assert fake.model_listings == 0
    oracle = make_teacher("oracle")
    assert oracle.name == "oracle" and type(oracle).__module__ == "data_synthesis.teachers.oracle"
    assert not oracle.plain and make_teacher("oracle:plain").plain
    fields = make_teacher("oracle:fields")
    assert fields.plain and fields.fields and fields.model == "toyworld-oracle/1-fields"
    with pytest.raises(ValueError, match="unknown teacher"):
        make_teacher("oracle:fancy")


def test_plain_oracle_says_it_one_way_in_a_fixed_order():
    from data_synthesis.teachers.oracle import Plain, critique

    flicker = {
        "type": "flicker",
        "dimension": "visual_quality",
        "severity": 2,
        "frames": [3, 4, 5],
        "params": {},
    }
    scores = {"visual_quality": 3, "text_alignment": 5, "physical_consistency": 5, "overall": 3}
    text = critique("two red squares", [flicker], scores, Plain(), 32, "Two red squares.")
    assert text == (
        "I see two red squares. The prompt asks for two red squares. There is noticeable flicker: the "
        "brightness jumps in frames 3-5. Visual quality is mediocre. Objects, colours and motion match the "
        "prompt. A closer look at frames 10 and 21 confirms it. Text alignment is excellent. The motion is "
        "smooth and continuous. A closer look at frames 10 and 21 confirms it. Physical consistency is "
        "excellent. Overall the video is mediocre."
    )
    assert critique("two red squares", [flicker], scores, Plain(), 32, "Two red squares.") == text
    # oracle:fields restates the prompt's spec attribute by attribute, the rest unchanged
    asked = {"count": 2, "colour": "red", "shape": "square", "direction": "left", "speed": "slow",
             "background": "white"}  # fmt: skip
    keyed = critique("two red squares", [flicker], scores, Plain(), 32, "Two red squares.", asked)
    assert keyed == text.replace(
        "The prompt asks for two red squares.",
        "The prompt asks for: count two, colour red, shape square, motion left, speed slowly, background white.",
    )


def test_chat_messages_jpeg():
    msgs = chat_messages(request("a", n_images=1), image_format="JPEG")
    assert msgs[1]["content"][1]["image_url"]["url"].startswith("data:image/jpeg;base64,")


# ------------------------------------------------------------------------------ real vLLM server


class CountingTeacher(OpenAITeacher):
    """Records how many requests are in flight at once, on the client side."""

    def __init__(self, *args, **kw):
        self.lock, self.inflight, self.max_inflight = threading.Lock(), 0, 0
        super().__init__(*args, **kw)

    def _one(self, request):
        with self.lock:
            self.inflight += 1
            self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            return super()._one(request)
        finally:
            with self.lock:
                self.inflight -= 1


def completions_logged(server) -> int:
    return len(re.findall(r'"POST /v1/chat/completions HTTP/1.1" 200', server.log_path.read_text()))


def test_openai_teacher_against_vllm(vllm_server, tiny_qwen25vl_dir):
    teacher = CountingTeacher(vllm_server.base_url, concurrency=3, timeout_s=120)
    assert teacher.model == str(tiny_qwen25vl_dir)  # discovered from /v1/models
    sizes = [(56, 56), (84, 56), (100, 70)]  # the last is not patch-aligned: the server resizes it
    reqs = [
        request(
            f"r{i}", f"Judge video {i}.", images=frames(2 + i % 2, sizes[i % 3], 9 * i), seed=i, max_tokens=24
        )
        for i in range(7)
    ]
    before = completions_logged(vllm_server)
    replies = teacher.generate(reqs)
    assert [r.id for r in replies] == [r.id for r in reqs]
    for reply in replies:
        assert reply.error is None and isinstance(reply.text, str) and reply.text
        # A random model writes gibberish: downstream rejects it as unparseable, nothing crashes.
        assert isinstance(parse_turn(reply.text), ParseError)
    assert 2 <= teacher.max_inflight <= 3
    time.sleep(0.5)  # the access log line is written just after the response
    assert completions_logged(vllm_server) - before == 7  # one call each: no retries


def test_vllm_seed_and_client_error(vllm_server):
    teacher = OpenAITeacher(vllm_server.base_url, concurrency=1, temperature=1.0)
    same = [request(f"s{i}", "Same seed.", seed=5, max_tokens=16) for i in range(2)]
    other = request("o", "Same seed.", seed=6, max_tokens=16)
    too_long = request("x", "Too long.", max_tokens=100_000)  # beyond --max-model-len: a 400
    a, b, c, x = teacher.generate([*same, other, too_long])
    assert a.text == b.text  # the seed reaches the sampler
    assert c.text != a.text
    assert x.text is None and x.error.startswith("HTTP 400")


# ---------------------------------------------------------------------------- local transformers


@pytest.fixture(scope="module")
def hf_teacher(tiny_qwen25vl_dir):
    return make_teacher(f"hf:{tiny_qwen25vl_dir}", max_new_tokens=8, batch_size=2)


def hf_requests() -> list[TeacherRequest]:
    # Different image counts, sizes and text lengths: the batches really need left padding.
    return [
        request("h0", "Judge this short clip.", images=frames(2, (56, 56), 0)),
        request("h1", "A longer instruction " * 5, images=frames(3, (84, 56), 50)),
        request("h2", "Third.", images=frames(1, (100, 70), 90)),
    ]


def test_hf_teacher_in_order_and_deterministic(hf_teacher, tiny_qwen25vl_dir):
    assert isinstance(hf_teacher, HFTeacher)
    assert (hf_teacher.name, hf_teacher.model) == ("hf", str(tiny_qwen25vl_dir))
    first = hf_teacher.generate(hf_requests())
    again = hf_teacher.generate(hf_requests())
    assert [r.id for r in first] == ["h0", "h1", "h2"]
    assert all(r.error is None and isinstance(r.text, str) for r in first)
    assert [r.text for r in first] == [r.text for r in again]  # greedy
    alone = [hf_teacher.generate([r])[0].text for r in hf_requests()]
    assert alone == [r.text for r in first]  # left padding does not change what a request gets


def test_hf_teacher_prompt_and_failures(hf_teacher):
    text = hf_teacher._render(request("a", "Judge it.", n_images=2))
    pad = "<|vision_start|><|image_pad|><|vision_end|>"
    assert text.index("frame 0 (0.00 s):") < text.index(pad) < text.index("frame 4 (0.50 s):")
    assert text.rindex(pad) < text.index("Judge it.")
    bad = request("bad", captions=["one caption"])
    a, b, c = hf_teacher.generate([bad, request("b"), request("c")])  # batches [bad, b] and [c]
    assert a.text is None and b.text is None and "2 images but 1 captions" in a.error
    assert c.error is None and isinstance(c.text, str)


def test_hf_teacher_sampling_is_seeded(tiny_qwen25vl_dir):
    import torch

    teacher = HFTeacher(str(tiny_qwen25vl_dir), temperature=1.0, max_new_tokens=8)
    state = torch.random.get_rng_state()
    a, b, c = (teacher.generate([request("s", "Sample.", seed=s)])[0].text for s in (3, 3, 4))
    assert a == b and a != c
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG is left alone
