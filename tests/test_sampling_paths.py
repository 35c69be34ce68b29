"""Pair judging and sampled judging on every path: `cot-rm judge` (--pair, --samples), the server's
`/v1/judge` and `/v1/judge/pair` (FastAPI's TestClient on the app with the local transformers backend,
`cot-rm serve --backend local`; and the vLLM backend's draws against a stand-in engine) and
`RewardModel` (`score(samples=...)`, `compare`) give the same records for the same videos, prompts and
seed; bad values are refused on each path with what to change."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from cot_rm import RewardModel, cli
from cot_rm.judge.local import Judge
from cot_rm.judge.sampling import Draws
from cot_rm.media.video import Sampling
from cot_rm.model.modeling import ThinkThenScore
from cot_rm.model.pairwise import OUTCOMES, probabilities
from cot_rm.serve.app import create_app
from cot_rm.serve.deps import Settings
from cot_rm.serve.judge import ServedJudge
from cot_rm.serve.local import LocalServedJudge

MAX_NEW_TOKENS = 16
PROMPT = "a red square slides to the right"
SAMPLED = {"samples": 2, "temperature": 1.5, "seed": 5}


@pytest.fixture(scope="module")
def rm_dir(tiny_qwen25vl_dir, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("paths") / "ckpt"
    model = ThinkThenScore.from_base(tiny_qwen25vl_dir, sampling=Sampling(num_frames=4, max_pixels=56 * 56))
    model.config.calibration = {"overall": {"mean": 0.05, "std": 0.2}}  # the probabilities read raw outputs
    model.config.tie_theta = 2.5
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def videos(make_mp4) -> tuple[str, str]:
    return str(make_mp4("paths_a.mp4", num_frames=16)), str(make_mp4("paths_b.mp4", num_frames=12, fps=4))


@pytest.fixture(scope="module")
def rm(rm_dir) -> RewardModel:
    return RewardModel.from_pretrained(rm_dir, device="cpu", max_new_tokens=MAX_NEW_TOKENS)


def _settings(videos, tmp: Path) -> Settings:
    return Settings(Path(os.path.realpath(Path(videos[0]).parent)), tmp)


@pytest.fixture(scope="module")
def client(rm, rm_dir, videos, tmp_path_factory):
    """The server's app as `cot-rm serve --backend local` builds it: the local judge answers."""
    judge = Judge.from_model(rm.model, max_new_tokens=MAX_NEW_TOKENS, name=str(rm_dir.resolve()))
    app = create_app(_settings(videos, tmp_path_factory.mktemp("uploads")), LocalServedJudge(judge), None)
    with TestClient(app) as c:
        yield c


def _cli(capsys, rm_dir, *args) -> tuple[int, list[dict], str]:
    code = cli.main(["judge", "--model", str(rm_dir), *map(str, args), "--max-new-tokens", str(MAX_NEW_TOKENS),
                     "--no-cache"])  # fmt: skip
    out = capsys.readouterr()
    return code, [json.loads(line) for line in out.out.splitlines()], out.err


def _flags(sampling: dict) -> list[str]:
    return [x for k, v in sampling.items() for x in (f"--{k}", str(v))]


# --------------------------------------------------------------------------- the same on every path


def test_a_seeded_sampled_judgment_is_the_same_from_cli_server_and_api(rm, rm_dir, videos, client, capsys):
    code, (by_cli,), _ = _cli(capsys, rm_dir, videos[0], "--prompt", PROMPT, *_flags(SAMPLED))
    resp = client.post("/v1/judge", json={"video": videos[0], "prompt": PROMPT, **SAMPLED})
    assert code == 0 and resp.status_code == 200, resp.text
    by_api = rm.score(videos[0], PROMPT, judgments=True, **SAMPLED).judgments[0]
    assert by_cli["samples"]["k"] == 2 and by_cli["samples"]["seed"] == 5
    assert len({d["rationale"] for d in by_cli["samples"]["judgments"]}) == 2  # two real draws
    assert by_cli == resp.json() == by_api
    again = client.post("/v1/judge", json={"video": videos[0], "prompt": PROMPT, **SAMPLED})
    assert again.json() == by_cli  # the same request, the same result
    other = client.post("/v1/judge", json={"video": videos[0], "prompt": PROMPT, **SAMPLED, "seed": 6})
    assert other.json()["samples"]["judgments"][0] == by_cli["samples"]["judgments"][1]  # draw s: seed + s


