"""GRPO rollout rewards, picked by name with weights from YAML (`build_rewards`).

Every reward is a picklable callable (TRL pickles reward functions for multi-process runs) with TRL 1.16's
reward-function signature: `reward(completions=..., **columns) -> list[float | None]`, one value per
completion, None where it cannot score (TRL turns None into NaN: left out of that reward's logged mean;
with the default `sum_then_normalize` it adds nothing to the sample's total).

A completion is a plain string (one turn) or TRL's conversational form: a list of message dicts, possibly
multi-turn (assistant turns with `tool_calls`, `tool` results, then the final answer). The final assistant
turn is parsed by `cot_rm.protocol.parse_judgment`, the same parser as evaluation and serving.

Dataset columns read (TRL passes every extra column as a keyword list, one entry per completion):

    reward        columns                                       None when
    format        -                                             never
    pairwise      pair_id, side ("A"|"B"), pair_label ({dim: A|B|tie})   no label / no parsed partner
    calibration   scores ({dim: number})                        no labelled dimension
    tool          defect_frames ([int]) or meta.defects[].frames, total_frames (int); all optional   never
    length        -                                             never

Dict columns may have None values (datasets fills missing struct keys with None): None means unlabelled.
A labelled sample whose own final turn does not parse gets 0, not None: its answer is wrong, not
unscorable (None would hand it the group mean under `normalize_then_sum`). That 0 is the training
signal only: parse failures are counted whatever the rewards are, as `rollout/parsed_frac` (and
`rollout/truncated_frac`) every step (cot_rm.train.grpo.trainer), and by reason under `format`.

Logging: each call passes its components to TRL's `log_metric` kwarg as `<reward>/<component>`
(e.g. `format/parse_failure_rate`, `calibration/mae`, `tool/invalid_rate`, `<reward>/coverage` = share
not None) and keeps them in `.last_metrics`; `format` also logs each sample's parse-error reason as the
`parse_error` column of TRL's completions table (`log_extra`). TRL itself logs `rewards/<name>/mean|std`.

Pair verdicts: the protocol has no format for judging two videos in one rollout (a judgment is
pointwise), so `pairwise` scores pointwise rollouts of a pair's two videos against each other only.
"""

from __future__ import annotations

import inspect
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from cot_rm.protocol import (
    JudgeSpec,
    Judgment,
    ParseError,
    ToolRequest,
    check_call,
    message_text,
    parse_judgment,
    parse_turn,
)

Completion = str | list[dict]
SIDES = ("A", "B")

# ------------------------------------------------------------------------------ reading completions


def messages_of(completion: Completion) -> list[dict]:
    """A completion as messages: a plain string is one assistant turn."""
    if isinstance(completion, str):
        return [{"role": "assistant", "content": completion}]
    return list(completion)


def final_turn(completion: Completion) -> str:
    """The text of the last assistant turn ("" when there is none)."""
    turns = [m for m in messages_of(completion) if m.get("role") == "assistant"]
    return message_text(turns[-1]) if turns else ""


def final_judgment(completion: Completion, spec: JudgeSpec = JudgeSpec()) -> Judgment | ParseError:
    return parse_judgment(final_turn(completion), spec)


def parse_failures(completions: Sequence[Completion], spec: JudgeSpec = JudgeSpec()) -> Counter:
    """How many final turns failed to parse, by `protocol.REASONS` reason."""
    out = (final_judgment(c, spec) for c in completions)
    return Counter(j.reason for j in out if isinstance(j, ParseError))


def parse_failure_rate(completions: Sequence[Completion], spec: JudgeSpec = JudgeSpec()) -> float:
    return sum(parse_failures(completions, spec).values()) / len(completions) if completions else 0.0


def defect_frames_of(meta: Mapping | None) -> list[int] | None:
    """Annotated defect frames of a toy-world record's meta (None when it carries no annotations)."""
    if not isinstance(meta, Mapping) or meta.get("defects") is None:
        return None
    return sorted({int(f) for d in meta["defects"] for f in (d.get("frames") or [])})


