"""Run checks over card × model × dtype; never stop on one failure; apply declared deviations."""
from __future__ import annotations

import sys
import time
import traceback
from dataclasses import dataclass, field, replace
from typing import Callable

import torch

import variants

from . import checks as checks_pkg
from .cards import VariantCard
from .cell import Cell, NotApplicable
from .rows import Row, judge, within
from .subject_errors import raised_by_subject
from . import init_fallback
from .subjects import LayoutError, LayoutFinding, NotSupported, Subject, as_subject, from_spec


@dataclass
class Target:
    """What is audited: a card and the implementation (the subject) measured against it."""

    card: VariantCard
    subject: Subject  # a variants.Variant subclass is accepted too (our runtime runs it)
    label: str  # "variants.lora", "peft 0.21.2" or the user's "module:Class"
    spec: str | None = None  # how a worker process re-creates the subject (--subject); None: serial only

    def __post_init__(self):
        self.subject = as_subject(self.subject, self.label)
        own = tuple(self.subject.deviations(self.card.name))  # a library's declared departures (its subject module)
        if own:
            self.card = replace(self.card, deviations=self.card.deviations + own)

    @property
    def variant(self):
        """Our runtime's variant class, when the subject is ours (reports show its source)."""
        return getattr(self.subject, "variant_for", lambda m: None)(self.card.name)


@dataclass
class Plan:
    targets: list[Target]
    models: list[str]
    dtypes: list[str]
    checks: list[str]
    seed: int = 0
    device: str = "cpu"
    model_factories: dict[str, Callable] = field(default_factory=dict)  # --model-path entries
    extra_configs: tuple = ()  # ConfigCases audited on every target besides its card's (--config)
    only_configs: tuple[str, ...] | None = None  # audit only these config ids ("main": each card's main one)


class Progress:
    """Progress over audit units on stderr, with tqdm: a live bar on a terminal (its postfix counts
    the undeclared failing rows so far: declared deviations applied), and one tqdm status line per
    finished unit otherwise (CI logs, where a redrawn bar is noise). ``--quiet`` creates none."""

    def __init__(self, total: int, stream=None):
        from tqdm import tqdm
        self.stream = stream if stream is not None else sys.stderr
        self.total, self.done, self.failing, self.t0 = total, 0, 0, time.perf_counter()
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._fmt = tqdm.format_meter
        self.bar = (tqdm(total=total, file=self.stream, unit="unit", dynamic_ncols=True, leave=True)
                    if self.tty else None)
        if self.bar is not None:
            self.bar.set_postfix_str("0 failing", refresh=False)

    def step(self, label: str, rows: list[Row]) -> None:
        """One unit done; ``rows`` already judged with the card's deviations (``preview``)."""
        self.done += 1
        self.failing += sum(r.status in ("fail", "error", "xpass") for r in rows)
        if self.bar is not None:
            self.bar.set_description_str(label, refresh=False)
            self.bar.set_postfix_str(f"{self.failing} failing", refresh=False)
            self.bar.update(1)
        else:
            self.stream.write(self._fmt(self.done, self.total, time.perf_counter() - self.t0, ncols=0,
                                        prefix=label, unit="unit", postfix=f"{self.failing} failing") + "\n")
            self.stream.flush()
        if self.done >= self.total:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def run_cell(cell: Cell, check_names: list[str], elsewhere: dict[str, str] | None = None) -> list[Row]:
    """Every check on one cell. A subject layout the formula cannot read is reported once, under the
    pseudo-check "layout", by the first check to meet it: failing rows naming each tensor missing, extra
    or of the wrong shape (a LayoutFinding), or one error row for a map that cannot be read at all; every
    check that needs the canonical state is then n/a with that reason, and the others still run.
    ``elsewhere``: {check: dtype} of the dtype-independent checks measured in another dtype of the plan
    (n/a here)."""
    reported = False

    def report_layout(e: LayoutError, name: str) -> None:
        nonlocal reported
        if reported:
            return
        reported = True
        cell.check = "layout"
        if isinstance(e, LayoutFinding):  # the subject's state is not the formula's: findings
            for metric, message in e.findings:
                cell.row(metric, 1.0, 0.0, message=f"{type(e).__name__}: {message}")
        else:  # the subject's map is broken
            cell.row("-", None, None, status="error", message=f"LayoutError: {e}")
        cell.check = name

    for name in check_names:
        cell.check = name
        before = len(cell.rows)
        if name in (elsewhere or {}):
            cell.row("-", None, None, status="n/a",
                     message=f"does not depend on the dtype: measured in {elsewhere[name]}")
            continue
        try:
            checks_pkg.load(name).run(cell)
            if len(cell.rows) == before:
                cell.row("-", None, None, status="error", message="check produced no measurement")
        except LayoutError as e:
            del cell.rows[before:]
            report_layout(e, name)
            cell.row("-", None, None, status="n/a", message=f"needs the subject's canonical state: {e}")
        except (NotApplicable, NotSupported) as e:  # NotSupported: the subject lacks what the check needs
            del cell.rows[before:]
            cell.row("-", None, None, status="n/a", message=str(e))
        except Exception as e:  # noqa: BLE001 - one crashing check must not stop the audit
            del cell.rows[before:]
            raised = raised_by_subject(cell.subject, e)
            if raised:  # the library's own code raised: a finding about it, not an audit error
                cell.row("subject_raised", 1.0, 0.0, op="==", status="fail", message=raised)
                continue
            tb = traceback.extract_tb(e.__traceback__)[-1]
            cell.row("-", None, None, status="error",
                     message=f"{type(e).__name__}: {str(e)[:300]} (at {tb.filename.rsplit('/', 1)[-1]}:{tb.lineno})")
        if cell.layout_error is not None:  # met and worked around inside the check (cell.layout_seen)
            report_layout(cell.layout_error, name)
    return cell.rows


