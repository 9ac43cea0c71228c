"""Whose exception is it: a check that crashes inside the subject's own code is a failing row about the
subject ("<subject> raised in <call>: ... (<file>:<line>)"); one raised in the audit's own code stays an
audit error row (audit/subject_errors.py)."""
from __future__ import annotations

import pytest

from audit import runner
from audit.cards import get
from audit.cell import Cell
from audit.subject_errors import raised_by_subject
from audit.cards import get as card_named
from audit.subjects.ours import Ours


class CrashesInAttach(Ours):
    """A driver whose own attach raises (this file is the driver: outside audit/, so its code is the subject's)."""

    def attach(self, model, method, cfg, calibration, targets=None):
        raise ValueError("this library cannot attach here")


class AuditCodeCrashes(Ours):
    """A driver that calls back into the audit's code, which raises: that is the audit's error."""

    def attach(self, model, method, cfg, calibration, targets=None):
        card_named("no-such-card")


def _rows(subject, check="identity_at_init"):
    cell = Cell(get("lora"), subject, "mlp", "float32")
    return runner.run_cell(cell, [check])


def test_a_crash_in_the_subjects_code_is_a_failing_row_naming_call_and_line():
    rows = _rows(CrashesInAttach())
    assert [(r.metric, r.status) for r in rows] == [("subject_raised", "fail")]
    msg = rows[0].message
    assert "raised in attach: ValueError: this library cannot attach here" in msg
    assert "test_subject_errors.py:" in msg


def test_a_crash_in_the_audits_code_stays_an_error():
    rows = _rows(AuditCodeCrashes())
    assert [r.status for r in rows] == ["error"]
    assert "subject_raised" not in {r.metric for r in rows}


def test_an_exception_with_no_subject_frame_is_not_the_subjects():
    try:
        raise RuntimeError("nowhere")
    except RuntimeError as e:  # raised in this test file, which is not Ours()' code
        assert raised_by_subject(Ours(), e) is None


@pytest.mark.slow
def test_peft_crashing_on_conv1d_is_a_finding_about_peft():
    """peft's OLoRA init on GPT-2's Conv1D leaves A and B of the transposed shapes, so its own forward raises
    (a peft finding, reports/peft/olora.md), not an audit error."""
    from audit.subjects.peft import Peft
    subject = Peft()
    if subject.supports("olora"):
        pytest.skip(subject.supports("olora"))
    cell = Cell(get("olora"), subject, "gpt2", "float32")
    rows = runner.run_cell(cell, ["identity_at_init"])
    assert rows and all(r.status == "fail" and r.metric == "subject_raised" for r in rows), rows
    assert rows[0].message.startswith(f"{subject.describe()} raised in ")
    assert "(peft/tuners/" in rows[0].message


def test_a_code_package_that_does_not_import_is_no_root_and_no_crash():
    """code_roots runs while an exception is handled: a package the library names but the machine lacks must
    not raise there (it would escape run_cell); the driver's own file still counts."""
    class NamesAMissingPackage(CrashesInAttach):
        code_packages = ("variants", "no_such_package_for_adapter_audit")
    rows = _rows(NamesAMissingPackage())
    assert [(r.metric, r.status) for r in rows] == [("subject_raised", "fail")]