# ----------------------------------------------------------------------------------------- the base


class Reward:
    """Base: `score` returns (rewards, components); `__call__` records and logs the components."""

    name = ""
    abstains = False  # True when the reward may return None (its coverage is then logged)

    def __init__(self, spec: JudgeSpec = JudgeSpec()):
        self.spec = spec
        # TRL names a callable by __name__, so its mean is logged as rewards/<name>/mean
        self.__name__ = self.name
        self.last_metrics: dict[str, float] = {}

    def __call__(self, completions: Sequence[Completion], log_metric: Callable | None = None, **kwargs):
        rewards, metrics = self.score(list(completions), **kwargs)
        if self.abstains:
            metrics["coverage"] = sum(r is not None for r in rewards) / max(len(rewards), 1)
        self.last_metrics = metrics
        if callable(log_metric):
            for key, value in metrics.items():
                log_metric(f"{self.name}/{key}", value)
        return rewards

    def score(self, completions: list[Completion], **kwargs) -> tuple[list[float | None], dict[str, float]]:
        raise NotImplementedError

    def judgments(self, completions: list[Completion]) -> list[Judgment | ParseError]:
        return [final_judgment(c, self.spec) for c in completions]

    def __repr__(self) -> str:
        opts = {k: v for k, v in vars(self).items() if k not in ("spec", "last_metrics", "__name__")}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in opts.items())})"


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)


def _at(column: Sequence | None, i: int) -> Any:
    """Row i of a dataset column TRL passed (None when the dataset has no such column)."""
    return column[i] if column is not None else None


# ---------------------------------------------------------------------------------------- rewards


class FormatReward(Reward):
    """1 when the final turn parses as a Judgment (think + answer, every dimension in range), else 0."""

    name = "format"

    def score(self, completions, log_extra: Callable | None = None, **_):
        parsed = self.judgments(completions)
        reasons = [j.reason if isinstance(j, ParseError) else None for j in parsed]
        if callable(log_extra):
            log_extra("parse_error", reasons)
        rewards = [0.0 if r else 1.0 for r in reasons]
        return rewards, {"parse_failure_rate": 1.0 - _mean(rewards) if rewards else 0.0}


