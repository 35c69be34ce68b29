"""Running a bench script the way a user does, for the bench tests: a subprocess from the repo root, its
markdown section appended to a scratch RESULTS.md (never bench/RESULTS.md), its --out JSON read back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VLLM_PYTHON = Path(os.environ.get("COT_RM_VLLM_PYTHON") or ROOT / ".venv-vllm" / "bin" / "python")
needs_vllm = pytest.mark.skipif(
    not VLLM_PYTHON.exists(),
    reason=f"no vLLM interpreter at {VLLM_PYTHON}: run `make setup-vllm` (`make test` builds it)",
)


def run_bench(script: str, tmp: Path, *args, timeout: float = 300) -> tuple[dict, str, Path]:
    """`python bench/SCRIPT ARGS --out tmp/NAME.json --results-md tmp/RESULTS.md`; (JSON, stdout, RESULTS.md)."""
    md, out = tmp / "RESULTS.md", tmp / f"{Path(script).stem}.json"
    md.write_text("# results\n")
    cmd = [sys.executable, f"bench/{script}", *map(str, args), "--out", str(out), "--results-md", str(md)]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert run.returncode == 0, (run.stdout[-3000:], run.stderr[-3000:])
    return json.loads(out.read_text()), run.stdout, md