def apply_deviations(card: VariantCard, rows: list[Row], subject_kind: str = "ours") -> list[Row]:
    """Turn declared deviations into xfail/xpass/re-judged rows; unmatched deviations are errors.

    Each config's rows are judged with the deviations of the card at that config (a deviation may
    be declared for some configs only). A deviation names who departs (``reference``): "peft"
    deviations apply to the rows about peft (reference rows when peft is a reference, the subject's
    rows when peft is the subject); the card's own ("paper") deviations describe the method and apply
    to the subject's rows."""
    by_config: dict[str, list[Row]] = {}
    for r in rows:
        by_config.setdefault(r.config_id, []).append(r)
    known = {c.id for c in card.cases()}
    out: list[Row] = []
    for config_id, rs in by_config.items():
        # a config not among the card's own (rows merged from elsewhere): the deviations that name none
        at = card.at(config_id) if config_id in known else replace(
            card, config_id=config_id, deviations=tuple(d for d in card.deviations if d.configs is None and not d.when))
        out += _apply(at, rs, subject_kind)
    return out


def _apply(card: VariantCard, rows: list[Row], subject_kind: str) -> list[Row]:
    """apply_deviations for the rows of one config (``card`` is the card at that config)."""
    used: set[str] = set()
    devs = [d for d in card.deviations if (d.subjects is None or subject_kind in d.subjects) and d.in_release()]
    for r in rows:
        if r.status in ("error", "n/a"):
            continue
        for dev in devs:
            if dev.no_truth_for(r, subject_kind) and dev.matches(r.check, r.metric, r.model, r.dtype):
                used.add(dev.id)  # the library this row compares against departs here: no measure of the subject
                r.deviation, r.status = dev.id, "n/a"
                r.message = (f"{dev.reference} departs here (deviation {dev.id!r}), so it is no truth to compare the "
                             f"subject with: " + r.message)
                break
            if not (dev.matches(r.check, r.metric, r.model, r.dtype) and dev.applies_to(r, subject_kind)):
                continue
            used.add(dev.id)
            r.deviation = dev.id
            if dev.kind == "tolerance":
                r.tolerance = dev.tolerance
                r.status = judge(r.value, r.op, dev.tolerance)
            elif r.status == "fail":
                if dev.magnitude is None or within(r.value, r.op, dev.magnitude):
                    r.status = "xfail"
                else:
                    r.message = (f"beyond the magnitude declared by deviation {dev.id!r} "
                                 f"({dev.magnitude:.4g}): " + r.message)
            else:
                r.status = "xpass"
                r.message = (f"declared deviation {dev.id!r} is no longer observed: update the card. "
                             + r.message)
            break
    # a check that crashed in the subject (subject_raised) measured none of its metrics: nothing to require
    judged = {(r.check, r.model, r.dtype) for r in rows if r.status not in ("n/a", "error")
              and r.metric != "subject_raised"}
    # a stand-in config (audit/init_fallback.py) inherits its origin's deviations where they hold; one that
    # holds only under the refused init (the refusal itself) may match nothing there
    origin = next((c.origin for c in card.configs if c.id == card.config_id), None)
    for dev in devs:  # required only where its check was judged on one of its models and dtypes, and its
        # own rows (if any were written) were not all n/a (e.g. peft has no default targets to audit)
        if origin and dev.configs is not None and card.config_id not in dev.configs:
            continue
        own = [r for r in rows if dev.matches(r.check, r.metric, r.model, r.dtype)]
        relevant = (any(c == dev.check and (dev.models is None or m in dev.models)
                        and (dev.dtypes is None or d in dev.dtypes) for c, m, d in judged)
                    and not (own and all(r.status == "n/a" for r in own)))
        if relevant and dev.id not in used:
            rows.append(Row(card.name, dev.check, "-", "-", f"deviation[{dev.id}]", None, None, "error",
                            deviation=dev.id, message="declared deviation matches no measurement row",
                            config=card.config_id))
    return rows