class PairwiseReward(Reward):
    """Agreement with the human preference of a pair, from pointwise rollouts of its two videos.

    A rollout of side A (B) of pair P is compared, on each labelled dimension, with the rollouts of
    side B (A) of P in the same batch whose final turns parse (its partners). The verdict is
    "tie" when |own - partner| <= tie_margin, else the side with the higher score.
    `compare="each"`: the dimension's agreement is the share of partner rollouts whose comparison gives
    the label (the chance that a random partner draw agrees; with integer scores, tie_margin 0 = equal);
    `compare="mean"`: 1 or 0 for the comparison with the partners' mean score.
    Reward = mean agreement over labelled dimensions (with `overall_weight` w and "overall" labelled
    beside others: w * overall + (1 - w) * mean of the others, VR-Thinker's 0.5/0.5).
    `ties=False` scores only the dimensions whose label is not a tie, so equal answers never earn credit
    (with many tie labels, as in the toy world, they otherwise earn it on each).
    None: no pair_id/side/label, or no partner in the batch that parsed (the sampler must put both
    videos of a pair in the same process's batch), or (`ties=False`) every labelled dimension a tie.
    0: own final turn does not parse.
    """

    name = "pairwise"
    abstains = True

    def __init__(
        self,
        spec: JudgeSpec = JudgeSpec(),
        tie_margin: float = 0.0,
        compare: str = "each",
        overall_weight: float | None = None,
        ties: bool = True,
    ):
        super().__init__(spec)
        if not tie_margin >= 0:
            raise ValueError(f"pairwise: tie_margin must be >= 0, got {tie_margin}")
        if compare not in ("each", "mean"):
            raise ValueError(f"pairwise: compare must be 'each' or 'mean', got {compare!r}")
        if overall_weight is not None and not 0 <= overall_weight <= 1:
            raise ValueError(f"pairwise: overall_weight must be in [0, 1], got {overall_weight}")
        if not isinstance(ties, bool):
            raise ValueError(f"pairwise: ties must be true or false, got {ties!r}")
        self.tie_margin, self.compare, self.overall_weight = float(tie_margin), compare, overall_weight
        self.ties = ties

    def score(self, completions, pair_id=None, side=None, pair_label=None, **_):
        n = len(completions)
        if pair_id is None or side is None or pair_label is None:
            return [None] * n, {}
        scores = [j.scores if isinstance(j, Judgment) else None for j in self.judgments(completions)]
        rewards, per_dim = [], {}
        for i in range(n):
            agree = self._agreement(i, scores, pair_id, side, self._pair_labels(pair_label[i]))
            if isinstance(agree, dict):
                for d, a in agree.items():
                    per_dim.setdefault(d, []).append(a)
                agree = self._combine(agree)
            rewards.append(agree)
        return rewards, {f"agree/{d}": _mean(v) for d, v in per_dim.items()}

    def _pair_labels(self, label: Any) -> dict[str, str]:
        label = {"overall": label} if isinstance(label, str) else label  # a bare preference is "overall"
        if not isinstance(label, Mapping):
            return {}
        wanted = (*SIDES, "tie") if self.ties else SIDES
        return {d: v for d, v in label.items() if d in self.spec.dimensions and v in wanted}

    def _agreement(self, i, scores, pair_id, side, labels) -> dict[str, float] | float | None:
        """{dim: agreement}, 0.0 when the own turn failed, None when it cannot be compared."""
        if pair_id[i] is None or side[i] not in SIDES or not labels:
            return None
        other = SIDES[1 - SIDES.index(side[i])]
        partners = [s for j, s in enumerate(scores) if pair_id[j] == pair_id[i] and side[j] == other and s]
        if not partners:
            return None
        if scores[i] is None:
            return 0.0
        own = scores[i]
        if self.compare == "mean":  # one comparison with the partners' mean score
            partners = [{d: _mean([p[d] for p in partners]) for d in labels}]
        return {
            d: _mean([self._agree(own[d] - p[d], side[i], other, v) for p in partners])
            for d, v in labels.items()
        }

    def _agree(self, diff: float, own_side: str, other: str, label: str) -> float:
        verdict = "tie" if abs(diff) <= self.tie_margin else (own_side if diff > 0 else other)
        return float(verdict == label)

    def _combine(self, agree: dict[str, float]) -> float:
        rest = [a for d, a in agree.items() if d != "overall"]
        w = self.overall_weight
        if w is None or "overall" not in agree or not rest:
            return _mean(list(agree.values()))
        return w * agree["overall"] + (1 - w) * _mean(rest)


class CalibrationReward(Reward):
    """Bell-shaped closeness of the answer's scores to the label (VQAThinker's score reward).

    Per labelled dimension: exp(-d^2 / (2 sigma^2)), d = answer score - label score; the reward is
    their mean. sigma is on the score scale (VQAThinker: 0.5 on 1-5; an error of 1 then earns
    exp(-2) = 0.135). None: no dimension of the spec labelled. 0: final turn does not parse.
    """

    name = "calibration"
    abstains = True

    def __init__(self, spec: JudgeSpec = JudgeSpec(), sigma: float = 0.5):
        super().__init__(spec)
        if not sigma > 0:
            raise ValueError(f"calibration: sigma must be > 0, got {sigma}")
        self.sigma = float(sigma)

    def score(self, completions, scores=None, **_):
        rewards, errors = [], []
        for i, j in enumerate(self.judgments(completions)):
            label = _at(scores, i) if isinstance(_at(scores, i), Mapping) else {}
            label = {d: float(v) for d, v in label.items() if d in self.spec.dimensions and _num(v)}
            if not label:
                rewards.append(None)
            elif not isinstance(j, Judgment):
                rewards.append(0.0)
            else:
                d = [j.scores[k] - v for k, v in label.items()]
                errors += [abs(x) for x in d]
                rewards.append(_mean([math.exp(-(x * x) / (2 * self.sigma**2)) for x in d]))
        return rewards, ({"mae": _mean(errors)} if errors else {})


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


