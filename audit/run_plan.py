"""From the options of ``python -m audit run`` to a ``runner.Plan``: ``RunRequest`` (the options),
``build`` (every check of them, in the order the command line promises: cheap checks first, then the
ones that import user code or read configs, ``--out`` last) and ``PlanError`` (the first check that
failed, worded for the command line). The small checks it chains are here too."""
from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from .checks import CHECK_ORDER
from .cli_args import DEFAULT_DTYPES, DEFAULT_MODELS, DTYPE_ALIASES, DTYPES

if TYPE_CHECKING:
    from .runner import Plan


class PlanError(ValueError):
    """A run option that cannot be used; the message names the option and, where it helps, the valid choices."""


@dataclasses.dataclass(kw_only=True)
class RunRequest:
    """The options of ``python -m audit run``, as parsed (comma lists already split)."""
    out: Path
    variants: list[str] | None = None
    models: list[str] = dataclasses.field(default_factory=lambda: list(DEFAULT_MODELS))
    dtypes: list[str] = dataclasses.field(default_factory=lambda: list(DEFAULT_DTYPES))
    checks: list[str] = dataclasses.field(default_factory=lambda: ["all"])
    device: str = "cpu"
    seed: int = 0
    model_path: list[str] = dataclasses.field(default_factory=list)
    subject: str | None = None
    impl: str | None = None
    card: str | None = None
    jobs: int = 1
    config: list[str] = dataclasses.field(default_factory=list)
    configs: list[str] | None = None
    quiet: bool = False

    @classmethod
    def from_args(cls, args) -> RunRequest:
        """The request of an argparse namespace (or anything with the same attributes)."""
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


@dataclasses.dataclass
class Built:
    """What ``build`` made: the plan to run, the checked output folder and notes on --model-path models."""
    plan: Plan
    out: Path
    model_notes: dict[str, str]

    def subject_meta(self) -> dict:
        """Who was audited and against what, for results.json and the reports."""
        from .twins import reference_names
        targets = self.plan.targets
        subj = targets[0].subject if targets else None
        return {"kind": getattr(subj, "kind", ""), "label": subj.describe() if subj else "",
                "version": getattr(subj, "version", ""),
                "references": {t.card.name: reference_names(t.card, t.subject) for t in targets},
                "option_gaps": {t.card.name: t.subject.option_gaps(t.card.name) for t in targets
                                if hasattr(t.subject, "option_gaps")}}


def check_peft_imports() -> None:
    """peft is the subject or a reference of most cards: a release that does not import with the installed
    transformers (peft 0.16/0.17 need transformers' HybridCache, gone in transformers 5) is a usage error
    naming both versions, before any work, not a traceback."""
    try:
        import peft  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any failure to import is the same usage error
        from .library_versions import distribution
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise PlanError(f"peft {distribution('peft') or '(version unknown)'} does not import with transformers "
                        f"{distribution('transformers') or '(not installed)'}: {type(e).__name__}: {first}; install a "
                        "transformers that release supports (nox -s peft-matrix pins one per release) or "
                        "another peft") from None


def build(req: RunRequest) -> Built:
    """Check every option of ``req`` and make the plan; PlanError at the first that cannot be used."""
    from . import runner
    if req.jobs < 1:
        raise PlanError(f"--jobs must be >= 1, got {req.jobs}")
    checks = select_checks(req.checks)
    model_names = select_models(req.models, req.model_path)
    dtypes = select_dtypes(req.dtypes)
    check_device(req.device)
    check_peft_imports()

    targets = resolve_targets(req)
    check_dtypes_supported(dtypes, targets)
    extra = extra_config(req.config, targets)
    only = select_configs(req.configs, targets, extra)
    for t in targets:  # the cards carry the --config case too, so reports and deviations know it
        for case in extra:
            t.card = t.card.with_case(case)
    factories, model_notes = add_model_paths(req.model_path, model_names)
    out = check_out_dir(req.out)

    plan = runner.Plan(targets, model_names, dtypes, checks, seed=req.seed, device=req.device,
                       model_factories=factories, extra_configs=extra, only_configs=only)
    for t in targets:  # stand-ins for configs the subject refuses only for their init
        t.card = runner.with_init_fallbacks(t.card, t.subject, plan)
    return Built(plan, out, model_notes)


def _dedupe(items) -> list:
    return list(dict.fromkeys(items))


# -- cheap checks: names against fixed lists ---------------------------------------------------------