def preview(card: VariantCard, rows: list[Row], subject_kind: str) -> list[Row]:
    """Copies of one unit's rows judged with the card's deviations, for the progress count only: a
    declared departure (xfail) is not "failing"; a deviation that no row of this unit matches is not
    an error yet (another model's unit may match it), so those checks are left to the final pass."""
    judged = apply_deviations(card, [replace(r) for r in rows], subject_kind)
    return [r for r in judged if not r.metric.startswith("deviation[")]


def cases(card: VariantCard, plan: Plan) -> list:
    """The config cases of ``card`` this plan audits: its own, then the plan's extra ones."""
    for case in plan.extra_configs:
        card = card.with_case(case)
    only = plan.only_configs
    return [c for c in card.cases() if only is None or c.id in only or c.origin in only
            or ("main" in only and card.config_id in (c.id, c.origin))]


def case_models(case, subject, models: list[str]) -> tuple[str, ...] | None:
    """The models a config case runs on for this subject: the case's own (None: every model), or, when the
    subject declares the zoo models it can attach to (``Subject.models``) and none of the case's is among
    them, the first of the plan's that is (so its corners are audited somewhere)."""
    allowed = getattr(subject, "models", None)
    if case.models is None or allowed is None or any(m in allowed for m in case.models):
        return case.models
    pick = next((m for m in models if m in allowed), None)
    return case.models if pick is None else (pick,)


def _cells(tgt: Target, plan: Plan, models: list[str], bases: dict, bar: Progress | None) -> list[Row]:
    """Every config × model (of ``models``) × dtype × check of one audited implementation, deviations
    not applied. A corner config runs only on the models, dtypes and checks its case names."""
    card_rows: list[Row] = []
    unsupported = tgt.subject.supports(tgt.card.name)
    todo = cases(tgt.card, plan)
    # a check whose result cannot depend on the dtype runs in the first audited dtype only
    first = next((d for d in plan.dtypes if d in tgt.card.dtypes), None)
    once = [c for c in plan.checks if checks_pkg.dtype_independent(c)]
    for model_name in models:
        for dtype in plan.dtypes:
            unit: list[Row] = []
            for case in todo:
                where = case_models(case, tgt.subject, plan.models)
                if (where is not None and model_name not in where) or (
                        case.dtypes is not None and dtype not in case.dtypes):
                    continue
                checks = [c for c in plan.checks if case.checks is None or c in case.checks]
                elsewhere = {c: first for c in checks if dtype != first and c in once}
                cell = Cell(tgt.card.at(case), tgt.subject, model_name, dtype, seed=plan.seed, device=plan.device,
                            model_factory=plan.model_factories.get(model_name), first_dtype=first,
                            _base_cache=bases.setdefault((model_name, dtype), {}))
                lacks = None if unsupported or case.subject_defaults else tgt.subject.lacks(
                    tgt.card.name, cell.config(), Cell(tgt.card, tgt.subject, model_name, dtype, seed=plan.seed).config())
                if dtype not in tgt.card.dtypes or unsupported or lacks:
                    for name in checks:
                        cell.check = name
                        cell.row("-", None, None, status="n/a",
                                 message=unsupported or lacks or f"{dtype} is not supported by the card")
                else:
                    run_cell(cell, checks, elsewhere)
                unit += cell.rows
            card_rows += unit
            if bar:
                bar.step(f"{tgt.card.name} / {model_name} / {dtype}", preview(tgt.card, unit, tgt.subject.kind))
    return card_rows


def _run_target(tgt: Target, plan: Plan, bases: dict, bar: Progress | None) -> list[Row]:
    """Every model × dtype × check of one audited implementation, deviations applied."""
    return apply_deviations(tgt.card, _cells(tgt, plan, plan.models, bases, bar), tgt.subject.kind)


def single_threaded() -> None:
    """One torch thread per process, serial or parallel alike, so both give bit-identical rows;
    the zoo's tiny models are overhead-bound, so parallelism pays across variants, not inside ops."""
    import torch
    torch.set_num_threads(1)


# A worker's base models and what is computed from them alone (base outputs, their rounding spread,
# calibration inputs), kept across the units the worker audits: pure functions of (model, dtype,
# seed, device), never modified (cells copy a base before adapting it), so rows are the same as serial
_WORKER_BASES: dict[tuple, dict] = {}