class ToolUseReward(Reward):
    """Valid select_frames use, plus a bonus for looking at the annotated defect frames.

    Each non-final assistant turn is one tool round; each call in it counts once. A call is invalid
    when its turn does not parse as a tool request (that turn counts as one invalid call), when
    `protocol.check_call` refuses it (calls budget, frames per call, frames outside 0..total_frames-1
    when the `total_frames` column is given; earlier calls count toward the budget, valid or not, as in
    the judge loop), or when its tool result is an error. A final turn that is a tool request (the budget
    ran out) counts its calls too.
        reward = valid calls / calls  (no_call when there is none)
               + bonus * precision    (only with annotations: defect_frames, else meta.defects)
    precision = share of the frames looked at (validly selected or cited in the final critique) lying
    within `tolerance` frames of an annotated defect frame. With `gate` (default), 0 when the final turn
    does not parse: calls that lead to no judgment earn nothing. Never None.
    """

    name = "tool"

    def __init__(self, spec: JudgeSpec = JudgeSpec(), bonus: float = 0.5, tolerance: int = 0, no_call: float = 0.0,
                 gate: bool = True):  # fmt: skip
        super().__init__(spec)
        if bonus < 0 or tolerance < 0:
            raise ValueError(f"tool: bonus and tolerance must be >= 0, got {bonus}, {tolerance}")
        self.bonus, self.tolerance = float(bonus), int(tolerance)
        self.no_call, self.gate = float(no_call), bool(gate)

    def score(self, completions, defect_frames=None, meta=None, total_frames=None, **_):
        rewards, n_calls, n_invalid, precisions = [], 0, 0, []
        for i, (c, j) in enumerate(zip(completions, self.judgments(completions))):
            valid, invalid, looked = self._calls(messages_of(c), _at(total_frames, i))
            n_calls, n_invalid = n_calls + valid + invalid, n_invalid + invalid
            r = valid / (valid + invalid) if valid + invalid else self.no_call
            defects = _at(defect_frames, i)
            defects = defect_frames_of(_at(meta, i)) if defects is None else defects
            if defects:  # annotated, with defects: reward looking where they are
                looked |= set(j.frames_cited if isinstance(j, Judgment) else ())
                near = {f + k for f in defects for k in range(-self.tolerance, self.tolerance + 1)}
                precisions.append(len(looked & near) / len(looked) if looked else 0.0)
                r += self.bonus * precisions[-1]
            rewards.append(0.0 if self.gate and not isinstance(j, Judgment) else r)
        metrics = {"calls": n_calls / max(len(completions), 1)}
        if n_calls:
            metrics["invalid_rate"] = n_invalid / n_calls
        if precisions:
            metrics["defect_precision"] = _mean(precisions)
        return rewards, metrics

    def _calls(self, messages: list[dict], total: int | None) -> tuple[int, int, set[int]]:
        """(valid calls, invalid calls, frames validly selected) over the tool rounds of a rollout."""
        valid, invalid, seen, made = 0, 0, set(), 0
        last = max((k for k, m in enumerate(messages) if m.get("role") == "assistant"), default=-1)
        for k, m in enumerate(messages):
            if m.get("role") != "assistant":
                continue
            turn = parse_turn(message_text(m), self.spec)
            if k == last and not isinstance(turn, ToolRequest):
                continue  # the final answer (or its parse failure: the format reward's business)
            if not isinstance(turn, ToolRequest):
                invalid, made = invalid + 1, made + 1
                continue
            results = _tool_results(messages, k)
            for n, call in enumerate(turn.calls):
                refused = check_call(call, total if total is not None else 2**62, made, self.spec)
                errored = n < len(results) and _is_error(results[n])
                made += 1
                if refused or errored:
                    invalid += 1
                else:
                    valid += 1
                    seen.update(call.frames)
        return valid, invalid, seen


