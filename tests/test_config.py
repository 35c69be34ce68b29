"""Configs: every YAML under configs/ loads (SFT ones through the typed loader and TRL's SFTConfig keys,
accelerate ones through accelerate's own loader and launch validation); overrides, unknown keys, types."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from cot_rm.config import (
    ConfigError,
    add_config_arguments,
    check_trl_args,
    config_from_dict,
    describe,
    dump_config,
    load_config,
    meta,
    parse_value,
    save_config,
)
from cot_rm.train.sft.config import HEAD_KINDS, LoraArgs, SFTRunConfig

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))
ACCELERATE = [p for p in CONFIGS if p.parent.name == "accelerate"]
SFT = [p for p in CONFIGS if p.name == "sft.yaml"]
GRPO = [p for p in CONFIGS if p.name == "grpo.yaml"]
RFT = [p for p in CONFIGS if p.name == "rft.yaml"]
PRETRAIN = [p for p in CONFIGS if p.name == "pretrain.yaml"]
TINY = ROOT / "configs/tiny/sft.yaml"


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def header(path: Path) -> list[str]:
    """The comment block a YAML opens with."""
    lines = path.read_text().splitlines()
    return lines[: next(i for i, line in enumerate(lines) if not line.startswith("#"))]


def launch_line(path: Path) -> str:
    return next(line for line in header(path) if line.startswith("# Launch:"))


def test_configs_found():
    names = {rel(p) for p in CONFIGS}
    assert {
        "configs/tiny/sft.yaml",
        "configs/qwen2_5_vl_7b/sft.yaml",
        "configs/qwen3_vl_8b/sft.yaml",
        "configs/accelerate/zero2.yaml",
        "configs/accelerate/zero3.yaml",
    } <= names
    assert set(CONFIGS) == set(ACCELERATE) | set(SFT) | set(GRPO) | set(RFT) | set(PRETRAIN), (
        "a YAML this test does not know how to load"
    )


@pytest.mark.parametrize("path", CONFIGS, ids=rel)
def test_yaml_opens_with_what_hardware_launch(path):
    lines = header(path)
    assert lines and lines[0].startswith("# What:"), f"{rel(path)} must open with a comment block"
    assert any(line.startswith("# Hardware:") for line in lines)
    launch = launch_line(path)
    assert rel(path) in launch, f"{rel(path)}: the launch command must name this file"
    stage = path.stem if path.stem in ("grpo", "rft", "pretrain") else "sft"
    assert f"cot-rm {stage}" in launch or f"-m cot_rm.cli {stage}" in launch


@pytest.mark.parametrize("path", SFT, ids=rel)
def test_sft_yaml_loads(path):
    import trl

    cfg = load_config(SFTRunConfig, path, [])
    check_trl_args(trl.SFTConfig, cfg.train)
    # TRL accepts every value too (bf16 switched off here: this machine has no GPU). max_length as the
    # trainer must pass it: TRL's default of 1024 tokens would cut video samples.
    train = {**cfg.train, "bf16": False, "use_cpu": True}
    args = trl.SFTConfig(**train, max_length=cfg.data.max_length)
    assert args.learning_rate == cfg.train["learning_rate"] and args.max_length == cfg.data.max_length
    # What is saved beside a run reads back to the same config.
    assert config_from_dict(SFTRunConfig, dump_config(cfg)) == cfg


@pytest.mark.parametrize("path", GRPO, ids=rel)
def test_grpo_yaml_loads(path):
    import trl

    from cot_rm.train.grpo.config import GRPORunConfig

    cfg = load_config(GRPORunConfig, path, [])
    check_trl_args(trl.GRPOConfig, cfg.train)
    assert config_from_dict(GRPORunConfig, dump_config(cfg)) == cfg


@pytest.mark.parametrize("path", RFT, ids=rel)
def test_rft_yaml_loads(path):
    import trl

    from cot_rm.train.rft.config import RFTRunConfig

    cfg = load_config(RFTRunConfig, path, [])
    check_trl_args(trl.SFTConfig, cfg.train)
    args = trl.SFTConfig(**{**cfg.train, "bf16": False, "use_cpu": True}, max_length=cfg.data.max_length)
    assert args.learning_rate == cfg.train["learning_rate"]
    assert config_from_dict(RFTRunConfig, dump_config(cfg)) == cfg


@pytest.mark.parametrize("path", PRETRAIN, ids=rel)
def test_pretrain_yaml_loads(path):
    import trl

    from cot_rm.train.pretrain.config import PretrainRunConfig

    cfg = load_config(PretrainRunConfig, path, [])
    check_trl_args(trl.SFTConfig, cfg.train)
    assert config_from_dict(PretrainRunConfig, dump_config(cfg)) == cfg
    assert cfg.corpus.seed != 0  # never the demo's world


@pytest.mark.parametrize("path", [p for p in SFT if "accelerate launch" in launch_line(p)], ids=rel)
def test_multi_gpu_sft_matches_its_launcher(path):
    """bf16 in the run config iff in the accelerate config it launches with; LoRA stays a comment."""
    cfg = load_config(SFTRunConfig, path, [])
    launcher = re.search(r"--config_file (\S+)", launch_line(path)).group(1)
    acc = yaml.safe_load((ROOT / launcher).read_text())
    assert acc["mixed_precision"] == "bf16" and cfg.train["bf16"] is True and cfg.model.dtype == "bfloat16"
    assert acc["deepspeed_config"]["zero_stage"] == 3
    assert cfg.model.freeze_vision and cfg.model.reuse_vision_features and cfg.model.lora is None
    assert cfg.train["learning_rate"] == 5e-5 and cfg.train["num_train_epochs"] == 2
    assert "NOT yet run on 8 GPUs" in "\n".join(header(path))


def test_tiny_sft_is_cpu_sized():
    cfg = load_config(SFTRunConfig, TINY, [])
    assert cfg.train["use_cpu"] is True and cfg.train["report_to"] == "none"
    assert cfg.model.dtype == "float32" and cfg.model.lora is None
    assert cfg.data.eval_pairs == cfg.data.pairs and cfg.data.eval_split not in cfg.data.splits


@pytest.mark.parametrize("path", ACCELERATE, ids=rel)
def test_accelerate_yaml_parses_with_accelerate(path):
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    cfg = load_config_from_file(str(path))  # rejects unknown top-level keys
    assert isinstance(cfg, ClusterConfig) and cfg.distributed_type.value == "DEEPSPEED"
    assert cfg.num_processes == 8 and cfg.mixed_precision == "bf16"
    ds = cfg.deepspeed_config
    assert ds["offload_optimizer_device"] == ds["offload_param_device"] == "none"
    stage = int(path.stem[-1])
    assert ds["zero_stage"] == stage
    if stage == 3:
        assert ds["zero3_init_flag"] is True and ds["zero3_save_16bit_model"] is True
    # accelerate copies deepspeed_config keys onto its launch arguments silently: a misspelt key would
    # be ignored, so each must be one of `accelerate launch`'s own options.
    parser = launch_command_parser()
    options = {a.dest for a in parser._actions}
    assert set(ds) <= options, set(ds) - options
    # The launch command's own validation, then the environment it would hand the processes.
    args = parser.parse_args(["--config_file", str(path), "-m", "cot_rm.cli", "sft", "--config", "x.yaml"])
    args, defaults, _ = _validate_launch_command(args)
    assert args.use_deepspeed and args.module and args.training_script == "cot_rm.cli"
    args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)  # as launch_command
    _, env = prepare_deepspeed_cmd_env(args)
    assert env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == str(stage)
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"


# ------------------------------------------------------------------------------------ overrides


def test_overrides_nested_lists_null_and_free_dict():
    cfg = load_config(
        SFTRunConfig,
        TINY,
        [
            "train.learning_rate=1e-4",  # YAML 1.1 would read this as a string
            "model.lora.r=8",  # lora is null in the file: the section is created with defaults
            "data.splits=[train,val]",
            "data.pairs=null",
            "data.eval_pairs=null",
            "train.gradient_checkpointing_kwargs.use_reentrant=false",
            "loss.tie_theta=3",  # int -> float
        ],
    )
    assert cfg.train["learning_rate"] == 1e-4
    assert cfg.model.lora == LoraArgs(r=8)
    assert cfg.data.splits == ["train", "val"] and cfg.data.pairs is None
    assert cfg.train["gradient_checkpointing_kwargs"] == {"use_reentrant": False}
    assert cfg.loss.tie_theta == 3.0 and isinstance(cfg.loss.tie_theta, float)
    # Later overrides win; a section can be switched off again.
    cfg = load_config(
        SFTRunConfig, TINY, ["model.lora.r=8", "model.lora=null", "train.seed=1", "train.seed=2"]
    )
    assert cfg.model.lora is None and cfg.train["seed"] == 2


def test_defaults_then_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "model: {base: m}\ndata: {train: t.jsonl}\nloss: {margin: 0.5, pair_loss: bt_margin}\n"
        "train: {output_dir: o, seed: 1}\n"
    )
    cfg = load_config(SFTRunConfig, path, ["loss.margin=1"])
    assert cfg.loss.margin == 1.0 and cfg.loss.pair_loss == "bt_margin"  # override wins over the file
    assert cfg.loss.lm_weight == 1.0 and cfg.model.head == "linear" and cfg.data.splits == ["train"]
    assert cfg.train == {"output_dir": "o", "seed": 1}
    path.write_text("model: {base: m}\ndata: {train: t.jsonl}\n")
    with pytest.raises(ConfigError, match="train.output_dir is required"):
        load_config(SFTRunConfig, path, [])


def test_no_file_all_overrides():
    cfg = load_config(SFTRunConfig, None, ["model.base=m", "data.train=t.jsonl", "train.output_dir=o"])
    assert cfg.model.base == "m" and cfg.train == {"output_dir": "o"}
    with pytest.raises(ConfigError, match="missing required key 'data'"):
        load_config(SFTRunConfig, None, ["model.base=m", "train.output_dir=o"])


def test_parse_value_is_yaml():
    assert parse_value("5e-5") == 5e-5 and parse_value("1E3") == 1000.0 and parse_value("-2.5e-1") == -0.25
    assert parse_value("3") == 3 and parse_value("null") is None and parse_value("[a, 1]") == ["a", 1]
    assert parse_value("e5") == "e5" and parse_value("1e") == "1e"  # not numbers
    # only true/false are booleans (YAML 1.2): `train.save_strategy=no` is the text "no", not False
    assert [parse_value(t) for t in ("no", "yes", "off", "on")] == ["no", "yes", "off", "on"]
    assert parse_value("true") is True and parse_value("False") is False


def test_trl_counts_must_be_positive():
    from trl import SFTConfig

    from cot_rm.config import check_trl_args

    with pytest.raises(
        ConfigError, match=r"'train.per_device_train_batch_size' = 0: expected a whole number"
    ):
        check_trl_args(SFTConfig, {"per_device_train_batch_size": 0})
    check_trl_args(SFTConfig, {"per_device_train_batch_size": 2, "save_strategy": "no"})


# ------------------------------------------------------------------------------------- failures


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["model.frezee_vision=true"],
            "unknown key 'model.frezee_vision' (did you mean 'model.freeze_vision'?)",
        ),
        (["model.lora.rank=8"], "unknown key 'model.lora.rank'"),
        (["optim.lr=1"], "unknown key 'optim'. Allowed keys at the top level: model, data, loss, train"),
        (["model.head.kind=x"], "'model.head' is a str, not a section"),
        (["model.freeze_vision=maybe"], "model.freeze_vision: expected a bool, got 'maybe'"),
        (["data.eval_limit=true"], "data.eval_limit: expected an int, got true"),
        (["data.eval_limit=2.5"], "data.eval_limit: expected an int, got 2.5"),
        (
            ["data.splits=train"],
            "data.splits: expected a list of str, got 'train' (write a YAML list: [train])",
        ),
        (["data.eval_split=2024"], "expected a str, got 2024 (quote it"),
        (["model.base=null"], "model.base: expected a str, got null"),
        (["model.lora=8"], "model.lora: expected a mapping of LoraArgs keys or null, got 8"),
        (["model.lora.target_modules=[1,2]"], "model.lora.target_modules: expected list[str] | str | None"),
        (["model.head=lineer"], "model.head: 'lineer' is not one of linear, mlp (did you mean 'linear'?)"),
        (["loss.tie_theta=1"], "tie_theta must be > 1"),
        (["model.freeze_vision=false"], "reuse_vision_features needs freeze_vision"),
        (["data.splits=[train,test]"], "would score training pairs"),
        (["train.max_length=4096"], "train.max_length (set data.max_length instead)"),
        (["loss.head_weight=0"], "data.pairs is set but loss.head_weight is 0"),
        (["loss.margin=1"], "margin is used by pair_loss bt_margin only"),
        (["learning_rate"], "expected KEY=VALUE"),
        (["train..x=1"], "expected KEY=VALUE"),
    ],
)
def test_bad_overrides_fail_clearly(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(SFTRunConfig, TINY, overrides)
    assert message in str(err.value)


def test_errors_name_their_source(tmp_path):
    with pytest.raises(ConfigError, match=r"^override 'model.freeze_vision=maybe': "):
        load_config(SFTRunConfig, TINY, ["model.freeze_vision=maybe"])
    # A section's own check, broken by an override, names the file and the override.
    with pytest.raises(ConfigError, match=r"configs/tiny/sft.yaml with override 'loss.tie_theta=1': loss: "):
        load_config(SFTRunConfig, TINY, ["loss.tie_theta=1"])
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY.read_text().replace("  freeze_vision: true", "  freeze_vison: true"))
    with pytest.raises(ConfigError) as err:
        load_config(SFTRunConfig, bad, [])
    msg = str(err.value)
    assert msg.startswith(str(bad)) and "unknown key 'model.freeze_vison'" in msg
    assert "did you mean 'model.freeze_vision'" in msg and "Allowed keys at 'model': base, head," in msg


def test_yaml_file_problems(tmp_path):
    with pytest.raises(ConfigError, match="missing.yaml: config file not found"):
        load_config(SFTRunConfig, tmp_path / "missing.yaml", [])
    dup = tmp_path / "dup.yaml"
    dup.write_text("model: {base: a}\ndata: {train: t}\ntrain: {output_dir: o}\nmodel: {base: b}\n")
    with pytest.raises(ConfigError, match=r"dup.yaml:4: duplicate key 'model'"):
        load_config(SFTRunConfig, dup, [])
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(SFTRunConfig, listed, [])
    typed = tmp_path / "typed.yaml"
    typed.write_text("model: {base: a, freeze_vision: maybe}\ndata: {train: t}\ntrain: {output_dir: o}\n")
    with pytest.raises(ConfigError, match=r"typed.yaml: model.freeze_vision: expected a bool, got 'maybe'"):
        load_config(SFTRunConfig, typed, [])


def test_check_trl_args():
    import trl

    check_trl_args(trl.SFTConfig, {"output_dir": "o", "learning_rate": 1e-4, "use_cpu": True})
    with pytest.raises(ConfigError) as err:
        check_trl_args(trl.SFTConfig, {"output_dir": "o", "lerning_rate": 1e-4, "zzz": 1})
    msg = str(err.value)
    assert "'train.lerning_rate' (did you mean 'learning_rate'?)" in msg and "'train.zzz'" in msg
    assert "SFTConfig" in msg
    # A text where TRL wants a number or a boolean names the key (TRL would raise a bare TypeError).
    with pytest.raises(ConfigError, match=r"'train.learning_rate' = 'fast': expected a number"):
        check_trl_args(trl.SFTConfig, {"learning_rate": "fast"})
    with pytest.raises(ConfigError, match=r"'train.num_generations' = 'abc': expected int"):
        check_trl_args(trl.GRPOConfig, {"num_generations": "abc"})
    check_trl_args(
        trl.SFTConfig, {"warmup_steps": 0.05, "save_strategy": "no", "report_to": "none", "bf16": None}
    )


def test_sft_refuses_traces_labelled_on_dimensions_the_model_does_not_score():
    from cot_rm.train.sft.trainer import check_dimensions

    dims = ("visual_quality", "overall")
    check_dimensions(
        [{"scores": {"overall": 3}}, {"scores": {"visual_quality": 2}}], dims, "t.jsonl"
    )  # a subset
    with pytest.raises(
        ValueError, match=r"t.jsonl: the traces are labelled on \['motion'\].*model.dimensions="
    ):
        check_dimensions([{"scores": {"motion": 3, "overall": 2}}], dims, "t.jsonl")


# ------------------------------------------------------------------------------ help and dumps


def test_describe_lists_every_key_with_help():
    text = describe(SFTRunConfig)
    for key in [
        "model.base (str; required)",
        'model.head (str; default "linear"; one of: linear, mlp)',
        "model.freeze_vision (bool; default true)",
        "model.lora (LoraArgs | None; optional section, default null)",
        "model.lora.r (int; default 16)",
        'data.splits (list[str]; default ["train"])',
        "loss.tie_theta (float; default 2.0)",
        "train (dict[str, any]; default {})",
    ]:
        assert key in text, key

    lines = text.splitlines()
    for key, f in _all_fields(SFTRunConfig):
        i = next(i for i, line in enumerate(lines) if line.startswith(key + " ("))
        assert f.metadata["help"] and lines[i + 1].strip() == f.metadata["help"], key


def _all_fields(cls, prefix=""):
    import typing

    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        yield prefix + f.name, f
        inner = [a for a in typing.get_args(hints[f.name]) if dataclasses.is_dataclass(a)] or [hints[f.name]]
        if dataclasses.is_dataclass(inner[0]):
            yield from _all_fields(inner[0], prefix + f.name + ".")


def test_help_of_cli_parser_lists_keys():
    import argparse

    parser = argparse.ArgumentParser(prog="cot-rm sft")
    add_config_arguments(parser, SFTRunConfig)
    assert "model.lora.r (int; default 16)" in parser.format_help()
    args = parser.parse_args(["--config", str(TINY), "train.seed=3", "model.lora.r=4"])
    assert args.overrides == ["train.seed=3", "model.lora.r=4"]


def test_save_config_round_trip(tmp_path):
    cfg = load_config(SFTRunConfig, TINY, ["model.lora.target_modules=[q_proj,v_proj]"])
    for name in ("resolved.yaml", "resolved.json"):
        path = save_config(cfg, tmp_path / name)
        assert load_config(SFTRunConfig, path, []) == cfg
    assert (tmp_path / "resolved.yaml").read_text().startswith("# Resolved SFTRunConfig")
    assert dump_config(cfg)["model"]["lora"]["target_modules"] == ["q_proj", "v_proj"]


@dataclass
class Inner:
    k: int = field(default=1, metadata=meta("k"))


@dataclass
class Outer:
    name: str = field(default="x", metadata=meta("a name", choices=["x", "y"]))
    inner: Inner | None = field(default=None, metadata=meta("optional inner"))
    items: list[Inner] = field(default_factory=list, metadata=meta("a list of sections"))
    weights: dict[str, float] = field(default_factory=dict, metadata=meta("free mapping of numbers"))


def test_generic_loader_on_other_dataclasses():
    cfg = load_config(Outer, None, ["inner.k=3", "items=[{k: 2}, {}]", "weights.a=1"])
    assert cfg == Outer(inner=Inner(3), items=[Inner(2), Inner(1)], weights={"a": 1.0})
    with pytest.raises(ConfigError, match=r"^override 'items=\[\{z: 2\}\]': unknown key 'items\[0\].z'"):
        load_config(Outer, None, ["items=[{z: 2}]"])
    with pytest.raises(ConfigError, match=r"weights.a: expected a number, got 'heavy'"):
        load_config(Outer, None, ["weights.a=heavy"])
    with pytest.raises(ConfigError, match="'z' is not one of x, y"):
        load_config(Outer, None, ["name=z"])


def test_sections_validate_when_built_in_code():
    from cot_rm.train.sft.config import DataArgs, LossArgs, ModelArgs

    with pytest.raises(ValueError, match="head 'conv': choose one of linear, mlp"):
        ModelArgs(base="m", head="conv")
    with pytest.raises(ValueError, match="lora_vision: true contradicts freeze_vision"):
        ModelArgs(base="m", freeze_vision=True, reuse_vision_features=False, lora=LoraArgs(lora_vision=True))
    with pytest.raises(ValueError, match="rationale_dropout"):
        LossArgs(rationale_dropout=1.5)
    with pytest.raises(ValueError, match="nothing to train"):
        LossArgs(lm_weight=0, head_weight=0)
    with pytest.raises(ValueError, match="eval_limit"):
        DataArgs(train="t", eval_limit=0)


def test_lora_args_mirror_lora_settings():
    """LoraArgs copies LoraSettings' fields and defaults (config.py stays torch-free)."""
    from cot_rm.model.modeling import HEAD_KINDS as MODEL_HEAD_KINDS
    from cot_rm.model.modeling import LoraSettings

    ours = {f.name: f.default for f in dataclasses.fields(LoraArgs)}
    theirs = {f.name: f.default for f in dataclasses.fields(LoraSettings)}
    assert ours == theirs
    assert LoraArgs(r=4, lora_vision=True).to_settings() == LoraSettings(r=4, lora_vision=True)
    assert HEAD_KINDS == MODEL_HEAD_KINDS


def test_resume_names_the_settings_that_changed(tmp_path):
    from cot_rm.train.runs import changed_keys
    from cot_rm.train.sft.config import SFTRunConfig

    first = load_config(SFTRunConfig, "configs/tiny/sft.yaml", ["train.learning_rate=1e-3"])
    save_config(first, tmp_path / "run_config.yaml")
    assert changed_keys(tmp_path / "run_config.yaml", first) == []
    later = load_config(
        SFTRunConfig, "configs/tiny/sft.yaml", ["train.learning_rate=1e-4", "loss.head_weight=2"]
    )
    assert changed_keys(tmp_path / "run_config.yaml", later) == ["loss.head_weight", "train.learning_rate"]
    assert changed_keys(tmp_path / "missing.yaml", later) == []
