"""Who was audited and against what: the subject (the implementation under audit, with its version),
the references each card was judged against (``meta["subject"]``, or inferred from the cards for an
older results.json), and excerpts of the subject's own code."""
from __future__ import annotations

import inspect
import os
from collections import defaultdict
from pathlib import Path

from .report_rows import uniq

SUBJECT_GLOSS = {"ours": "this repo's hook runtime and variants",
                 "peft": "the installed peft through its own code paths (its config classes, targeting, init "
                         "and save/load)",
                 "third-party": "a driver (an `audit.subjects.Subject`) running its library's own code",
                 "lycoris": "the LyCORIS library (the LoHa/LoKr authors' code) through its own network, modules, init, "
                            "save/load and merge (audit/subjects/lycoris.py)",
                 "torchtune": "torchtune's LoRALinear/DoRALinear put in place the torchtune way, with its adapter and "
                              "merged checkpoints (audit/subjects/torchtune.py)"}
OTHER = {"ours": "peft", "peft": "ours"}  # the implementation a subject is compared with side by side


def _with_version(label: str, version: str) -> str:
    return f"{label} {version}" if version and version not in label else label


def subject_info(meta: dict) -> dict:
    """The run's subject (kind, label with version, what it is) and the references of each card,
    from ``meta["subject"]``; a results.json without it (older runs) audited ours."""
    rec = meta.get("subject") if isinstance(meta.get("subject"), dict) else {}
    impls = meta.get("implementations") or {}
    kind = rec.get("kind") or "ours"
    label = rec.get("label") or ""
    if not label:
        others = uniq(v for v in impls.values() if not str(v).startswith("variants."))
        label = "ours (variants/)" if kind == "ours" and not others else ", ".join(others) or kind
    other = OTHER.get(kind, "peft")
    full = _with_version(label, rec.get("version") or "")
    specs = [v for v in uniq(map(str, impls.values())) if not v.startswith("variants.") and v not in full]
    return {"kind": kind, "label": full, "recorded": bool(rec), "specs": specs,
            "gloss": SUBJECT_GLOSS.get(kind, "the implementation under audit"), "other": other,
            "who": kind if kind != other else "subject", "short": {"third-party": "subject"}.get(kind, kind),
            "references": dict(rec.get("references") or {})}


def reference_label(name: str, meta: dict) -> str:
    """A reference as the reports name it: the paper formula, peft with its version, ours, or a port."""
    if name == "paper":
        return "the paper's formula"
    if name == "peft":
        v = (meta.get("versions") or {}).get("peft")
        return f"peft {v}" if v and v != "?" else "peft"
    if name == "ours":
        return "ours (variants/)"
    return f"{name} (independent port)"


def references_of(card_name: str, meta: dict, card=None, subject=None) -> tuple[list[str], str]:
    """The references the subject was judged against on ``card_name``, and where that comes from:
    "" (recorded in results.json), "inferred" (from the card; an older results.json) or "unknown"."""
    recorded = meta["subject"]["references"].get(card_name)
    if recorded is not None:
        return list(recorded), ""
    from types import SimpleNamespace

    from .cards import CARDS
    from .twins import reference_names
    card = card or CARDS.get(card_name)
    if card is None:
        return [], "unknown"
    return reference_names(card, subject or SimpleNamespace(kind=meta["subject"]["kind"])), "inferred"


def references_text(refs: list[str], meta: dict) -> str:
    names = [reference_label(r, meta) for r in refs]
    return " and ".join(names) if len(names) < 3 else ", ".join(names[:-1]) + " and " + names[-1]


def references_overview(names: list[str], meta: dict) -> str:
    """One sentence: what each variant was judged against, grouped by identical reference lists."""
    groups: dict = defaultdict(list)
    sources = set()
    for n in names:
        refs, src = references_of(n, meta)
        sources.add(src)
        groups[tuple(refs)].append(n)
    if not groups:
        return "no variant in this run."
    parts = []
    for refs, ns in groups.items():
        what = references_text(list(refs), meta) if refs else "not recorded"
        parts.append(f"{what} on {'every variant' if len(groups) == 1 and len(ns) > 1 else ', '.join(ns)}"
                     + (f" ({', '.join(ns)})" if len(groups) == 1 and len(ns) > 1 else ""))
    text = "; ".join(parts) + "."
    if sources - {""}:
        text += " (Not recorded in this results.json, which predates the subject record: inferred from the cards.)"
    return text


def variant_subject(tgt, meta: dict) -> dict:
    """Who was audited on this card (the target's own subject) and against which references."""
    subj = tgt.subject
    kind = getattr(subj, "kind", "ours")
    label = _with_version(subj.describe(), getattr(subj, "version", "") or "")
    refs, src = references_of(tgt.card.name, meta, tgt.card, subj)
    try:
        from .twins import other_implementation
        other = other_implementation(tgt.card, subj) or OTHER.get(kind, "peft")
    except Exception:  # noqa: BLE001 - a card the twins cannot place: the run-wide other
        other = OTHER.get(kind, "peft")
    return {"kind": kind, "label": label, "gloss": SUBJECT_GLOSS.get(kind, "the implementation under audit"),
            "impl": tgt.label if tgt.label not in (label, subj.describe()) else "",
            "references": refs, "references_text": references_text(refs, meta) if refs else "not recorded",
            "references_source": src, "other": other, "short": {"third-party": "subject"}.get(kind, kind)}