def _tool_results(messages: list[dict], k: int) -> list[dict]:
    """The tool messages that answer assistant turn k, in order (one per call)."""
    out = []
    for m in messages[k + 1 :]:
        if m.get("role") != "tool":
            break
        out.append(m)
    return out


def _is_error(message: dict) -> bool:
    """protocol.tool_turn errors read "Error: ..."; TRL's own tool loop writes "{'error': ...}"."""
    text = message_text(message).lstrip()
    return text.startswith("Error") or text.startswith("{'error'") or text.startswith('{"error"')


class LengthReward(Reward):
    """1 when the critique (the final turn's <think>) is inside [lo, hi], decaying linearly outside.

    DeScore's length band. Below lo the reward falls to 0 over `below` units (default lo: 0 at an empty
    critique); above hi it falls to 0 over `above` units (default hi: 0 at twice hi). `unit`: "words"
    (whitespace-separated, about 0.75 of a token count) or "chars". 0 when the final turn does not parse.
    """

    name = "length"

    def __init__(
        self,
        spec: JudgeSpec = JudgeSpec(),
        lo: int = 30,
        hi: int = 250,
        unit: str = "words",
        below: float | None = None,
        above: float | None = None,
    ):
        super().__init__(spec)
        if unit not in ("words", "chars"):
            raise ValueError(f"length: unit must be 'words' or 'chars', got {unit!r}")
        if not 0 <= lo <= hi:
            raise ValueError(f"length: need 0 <= lo <= hi, got lo={lo}, hi={hi}")
        self.lo, self.hi, self.unit = lo, hi, unit
        self.below = float(lo if below is None else below)
        self.above = float(hi if above is None else above)
        if self.below < 0 or self.above <= 0:
            raise ValueError(f"length: decay widths must be positive, got below={below}, above={above}")

    def band(self, n: float) -> float:
        if n < self.lo:
            return max(0.0, 1.0 - (self.lo - n) / self.below) if self.below else 0.0
        if n > self.hi:
            return max(0.0, 1.0 - (n - self.hi) / self.above)
        return 1.0

    def score(self, completions, **_):
        rewards, lengths = [], []
        for j in self.judgments(completions):
            if not isinstance(j, Judgment):
                rewards.append(0.0)
                continue
            n = len(j.think.split()) if self.unit == "words" else len(j.think)
            lengths.append(n)
            rewards.append(self.band(n))
        return rewards, ({"mean": _mean(lengths)} if lengths else {})


# ------------------------------------------------------------------------------ registry + weights

REWARDS: dict[str, type[Reward]] = {
    cls.name: cls for cls in (FormatReward, PairwiseReward, CalibrationReward, ToolUseReward, LengthReward)
}


def build_rewards(
    config: Mapping[str, float | Mapping[str, Any]], spec: JudgeSpec = JudgeSpec()
) -> tuple[list[Reward], list[float]]:
    """Rewards and their weights from a YAML mapping, in its order (TRL's `reward_weights` order).

    `{format: 0.1, pairwise: 0.7}` or with options `{calibration: {weight: 0.2, sigma: 1.0}}`
    (weight defaults to 1; weight 0 logs a reward without training on it).
    """
    if not isinstance(config, Mapping) or not config:
        raise ValueError(
            f"rewards must be a non-empty mapping of name -> weight, known: {', '.join(REWARDS)}"
        )
    funcs, weights = [], []
    for name, value in config.items():
        if name not in REWARDS:
            raise ValueError(f"unknown reward {name!r}; known rewards: {', '.join(REWARDS)}")
        options = dict(value) if isinstance(value, Mapping) else {"weight": value}
        weight = options.pop("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight):
            raise ValueError(f"reward {name!r}: weight must be a finite number, got {weight!r}")
        funcs.append(_make(name, options, spec))
        weights.append(float(weight))
    return funcs, weights


def _make(name: str, options: dict, spec: JudgeSpec) -> Reward:
    cls = REWARDS[name]
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "spec")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        allowed = ", ".join(["weight", *accepted])
        raise ValueError(f"reward {name!r}: unknown option {unknown[0]!r}; options: {allowed}")
    return cls(spec, **options)
