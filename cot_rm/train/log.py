"""Messages from training code, through accelerate's logger: under `accelerate launch` each message is
written once (by the main process), not once per rank. Written to stderr as plain lines, like the
commands' own messages."""

from __future__ import annotations

import logging
import sys

from accelerate import PartialState
from accelerate.logging import get_logger


class _Stderr(logging.StreamHandler):
    """A handler that writes to whatever `sys.stderr` is when the message comes (a test or a caller may
    have replaced it since the handler was made)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


_root = logging.getLogger("cot_rm")
if not _root.handlers:
    _root.addHandler(_Stderr())
    _root.setLevel(logging.INFO)
    _root.propagate = False


def note(name: str, message: str) -> None:
    """Log `message` once across ranks from the module `name` (accelerate's state is made on first use,
    so this works before a Trainer exists too)."""
    PartialState()
    get_logger(name).info(message, main_process_only=True)
