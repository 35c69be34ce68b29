"""Typed run configs: dataclass defaults <- YAML file <- `key=value` overrides; unknown keys fail.

    cfg = load_config(SFTRunConfig, "configs/tiny/sft.yaml", ["train.learning_rate=1e-4", "model.lora.r=8"])
    check_trl_args(trl.SFTConfig, cfg.train)      # `train:` goes verbatim to TRL: check its keys early
    save_config(cfg, Path(cfg.train["output_dir"]) / "cot_rm_config.yaml")
    print(describe(SFTRunConfig))                  # every key with type, default and help (for --help)

The loader is generic (any dataclass tree); the SFT run config lives in `cot_rm/train/sft/config.py`.
Override values are YAML (`3`, `1e-4`, `true`, `null`, `[train,val]`); dotted keys reach into sections;
setting a key under an empty optional section (`model.lora.r=8` when `lora` is null) creates that
section with its defaults. A `dict` field (`train`) takes any keys. Field metadata: `help` (shown by
`describe`) and optional `choices` (checked by the loader and by `check_choices` in `__post_init__`).

Torch-free on purpose: `cot-rm sft --help` prints `describe()` without importing the model stack.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, fields, is_dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")
NoneType = type(None)


class ConfigError(ValueError):
    """A config that cannot be used; the message names the key, where it came from and what is allowed."""


# ------------------------------------------------------------------------------------------- YAML


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads `5e-5` as a float and refuses duplicate keys.

    PyYAML follows YAML 1.1, whose floats need a dot: `learning_rate: 5e-5` would arrive as the STRING
    '5e-5' (and TRL would fail late, or not at all). A duplicated key would silently keep the last value.
    """

    def construct_mapping(self, node, deep=False):
        self.flatten_mapping(node)  # resolve `<<` merges first, so merged keys may be overridden
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str | int | float | bool) and key in seen:
                mark = key_node.start_mark
                raise ConfigError(f"{mark.name}:{mark.line + 1}: duplicate key {key!r}")
            seen.add(key)
        return super().construct_mapping(node, deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)
