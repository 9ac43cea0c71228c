"""What the failing rows say: a diagnosis per row, failure patterns (and constant factors) per check,
the card's deviations as observed, reference findings, a subject's departures from the papers, and
the fused layers placement found."""
from __future__ import annotations

import math
import statistics

from .checks import CHECK_ORDER
from .checks.placement import FUSED_NOTE
from .report_format import DTYPE_SHORT, fmt, fmt_margin, fmt_ratio, fmt_vs, where
from .report_rows import FINDING, SEVERITY, group_by, max_margin, reference_rows, subject_rows, uniq
from .rows import BAD, Row

MAX_FAILURES_PER_CHECK = 25


def diagnosis(r: Row, cell_rows: list[Row] = ()) -> str:
    """A short, honest reading of a failing row from the data at hand (the row, and the other rows
    of its cell); never a guess the numbers do not support."""
    if r.status == "error":
        if r.metric.startswith("deviation["):
            return "the card declares a deviation that matches no measurement: fix its check/metric/models/dtypes"
        return "no measurement: the check raised" if r.value is None else "error"
    if r.status == "xpass":
        return f"declared deviation `{r.deviation}` is no longer observed (the row passes): update the card"
    notes = []
    if r.metric.endswith("scale_factor") and isinstance(r.value, (int, float)) and r.value not in (0, 1):
        notes.append(f"scale off by {fmt(r.value)}×")
    for c in cell_rows:
        if (c is not r and c.check == r.check and c.metric.endswith("scale_factor")
                and isinstance(c.value, (int, float)) and c.value not in (0, 1) and c.status in BAD):
            notes.append(f"{c.metric} = {fmt(c.value)}: scale off by {fmt(c.value)}×")
            break
    if r.value is None:
        notes.append("no value measured")
    elif isinstance(r.value, float) and not math.isfinite(r.value):
        notes.append(f"non-finite value ({r.value}): the computation overflowed or produced NaN")
    elif r.tolerance is not None:
        m = r.margin
        if r.op == "<=":
            notes.append("should be exactly 0" if r.tolerance == 0 else f"value is {fmt_margin(m)}× the tolerance")
        elif r.op in (">", ">="):
            notes.append(f"below the required bound (needs {r.op} {fmt_vs(r.value, r.tolerance)[1]})")
        elif r.op == "==":
            v, t = fmt_vs(r.value, r.tolerance)
            notes.append(f"expected {t}, got {v}")
    if r.deviation and r.status == "fail":
        notes.append(f"beyond what deviation `{r.deviation}` covers")
    if "scale" in (r.message or "").lower() and not any("scale off" in n for n in notes):
        notes.insert(0, "message points at a scale: see it")
    return "; ".join(notes)


def constant_factor(rs: list[Row]) -> str:
    """A relative error ‖a − b‖/‖b‖ that is the same on every failing cell (within 1%) is what a
    constant factor a = k·b gives: |k − 1|. Said only when at least two cells agree; it is a hint
    (other bugs can give equal errors), worded as one."""
    vals = [r.value for r in rs if isinstance(r.value, (int, float)) and math.isfinite(r.value)]
    if len(vals) < 2 or len(vals) != len(rs) or "rel_err" not in rs[0].metric or min(vals) < 0.05:
        return ""
    if max(vals) > 1.01 * min(vals):
        return ""
    e = statistics.median(vals)
    ks = [f"{fmt_ratio(1 + e)}×"] + ([f"{fmt_ratio(1 - e)}×"] if e != 1 else [])
    return (f"; the same relative error ({fmt_ratio(e)}) on each: consistent with a scale off by "
            f"{' or '.join(ks)} (‖k·b − b‖/‖b‖ = |k − 1|)")


TRAIT_WORDS = {"bias": "layers with a bias", "Conv1D": "Conv1D layers (weights stored transposed)",
               "fused": "fused projections (one layer computing several roles)"}


def _traits(model: str) -> frozenset[str] | None:
    from .models import ZOO
    spec = ZOO.get(model)
    return None if spec is None else spec.traits


def cell_pattern(failing: list[Row], judged: list[Row]) -> list[str]:
    """What the failing cells of one metric share that the passing ones do not, in words a library author
    can act on: one dtype only, one config corner only, only models whose layers have a bias / are
    Conv1D / are fused. ``judged``: every judged row of the metric (failing and passing)."""
    passing = [r for r in judged if r.status in ("pass", "xfail")]
    if not failing or not passing:
        return []
    out = []
    fd, pd = {r.dtype for r in failing}, {r.dtype for r in passing}
    if len(fd) == 1 and pd - fd:
        out.append(f"only in {next(iter(fd))} ({', '.join(sorted(pd - fd))} passes)")
    fc, pc = {r.config_id for r in failing}, {r.config_id for r in passing}
    if not fc & pc and pc:
        out.append(f"only under config {', '.join(sorted(fc))} ({', '.join(sorted(pc))} passes)")
    ft = [_traits(r.model) for r in failing]
    pt = [_traits(r.model) for r in passing]
    if None not in ft and None not in pt:
        for trait, words in TRAIT_WORDS.items():
            if all(trait in t for t in ft) and any(trait not in t for t in pt):
                out.append(f"only on models with {words}: {', '.join(sorted({r.model for r in failing}))}")
    return out


