"""`from cot_rm import RewardModel`: the scores `cot-rm judge` gives, on files or on frames in memory (a
file's frames decoded at full size score as the file does, tool rounds included), inside a toy training
loop that holds its frames as tensors; bad inputs refused with what to do."""

from __future__ import annotations

import json
import math
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from test_clip import decode_all
from torch import nn
from transformers import LogitsProcessor, LogitsProcessorList

from cot_rm import RewardModel, cli
from cot_rm import protocol as P
from cot_rm.media.video import Sampling
from cot_rm.model.checkpoint import CheckpointError
from cot_rm.model.modeling import ThinkThenScore

MAX_NEW_TOKENS = 16
PROMPT = "a red square moving right"
ANSWER = (
    '<answer>{"visual_quality": 4, "text_alignment": 3, "physical_consistency": 5, "overall": 3}</answer>'
)


@pytest.fixture(scope="module")
def rm_dir(tiny_qwen25vl_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("api") / "ckpt"
    ThinkThenScore.from_base(
        tiny_qwen25vl_dir, sampling=Sampling(num_frames=4, max_pixels=56 * 56)
    ).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def rm(rm_dir) -> RewardModel:
    return RewardModel.from_pretrained(rm_dir, device="cpu", max_new_tokens=MAX_NEW_TOKENS)


class _Force(LogitsProcessor):
    """Every generated token is the next one of `ids` (then the end of the turn)."""

    def __init__(self, ids: list[int]):
        self.ids, self.start = ids, None

    def __call__(self, input_ids, scores):
        self.start = input_ids.shape[1] if self.start is None else self.start
        mask = torch.full_like(scores, float("-inf"))
        mask[:, self.ids[min(input_ids.shape[1] - self.start, len(self.ids) - 1)]] = 0
        return scores + mask


@contextmanager
def _scripted(rm: RewardModel, turns: list[str]):
    """The model writes `turns`, one per round (a random tiny model would never call the tool)."""
    tok, vlm = rm.model.processor.tokenizer, rm.model.vlm
    end = tok.convert_tokens_to_ids("<|im_end|>")
    scripts = iter([tok.encode(t, add_special_tokens=False) + [end] for t in turns])
    generate = vlm.generate
    vlm.generate = lambda **kw: generate(**{**kw, "max_new_tokens": 200}, logits_processor=LogitsProcessorList([_Force(next(scripts))]))  # fmt: skip
    try:
        yield
    finally:
        vlm.generate = generate


def test_score_equals_cot_rm_judge(rm, rm_dir, sample_mp4, make_mp4, tmp_path, capsys):
    other = make_mp4("api_other.mp4", num_frames=12)
    videos, prompts = [str(sample_mp4), str(other), str(sample_mp4)], [PROMPT, "a blue circle", PROMPT]
    out = rm.score(videos, prompts, judgments=True)
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n")
    code = cli.main(["judge", "--model", str(rm_dir), *videos, "--prompts-file", str(tmp_path / "prompts.txt"),
                     "--max-new-tokens", str(MAX_NEW_TOKENS), "--no-cache"])  # fmt: skip
    judged = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 0 and [j["id"] for j in out.judgments] == [j["id"] for j in judged]
    for ours, theirs in zip(out.judgments, judged, strict=True):
        assert {k: v for k, v in ours.items() if k != "scores"} == {
            k: v for k, v in theirs.items() if k != "scores"
        }
    expected = torch.tensor([[j["scores"][d] for d in rm.dimensions] for j in judged])
    assert torch.allclose(out.rewards, expected.float(), atol=1e-5, rtol=0)
    assert out.rewards.shape == (3, 4) and out.std is None and torch.equal(out["overall"], out.rewards[:, 3])
    assert list(out.as_dict()) == rm.dimensions and out.scale == [1, 2, 3, 4, 5]


def test_frames_decoded_from_a_file_score_as_the_file(rm, sample_mp4):
    frames, fps = decode_all(sample_mp4)  # every frame, full size, uint8 RGB: what a caller holds
    turns = ["<think>Let me look closer.</think>\n" + P.format_tool_call([3, 17, 30]), f"<think>Frame 17 is sharp.</think>\n{ANSWER}"]  # fmt: skip
    runs = {}
    for name, video, rate in [("file", str(sample_mp4), None), ("array", frames, fps),
                              ("tensor batch", torch.from_numpy(frames)[None], fps)]:  # fmt: skip
        with _scripted(rm, turns):
            runs[name] = rm.score(video, PROMPT, fps=rate, judgments=True)
    file = runs["file"]
    assert file.judgments[0]["tool_calls"] == [{"frames": [3, 17, 30], "error": None}]
    assert file.judgments[0]["parse_error"] is None
    for name in ("array", "tensor batch"):
        j = runs[name].judgments[0]
        assert (
            j["tool_calls"] == file.judgments[0]["tool_calls"]
            and j["rationale"] == file.judgments[0]["rationale"]
        )
        assert torch.allclose(runs[name].rewards, file.rewards, atol=1e-5, rtol=0), name
        assert torch.allclose(runs[name].answer_probs, file.answer_probs, atol=1e-5, rtol=0), name
    assert torch.equal(file.answer_scores, torch.tensor([[4.0, 3.0, 5.0, 3.0]]))
    assert torch.allclose(file.answer_probs.sum(-1), torch.ones(1, 4, dtype=file.answer_probs.dtype))
    greedy = rm.score([str(sample_mp4), frames], PROMPT, fps=[None, fps])  # and the model's own turns
    assert torch.allclose(greedy.rewards[0], greedy.rewards[1], atol=1e-5, rtol=0)


class ToyGenerator(nn.Module):
    """A Gaussian policy over the pixels of a [T, H, W, 3] clip: its mean is the parameter."""

    def __init__(self, frames: int = 8, size: int = 32, sigma: float = 0.1):
        super().__init__()
        self.mean = nn.Parameter(torch.full((frames, size, size, 3), 0.5))
        self.sigma = sigma

    def forward(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(uint8 frames [B, T, H, W, 3], log-probability of each clip [B])."""
        dist = torch.distributions.Normal(self.mean.expand(batch, *self.mean.shape), self.sigma)
        x = dist.sample()
        frames = (x.clamp(0, 1) * 255).round().to(torch.uint8)
        return frames, dist.log_prob(x).flatten(1).sum(1)


def test_rewards_drive_a_toy_generator_step(rm):
    torch.manual_seed(0)
    gen = ToyGenerator()
    opt = torch.optim.SGD(gen.parameters(), lr=1e-4)
    prompts = ["a red square", "a blue circle", "two green triangles"]
    before = gen.mean.detach().clone()
    for _ in range(2):  # REINFORCE: the reward, centred in the batch, weights each clip's log-probability
        frames, logp = gen(len(prompts))
        rewards = rm.score(frames, prompts, fps=8)["overall"]
        assert rewards.shape == (3,) and torch.isfinite(rewards).all() and not rewards.requires_grad
        loss = -(logp * (rewards - rewards.mean())).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert not torch.equal(gen.mean, before)  # the reward reached the generator
    with torch.no_grad():  # the same clips scored directly give the same rewards
        again = rm.score([f.numpy() for f in frames], prompts, fps=8)["overall"]
    assert torch.allclose(again, rewards, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("videos", "prompts", "fps", "says"),
    [
        (np.zeros((2, 4, 8, 8, 3), np.uint8), ["a", "b", "c"], 8, "2 videos but 3 prompts"),
        (np.zeros((2, 4, 8, 8, 3), np.uint8), "a", [8], "2 videos but 1 fps values"),
        ([np.zeros((4, 8, 8, 3), np.uint8)], "a", None, "video 0: frames need their fps"),
        ([np.zeros((4, 8, 8, 3), np.float32)], "a", 8, r"video 0: frames must be uint8 .*torch.uint8"),
        ([np.zeros((4, 3, 8, 8), np.uint8)], "a", 8, r"video 0: .*permute\(0, 2, 3, 1\)"),
        ([np.zeros((4, 8, 8, 3), np.uint8)], " ", 8, "prompt 0 is empty"),
        ([], "a", 8, "no videos"),
        (42, "a", 8, "videos must be a list"),
    ],
)
def test_bad_inputs_say_what_to_do(rm, videos, prompts, fps, says):
    with pytest.raises(ValueError, match=says):
        rm.score(videos, prompts, fps=fps)


def test_unreadable_files_are_nan_with_the_reason(rm, sample_mp4, tmp_path):
    out = rm.score([str(sample_mp4), str(tmp_path / "missing.mp4")], PROMPT, judgments=True)
    assert torch.isfinite(out.rewards[0]).all() and torch.isnan(out.rewards[1]).all()
    assert (
        out.judgments[1]["parse_error"].startswith("video_error: ")
        and "no such file" in out.judgments[1]["parse_error"]
    )
    with pytest.raises(CheckpointError, match="not a cot-rm checkpoint"):
        RewardModel.from_pretrained(tmp_path, device="cpu")
    with pytest.raises(KeyError, match="scores"):
        out["sharpness"]


def test_device_and_dtype_are_honoured_under_no_grad(rm_dir, sample_mp4):
    rm16 = RewardModel.from_pretrained(rm_dir, device="cpu", dtype="bfloat16", max_new_tokens=4)
    assert rm16.device == torch.device("cpu") and rm16.model.base_vlm.dtype == torch.bfloat16
    with torch.no_grad():
        out = rm16.score([str(sample_mp4)], PROMPT)
    assert out.rewards.dtype == torch.float32 and torch.isfinite(out.rewards).all()
    assert math.isfinite(float(out["overall"][0]))


def test_an_uncertainty_head_gives_its_std(tiny_qwen25vl_dir, sample_mp4, tmp_path):
    model = ThinkThenScore.from_base(
        tiny_qwen25vl_dir, sampling=Sampling(num_frames=4, max_pixels=56 * 56), uncertainty=True
    )
    rm = RewardModel(model.eval(), max_new_tokens=4)
    out = rm.score([str(sample_mp4), str(tmp_path / "missing.mp4")], PROMPT, judgments=True)
    assert out.std.shape == (2, 4) and torch.isnan(out.std[1]).all()  # the unreadable file: NaN, not absent
    expected = torch.tensor([out.judgments[0]["scores_std"][d] for d in rm.dimensions])
    assert torch.allclose(out.std[0], expected) and (out.std[0] > 0).all()
