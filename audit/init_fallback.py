"""A config the subject refuses only for its init, audited under an init the subject has.

A release or library that lacks one init style (peft before 0.17 has no LoKr ``init_weights='lycoris'``,
peft has no DeLoRA paper init) would otherwise leave every check of that config n/a, and with the card's
main config refused, merge, save/load, placement and timing would never be measured at all. Where the
card audits another init style as a config of its own (a case that sets only ``init_style``) and the
subject takes it, the refused case is audited with that init instead, under a derived id
``<case>@init_style=<style>`` whose ``origin`` keeps the case's deviations; the report's config table
says why.
"""
from __future__ import annotations

from dataclasses import replace

INIT_KEYS = frozenset({"init_style"})  # config fields that select an init and nothing else


def init_alternatives(card) -> list[dict]:
    """The init styles the card audits as configs of their own (cases that set only init fields)."""
    out = []
    for case in card.configs:
        if case.fields and set(case.fields) <= INIT_KEYS and not case.subject_defaults and case.fields not in out:
            out.append(dict(case.fields))
    return out


def with_fallbacks(card, subject, model: str, dtype: str, seed: int):
    """``card`` with a derived case for every case the subject refuses only for its init (and takes with
    another init the card audits); the refused case stays, its rows n/a with the subject's reason. The main
    case's stand-in runs everywhere the main one does."""
    from .cell import Cell
    refuses = getattr(subject, "refuses", None)
    if refuses is None:
        return card

    def probe(case) -> str | None:
        return refuses(card.name, Cell(card.at(case), subject, model, dtype, seed=seed).config())

    out = card
    for case in card.cases():
        why = None if case.subject_defaults or case.origin else probe(case)
        if why is None:
            continue
        for alt in init_alternatives(card):
            if all(case.fields.get(k, card.config.get(k)) == v for k, v in alt.items()):
                continue
            said = ", ".join(f"{k}={v}" for k, v in alt.items())
            derived = replace(case, id=f"{case.id}@{said}", fields={**case.fields, **alt}, origin=case.id,
                              why=f"{case.why}; the subject refuses this config ({why}), so it is audited with "
                                  f"{said}, an init the card audits as a config of its own")
            if probe(derived) is None:
                out = out.with_case(derived)
                break
    return out