# YAML 1.1 also reads yes/no/on/off as booleans: `train.save_strategy=no` arrived as False ("False is not
# a valid SaveStrategy"). Only true/false are booleans here, as in YAML 1.2; `no` stays the text "no".
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in _Loader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def parse_value(text: str) -> Any:
    """An override value, read as YAML: `3` -> 3, `1e-4` -> 0.0001, `null` -> None, `[a,b]` -> list."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as err:
        raise ConfigError(f"cannot parse {text!r} as a YAML value: {err}") from err


def read_yaml(path: str | Path) -> dict[str, Any]:
    if not Path(path).is_file():
        raise ConfigError(f"{path}: config file not found (paths are relative to {Path.cwd()})")
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.load(f, Loader=_Loader)
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top, got {type(data).__name__}")
    return data


# ------------------------------------------------------------------------------------------ types


def _options(tp) -> tuple[list, bool]:
    """(non-None members, None allowed) of a union; ([tp], False) for anything else."""
    if get_origin(tp) in (Union, types.UnionType):
        args = get_args(tp)
        return [a for a in args if a is not NoneType], NoneType in args
    return [tp], False


def _section_class(tp) -> type | None:
    """The dataclass behind `Section` or `Section | None`, else None."""
    options, _ = _options(tp)
    return options[0] if len(options) == 1 and is_dataclass(options[0]) else None


def _type_name(tp) -> str:
    if tp is Any:
        return "any"
    options, nullable = _options(tp)
    if len(options) > 1 or nullable:
        return " | ".join([_type_name(o) for o in options] + ["None"] * nullable)
    origin, args = get_origin(tp), get_args(tp)
    if origin is Literal:
        return " | ".join(map(repr, args))
    if origin is not None:
        inner = f"[{', '.join(map(_type_name, args))}]" if args else ""
        return f"{getattr(origin, '__name__', str(origin))}{inner}"
    return getattr(tp, "__name__", str(tp))


_ARTICLES = {bool: "a bool", int: "an int", float: "a number", str: "a str", dict: "a mapping"}


class _Mismatch(Exception):
    pass


def _convert(value: Any, tp, key: str, where: Callable[[str], str]) -> Any:
    """`value` checked against type hint `tp`; ints become floats where a float is expected."""
    options, nullable = _options(tp)
    if value is None:
        if nullable or tp is Any:
            return None
        raise ConfigError(f"{where(key)}: {key}: expected {_expected(tp)}, got null")
    if len(options) == 1:
        try:
            return _convert_one(value, options[0], key, where)
        except _Mismatch:
            raise ConfigError(_mismatch_msg(value, tp, key, where)) from None
    for option in options:  # a real union (e.g. list[str] | str): the first member that fits wins
        try:
            return _convert_one(value, option, key, where)
        except (_Mismatch, ConfigError):
            continue
    raise ConfigError(_mismatch_msg(value, tp, key, where))


def _expected(tp) -> str:
    section = _section_class(tp)
    if section is not None:
        return f"a mapping of {section.__name__} keys" + (" or null" if _options(tp)[1] else "")
    if get_origin(tp) is list and get_args(tp):
        return f"a list of {_type_name(get_args(tp)[0])}"
    return _ARTICLES.get(tp) or _ARTICLES.get(get_origin(tp)) or _type_name(tp)


def _show_value(value: Any) -> str:
    """As the user wrote it: strings quoted, YAML spellings for the rest (true, null, [1, 2])."""
    if isinstance(value, str):
        return repr(value)
    try:
        return json.dumps(value)
    except TypeError:
        return repr(value)


def _mismatch_msg(value: Any, tp, key: str, where: Callable[[str], str]) -> str:
    msg = f"{where(key)}: {key}: expected {_expected(tp)}, got {_show_value(value)}"
    if tp is str and not isinstance(value, list | dict):
        msg += " (quote it to pass it as a string)"
    elif get_origin(tp) is list and isinstance(value, str):
        msg += f" (write a YAML list: [{value}])"
    return msg


def _convert_one(value: Any, tp, key: str, where: Callable[[str], str]) -> Any:
    if tp is Any:
        return value
    if is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if isinstance(value, Mapping):
            return _build(tp, value, key, where)
        raise _Mismatch
    origin, args = get_origin(tp) or tp, get_args(tp)
    if origin is Literal:
        if value in args:
            return value
        raise _Mismatch
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise _Mismatch
    if tp is int and isinstance(value, bool):  # bool is an int subclass: `true` is not a count
        raise _Mismatch
    if origin in (list, tuple, Sequence):
        if not isinstance(value, list | tuple):
            raise _Mismatch
        item = args[0] if args else Any
        out = [_convert(v, item, f"{key}[{i}]", where) for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise _Mismatch
        item = args[1] if len(args) == 2 else Any
        return {k: _convert(v, item, f"{key}.{k}", where) for k, v in value.items()}
    if isinstance(origin, type) and not isinstance(value, origin):
        raise _Mismatch
    return value


def _init_fields(cls) -> list:
    return [f for f in fields(cls) if f.init]


def _suggest(name: str, allowed: Sequence[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(name, allowed, n=1, cutoff=0.6)
    return f" (did you mean '{prefix}{close[0]}'?)" if close else ""


def _unknown_key(key: str, section: str, allowed: Sequence[str], source: str) -> ConfigError:
    name = key.rsplit(".", 1)[-1]
    hint = _suggest(name, allowed, f"{section}." if section else "")
    where = f"'{section}'" if section else "the top level"
    return ConfigError(f"{source}: unknown key '{key}'{hint}. Allowed keys at {where}: {', '.join(allowed)}")


def _build(cls: type[T], data: Mapping[str, Any], prefix: str, where: Callable[[str], str]) -> T:
    hints = get_type_hints(cls)
    allowed = [f.name for f in _init_fields(cls)]
    for name in data:
        if name not in allowed:
            key = f"{prefix}.{name}" if prefix else str(name)
            raise _unknown_key(key, prefix, allowed, where(key))
    kwargs = {}
    for f in _init_fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        if f.name in data:
            value = _convert(data[f.name], hints[f.name], key, where)
            choices = f.metadata.get("choices")
            if choices and value not in choices:
                raise ConfigError(
                    f"{where(key)}: {key}: {_show_value(value)} is not one of {', '.join(choices)}"
                    + _suggest(str(value), choices)
                )
            kwargs[f.name] = value
        elif f.default is MISSING and f.default_factory is MISSING:
            raise ConfigError(f"{where(key)}: missing required key '{key}'")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:  # __post_init__ validation: say which section and source
        raise ConfigError(f"{where(prefix)}: {prefix or cls.__name__}: {err}") from err


# ----------------------------------------------------------------------------------- public API


def config_from_dict(cls: type[T], data: Mapping[str, Any], source: str = "config") -> T:
    """Build `cls` from a plain mapping (e.g. a saved, resolved config), with the loader's checks."""
    return _build(cls, data, "", lambda key: source)


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """`cls` from its defaults <- the YAML file at `path` (if any) <- `key=value` overrides."""
    data = read_yaml(path) if path is not None else {}
    source = str(path) if path is not None else "defaults (no --config)"
    applied: dict[str, str] = {}  # dotted key -> the override text that set it, for error messages
    for text in overrides:
        key, value = _parse_override(text)
        _apply(data, cls, key, value, text)
        applied[key] = text

    def where(key: str) -> str:
        for k, text in applied.items():
            if key == k or key.startswith((k + ".", k + "[")):
                return f"override '{text}'"
        inner = [text for k, text in applied.items() if not key or k.startswith(key + ".")]
        return f"{source} with override {', '.join(repr(t) for t in inner)}" if inner else source

    return _build(cls, data, "", where)


