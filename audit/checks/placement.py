"""placement: the set of adapted layers equals the card's expected set (paper placement for IA3).

The expected set is derived from module names (``audit.roles``), independently of variants' own targeting.
Where the card makes a paper placement claim and peft is a reference, peft's default target
modules for this architecture are audited against the paper placement too. A subject that refuses
the kind of layer the expected targets are (peft's HRA, DeLoRA and RoAd on GPT-2's Conv1D) gets one
row, ``refused_target_fraction``: a measured departure (declared on the card where it is known), while
the other checks are n/a on that cell.
"""
from __future__ import annotations

import re

from ..cell import Cell, NotApplicable
from ..roles import ALL_ROLES, expected_modules, fused_beyond, key_matches, resolve_targets
from ..subjects import LayerNotSupported

DTYPE_INDEPENDENT = True  # which layers are adapted is a property of names and config, not of the dtype

NARROWING = ("target_names", "target_roles", "exclude_names", "layers")  # config fields that choose the targets
FUSED_NOTE = "; fused layers adapted as one, beyond the "  # the report reads the note after it (diagnosis.fused_notes)


def run(cell: Cell) -> None:
    card = cell.card
    base = cell.fresh_model()
    cfg = cell.config()
    asked = {k: cfg[k] for k in NARROWING if cfg.get(k) not in (None, (), [])}
    if asked:  # the config names its targets: judge those, not the paper's placement
        expected = set(resolve_targets(base, cfg, card.placement_roles))
        src = "the config (" + ", ".join(f"{k}={list(v) if isinstance(v, tuple) else v}" for k, v in asked.items()) + ")"
        if not expected:
            raise NotApplicable(f"{src} selects no layer of this model")
    else:
        expected = expected_modules(base, card.placement_roles)
        src = card.placement_source
    if not expected:
        raise NotApplicable(f"this model has no {'/'.join(card.placement_roles)} projections to adapt")
    try:
        actual = set(cell.attach(base).names)
    except LayerNotSupported as e:  # the subject refuses these layers: a measured departure, not an n/a
        cell.row("refused_target_fraction", 1.0, 0.0,
                 message=f"all {len(expected)} expected targets refused, e.g. {sorted(expected)[:2]}: {e}")
        return
    missing, extra = sorted(expected - actual), sorted(actual - expected)
    beyond = fused_beyond(sorted(actual & expected), card.placement_roles)  # sorted: same message every run
    fused = (f"{FUSED_NOTE}{'/'.join(card.placement_roles)} placement: "
             + ", ".join(f"{n} (+{'/'.join(r)})" for n, r in list(beyond.items())[:2])
             + (" ..." if len(beyond) > 2 else "")) if beyond else ""
    cell.row("missing_targets", len(missing), 0.0, message=f"expected per {src}; missing: {missing[:4]}{fused}")
    cell.row("unexpected_targets", len(extra), 0.0, message=f"expected per {src}; unexpected: {extra[:4]}")
    if ("peft" in card.references or cell.subject.kind == "peft") and tuple(card.placement_roles) != ALL_ROLES \
            and not asked:
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
        peft_set = {n for n, _ in cell.base().named_modules() if any(key_matches(n, k) for k in wanted)}
        diff = sorted(peft_set ^ expected)
        kinds = sorted({re.sub(r"\.\d+\.", ".N.", n) for n in diff})  # q_proj for k_proj: 2 kinds, whatever the depth
        cell.row("peft_default_targets_mismatch", len(kinds), 0.0, reference="peft", about=cell.about("peft"),
                 message=f"peft's default targets for {model_type} vs the paper placement: "
                         f"{len(diff)} modules of kinds {kinds} differ, e.g. {diff[:4]}")
