"""Render SUMMARY.md, <variant>.md and results.csv from the rows (numbers straight from the rows).

A person reads these first, so they lead with what decides: SUMMARY has one row per variant (the
verdict, the checks that decided it, per check its status and worst margin); a variant's report
gives the config audited, the verdict and why, the failing rows with a cheap diagnosis, the declared
deviations, the reference findings, the paper's claim and the code, and only then every measurement,
folded in ``<details>``: one table per check with one row per metric and one column per
model × dtype cell (every measured value is there; per-cell messages other than the worst row's are
in results.csv / results.json).

Every report names its subject and the references it was judged against, and says "ours"/"peft"
only where it means them. The pieces come from, lowest first: report_format (numbers and cells),
report_rows (picking and grouping rows), diagnosis (failures, deviations, findings), report_summary
(per check and per variant), report_subject (who was audited, against what, its code) and
report_config (the configs audited); this module fills the templates in audit/templates/.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jinja2

from .diagnosis import aggregate_findings, departures, deviations_observed, failures, fused_notes
from .report_config import choices_made, config_audited, configs_audited, zero_grad_claims
from .report_format import fmt
from .report_subject import references_overview, subject_excerpts, subject_info, variant_subject
from .report_summary import (SUMMARY_CHECKS, check_labels, check_overview, deciding_text, measurement_tables,
                             summary_rows, verdict_reasons, verdict_with_defaults)
from .results import atomic_write
from .rows import Row
from .verdict import CONCERNS, coverage_text

OVERHEAD_NOTE = ("tiny models, per-call overhead dominates; not a speed claim; see `nox -s bench`")
CSV_COLUMNS = tuple(Row.__dataclass_fields__) + ("margin",)


def rows_frame(rows: list[Row]):
    """All rows as a pandas DataFrame: the Row fields in order, plus margin."""
    import pandas as pd
    recs = [{**dataclasses.asdict(r), "margin": r.margin} for r in rows]
    return pd.DataFrame.from_records(recs, columns=list(CSV_COLUMNS))


def write_csv(out: Path, rows: list[Row]) -> Path:
    path = Path(out) / "results.csv"
    atomic_write(path, rows_frame(rows).to_csv(index=False))
    return path


def _env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                             keep_trailing_newline=True)
    env.filters["fmt"] = fmt
    env.filters["cell"] = lambda s: str(s).replace("|", "\\|").replace("\n", " ")
    return env


def _meta(meta: dict) -> dict:
    """The run's meta with every key the templates read (older results.json lack some)."""
    m = dict(meta or {})
    versions = {"torch": "?", "transformers": "?", "peft": "?", **(m.get("versions") or {})}
    m.update(versions=versions, seed=m.get("seed", "?"), device=m.get("device", "?"),
             git_commit=m.get("git_commit") or "", git_dirty=bool(m.get("git_dirty")),
             wall_seconds=m.get("wall_seconds", "?"), models=list(m.get("models") or []),
             dtypes=list(m.get("dtypes") or []), checks=list(m.get("checks") or []),
             implementations=dict(m.get("implementations") or {}), model_notes=dict(m.get("model_notes") or {}))
    m["subject"] = subject_info(m)
    return m


def render_variant(env: jinja2.Environment, tgt, meta: dict, rows: list[Row], verdict: dict | None) -> str:
    card = tgt.card
    rs = [r for r in rows if r.variant == card.name]
    v = verdict_with_defaults(verdict)
    excerpts, excerpt_note = subject_excerpts(tgt)
    return env.get_template("variant.md.j2").render(
        card=card, impl=tgt.label, meta=meta, subj=variant_subject(tgt, meta), verdict=v,
        deciding=deciding_text(v, rs), reasons=verdict_reasons(v, rs),
        coverage=coverage_text(v.get("coverage")) or "nothing judged",
        config=config_audited(tgt, meta), configs=configs_audited(tgt, meta, rs), zero_claims=zero_grad_claims(tgt),
        choices=choices_made(card, rs, meta["subject"]["kind"]),
        fused=fused_notes(rs),
        overview=check_overview(rs), failures=failures(rs),
        deviations=deviations_observed(card, rs), findings=aggregate_findings(rs),
        excerpts=excerpts, excerpt_note=excerpt_note, tables=measurement_tables(rs),
        dtypes_supported=list(card.dtypes), overhead_note=OVERHEAD_NOTE)


def render(out: Path, meta: dict, rows: list[Row], verdicts: dict, targets) -> None:
    """Every <variant>.md, results.csv, then SUMMARY.md."""
    out = Path(out)
    env = _env()
    m = _meta(meta)
    for tgt in targets:
        atomic_write(out / f"{tgt.card.name}.md", render_variant(env, tgt, m, rows, verdicts.get(tgt.card.name)))
    write_csv(out, rows)
    render_summary(out, meta, rows, verdicts, {t.card.name: t.card.deviations for t in targets})


def render_summary(out: Path, meta: dict, rows: list[Row], verdicts: dict, deviations: dict | None = None) -> None:
    """SUMMARY.md from the rows; the mutant table comes from DIR/mutants.json when it exists."""
    out = Path(out)
    mutants_path = out / "mutants.json"
    mutants = json.loads(mutants_path.read_text()) if mutants_path.exists() else None
    meta = _meta(meta)
    subj = meta["subject"]
    atomic_write(out / "SUMMARY.md", _env().get_template("summary.md.j2").render(
        meta=meta, subj=subj, summary=summary_rows(meta, rows, verdicts), checks=SUMMARY_CHECKS, concerns=CONCERNS,
        labels=check_labels(subj), mutants=mutants, overhead_note=OVERHEAD_NOTE,
        references=references_overview(list(verdicts), meta),
        departures=departures(rows, deviations) if subj["kind"] != "ours" else None))
