"""The sample log: every judgment RFT drew, one JSON line each, keyed by (video id, draw index).

    log = SampleLog(out / "samples.jsonl", settings)
    done = log.load()              # {(video_id, draw): record}; writes the header on a fresh log
    log.append(records)            # one batch: written, flushed and fsynced before the next is drawn

Append-only, so a killed run loses at most the batch it was drawing: the next run reads the log back,
cuts a last line the kill left half-written, and draws only the keys that are missing. Nothing is drawn
twice (a key read twice keeps its first line and is counted), nothing written is lost.

The first line is a header with the settings the draws depend on (the checkpoint and a digest of its
head and config, temperature, top-p/k, lengths, seed): a log is never continued under other settings
(the draws would mix two distributions), the error says which settings differ. K is not among them:
raising `sampling.k` draws the new indices only, lowering it leaves the later draws unused.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

HEADER = "cot_rm_rft_samples"  # the header line's key and format version
DIGESTED = ("cot_rm.json", "head.safetensors")  # small, and rewritten whenever the checkpoint is


def checkpoint_digest(folder: str | Path) -> str:
    """A digest of the checkpoint's head and config (first 16 hex digits): which weights sampled."""
    h = hashlib.sha256()
    for name in DIGESTED:
        path = Path(folder) / name
        h.update(name.encode() + b"\0" + (path.read_bytes() if path.is_file() else b"") + b"\0")
    return h.hexdigest()[:16]


class SampleLog:
    """See the module doc. `settings`: a JSON-able dict that must match the log's header."""

    def __init__(self, path: str | Path, settings: dict):
        self.path, self.settings = Path(path), settings
        self.cut_bytes = 0  # of a half-written last line, dropped by `load`
        self.duplicates = 0  # keys read more than once (the first line is kept)

    def load(self) -> dict[tuple[str, int], dict]:
        """The draws in the log. Raises ValueError when it was sampled with other settings, or a
        complete line is not a draw (`FILE:LINE: reason`)."""
        if not self.path.is_file() or self.path.stat().st_size == 0:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps({HEADER: 1, "settings": self.settings}) + "\n")
            return {}
        raw = self.path.read_bytes()
        end = raw.rfind(b"\n") + 1
        if end < len(raw):  # the kill came mid-line: that draw is drawn again
            self.cut_bytes = len(raw) - end
            with open(self.path, "r+b") as fh:
                fh.truncate(end)
        lines = raw[:end].decode("utf-8").splitlines()
        self._check_header(lines[0] if lines else "")
        draws: dict[tuple[str, int], dict] = {}
        for lineno, line in enumerate(lines[1:], 2):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                key = (str(rec["video_id"]), int(rec["draw"]))
            except (ValueError, KeyError, TypeError) as err:
                raise ValueError(f"{self.path}:{lineno}: not a draw ({err}); the log is written only by "
                                 "cot-rm rft: delete it to sample again") from None  # fmt: skip
            if key in draws:
                self.duplicates += 1
                continue
            draws[key] = rec
        return draws

    def _check_header(self, line: str) -> None:
        try:
            header = json.loads(line)
        except ValueError:
            header = None
        if not isinstance(header, dict) or header.get(HEADER) != 1:
            raise ValueError(f"{self.path}:1: not a cot-rm rft sample log; give another train.output_dir")
        old = header.get("settings") or {}
        if differ := sorted(
            k for k in old.keys() | self.settings.keys() if old.get(k) != self.settings.get(k)
        ):
            shown = ", ".join(f"{k} {old.get(k)!r} -> {self.settings.get(k)!r}" for k in differ[:4])
            raise ValueError(
                f"{self.path} holds draws sampled with other settings ({shown}); sample with the old ones, "
                "give another train.output_dir, or delete the log to sample again"
            )

    def append(self, records: list[dict]) -> None:
        """Write `records` at the end in one write, flushed to disk before returning."""
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
        with open(self.path, "ab") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