def forward_vs_merge(rows: list[Row]) -> str:
    """Which of the forward and the merge departs from the paper, when the merge check failed: the merged
    weight against the paper's W′ tells "forward right, merge wrong" from "forward wrong, merge right"."""
    subj = subject_rows(rows)
    w = [r for r in subj if r.check == "merge" and r.metric.startswith("merged_") and r.metric.endswith("_vs_paper")]
    fwd = [r for r in subj if r.check == "paper_parity" and r.status not in ("n/a", "error")]
    if not w or not fwd:
        return ""
    merge_bad, fwd_bad = any(r.status in BAD for r in w), any(r.status in BAD for r in fwd)
    if merge_bad and not fwd_bad:
        return ("the forward matches the paper (paper_parity passes) but the merged weights are not the paper's W′: "
                "the merge is wrong")
    if fwd_bad and not merge_bad:
        return ("the merged weights are the paper's W′ but the forward is not the paper's (paper_parity fails): "
                "the forward is wrong, the merge right")
    if fwd_bad and merge_bad:
        return "both the forward and the merged weights depart from the paper"
    return ""


def failures(rows: list[Row]) -> list[dict]:
    """Failing subject rows (fail, xpass, error) grouped by check, worst first, with a diagnosis."""
    bad = [r for r in subject_rows(rows) if r.status in BAD]
    cells = group_by(rows, lambda r: (r.check, r.place, r.dtype))
    groups = []
    by_check = group_by(bad, lambda r: r.check)
    for check in [c for c in CHECK_ORDER if c in by_check] + [c for c in by_check if c not in CHECK_ORDER]:
        rs = by_check[check]
        rs = sorted(rs, key=lambda r: (r.status != "error", -(r.margin if r.margin is not None
                                                                and not math.isnan(r.margin) else math.inf)))
        all_cells = uniq((r.place, r.dtype) for r in subject_rows(rows) if r.check == check)
        patterns = []
        judged = group_by([r for r in subject_rows(rows) if r.check == check and r.status not in ("n/a", "error")],
                          lambda r: r.metric)
        for metric, mrs in group_by(rs, lambda r: r.metric).items():
            cells_failing = uniq((r.place, r.dtype) for r in mrs)
            if metric == "-" or len(all_cells) < 2:
                continue
            dts = uniq(d for _, d in cells_failing)
            mods = uniq(m for m, _ in cells_failing)
            scope = ("every model × dtype audited" if len(cells_failing) == len(all_cells) else
                     f"{len(cells_failing)} of {len(all_cells)} cells ({', '.join(mods)} × "
                     f"{', '.join(DTYPE_SHORT.get(d, d) for d in dts)})")
            shared = cell_pattern(mrs, judged.get(metric, []))
            patterns.append(f"`{metric}` fails on {scope}" + "".join(f"; {p}" for p in shared) + constant_factor(mrs))
        if check == "merge" and (which := forward_vs_merge(rows)):
            patterns.append(which)
        shown = []
        for r in rs[:MAX_FAILURES_PER_CHECK]:
            val, tol = fmt_vs(r.value, r.tolerance)
            shown.append({"model": r.place, "dtype": r.dtype, "metric": r.metric, "value": val,
                          "bound": "-" if r.tolerance is None else f"{r.op} {tol}", "status": r.status,
                          "margin": fmt_margin(r.margin), "message": r.message, "deviation": r.deviation,
                          "diagnosis": diagnosis(r, cells.get((r.check, r.place, r.dtype), []))})
        groups.append({"check": check, "n": len(rs), "rows": shown, "more": len(rs) - len(shown),
                       "patterns": patterns})
    return groups


def deviations_observed(card, rows: list[Row]) -> list[dict]:
    out = []
    for d in card.deviations:
        if not d.in_release():  # another release's departure: not this run's business
            continue
        rs = [r for r in rows if r.deviation == d.id]
        counts = group_by(rs, lambda r: r.status)
        m, w = max_margin(rs)
        observed = ", ".join(f"{len(v)} {k}" for k, v in sorted(counts.items(), key=lambda kv: SEVERITY.index(kv[0])
                                                                if kv[0] in SEVERITY else 9)) or "no row in this run"
        if w is not None and w.value is not None:
            observed += f"; worst {fmt_vs(w.value, d.magnitude if d.magnitude is not None else w.tolerance)[0]} ({where(w)})"
        covers = (f"tolerance {fmt(d.tolerance)}" if d.kind == "tolerance" else
                  f"up to {fmt(d.magnitude)}" if d.magnitude is not None else "-")
        out.append({"id": d.id, "check": d.check, "metric": d.metric, "reference": d.reference, "kind": d.kind,
                    "covers": covers, "observed": observed, "reason": d.reason, "source": d.source,
                    "where": ", ".join(filter(None, [", ".join(d.models) if d.models else "",
                                                     ", ".join(d.dtypes) if d.dtypes else "", d.scope()])) or "all"})
    return out