def _parse_override(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not p for p in key.split(".")):
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. train.learning_rate=1e-4")
    try:
        return key, parse_value(raw)
    except ConfigError as err:
        raise ConfigError(f"override {text!r}: {err}") from None


def _apply(data: dict, cls: type, key: str, value: Any, text: str) -> None:
    """Set dotted `key` in the raw tree `data`, checking each step against `cls`'s fields."""
    node, tp, walked = data, cls, []
    parts = key.split(".")
    for i, part in enumerate(parts):
        section = _section_class(tp)
        if section is not None:
            hints = get_type_hints(section)
            allowed = [f.name for f in _init_fields(section)]
            if part not in allowed:
                raise _unknown_key(".".join([*walked, part]), ".".join(walked), allowed, f"override '{text}'")
            tp = hints[part]
        elif get_origin(tp) in (dict, Mapping) or tp in (dict, Any):
            args = get_args(tp)
            tp = args[1] if len(args) == 2 else Any
        else:
            raise ConfigError(
                f"override '{text}': '{'.'.join(walked)}' is {_expected(tp)}, not a section with keys"
            )
        walked.append(part)
        if i == len(parts) - 1:
            node[part] = value
        else:
            if not isinstance(node.get(part), dict):  # absent or null: start that section afresh
                node[part] = {}
            node = node[part]