def _worker(card_name: str, spec: str, model_name: str, plan: Plan) -> list[Row]:
    """Audit one card with the subject ``spec`` on one model in a worker process (plan.targets is
    empty here); the parent applies the card's deviations once it has every model's rows."""
    bases = _WORKER_BASES.setdefault((plan.seed, plan.device), {})
    tgt = default_targets([card_name], spec)[0]
    tgt.card = with_init_fallbacks(tgt.card, tgt.subject, plan)
    return _cells(tgt, plan, [model_name], bases, None)


def with_init_fallbacks(card: VariantCard, subject, plan: Plan) -> VariantCard:
    """The card with stand-ins for the configs the subject refuses only for their init (audit/init_fallback.py)."""
    return init_fallback.with_fallbacks(card, subject, (plan.models or ["mlp"])[0], plan.dtypes[0], plan.seed)


def parallel_ok(plan: Plan) -> bool:
    """Workers re-create targets from their spec: every target needs one; no --model-path factories."""
    return not plan.model_factories and all(t.spec is not None for t in plan.targets)


def run(plan: Plan, progress: bool = True, jobs: int = 1) -> list[Row]:
    """All rows of the plan, in target order. ``jobs`` > 1 audits (target, model) units in that many processes
    (same rows: every cell is seeded on its own), when ``parallel_ok``; otherwise serially."""
    if jobs > 1 and len(plan.targets) * len(plan.models) > 1 and parallel_ok(plan):
        return _run_parallel(plan, progress, jobs)
    total = len(plan.targets) * len(plan.models) * len(plan.dtypes)
    bar = Progress(total) if progress else None
    bases: dict[tuple[str, str], dict] = {}
    rows: list[Row] = []
    for tgt in plan.targets:
        rows += _run_target(tgt, plan, bases, bar)
    if bar:
        bar.close()
    return rows


def _warm_up(plan: Plan) -> None:
    """Pay the lazy one-time costs (transformers' model modules and weight-conversion tables, peft's
    tuner registry, torch's first-call dispatch) once in the parent, so forked workers inherit them
    instead of paying them each."""
    import peft  # noqa: F401 - imported for its side effect on the forked workers

    from . import models
    from references.peft_bridge import build_peft_model
    for name in plan.models:
        if name in models.ZOO:
            m = models.build(name, seed=plan.seed)
            models.logits(m, models.example_inputs(m, seed=plan.seed))
    if plan.models and plan.models[0] in models.ZOO:
        m = models.build(plan.models[0], seed=plan.seed)
        target = next(n for n, mod in m.named_modules() if isinstance(mod, torch.nn.Linear))
        build_peft_model(m, "lora", {"r": 1, "alpha": 1.0}, [target], {target: {
            "A": torch.zeros(1, m.get_submodule(target).in_features),
            "B": torch.zeros(m.get_submodule(target).out_features, 1)}})


def _run_parallel(plan: Plan, progress: bool, jobs: int) -> list[Row]:
    """(target, model) units audited in ``jobs`` worker processes (audit/workers.py)."""
    from dataclasses import replace

    from . import workers
    bare = replace(plan, targets=[])
    # small units keep both cores busy; the longest first (the model the corner configs run on), so the
    # last to finish are short ones and no core idles at the end
    weight = {(t.card.name, m): sum(m in (case_models(c, t.subject, plan.models) or (m,)) for c in cases(t.card, plan))
              for t in plan.targets for m in plan.models}
    units = sorted(weight, key=lambda u: -weight[u])
    if not units:
        return []
    by_name = {t.card.name: t for t in plan.targets}
    method = workers.start_method(plan.device)
    if method == "fork":
        _warm_up(plan)
    bar = Progress(len(units)) if progress else None

    def done(unit, rows):
        if bar:
            tgt = by_name[unit[0]]
            bar.step(f"{unit[0]} / {unit[1]} (all dtypes)", preview(tgt.card, rows, tgt.subject.kind))
    try:
        results = workers.run_units(units, _worker, lambda u: (u[0], by_name[u[0]].spec, u[1], bare), jobs, method,
                                    done)
    finally:
        if bar:
            bar.close()
    return [r for t in plan.targets
            for r in apply_deviations(t.card, [x for m in plan.models for x in results[(t.card.name, m)]],
                                      t.subject.kind)]


def default_targets(names: list[str] | None = None, spec: str = "ours") -> list[Target]:
    """One target per card (default: every card) with the subject ``spec`` (default: ours)."""
    from .cards import CARDS, get
    names = names or sorted(CARDS)
    subject = from_spec(spec)
    out = []
    for n in names:
        card = get(n)
        if spec == "ours" and n not in variants.REGISTRY:
            raise ValueError(f"card {n!r} has no variant in variants.REGISTRY; use --subject module:Class --card {n}")
        label = f"variants.{n}" if spec == "ours" else subject.describe()
        out.append(Target(card, subject, label, spec))
    return out

