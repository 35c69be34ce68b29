"""Does the SFT head fail on the critiques the model writes itself? A diagnostic, not a stage.

SFT trains the head on the teacher's critiques (teacher-forced); at judging time it reads the model's own,
which name few of the defects present. This bench judges videos with a checkpoint as `cot-rm eval` does
(greedy, the tool loop), keeps the hidden state the head reads at `<|reward|>` after each own critique
and after the video and prompt alone (no critique, as SFT's rationale dropout trains it), and fits ridge
readers of those states to the scores of one world's videos (`--fit`); then scores them on another
world's held-out pairs (`--test`), beside the checkpoint's own head and answer:

    head           the checkpoint's head as `cot-rm eval` reports it (head_min: `overall` as the minimum
                   of its calibrated dimensions)
    answer         the generated answer's scores
    video_only     the checkpoint's head on the video and prompt alone
    refit_own      ridge on the state after the model's own critique, fitted to the --fit videos' scores
    refit_video    ridge on the video-and-prompt-only state
    refit_both     ridge on both states side by side
    *_min          the same readers with `overall` read as the minimum of their standardised dimensions
                   (the toy world's rule)

Accuracy without ties per dimension (`cot_rm.train.report.accuracy`). The ridge penalty is picked on
the --fit world's val split. States are cached in --out, so a rerun only refits.

    .venv/bin/python bench/head_refit.py --model runs/v2/sft --fit runs/v2/toy --test runs/w7 --out runs/refit
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from judge_ceiling import ridge  # a sibling in bench/ (on sys.path when run as bench/head_refit.py)

from cot_rm.judge.local import Judge
from cot_rm.model.modeling import ThinkThenScore
from cot_rm.schema import read_jsonl
from cot_rm.train.report import accuracy

PENALTIES = (0.1, 1.0, 10.0, 100.0, 1e3, 1e4, 1e5)


def judged_states(
    judge: Judge, items: list[tuple[str, str, str]]
) -> tuple[list[dict], torch.Tensor, torch.Tensor]:
    """(judgments, states after the own critique [N, H], states after the video and prompt alone [N, H])."""
    seen: list[torch.Tensor] = []
    head = judge.model.head
    original = head.forward_dist

    def keep(hidden):  # the head's input, in call order: one row per judged conversation
        seen.append(hidden.detach().float().reshape(-1, hidden.shape[-1]))
        return original(hidden)

    head.forward_dist = keep
    try:
        records = judge.judge(items)
        own = torch.cat(seen)
        seen.clear()
        judge.score_video_only(items)
        alone = torch.cat(seen)
    finally:
        head.forward_dist = original
    assert len(own) == len(alone) == len(items), (len(own), len(alone), len(items))
    return records, own, alone


def cached(out: Path, name: str, judge: Judge, items) -> dict:
    path = out / f"{name}.pt"
    if path.is_file():
        return torch.load(path)
    records, own, alone = judged_states(judge, items)
    data = {"records": records, "own": own, "alone": alone, "items": items}
    torch.save(data, path)
    return data


def fit(train_x, train_y, val_x, val_y, *apply_to: torch.Tensor) -> tuple[list[torch.Tensor], float]:
    """`judge_ceiling.ridge` with the penalty of least val MSE: its predictions on each of `apply_to`."""
    best = min(PENALTIES, key=lambda l2: float(((ridge(train_x, train_y, val_x, l2) - val_y) ** 2).mean()))
    return [ridge(train_x, train_y, x, best) for x in apply_to], best


def as_judged(items, scores: torch.Tensor, dims: list[str], overall_as_min: bool = False) -> dict:
    out = {}
    for (_, path, prompt), row in zip(items, scores.tolist(), strict=True):
        s = dict(zip(dims, row, strict=True))
        if overall_as_min and "overall" in s:
            s["overall"] = min(v for d, v in s.items() if d != "overall")
        out[(path, prompt)] = {"scores": s}
    return out


def standardised(scores: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return (scores - ref.mean(0)) / ref.std(0).clamp(min=1e-6)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="an SFT (or GRPO) checkpoint folder")
    p.add_argument("--fit", required=True, help="toy-world folder whose train/val videos the readers fit")
    p.add_argument("--test", required=True, help="toy-world folder whose test pairs score them")
    p.add_argument("--fit-limit", type=int, default=160, help="train videos judged for fitting (spread)")
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--out", required=True, help="folder for the cached states and results.json")
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    model = ThinkThenScore.from_pretrained(a.model).eval()
    judge = Judge.from_model(model, max_new_tokens=a.max_new_tokens)
    dims = list(model.config.dimensions)

    rows = read_jsonl(Path(a.fit) / "pointwise.jsonl", kind="pointwise")
    train = [r for r in rows if r.split == "train"]
    train = [train[int(i * len(train) / a.fit_limit)] for i in range(min(a.fit_limit, len(train)))]
    val = [r for r in rows if r.split == "val"]
    labels = {name: torch.tensor([[r.scores[d] for d in dims] for r in part], dtype=torch.float)
              for name, part in (("train", train), ("val", val))}  # fmt: skip
    states = {name: cached(out, f"fit_{name}", judge, [(r.id, r.video, r.prompt) for r in part])
              for name, part in (("train", train), ("val", val))}  # fmt: skip

    pairs = [q for q in read_jsonl(Path(a.test) / "pairs.jsonl", kind="pairwise") if q.split == "test"]
    keys = list(dict.fromkeys((v, pr) for q in pairs for v, pr in ((q.video_a, q.prompt), (q.video_b, q.prompt_b or q.prompt))))  # fmt: skip
    items = [(f"t{i}", v, pr) for i, (v, pr) in enumerate(keys)]
    test = cached(out, "test", judge, items)

    judged = {(path, prompt): rec for (_, path, prompt), rec in zip(items, test["records"], strict=True)}
    parsed = sum(r["parse_error"] is None for r in test["records"])
    results = {"pairs": len(pairs), "videos": len(items), "parse_rate": round(parsed / len(items), 3),
               "head": accuracy(pairs, judged, "scores", dims),
               "answer": accuracy(pairs, judged, "answer_scores", dims)}  # fmt: skip
    head_scores = torch.tensor(
        [[(r["scores"] or {}).get(d, float("nan")) for d in dims] for r in test["records"]]
    )
    results["head_min"] = accuracy(pairs, as_judged(items, head_scores, dims, True), "scores", dims)
    raw_alone = model.head(test["alone"]).detach()
    results["video_only"] = accuracy(pairs, as_judged(items, raw_alone, dims), "scores", dims)
    penalties = {}
    for name, pick in (("own", lambda s: s["own"]), ("video", lambda s: s["alone"]),
                       ("both", lambda s: torch.cat([s["own"], s["alone"]], 1))):  # fmt: skip
        train_x, val_x = pick(states["train"]), pick(states["val"])
        (scores, ref), penalties[name] = fit(
            train_x, labels["train"], val_x, labels["val"], pick(test), train_x
        )
        results[f"refit_{name}"] = accuracy(pairs, as_judged(items, scores, dims), "scores", dims)
        z = standardised(scores, ref)
        results[f"refit_{name}_min"] = accuracy(pairs, as_judged(items, z, dims, True), "scores", dims)
    results["penalties"] = penalties
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
