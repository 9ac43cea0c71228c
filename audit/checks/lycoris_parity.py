"""lycoris_parity: side by side with the LyCORIS library, the LoHa and LoKr authors' own code, as a second
external reference for the cards that list it (peft's versions of these methods have been reported to
diverge from the authors'): the same rows as peft_parity, against LyCORIS holding the subject's state,
and LyCORIS's own layers against the paper as reference findings (rows ``lycoris_*``), so the two
references' differences read side by side in the report. n/a where LyCORIS is not installed, where it
cannot hold the layers (GPT-2's Conv1D) or when LyCORIS is itself the subject.
"""
from __future__ import annotations

from ..cell import Cell, NotApplicable
from .peft_parity import run_against

OTHER = "lycoris"


def run(cell: Cell) -> None:
    if OTHER not in cell.card.references:
        raise NotApplicable(f"the {cell.card.name} card names no LyCORIS reference")
    if cell.subject.kind == OTHER:
        raise NotApplicable("LyCORIS is the subject: compared with the paper and peft instead")
    try:
        import lycoris  # noqa: F401 - only whether it imports
    except ImportError as e:
        raise NotApplicable(f"LyCORIS does not import here ({e}): pip install lycoris-lora") from None
    run_against(cell, OTHER)
