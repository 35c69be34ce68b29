"""`make_teacher(spec)`: a teacher from its command-line spec (`synthesize --teacher SPEC`)."""

from __future__ import annotations

from pathlib import Path

from data_synthesis.teachers.base import Teacher
from data_synthesis.teachers.hf import HFTeacher
from data_synthesis.teachers.imported import ImportTeacher
from data_synthesis.teachers.openai import OpenAITeacher
from data_synthesis.teachers.oracle import OracleTeacher


def make_teacher(spec: str, **kw) -> Teacher:
    """Build a teacher from `oracle[:plain|:fields]`, `openai:URL[#MODEL]`, `hf:PATH` or `import:FILE`;
    `kw` go to its constructor."""
    kind, _, rest = spec.partition(":")
    if kind == "oracle" and rest in ("", "plain", "fields"):
        return OracleTeacher(plain=rest == "plain", fields=rest == "fields", **kw)
    if kind == "openai" and rest:
        url, _, model = rest.partition("#")
        kw_model = kw.pop("model", None)  # "#MODEL" in the spec wins over a model= keyword
        return OpenAITeacher(url, model=model or kw_model, **kw)
    if kind == "hf" and rest:
        if not (Path(rest) / "config.json").is_file():
            raise ValueError(
                f"hf:{rest}: no model folder there (no config.json); give a local checkpoint folder"
            )
        return HFTeacher(rest, **kw)
    if kind == "import" and rest:
        return ImportTeacher.from_file(rest, **kw)
    raise ValueError(
        f"unknown teacher {spec!r}; expected 'oracle', 'oracle:plain', 'oracle:fields', 'openai:URL[#MODEL]', "
        "'hf:PATH' or 'import:FILE'"
    )
