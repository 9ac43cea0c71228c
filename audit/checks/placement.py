"""placement: the set of adapted layers equals the card's expected set (paper placement for IA3).

The expected set is derived here from module names, independently of variants' own targeting.
Where the card makes a paper placement claim and peft is a reference, peft's default target
modules for this architecture are audited against the paper placement too. A subject that refuses
the kind of layer the expected targets are (peft's HRA, DeLoRA and RoAd on GPT-2's Conv1D) gets one
row, ``refused_target_fraction``: a measured departure (declared on the card where it is known), while
the other checks are n/a on that cell.
"""
from __future__ import annotations

import re

from ..cell import Cell, NotApplicable
from ..subjects import LayerNotSupported

DTYPE_INDEPENDENT = True  # which layers are adapted is a property of names and config, not of the dtype

# role -> module name keys, as the audit (not variants/) reads an architecture: a key is a leaf name,
# or a dotted suffix where the leaf alone is ambiguous (GPT-2's c_proj is the attention output under
# attn and the MLP's down projection under mlp; a BERT-family encoder's "dense" is the attention output
# under attention.output, the up projection under intermediate and the down projection under the
# layer's own output, written N.output.dense: N a layer index). peft matches target_modules the same
# way (equal or ending in "." + key). A fused layer (qkv_proj, c_attn, gate_up_proj) is listed under
# each role it computes: it is expected wherever one of them is, adapted as one layer.
FUSED = {"qkv_proj": ("q", "k", "v"), "c_attn": ("q", "k", "v"), "query_key_value": ("q", "k", "v"),
         "gate_up_proj": ("gate", "up")}
LEAVES = {"q": ("q_proj", "query", "q_lin", "q"), "k": ("k_proj", "key", "k_lin", "k"),
          "v": ("v_proj", "value", "v_lin", "v"), "o": ("o_proj", "out_proj", "attn.c_proj", "out_lin", "o",
                                                        "attention.output.dense"),
          "gate": ("gate_proj", "w1", "wi_0"), "up": ("up_proj", "w3", "fc1", "c_fc", "lin1", "wi", "wi_1",
                                                      "intermediate.dense"),
          "down": ("down_proj", "w2", "fc2", "mlp.c_proj", "lin2", "wo", "N.output.dense")}
for _key, _roles in FUSED.items():
    for _r in _roles:
        LEAVES[_r] += (_key,)
ALL_ROLES = ("q", "k", "v", "o", "gate", "up", "down")


def key_matches(name: str, key: str) -> bool:
    """Whether module ``name`` is the one ``key`` names (its leaf, or a dotted suffix; N stands for a
    layer index)."""
    if key.startswith("N."):
        suffix = key[1:]
        return name.endswith(suffix) and name[:-len(suffix)].rsplit(".", 1)[-1].isdigit()
    return name == key or name.endswith("." + key)


def expected_modules(model, roles) -> set[str]:
    keys = {k for r in roles for k in LEAVES[r]}
    return {n for n, m in model.named_modules() if hasattr(m, "weight") and any(key_matches(n, k) for k in keys)}


FUSED_NOTE = "; fused layers adapted as one, beyond the "  # the report reads the note after it (report.fused_notes)


def fused_beyond(names, roles) -> dict[str, tuple[str, ...]]:
    """{fused module: the roles it computes that ``roles`` does not ask for} among ``names``."""
    out = {}
    for n in names:
        fused = FUSED.get(n.rsplit(".", 1)[-1], ())
        if set(fused) - set(roles):
            out[n] = tuple(r for r in fused if r not in roles)
    return out


def run(cell: Cell) -> None:
    card = cell.card
    base = cell.fresh_model()
    expected = expected_modules(base, card.placement_roles)
    if not expected:
        raise NotApplicable(f"this model has no {'/'.join(card.placement_roles)} projections to adapt")
    try:
        actual = set(cell.attach(base).names)
    except LayerNotSupported as e:  # the subject refuses these layers: a measured departure, not an n/a
        cell.row("refused_target_fraction", 1.0, 0.0,
                 message=f"all {len(expected)} expected targets refused, e.g. {sorted(expected)[:2]}: {e}")
        return
    missing, extra = sorted(expected - actual), sorted(actual - expected)
    src = card.placement_source
    beyond = fused_beyond(sorted(actual & expected), card.placement_roles)  # sorted: same message every run
    fused = (f"{FUSED_NOTE}{'/'.join(card.placement_roles)} placement: "
             + ", ".join(f"{n} (+{'/'.join(r)})" for n, r in list(beyond.items())[:2])
             + (" ..." if len(beyond) > 2 else "")) if beyond else ""
    cell.row("missing_targets", len(missing), 0.0, message=f"expected per {src}; missing: {missing[:4]}{fused}")
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
        peft_set = {n for n, _ in cell.base().named_modules() if any(key_matches(n, k) for k in wanted)}
        diff = sorted(peft_set ^ expected)
        kinds = sorted({re.sub(r"\.\d+\.", ".N.", n) for n in diff})  # q_proj for k_proj: 2 kinds, whatever the depth
        cell.row("peft_default_targets_mismatch", len(kinds), 0.0, reference="peft", about=cell.about("peft"),
                 message=f"peft's default targets for {model_type} vs the paper placement: "
                         f"{len(diff)} modules of kinds {kinds} differ, e.g. {diff[:4]}")