def select_checks(names: list[str]) -> list[str]:
    """--checks as check names in order, "all" expanded, duplicates dropped; unknown or none -> PlanError."""
    unknown = [c for c in names if c not in CHECK_ORDER and c != "all"]
    if unknown:
        raise PlanError(f"unknown check(s) {', '.join(unknown)}; checks: {', '.join(CHECK_ORDER)} (or all)")
    checks = _dedupe(c for name in names for c in (CHECK_ORDER if name == "all" else (name,)))
    if not checks:
        raise PlanError(f"--checks is empty; checks: {', '.join(CHECK_ORDER)}")
    return checks


def select_models(names: list[str], model_paths: list[str]) -> list[str]:
    """--models as zoo names, duplicates dropped; unknown ones, or none and no --model-path -> PlanError."""
    from . import models
    bad = [m for m in names if m not in models.ZOO]
    if bad:
        raise PlanError(f"unknown model(s) {', '.join(bad)}; zoo: {', '.join(models.ZOO)} "
                        "(use --model-path for local checkpoints)")
    model_names = _dedupe(names)
    if not model_names and not model_paths:
        raise PlanError("nothing to audit: --models is empty and no --model-path given")
    return model_names


def normalise_dtypes(names: list[str]) -> list[str]:
    """Aliases (bf16, fp32, f32, fp16, half) to torch names, duplicates dropped; unknown -> PlanError."""
    out, unknown = [], []
    for n in names:
        d = DTYPE_ALIASES.get(n.lower(), n.lower())
        (out if d in DTYPES else unknown).append(d if d in DTYPES else n)
    if unknown:
        raise PlanError(f"unknown dtype(s) {', '.join(unknown)}; valid dtypes: {', '.join(DTYPES)} "
                        f"(aliases: {', '.join(f'{a}={d}' for a, d in DTYPE_ALIASES.items())})")
    return _dedupe(out)


def select_dtypes(names: list[str]) -> list[str]:
    """--dtypes normalised (``normalise_dtypes``); none -> PlanError."""
    dtypes = normalise_dtypes(names)
    if not dtypes:
        raise PlanError(f"--dtypes is empty; valid dtypes: {', '.join(DTYPES)}")
    return dtypes


def check_device(device: str) -> None:
    """--device cuda needs CUDA on this machine."""
    if device == "cuda":
        import torch
        if not torch.cuda.is_available():
            raise PlanError("--device cuda: CUDA is not available on this machine")


# -- checks that import user code or read the cards' configs -----------------------------------------

def load_impl(spec: str, flag: str = "--impl"):
    """The class a subject spec names (``module:Class`` or ``FILE.py:Class``); a PlanError naming why."""
    from . import subjects
    try:
        return subjects.load_class(spec, flag)
    except subjects.SpecError as e:
        raise PlanError(str(e)) from None


def resolve_targets(req) -> list:
    """The (card, subject) pairs of a run, from --subject / --impl, --card and --variants."""
    from . import runner, subjects
    from .cards import CARDS, get
    if req.impl and req.subject:
        raise PlanError("--impl is the older spelling of --subject: give one of them")
    flag, spec = ("--impl", req.impl) if req.impl else ("--subject", req.subject or "ours")
    if flag == "--impl" and not req.card:
        raise PlanError("--impl needs --card NAME (the card to audit against); cards: " + ", ".join(sorted(CARDS)))
    if req.card and req.variants is not None:
        raise PlanError(f"--variants cannot be combined with --card (the --card names what {flag} is audited against)")
    if req.variants is not None and not req.variants:
        raise PlanError(f"--variants is empty; cards: {', '.join(sorted(CARDS))}")
    names = [req.card] if req.card else (_dedupe(req.variants) if req.variants is not None else None)
    unknown = [n for n in names or [] if n not in CARDS]
    if unknown:
        what = f"--card {req.card!r}: no such card" if req.card else f"unknown variant(s) {', '.join(unknown)}"
        raise PlanError(f"{what}; cards: {', '.join(sorted(CARDS))}")
    if spec in ("ours", "peft"):
        if req.card:
            raise PlanError(f"--card is only used with --impl or a --subject naming a variants.Variant; "
                            f"use --variants with --subject {spec}")
        if spec == "peft" and names is None:  # default: every card with a peft method (n/a where this release lacks it)
            from references.peft_bridge import PEFT_VARIANTS
            names = [n for n in sorted(CARDS) if n in PEFT_VARIANTS]
        try:
            return runner.default_targets(names, spec)
        except ValueError as e:
            raise PlanError(str(e)) from None
    if spec in subjects.LIBRARIES:  # a built-in subject for another library: every card it maps by default
        try:
            subject = subjects.from_spec(spec, flag)
        except subjects.SpecError as e:
            raise PlanError(str(e)) from None
        names = names if names is not None else [n for n in sorted(CARDS) if subject.supports(n) is None]
        return [runner.Target(get(n), subject, subject.describe(), spec) for n in names]
    cls = load_impl(spec, flag)
    import variants
    if issubclass(cls, variants.Variant):
        if not req.card:
            raise PlanError(f"{flag} {spec} is a variants.Variant (one method): name its card with --card; "
                            f"cards: {', '.join(sorted(CARDS))}")
        return [runner.Target(get(req.card), cls, spec, spec)]
    subject = subjects.as_subject(cls, spec)
    if names is None:
        names = [n for n in sorted(CARDS) if subject.supports(n) is None]
        if not names:
            raise PlanError(f"{flag} {spec}: the driver supports none of the cards ({', '.join(sorted(CARDS))}); "
                            "declare tensor_names for at least one")
    return [runner.Target(get(n), subject, spec, spec) for n in names]


