"""What was audited: each card's config as the subject received it (defaults and per-model
overrides), its other config cases, and the zero-gradient claims of each."""
from __future__ import annotations

import dataclasses
import json

import variants

from .checks import CHECK_ORDER
from .report_format import DTYPE_SHORT, fmt
from .report_rows import subject_rows, uniq, worst
from .rows import Row


def _cfg_value(v) -> str:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return fmt(v)
    return repr(list(v) if isinstance(v, tuple) else v)


def config_audited(tgt, meta: dict) -> dict:
    """The config each model was audited with: card.config (+ per-model overrides) through the
    implementation's Config, so defaults show too; falls back to the card's dict when that fails."""
    card = tgt.card
    base = {**card.config, "dtype": "float32", "seed": meta["seed"] if isinstance(meta["seed"], int) else 0}

    def effective(fields):
        if tgt.variant is None:  # not our runtime: the canonical fields the subject was given
            return dict(fields)
        try:
            cfg = tgt.variant.Config(**fields)
            if isinstance(cfg, variants.AdapterConfig):
                return cfg.to_dict(function_only=True)  # as the subject was given it
            return cfg.to_dict() if hasattr(cfg, "to_dict") else dataclasses.asdict(cfg)
        except Exception:  # noqa: BLE001 - a user's Config: show what the card says instead
            return dict(fields)

    common = effective(base)
    models = meta["models"] or list(card.model_overrides)
    overrides = {}
    for model in models:
        over = card.model_overrides.get(model)
        if over:
            eff = effective({**base, **over})
            overrides[model] = {k: v for k, v in eff.items() if common.get(k) != v}
    fields = []
    for k, v in common.items():
        per_model = "; ".join(f"{m}: {_cfg_value(o[k])}" for m, o in overrides.items() if k in o)
        fields.append({"name": k, "value": _cfg_value(v),
                       "source": "card" if k in card.config else ("run" if k in ("dtype", "seed") else "default"),
                       "per_model": per_model})
    return {"fields": fields, "overridden": list(overrides),
            "call": ", ".join(f"{k}={v!r}" for k, v in card.config.items()),
            "canonical": json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in common.items()})}


def _made_by(option, kind: str) -> str:
    """ " (the paper's; peft's)": who is known to take an option ("ours" only when ours is the subject)."""
    who = [{"paper": "the paper's"}.get(m, "ours" if m == "ours" else f"{m}'s") for m in option.makers
           if m != "ours" or kind == "ours"]
    return f" ({'; '.join(who)})" if who else ""


def choices_made(card, rows: list[Row], kind: str) -> list[dict]:
    """Per choice the card declares open: the option(s) the subject took, on how many of its cells when
    more than one, and the options that would also conform."""
    from .choices import parse
    taken: dict[str, dict[str, set]] = {}
    for r in subject_rows(rows):
        for name, opt in parse(r.choice).items():
            taken.setdefault(name, {}).setdefault(opt, set()).add((r.place, r.dtype))
    out = []
    for c in card.choices:
        mine = taken.get(c.name, {})
        took = [c.option(i).label + _made_by(c.option(i), kind) + (f" on {len(cells)} cells" if len(mine) > 1 else "")
                for i, cells in mine.items()]
        out.append({"name": c.name, "what": c.what, "took": "; ".join(took) or "not measured in this run",
                    "others": "; ".join(o.label + _made_by(o, kind) for o in c.options if o.id not in mine) or "-",
                    "sources": "; ".join(f"{o.id}: {o.source}" for o in c.options)})
    return out


def _case_fields(tgt, case) -> dict:
    """The fields a config case audits: the card's config with the case's overrides, or the
    subject's own defaults (when it declares them) for a subject-defaults case."""
    if case.subject_defaults:
        try:
            return dict(tgt.subject.default_config(tgt.card.name))
        except Exception:  # noqa: BLE001 - a subject that declares none: its rows say n/a
            return {}
    return {**tgt.card.config, **case.fields}


def configs_audited(tgt, meta: dict, rows: list[Row]) -> list[dict]:
    """One line per config of the card (the main one first, then its corners and any --config ones):
    its id, what it sets, why it matters, where it ran and its worst subject status."""
    from .cards import ConfigCase
    card = tgt.card
    cases = {c.id: c for c in card.cases()}
    for cid in uniq(r.config_id for r in rows):  # rows of a config the card does not list (--config)
        cases.setdefault(cid, ConfigCase(cid, {}, "given on the command line (--config)"))
    out = []
    for cid, case in cases.items():
        rs = [r for r in rows if r.config_id == cid]
        if case.subject_defaults:
            got = _case_fields(tgt, case)
            sets = ("the subject's defaults: " + ", ".join(f"{k}={_cfg_value(v)}" for k, v in got.items())
                    if got else "the subject's defaults (it declares none)")
        elif cid == card.config_id:
            sets = ", ".join(f"{k}={_cfg_value(v)}" for k, v in card.config.items()) or "-"
        else:
            sets = ", ".join(f"{k}={_cfg_value(v)}" for k, v in case.fields.items()) or "-"
        judged = [r for r in subject_rows(rs) if r.status != "n/a"]
        out.append({"id": cid, "main": cid == card.config_id, "sets": sets, "why": case.why,
                    "models": ", ".join(uniq(r.model for r in rs)) or "-",
                    "dtypes": ", ".join(DTYPE_SHORT.get(d, d) for d in uniq(r.dtype for r in rs)) or "-",
                    "checks": "every selected check" if case.checks is None else ", ".join(
                        c for c in CHECK_ORDER if c in case.checks),
                    "status": worst(judged) if judged else ("n/a" if rs else "not run")})
    return out


def zero_grad_claims(tgt) -> list[dict]:
    """The zero-gradient claims of every config: each claim once, with the configs it holds under."""
    card = tgt.card
    seen: dict[tuple, list[str]] = {}
    claims = {}
    for case in card.cases():
        at = card.at(case)
        for t, z in at.zero_grads_at(_case_fields(tgt, case)).items():
            k = (t, z.reason, z.fraction, z.stays_zero)
            seen.setdefault(k, []).append(case.id)
            claims[k] = (t, z)
    n = len(card.cases())
    return [{"tensor": t, "z": z, "configs": "" if len(ids) == n else ", ".join(ids)}
            for k, ids in seen.items() for t, z in [claims[k]]]