@pytest.mark.parametrize("sampling", [{}, SAMPLED], ids=["greedy", "sampled"])
def test_a_pair_gets_the_same_probabilities_from_cli_server_and_api(
    rm, rm_dir, videos, client, capsys, sampling
):
    code, (by_cli,), _ = _cli(capsys, rm_dir, "--pair", *videos, "--prompt", PROMPT, *_flags(sampling))
    resp = client.post("/v1/judge/pair", json={"video_a": videos[0], "video_b": videos[1], "prompt": PROMPT,
                                               **sampling})  # fmt: skip
    assert code == 0 and resp.status_code == 200, resp.text
    by_api = rm.compare(*videos, PROMPT, **sampling)
    assert by_cli == resp.json() == by_api
    assert set(by_cli) == {"probs", "tie_theta", "a", "b", "model", "protocol_version"}
    assert by_cli["tie_theta"] == 2.5 and [by_cli["a"]["id"], by_cli["b"]["id"]] == list(videos)
    assert by_cli["probs"] == probabilities(by_cli["a"]["scores"], by_cli["b"]["scores"], rm.model.config)
    for p in by_cli["probs"].values():
        assert list(p) == list(OUTCOMES) and sum(p.values()) == pytest.approx(1.0, abs=1e-12)
    assert ("samples" in by_cli["a"]) == bool(sampling)


def test_a_pair_with_its_own_prompt_for_b(rm, videos, client):
    body = {"video_a": videos[0], "video_b": videos[1], "prompt": PROMPT, "prompt_b": "a blue circle"}
    resp = client.post("/v1/judge/pair", json=body)
    assert resp.status_code == 200, resp.text
    assert resp.json() == rm.compare(*videos, PROMPT, prompt_b="a blue circle")
    same = client.post("/v1/judge/pair", json={**body, "video_b": videos[0], "prompt_b": PROMPT}).json()
    assert [same["a"]["id"], same["b"]["id"]] == [videos[0], f"{videos[0]}#2"]  # as `cot-rm judge` names it
    # one video twice: equal up to the float noise of the judge's reused prefixes (cot_rm.judge.prefix)
    assert same["probs"]["overall"]["A"] == pytest.approx(same["probs"]["overall"]["B"], abs=1e-6)


def test_a_pair_of_uploads(videos, client):
    files = {"file_a": ("a.mp4", Path(videos[0]).read_bytes(), "video/mp4"),
             "file_b": ("b.mp4", Path(videos[1]).read_bytes(), "video/mp4")}  # fmt: skip
    resp = client.post("/v1/judge/pair", files=files, data={"prompt": PROMPT, "samples": "2", "seed": "5"})
    assert resp.status_code == 200, resp.text
    by_path = client.post("/v1/judge/pair", json={"video_a": videos[0], "video_b": videos[1], "prompt": PROMPT,
                                                  "samples": 2, "seed": 5}).json()  # fmt: skip
    assert [resp.json()["a"]["id"], resp.json()["b"]["id"]] == ["a.mp4", "b.mp4"]
    assert resp.json()["probs"] == by_path["probs"]
    assert not list(client.app.state.settings.upload_dir.iterdir())  # the uploads are deleted once judged


# ---------------------------------------------------------------------------------- the vLLM backend


class _Engine:
    """Stands in for vLLM's chat route: an answer whose scores follow the request's seed and temperature."""

    def __init__(self):
        self.bodies: list[dict] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.bodies.append(body)
        s = 1 + body["seed"] % 5 if body["temperature"] > 0 else 3
        answer = {"visual_quality": s, "text_alignment": 3, "physical_consistency": 4, "overall": s}
        text = f"<think>Draw {body['seed']}.</think>\n<answer>{json.dumps(answer)}</answer>"
        return httpx.Response(
            200, json={"choices": [{"message": {"content": text}, "finish_reason": "stop"}]}
        )


def test_the_vllm_backend_seeds_each_draw_and_summarises_like_the_local_judge(rm, videos, tmp_path):
    engine = _Engine()
    served = ServedJudge(Judge.from_model(rm.model, max_new_tokens=MAX_NEW_TOKENS), "http://engine", "m")

    async def start():  # on the app's loop, as `cot-rm serve` starts it, with the stand-in as its engine
        served.start()
        served.client = httpx.AsyncClient(transport=httpx.MockTransport(engine))

    app = create_app(
        _settings(videos, tmp_path), served, "http://engine", on_startup=start, on_shutdown=served.stop
    )
    with TestClient(app) as c:
        body = {
            "video": videos[0],
            "prompt": PROMPT,
            "samples": 3,
            "temperature": 0.9,
            "top_p": 0.8,
            "seed": 40,
        }
        first, again = c.post("/v1/judge", json=body), c.post("/v1/judge", json=body)
        events = [json.loads(x) for x in c.post("/v1/judge?stream=1", json=body).text.splitlines()]
        pair = c.post("/v1/judge/pair", json={"video_a": videos[0], "video_b": videos[1], "prompt": PROMPT})
    j = first.json()
    assert first.status_code == 200 and again.json() == j, first.text
    assert sorted(b["seed"] for b in engine.bodies[:3]) == [40, 41, 42]  # draw s: seed + s
    assert {(b["temperature"], b["top_p"]) for b in engine.bodies[:3]} == {(0.9, 0.8)}
    assert [d["answer_scores"]["overall"] for d in j["samples"]["judgments"]] == [1.0, 2.0, 3.0]
    assert j["answer_scores"]["overall"] == 2.0 and j["samples"]["seed"] == 40 and j["samples"]["k"] == 3
    assert {e["draw"] for e in events if e["event"] == "turn"} == {0, 1, 2}
    assert events[-1]["event"] == "judgment" and events[-1]["judgment"]["answer_scores"] == j["answer_scores"]
    assert pair.status_code == 200 and engine.bodies[-1]["temperature"] == 0  # greedy without samples
    p = pair.json()
    assert p["probs"] == probabilities(p["a"]["scores"], p["b"]["scores"], rm.model.config)


