"""placement: the set of adapted layers equals the card's expected set (paper placement for IA3).

The expected set is derived here from module names, independently of variants' own targeting.
Where the card makes a paper placement claim and peft is a reference, peft's default target
modules for this architecture are audited against the paper placement too.
"""
from __future__ import annotations

from ..cell import Cell, NotApplicable

# role -> module leaf names, as the audit (not variants/) reads an architecture
LEAVES = {"q": ("q_proj", "query"), "k": ("k_proj", "key"), "v": ("v_proj", "value"),
          "o": ("o_proj", "out_proj"), "gate": ("gate_proj", "w1"), "up": ("up_proj", "w3", "fc1"),
          "down": ("down_proj", "w2", "fc2")}
ALL_ROLES = ("q", "k", "v", "o", "gate", "up", "down")


def expected_modules(model, roles) -> set[str]:
    leaves = {leaf for r in roles for leaf in LEAVES[r]}
    return {n for n, m in model.named_modules() if n.rsplit(".", 1)[-1] in leaves and hasattr(m, "weight")}


def run(cell: Cell) -> None:
    card = cell.card
    base = cell.fresh_model()
    expected = expected_modules(base, card.placement_roles)
    if not expected:
        raise NotApplicable(f"this model has no {'/'.join(card.placement_roles)} projections to adapt")
    actual = set(cell.attach(base).names)
    missing, extra = sorted(expected - actual), sorted(actual - expected)
    src = card.placement_source
    cell.row("missing_targets", len(missing), 0.0, message=f"expected per {src}; missing: {missing[:4]}")
    cell.row("unexpected_targets", len(extra), 0.0, message=f"expected per {src}; unexpected: {extra[:4]}")
    if ("peft" in card.references or cell.subject.kind == "peft") and tuple(card.placement_roles) != ALL_ROLES:
        model_type = getattr(getattr(base, "config", None), "model_type", None)
        if model_type is None:
            return
        # only IA3 makes a paper placement claim among the peft methods: audit peft's IA3 defaults,
        # split into its output-scaled targets (ia3) and its feed-forward ones (ia3_ff)
        from peft.utils import constants
        defaults = constants.TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING.get(model_type)
        if defaults is None:
            import peft
            cell.row("peft_default_targets_mismatch", None, None, status="n/a", reference="peft",
                     about=cell.about("peft"),
                     message=f"peft {peft.__version__} has no default IA3 targets for model type {model_type!r}")
            return
        ff = constants.TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING.get(model_type, [])
        wanted = {leaf for leaf in defaults if (leaf in ff) == (card.name == "ia3_ff")}
        peft_set = {n for n, _ in cell.fresh_model().named_modules() if n.rsplit(".", 1)[-1] in wanted}
        diff = sorted(peft_set ^ expected)
        kinds = sorted({n.rsplit(".", 1)[-1] for n in diff})  # q_proj for k_proj: 2 kinds, whatever the depth
        cell.row("peft_default_targets_mismatch", len(kinds), 0.0, reference="peft", about=cell.about("peft"),
                 message=f"peft's default targets for {model_type} vs the paper placement: "
                         f"{len(diff)} modules of kinds {kinds} differ, e.g. {diff[:4]}")