def dump_config(obj: Any) -> Any:
    """Plain dicts/lists/scalars (JSON/YAML-safe) from a config tree; `config_from_dict` reads it back."""
    if is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: dump_config(getattr(obj, f.name)) for f in _init_fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): dump_config(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [dump_config(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, Enum):
        return obj.value
    return obj


def save_config(obj: Any, path: str | Path) -> Path:
    """Write the resolved config (YAML, or JSON for a .json path) so a run records what it ran with."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = dump_config(obj)
    if path.suffix == ".json":
        path.write_text(json.dumps(data, indent=2) + "\n")
    else:
        # The folder relative paths were given from: a resume started elsewhere compares the same files.
        head = (
            f"# Resolved {type(obj).__name__} (defaults <- YAML <- overrides), written by cot-rm.\n"
            f"# cwd: {Path.cwd()}\n"
        )
        path.write_text(head + yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return path


def describe(cls: type, prefix: str = "") -> str:
    """Every key of `cls` (sections recursed) with its type, default and help, one block per key."""
    hints = get_type_hints(cls)
    blocks = []
    for f in _init_fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        tp = hints[f.name]
        if f.default is not MISSING:
            default = f.default
        elif f.default_factory is not MISSING:
            default = f.default_factory()
        else:
            default = MISSING
        section = _section_class(tp)
        if section is None:
            shown = "required" if default is MISSING else f"default {_show(default)}"
        elif default is MISSING:
            shown = "required section"
        else:
            shown = "section" if default is not None else "optional section, default null"
        if f.metadata.get("choices"):
            shown += f"; one of: {', '.join(f.metadata['choices'])}"
        line = f"{key} ({_type_name(tp)}; {shown})"
        help_text = f.metadata.get("help", "")
        blocks.append(line + (f"\n    {help_text}" if help_text else ""))
        if section is not None:
            blocks.append(describe(section, key))
    return "\n".join(blocks)


def _show(value: Any) -> str:
    try:
        return json.dumps(dump_config(value))
    except TypeError:
        return repr(value)


# Counts TRL divides by or batches with (0 fails deep in torch, not with the key's name).
POSITIVE_COUNTS = ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                   "num_generations", "generation_batch_size")  # fmt: skip


def check_trl_args(trl_config_cls: type, d: Mapping[str, Any], section: str = "train") -> None:
    """Raise if `d` has keys that `trl_config_cls` (e.g. trl.SFTConfig) does not take, with suggestions,
    or a text where that option is a number or a boolean (TRL would fail later with a bare TypeError)."""
    allowed = sorted(f.name for f in fields(trl_config_cls) if f.init)
    unknown = [k for k in d if k not in allowed]
    if unknown:
        named = "; ".join(f"'{section}.{k}'{_suggest(str(k), allowed)}" for k in unknown)
        raise ConfigError(
            f"{section}: not an option of {trl_config_cls.__module__}.{trl_config_cls.__name__}: {named}. "
            f"The '{section}' section is passed verbatim to it; see its documentation for the options."
        )
    try:
        hints = get_type_hints(trl_config_cls)
    except Exception:  # an annotation this Python cannot resolve: leave the values to TRL
        return
    for key, value in d.items():
        scalar = {a for a in get_args(hints[key]) or (hints[key],) if a is not type(None)}
        if scalar and scalar <= {int, float, bool} and isinstance(value, str):
            raise ConfigError(f"'{section}.{key}' = {value!r}: expected {_expected(hints[key])}")
        if (
            key in POSITIVE_COUNTS
            and (value is not None or key != "generation_batch_size")  # None: TRL derives that one
            and (isinstance(value, bool) or not isinstance(value, int) or value < 1)
        ):
            raise ConfigError(f"'{section}.{key}' = {value!r}: expected a whole number of at least 1")


def positive(kind):
    """An argparse type: a finite number > 0 (argparse turns the ValueError into a one-line usage error)."""

    def parse(text: str):
        value = kind(text)
        if not 0 < value < float("inf"):
            raise ValueError(text)
        return value

    parse.__name__ = f"positive {kind.__name__}"  # argparse names the type in its message
    return parse


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, description: str | None = None) -> None:
    """`--config FILE` plus positional `KEY=VALUE` overrides; `--help` says `description` and lists every
    key (`describe`)."""
    if description is not None:
        parser.description = description
    parser.add_argument("--config", default=None, help="YAML config (see configs/); keys listed below")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="override config keys (YAML values; the keys are listed below), e.g. "
        "train.learning_rate=1e-4 data.splits=[train,val] train.save_strategy=no",
    )
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = "config keys (defaults <- --config YAML <- KEY=VALUE overrides):\n\n" + describe(cls)


def config_from_args(cls: type[T], args: argparse.Namespace) -> T:
    return load_config(cls, args.config, args.overrides)


def require(rules: Sequence[tuple[bool, str]]) -> None:
    """For `__post_init__`: raise ValueError with the message of the first rule that does not hold."""
    for ok, msg in rules:
        if not ok:
            raise ValueError(msg)


def train_section_rules(train: dict, owned: dict[str, str] | None = None) -> list[tuple[bool, str]]:
    """The rules every stage's verbatim `train:` section (to a TRL config) must hold, for `require`: an
    output_dir, and no key that another section owns (two places for one setting would drift)."""
    clash = [f"train.{k} (set {where} instead)" for k, where in (owned or {}).items() if k in train]
    return [
        (bool(train.get("output_dir")), "train.output_dir is required (checkpoints, logs, config)"),
        (not clash, f"keys owned by another section: {', '.join(clash)}"),
    ]


def meta(help_text: str, choices: Sequence[str] | None = None) -> dict[str, Any]:
    """Field metadata: `help` (shown by `describe`), optional `choices` (checked by the loader)."""
    return {"help": help_text, **({"choices": tuple(choices)} if choices else {})}


def check_choices(obj: Any) -> None:
    """For `__post_init__`: every field with `choices` metadata holds one of them (also when built in code)."""
    for f in fields(obj):
        choices = f.metadata.get("choices")
        if choices and getattr(obj, f.name) not in choices:
            raise ValueError(f"{f.name} {getattr(obj, f.name)!r}: choose one of {', '.join(choices)}")