# ------------------------------------------------------------------------------------------ refusals


@pytest.fixture(scope="module")
def bare(videos, tmp_path_factory):
    """The app with no judge behind it: every refusal below comes before a judgment would start."""
    with TestClient(create_app(_settings(videos, tmp_path_factory.mktemp("bare")), None, None)) as c:
        yield c


@pytest.mark.parametrize(
    ("route", "extra", "says"),
    [
        ("/v1/judge/pair", {"video_b": None}, "video_b: a path or URL (string) is required, or upload the file as `file_b`"),
        ("/v1/judge/pair", {"prompt_b": " "}, "prompt_b: a non-empty string, or leave it out"),
        ("/v1/judge", {"samples": 0}, "samples must be an integer >= 1"),
        ("/v1/judge", {"samples": True}, "samples must be an integer >= 1"),
        ("/v1/judge", {"samples": 17}, "samples: at most 16 draws per request, got 17"),
        ("/v1/judge/pair", {"samples": 2, "temperature": 0}, "temperature must be a number > 0"),
        ("/v1/judge", {"samples": 2, "top_p": 1.5}, "top_p must be a number in (0, 1]"),
        ("/v1/judge", {"samples": 2, "seed": -1}, "seed must be an integer from 0 to"),
        ("/v1/judge", {"temperature": 0.7, "seed": 3}, "temperature, seed: for sampled judging only; add samples"),
        ("/v1/judge", {"greedy": False}, "unknown field(s) ['greedy']: /v1/judge takes"),
    ],
)  # fmt: skip
def test_bad_values_are_400_saying_what_to_change(bare, videos, route, extra, says):
    body = {"video": videos[0]} if route == "/v1/judge" else {"video_a": videos[0], "video_b": videos[1]}
    body = {k: v for k, v in {**body, "prompt": PROMPT, **extra}.items() if v is not None}
    resp = bare.post(route, json=body)
    assert resp.status_code == 400 and says in resp.json()["error"], resp.text


def test_bad_forms_are_400_too(bare, videos):
    clip = ("a.mp4", Path(videos[0]).read_bytes(), "video/mp4")
    for files, data, says in [({"file_a": clip}, {"prompt": PROMPT}, "file_b: a video file is required"),
                              ({"file_a": clip, "file_b": clip}, {"prompt": PROMPT, "samples": "two"},
                               "samples: 'two' is not a number"),
                              ({"file_a": clip, "file_b": clip}, {"prompt": PROMPT, "video_a": "x"},
                               "unknown form field(s) ['video_a']")]:  # fmt: skip
        resp = bare.post("/v1/judge/pair", files=files, data=data)
        assert resp.status_code == 400 and says in resp.json()["error"], resp.text
    assert not list(bare.app.state.settings.upload_dir.iterdir())  # nothing left behind


def test_the_local_backend_has_no_openai_routes(client):
    resp = client.get("/v1/models")
    assert resp.status_code == 404 and "--backend local" in resp.json()["error"]


def test_cli_and_api_refuse_bad_pairs_and_sampling(rm, rm_dir, videos, tmp_path, capsys):
    for args, says in [(("--pair", videos[0]), "--pair takes two videos, A and B, got 1"),
                       (("--pair", *videos, videos[0]), "--pair takes two videos, A and B, got 3"),
                       ((videos[0], "--pair", *videos), "not both"),
                       ((), "no video given"),
                       (("--pair", videos[0], tmp_path / "none.mp4"), "none.mp4"),
                       ((videos[0], "--samples", "2", "--seed", "-3"), "--seed must be an integer from 0"),
                       ((videos[0], "--samples", "2", "--top-p", "0"), "--top-p must be a number in (0, 1]")]:  # fmt: skip
        code, out, err = _cli(capsys, rm_dir, *args, "--prompt", PROMPT)
        assert code == 2 and out == [] and says in err and len(err.strip().splitlines()) == 1, err
    with pytest.raises(ValueError, match="temperature: for sampled judging only"):
        rm.score(videos[0], PROMPT, temperature=0.5)
    with pytest.raises(ValueError, match="samples must be an integer >= 1"):
        rm.compare(*videos, PROMPT, samples=0)
    assert Draws.of() is None and Draws.of(samples=3) == Draws(3, 0.7, 1.0, 0)