def check_dtypes_supported(dtypes: list[str], targets) -> None:
    """Every asked dtype must be supported by at least one selected card."""
    supported = {d for t in targets for d in t.card.dtypes}
    unsupported = [d for d in dtypes if d not in supported]
    if unsupported:
        per_card = "; ".join(f"{t.card.name}: {', '.join(t.card.dtypes)}" for t in targets)
        raise PlanError(f"dtype(s) {', '.join(unsupported)} not supported by any selected card ({per_card})")


def _parse_field(item: str) -> tuple[str, object]:
    import json
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise PlanError(f"--config {item!r}: expected KEY=VALUE, e.g. alpha=16")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw  # a plain string: rotate_basis=U, road_variant=road_2
    return key.strip(), tuple(value) if isinstance(value, list) else value


def extra_config(items: list[str], targets) -> tuple:
    """The --config fields as one ConfigCase (id "cli"), validated against every selected card's config."""
    from .cards import ConfigCase
    if not items:
        return ()
    import variants
    fields = dict(_parse_field(i) for i in items)
    for t in targets:
        schema = variants.REGISTRY.get(t.card.name) if t.variant is None else t.variant
        if schema is None:
            continue  # a card with no config schema: its subject gets the fields as given
        names = [f.name for f in dataclasses.fields(schema.Config)]
        unknown = sorted(set(fields) - set(names))
        if unknown:
            raise PlanError(f"--config: card {t.card.name!r} has no config field {', '.join(unknown)}; its fields: "
                            f"{', '.join(names)}")
        try:
            schema.Config(**{**t.card.config, **fields})
        except (TypeError, ValueError) as e:
            raise PlanError(f"--config on card {t.card.name!r}: {e}") from None
    why = "given on the command line: " + ", ".join(f"{k}={v!r}" for k, v in fields.items())
    return (ConfigCase("cli", fields, why, models=None, dtypes=None, checks=None),)


def select_configs(ids: list[str] | None, targets, extra: tuple) -> tuple | None:
    """--configs as config ids; "main" stands for each card's main config. Unknown ids are refused."""
    if ids is None:
        return None
    known = {"main"} | {c.id for t in targets for c in t.card.cases()} | {c.id for c in extra}
    bad = [i for i in ids if i not in known]
    if bad:
        raise PlanError(f"--configs: no selected card has config(s) {', '.join(bad)}; configs: {', '.join(sorted(known))}")
    if not ids:
        raise PlanError("--configs is empty")
    return tuple(dict.fromkeys(ids))


def _model_path_label(path: str, taken: set[str]) -> str:
    base = f"path:{Path(path).name or path}"
    label, i = base, 2
    while label in taken:
        label, i = f"{base}#{i}", i + 1
    return label


def add_model_paths(paths: list[str], model_names: list[str]) -> tuple[dict, dict]:
    """Check each --model-path and append its label to ``model_names``; returns (factories, notes) by label."""
    from . import local_models
    factories, notes = {}, {}
    for path in _dedupe(paths):
        try:
            found = local_models.check_local(path)
        except ValueError as e:
            msg = str(e)
            raise PlanError(msg.replace("model path", "--model-path", 1) if msg.startswith("model path")
                            else f"--model-path {path}: {msg}") from None
        label = _model_path_label(path, set(model_names))
        factories[label] = (lambda p=path: local_models.load_local(p))
        notes[label] = found.describe()
        model_names.append(label)
    return factories, notes


# -- last: the output folder -------------------------------------------------------------------------

def check_out_dir(out: Path) -> Path:
    """``--out`` must be a folder we can create and write into: checked before the run, not after."""
    if out.exists() and not out.is_dir():
        raise PlanError(f"--out {out}: exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PlanError(f"--out {out}: cannot create the folder ({e.strerror or e})") from None
    try:
        fd, probe = tempfile.mkstemp(dir=out, prefix=".audit-write-test.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise PlanError(f"--out {out}: the folder is not writable ({e.strerror or e})") from None
    return out
