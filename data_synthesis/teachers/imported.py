"""The `import:FILE` teacher: rationales that already exist (VideoScore2's released chain-of-thought
records, or another layout through a field mapping) instead of newly written ones.

It "writes" each record's stored rationale as the critique and answers with the scores that rationale
states, so the rest of synthesis treats it like any teacher: the protocol parser reads the reply, the
consistency filter compares the stated scores with the label (a dimension the text states no score for
answers with its label, so it checks nothing), and the kept ones become tool traces. When the text
states several scores for one dimension, the one furthest from the label answers: any statement that
contradicts the label is enough to drop the row.

The records come from the same file (`records`); `data_synthesis/rationale_import.py` reads it.
"""

from __future__ import annotations

from cot_rm.protocol import JudgeSpec, format_answer
from data_synthesis.rationale_import import Imported, read_import
from data_synthesis.teachers.base import TeacherReply, TeacherRequest


class ImportTeacher:
    name = "import"
    needs_images = False  # nothing is looked at: the pipeline decodes only the trace's own frames

    def __init__(self, imported: Imported):
        self.imported = imported
        # The file's digest: a resumed run refuses a file whose rationales changed under it.
        self.model = f"{imported.path.name}#{imported.digest}"

    @classmethod
    def from_file(cls, path: str, video_root=None, mapping=None, judge_spec: JudgeSpec = JudgeSpec()):
        return cls(read_import(path, video_root, mapping, judge_spec))

    @property
    def records(self):
        return self.imported.records

    def generate(self, requests: list[TeacherRequest]) -> list[TeacherReply]:
        return [self._reply(r) for r in requests]

    def _reply(self, request: TeacherRequest) -> TeacherReply:
        found = self.imported.rationales.get(request.id)
        if found is None:
            return TeacherReply(request.id, None, f"{self.imported.path} holds no rationale for this record")
        label = request.record.scores
        answer = {d: _furthest(found.stated.get(d, ()), label[d]) for d in label}
        reply = f"<think>{found.text}</think>\n{format_answer(answer, JudgeSpec(dimensions=tuple(label)))}"
        return TeacherReply(request.id, reply)


def _furthest(stated, label: float) -> float:
    """The stated score furthest from the label (the label itself when none is stated)."""
    return max(stated, key=lambda s: abs(s - label), default=label)
