"""Whose exception is it? A check that crashes inside the subject's own code (peft raising in unmerge,
LyCORIS in its bf16 forward) is a finding about the subject: a failing row that names the call and the
library's line. One raised in the audit's own code (or in the audit's code called back from the subject,
such as a capture hook) stays an audit error."""
from __future__ import annotations

import os
import traceback
from pathlib import Path

_AUDIT_ROOTS = tuple(str(Path(__file__).resolve().parents[1] / d) for d in ("audit", "references"))
_ADAPTERS = str(Path(__file__).resolve().parent / "subjects") + os.sep  # the built-in subjects' glue code


def _under(filename: str, roots: tuple[str, ...]) -> str | None:
    """The root (a folder, or a single file) that holds ``filename``."""
    path = os.path.realpath(filename)
    return next((r for r in roots if path == r or path.startswith(r + os.sep)), None)


def raised_by_subject(subject, exc: BaseException) -> str | None:
    """"<subject> raised in <call>: <Type>: <message> (<file>:<line>)" when the innermost frame of either
    the audit's code or the subject's is the subject's; None when it is the audit's (or no frame is)."""
    roots = tuple(os.path.realpath(r).rstrip(os.sep) for r in subject.code_roots())
    if not roots:
        return None
    frames = traceback.extract_tb(exc.__traceback__)
    inner = None
    for f in reversed(frames):  # innermost first: the first frame that is the audit's or the subject's decides
        if _under(f.filename, roots):
            inner = f
            break
        if _under(f.filename, _AUDIT_ROOTS):
            return None
    if inner is None:
        return None
    glue = [f for f in frames if os.path.realpath(f.filename).startswith(_ADAPTERS)  # a built-in subject's method
            and os.path.basename(f.filename) != "base.py"]  # base.py only routes to a driver's own methods
    first = next(f for f in frames if _under(f.filename, roots))  # where the audit entered the library
    call = glue[-1].name if glue else first.name
    root = _under(inner.filename, roots)
    where = os.path.relpath(os.path.realpath(inner.filename), os.path.dirname(root))
    message = " ".join(str(exc).split())[:300]
    return f"{subject.describe()} raised in {call}: {type(exc).__name__}: {message} ({where}:{inner.lineno})"