def aggregate_findings(rows: list[Row]) -> list[dict]:
    """Reference findings, one per (check, reference, metric, status, deviation) over models × dtypes."""
    return group_findings([r for r in reference_rows(rows) if r.status in FINDING])


def group_findings(found: list[Row]) -> list[dict]:
    out = []
    key = lambda r: (r.check, r.reference, r.metric, r.status, r.deviation)
    for (check, ref, metric, status, dev), rs in group_by(found, key).items():
        m, w = max_margin(rs)
        w = w or rs[0]
        val, tol = fmt_vs(w.value, w.tolerance)
        out.append({"check": check, "reference": ref or "reference", "metric": metric, "status": status,
                    "deviation": dev, "models": uniq(r.place for r in rs), "dtypes": uniq(r.dtype for r in rs),
                    "n": len(rs), "worst": val + (f" (needs {w.op} {tol})" if w.tolerance is not None else ""),
                    "where": where(w), "message": w.message})
    order = {c: i for i, c in enumerate(CHECK_ORDER)}
    return sorted(out, key=lambda f: order.get(f["check"], 99))


def finding_line_text(f: dict) -> str:
    declared = f"declared `{f['deviation']}`" if f["deviation"] else "undeclared"
    dtypes = ", ".join(DTYPE_SHORT.get(d, d) for d in f["dtypes"])
    return (f"{f['check']} `{f['metric']}` {f['status']} ({declared}) on "
            f"{', '.join(f['models'])} × {dtypes}; worst {f['worst']}")


def finding_line(variant: str, f: dict) -> str:
    return f"{variant}: {f['reference']} {finding_line_text(f)}"


def _card_deviation(variant: str, dev_id: str, deviations: dict | None = None):
    """The declared deviation ``dev_id`` of a card: from ``deviations`` ({card: its deviations as audited,
    a subject's own included}) where given, else the card's."""
    from .cards import CARDS
    card = CARDS.get(variant)
    found = (deviations or {}).get(variant, card.deviations if card else ())
    return next((d for d in found if d.id == dev_id), None)


def departures(rows: list[Row], deviations: dict | None = None) -> dict:
    """The subject's departures from the papers over the whole run (for a subject other than ours,
    e.g. peft): each declared deviation observed on the subject's rows (xfail, or re-judged under a
    declared tolerance), grouped by deviation id over the cards, with its reason and source from the
    card; and every undeclared failure (fail, error) or stale declaration (xpass) of the subject."""
    subj = subject_rows(rows)
    declared = []
    for dev_id, rs in group_by([r for r in subj if r.deviation], lambda r: r.deviation).items():
        cards = uniq(r.variant for r in rs)
        dev = next((d for d in (_card_deviation(c, dev_id, deviations) for c in cards) if d is not None), None)
        kind = dev.kind if dev is not None else ""
        seen = [r for r in rs if r.status == "xfail" or (kind == "tolerance" and r.status == "pass")]
        if not seen:
            continue
        counts = group_by(seen, lambda r: r.status)
        where_ = "; ".join(
            f"{c} `{m}` on {', '.join(uniq(r.place for r in g))} × "
            f"{', '.join(DTYPE_SHORT.get(d, d) for d in uniq(r.dtype for r in g))}"
            for (c, m), g in group_by(seen, lambda r: (r.check, r.metric)).items())
        declared.append({"id": dev_id, "cards": cards,
                         "by": ("the card (the method itself)" if dev.reference == "paper" else dev.reference)
                         if dev is not None else "-",
                         "observed": ", ".join(f"{len(v)} {k}" for k, v in counts.items()) + f": {where_}",
                         "reason": dev.reason if dev is not None else "-",
                         "source": dev.source if dev is not None else "-"})
    bad = [r for r in subj if r.status in BAD]
    undeclared = [f"{v}: {finding_line_text(f)}" for v, vrs in group_by(bad, lambda r: r.variant).items()
                  for f in group_findings(vrs)]
    return {"declared": declared, "undeclared": undeclared}


def fused_notes(rows: list[Row]) -> list[str]:
    """One line per model where the placement check found fused layers (Phi-3's qkv_proj, GPT-2's
    c_attn) adapted as one layer beyond the card's roles, from the placement rows' own messages."""
    seen: dict[str, str] = {}
    for r in rows:
        if r.check == "placement" and FUSED_NOTE in r.message and r.model not in seen:
            seen[r.model] = r.message.split(FUSED_NOTE, 1)[1]
    return [f"{m}: beyond the {what}" for m, what in seen.items()]
