"""`DIR/report.md` of `cot-rm eval`: the metrics as tables (head and generated answer) and the protocol."""

from __future__ import annotations

import json
from pathlib import Path

from eval import metrics, probes


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def _pairwise_table(result: dict, answer: dict) -> list[str]:
    fixed = any("fixed_eps" in m for m in result["pairwise"].values())
    keys = (
        "acc_without_ties",
        "acc_with_ties",
        "tie_eps",
        *(("acc_with_ties_fixed_eps", "fixed_eps") if fixed else ()),
    )
    head = "| dimension | acc w/o ties | acc w/ ties | eps (searched here) |"
    head += " acc w/ ties, fixed eps | fixed eps |" if fixed else ""
    lines = ["", "## Pairwise (head" + (" / answer)" if answer else ")"), "", head + " n | ties |"]
    lines.append("|---" * (len(keys) + 3) + "|")
    for dim, m in result["pairwise"].items():
        a = answer.get("pairwise", {}).get(dim, {})
        cells = [_fmt(m.get(k)) + (f" / {_fmt(a.get(k))}" if answer and k in a else "") for k in keys]
        lines.append(f"| {dim} | {' | '.join(cells)} | {m['n']} | {m['n_ties']} |")
    return lines


def _probs_table(result: dict) -> list[str]:
    """The head's pair probabilities against the labels, beside the accuracies of the table above."""
    lines = ["", "## Pair probabilities (head: P(A better), P(tie), P(B better))", ""]
    lines += ["| dimension | log-loss | Brier | ECE | acc (most probable) | acc w/o ties | acc w/ ties | n | missing |",
              "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for dim, m in result["pair_probs"].items():
        acc = result["pairwise"].get(dim, {})
        cells = [_fmt(m[k]) for k in ("log_loss", "brier", "ece", "acc")]
        cells += [_fmt(acc.get(k)) for k in ("acc_without_ties", "acc_with_ties")]
        lines.append(f"| {dim} | {' | '.join(cells)} | {m['n']} | {m['n_missing']} |")
    return lines


def _pointwise_table(result: dict, answer: dict) -> list[str]:
    lines = ["", "## Pointwise (head" + (" / answer)" if answer else ")"), ""]
    lines += ["| dimension | SRCC | PLCC | KRCC | n |", "|---|---|---|---|---|"]
    for dim, m in result["pointwise"].items():
        a = answer.get("pointwise", {}).get(dim, {})
        cells = [
            _fmt(m.get(k)) + (f" / {_fmt(a.get(k))}" if answer else "") for k in ("srcc", "plcc", "krcc")
        ]
        lines.append(f"| {dim} | {' | '.join(cells)} | {m['n']} |")
    return lines


def _protocol_lines(result: dict) -> list[str]:
    ties = result.get("tie_handling", {})
    lines = ["", "## Protocol", "", f"- ties: {metrics.TIE_RULE}; {ties.get('acc_with_ties', '')}"]
    if ties.get("fixed_eps") is not None:
        lines.append(f"- fixed eps: {json.dumps(ties['fixed_eps'])} ({ties.get('fixed_eps_source')})")
    if bench := result.get("bench"):
        skipped = f", skipped {json.dumps(bench['skipped'])}" if bench.get("skipped") else ""
        lines.append(f"- bench: {bench['name']} ({bench['data']}), {bench['n_records']} records{skipped}")
    if proto := result.get("protocol"):
        lines.append(
            f"- model: {proto['model']} (checkpoint {proto['checkpoint']}, eval_key {proto['eval_key']})"
        )
        lines.append(f"- decoding: {proto['decoding']}, max_new_tokens {proto['max_new_tokens']}")
        if "pair_probs" in proto:
            lines.append(f"- pair probabilities: {proto['pair_probs']}")
        lines.append(f"- frames: {json.dumps(proto['frames'])}; pixels: {json.dumps(proto['pixels'])}; "
                     f"tool images: {proto['tool_max_pixels']} pixels")  # fmt: skip
        lines.append(f"- protocol {proto['protocol_version']}, {proto['device']}, {proto['dtype']}")
        lines += [f"- averaging, {k}: {v}" for k, v in proto["averaging"].items()]
    return lines


def report_markdown(result: dict) -> str:
    """The metrics as tables (head and, when judged, the generated answer), then the protocol."""
    answer = result.get("answer", {})
    lines = ["# cot-rm eval", ""]
    for key in ("n_records", "n_videos", "parse_failure_rate", "n_video_errors", "n_pairs", "n_pointwise"):
        if key in result:
            lines.append(f"- {key}: {_fmt(result[key])}")
    for video, why in result.get("video_errors", {}).items():
        lines.append(f"- unreadable video {video}: {why}")
    if result.get("unscored_dimensions"):
        lines.append(
            f"- labels left out (the checkpoint does not score them): {result['unscored_dimensions']}"
        )
    for dim, s in result.get("score_spread", {}).items():
        lines.append(
            f"- score spread, {dim}: mean std {_fmt(s['mean_std'])}, max {_fmt(s['max_std'])} (n {s['n']})"
        )
    if f := result.get("faithfulness"):
        lines.append(
            f"- faithful critiques (toy world, {f['videos']} videos): {_fmt(f['recall'])} of the "
            f"{f['defects_present']} defects present named; {_fmt(f['false_mentions'])} of critiques name "
            "a defect the video does not have"
        )
    if d := result.get("described"):
        said = ", ".join(f"{k} {v['right']}/{v['said']}" for k, v in d.items())
        lines.append(f"- what the critiques say is drawn, right / stated (toy world): {said}")
    if result.get("pairwise"):
        lines += _pairwise_table(result, answer)
    if result.get("pair_probs"):
        lines += _probs_table(result)
    if result.get("pointwise"):
        lines += _pointwise_table(result, answer)
    return "\n".join(lines + _protocol_lines(result)) + "\n"


def write_report(out: Path) -> None:
    """DIR/report.md from DIR/metrics.json and DIR/probes.json, whichever exist."""
    parts = []
    if (out / "metrics.json").exists():
        parts.append(report_markdown(json.loads((out / "metrics.json").read_text())))
    if (out / "probes.json").exists():
        parts.append(probes.report_section(json.loads((out / "probes.json").read_text())))
    (out / "report.md").write_text("\n".join(parts), encoding="utf-8")