# -- the subject's code --------------------------------------------------------------------------
def _display_path(path: str, module: str) -> str:
    """``path`` relative to the working directory, or from its top-level package when outside it or
    installed (``peft/tuners/lora/layer.py``, not ``../venv/lib/...`` nor ``.nox/tests/lib/...``)."""
    try:
        rel = os.path.relpath(path)
    except ValueError:
        rel = path
    installed = {"site-packages", "dist-packages"} & set(Path(path).parts)  # e.g. a venv inside the checkout
    if not rel.startswith("..") and not installed:
        return rel
    top = module.split(".")[0]
    i = path.rfind(os.sep + top + os.sep)
    return path[i + 1:] if i >= 0 else path


def source_excerpts(variant_cls, max_lines: int = 14,
                    methods: tuple[str, ...] = ("forward", "forward_input", "init", "group_init"),
                    skip: tuple[str, ...] = ("variants._base",)) -> list[dict]:
    """file:line and a short excerpt of what the implementation does (its hook and init; for another
    class, ``methods``); methods only inherited from a module in ``skip`` (or torch) are left out."""
    out = []
    for meth in methods:
        fn = getattr(variant_cls, meth, None)
        if fn is None:
            continue
        owner = next((k for k in variant_cls.__mro__ if meth in vars(k)), None)
        if owner is None or owner.__module__ in skip or owner.__module__.split(".")[0] == "torch":
            continue
        try:
            lines, start = inspect.getsourcelines(fn)
            path = inspect.getsourcefile(fn)
        except (OSError, TypeError):
            continue
        if path is None:
            continue
        path = _display_path(path, owner.__module__)
        body = "".join(lines[:max_lines]).rstrip() + ("\n    ..." if len(lines) > max_lines else "")
        out.append({"method": f"{owner.__name__}.{meth}", "where": f"{path}:{start}", "code": body})
    return out


PEFT_METHODS = ("forward", "update_layer", "get_delta_weight")
DRIVER_METHODS = ("attach", "adapted_layers", "base_layer", "layer_tensors", "save", "load", "detach")


def subject_excerpts(tgt) -> tuple[list[dict], str]:
    """The code of the subject: (excerpts, a line saying whose code it is; or, with no excerpt, why).

    Ours: the variant's hook and init (its class from variants/). peft: the tuner layer class that
    replaces each target (references/peft_bridge MAPPINGS[card].peft_layer_class). A driver: the
    driver class's own methods and its declared tensor names for the card."""
    if tgt.variant is not None:
        return source_excerpts(tgt.variant), ""
    subj, name = tgt.subject, tgt.card.name
    if subj.kind == "peft":
        try:
            import importlib

            from references import peft_bridge as bridge
            dotted = bridge.MAPPINGS[name].peft_layer_class
            module, _, attr = dotted.rpartition(".")
            cls = getattr(importlib.import_module(module), attr)
        except Exception as e:  # noqa: BLE001 - no mapping, or the installed peft lacks the class
            return [], (f"No source excerpt is available for {subj.describe()} on {name}: its layer class could "
                        f"not be found ({type(e).__name__}: {str(e)[:200]}).")
        ex = (source_excerpts(cls, max_lines=45, methods=PEFT_METHODS[:1], skip=())  # its dispatch, then the sum
              + source_excerpts(cls, methods=PEFT_METHODS[1:], skip=()))
        note = (f"{subj.describe()}'s layer class `{dotted}` (`MAPPINGS[\"{name}\"].peft_layer_class` in "
                "references/peft_bridge), which replaces each target; targeting, init and save/load are "
                "peft's own too.")
        return ex, (note if ex else f"No source excerpt is available: `{dotted}` has no readable "
                                    f"{', '.join(PEFT_METHODS)} source.")
    cls = type(subj)
    spec = tgt.spec or tgt.label or f"{cls.__module__}:{cls.__name__}"
    ex = source_excerpts(cls, methods=DRIVER_METHODS, skip=("audit.subjects.base",))
    names = getattr(subj, "tensor_names", {}).get(name)
    if names:
        try:
            at = f"{_display_path(inspect.getsourcefile(cls), cls.__module__)}:{inspect.getsourcelines(cls)[1]}"
        except (OSError, TypeError):
            at = spec
        ex.append({"method": f"{cls.__name__}.tensor_names[{name!r}]", "where": at,
                   "code": "\n".join(f"{k!r}: {v!r}," for k, v in names.items())})
    if not ex:
        return [], f"No source excerpt is available for {subj.describe()}: its driver class has no readable source."
    return ex, f"The driver `{spec}` ({subj.describe()}): its own methods and the tensor names it declares."
