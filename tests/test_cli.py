"""The `cot-rm` entry point, the demo and the video-cache benchmark, run as a user runs them."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DESIGN_COMMANDS = [
    "video-info",
    "toyworld",
    "synthesize",
    "sft",
    "rft",
    "grpo",
    "eval",
    "judge",
    "serve",
    "demo",
]


def _run(*args, cwd=ROOT):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_help_lists_every_subcommand():
    out = _run("-m", "cot_rm.cli", "--help")
    assert out.returncode == 0
    for name in DESIGN_COMMANDS:
        assert name in out.stdout
    sub = _run("-m", "cot_rm.cli", "video-info", "--help")
    assert sub.returncode == 0 and "--max-pixels" in sub.stdout and "--no-cache" in sub.stdout


def test_every_command_has_its_arguments_and_main():
    from cot_rm.cli import COMMANDS, build_parser

    for name in COMMANDS:
        parser = build_parser([name])  # only the chosen command's module is imported
        (sub,) = [a for a in parser._actions if a.dest == "command"]
        assert callable(sub.choices[name].get_default("_main")), name
        assert sub.choices[name].format_help().count("\n") > 3, name  # its own options, described


def test_a_missing_extra_is_named_with_the_install_command():
    # fastapi made unimportable, as in an install without the serve extra.
    code = "import sys; sys.modules['fastapi'] = None; from cot_rm.cli import main; sys.exit(main(['serve']))"
    out = _run("-c", code)
    assert out.returncode == 2 and out.stdout == ""
    assert (
        "cot-rm serve: needs the 'serve' extra (fastapi is missing): pip install 'cot-rm[serve]'"
        in out.stderr
    )


def test_demo_is_the_tiny_cpu_recipe(tmp_path):
    # The recipe itself runs end to end in tests/test_recipes.py; here: `cot-rm demo` runs it with its
    # own OUT and sizes (SKIP keeps this to the toy-world stage).
    demo = tmp_path / "demo"
    env = dict(os.environ, SKIP="synth sft grpo eval judge")
    out = subprocess.run([sys.executable, "-m", "cot_rm.cli", "demo", "--out", str(demo), "--n", "6"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "== [toyworld]" in out.stdout and "Outputs under" in out.stdout
    assert len((demo / "toy" / "pointwise.jsonl").read_text().splitlines()) == 6
    assert (demo / ".done" / "toyworld").is_file()
    again = subprocess.run([sys.executable, "-m", "cot_rm.cli", "demo", "--out", str(demo), "--n", "6", "--fresh"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert again.returncode == 0 and "already done" not in again.stdout
    stray = tmp_path / "mine"
    stray.mkdir()
    (stray / "keep.txt").write_text("not a demo folder")
    refused = subprocess.run([sys.executable, "-m", "cot_rm.cli", "demo", "--out", str(stray), "--fresh"],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert refused.returncode == 2 and (stray / "keep.txt").exists()


def test_video_cache_bench_appends_a_measured_section(tmp_path):
    results = tmp_path / "RESULTS.md"
    out = _run(str(ROOT / "bench" / "video_cache.py"), "--n", "4", "--repeats", "1", "--out", str(results))
    assert out.returncode == 0, out.stderr
    text = results.read_text()
    assert "## video_cache" in text and "x faster than decoding on the fly" in text and "cores" in text


def test_overrides_may_follow_flags(capsys):
    """`cot-rm sft --config X --no-report a=b`: the override after the flag is read (argparse leaves it
    over); anything else left over is still an error."""
    import pytest

    from cot_rm.cli import main

    cfg = str(ROOT / "configs" / "tiny" / "sft.yaml")
    assert main(["sft", "--config", cfg, "--no-report", "model.bogus=1"]) == 2
    assert "unknown key 'model.bogus'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["sft", "--config", cfg, "--no-report", "--bogus"])
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_video_info_starts_without_torch():
    # --help exits through SystemExit: caught, so that the check after it runs.
    code = (
        "import sys\nfrom cot_rm.cli import main\ntry:\n    main(['video-info', '--help'])\n"
        "except SystemExit:\n    pass\nprint('torch' in sys.modules)"
    )
    out = _run("-c", code)
    assert out.returncode == 0 and "--max-pixels" in out.stdout, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"  # torch was not imported
