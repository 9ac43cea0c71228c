"""The command line's options: ``build_parser`` for python -m audit run | gate | baseline | mutants | seeds,
with the help texts and epilogs (the zoo, dtypes, checks, cards and exit codes)."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from .checks import CHECK_ORDER

DEFAULT_MODELS = ("qwen3", "qwen2", "llama", "mlp", "gpt2", "phi3")
DEFAULT_DTYPES = ("float32", "bfloat16")
DTYPES = ("float32", "bfloat16", "float16")  # audit.cell.DTYPES (a test keeps them equal)
DTYPE_ALIASES = {"fp32": "float32", "f32": "float32", "float": "float32",
                 "bf16": "bfloat16",
                 "fp16": "float16", "f16": "float16", "half": "float16"}


def _concerns(value: str) -> tuple[str, ...]:
    """--require: comma-separated concerns (audit/verdict.py CONCERNS), validated while parsing."""
    from .verdict import CONCERNS
    names = tuple(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
    bad = [n for n in names if n not in CONCERNS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown concern(s) {', '.join(bad) or '(none given)'}; concerns: "
                                         f"{', '.join(CONCERNS)}")
    return names


REQUIRE_HELP = ("judge only these concerns (comma-separated: equation, init, merge, checkpoint, input validation, "
                "placement, speed; quote names with spaces) for the exit code; default: every concern")


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


class _Help(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in the option help (where there is one worth showing), epilogs kept as written."""

    def _get_help_string(self, action):
        d = action.default
        if d is None or d is False or d is argparse.SUPPRESS or d == [] or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _wrap(text: str, indent: str = "") -> str:
    import textwrap
    return textwrap.fill(text, width=100, subsequent_indent=indent, break_on_hyphens=False)


EXIT_CODES_HELP = """exit codes:
  0    done: every verdict conformant, partial or not audited, and no row errored
  1    a verdict is non-conformant, or a row is an error
  2    usage error (bad option or input), reported before any model is built
  130  interrupted (Ctrl-C): workers stopped, nothing written"""


MAIN_EPILOG = """exit codes:
  0    success
  1    findings: run, a non-conformant verdict or an error row; gate, a regression;
       mutants, a surviving mutant; seeds, verdicts that differ or are not conformant/partial
  2    usage error (bad option, missing or foreign file), reported before anything runs
  130  interrupted (Ctrl-C): nothing written

`python -m audit <command> --help` explains each command."""


def _run_epilog() -> str:
    from . import models
    from .cards import CARDS
    zoo = "\n".join(f"  {name:8s} {spec.description}" for name, spec in models.ZOO.items())
    aliases = ", ".join(f"{a}={d}" for a, d in DTYPE_ALIASES.items())
    cards = "\n".join(f"  {name:10s} dtypes {', '.join(c.dtypes)}" for name, c in sorted(CARDS.items()))
    return (f"zoo models (--models):\n{zoo}\n\n"
            + _wrap(f"dtypes (--dtypes): {', '.join(DTYPES)} (aliases {aliases}). A dtype that no selected "
                    "card supports is refused; one that only some cards lack gives those cards n/a rows.")
            + "\n\n" + _wrap(f"checks (--checks, in report order; 'all' = every one): {', '.join(CHECK_ORDER)}")
            + f"\n\nvariants (--variants, --card):\n{cards}\n\n{EXIT_CODES_HELP}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m audit", formatter_class=_Help, epilog=MAIN_EPILOG,
                                description="adapter-audit: check LoRA-family adapters against their papers and against peft.")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run the audit and write results.json, SUMMARY.md and <variant>.md",
                       formatter_class=_Help, epilog=_run_epilog(),
                       description=_wrap("Run checks over variant x model x dtype and render the reports. "
                                         "Every input is validated before any model is built."))
    r.add_argument("--out", required=True, type=Path,
                   help="output folder for results.json, SUMMARY.md and <variant>.md (created with its parents; "
                        "must be writable). Reports of cards not in this run are removed from it")
    r.add_argument("--variants", type=_csv, default=None,
                   help="comma-separated variants (cards) to audit, duplicates dropped; default: every card "
                        "the subject covers (ours: every card; peft: every card with a peft method, n/a where the "
                        "installed release lacks one; a driver: the cards it declares tensor names for)")
    r.add_argument("--models", type=_csv, default=",".join(DEFAULT_MODELS),
                   help="comma-separated zoo models (listed below); --models \"\" audits no zoo model, "
                        "only the --model-path ones")
    r.add_argument("--dtypes", type=_csv, default=",".join(DEFAULT_DTYPES),
                   help=f"comma-separated dtypes: {', '.join(DTYPES)} (aliases fp32, bf16, fp16)")
    r.add_argument("--checks", type=_csv, default="all",
                   help="comma-separated checks (listed below), or all")
    r.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where models run")
    r.add_argument("--seed", type=int, default=0, help="seed for models, inputs and adapter inits")
    r.add_argument("--model-path", action="append", default=[], metavar="PATH",
                   help="a local Hugging Face checkpoint folder, or a hub id already in the local cache "
                        "(never downloaded); repeatable; audited alongside --models. Any transformers model "
                        "that takes token ids and has nn.Linear/Conv1D layers to adapt: its logits are audited, "
                        "or its final hidden states where it has no head (a BertModel)")
    r.add_argument("--subject", metavar="SUBJECT", default=None,
                   help="the implementation under audit: ours (variants/, the default), peft (the installed "
                        "peft: its own init, targeting and save/load), or MODULE:CLASS / FILE.py:CLASS naming "
                        "a driver (an audit.subjects.Subject subclass, see examples/) or a variants.Variant "
                        "subclass (run on our runtime; needs --card). A FILE.py's folder is importable while it "
                        "loads, for sibling modules; a MODULE is looked up from the current folder")
    r.add_argument("--impl", metavar="MODULE:CLASS", default=None,
                   help="a variants.Variant subclass to audit on our runtime (MODULE:CLASS or FILE.py:CLASS); "
                        "needs --card. The older spelling of --subject for a Variant")
    r.add_argument("--card", default=None, help="the card a --impl / Variant subject is audited against")
    r.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1),
                   help="processes auditing variants in parallel (1 = serial; --model-path runs serially)")
    r.add_argument("--config", action="append", default=[], metavar="KEY=VALUE",
                   help="audit one more config of each selected card, with these fields over the card's main "
                        "config (repeatable: the fields of one extra config), e.g. --config alpha=16 --config "
                        "use_rslora=true; it runs on every selected model, dtype and check. Values are JSON "
                        "(numbers, true/false) or plain strings; each field is validated against every selected "
                        "card's config before anything runs")
    r.add_argument("--configs", type=_csv, default=None, metavar="IDS",
                   help="audit only these config ids (the cards' reports list them; 'main' = each card's main "
                        "config; 'cli' = the --config one); default: every config of each card")
    r.add_argument("--require", type=_concerns, default=None, metavar="CONCERNS", help=REQUIRE_HELP)
    r.add_argument("--quiet", action="store_true", help="no progress lines")

    g = sub.add_parser("gate", help="compare a results.json with the baseline; exit 1 on a regression",
                       formatter_class=_Help,
                       description=_wrap("Cell-by-cell regression gate, judging each run by its own tolerances "
                                         "(so another CPU, BLAS or thread count passes): a status that gets "
                                         "worse, a verdict that drops, a missing cell, or an error beyond "
                                         "DRIFT x (its baseline error + the baseline's tolerance) + this run's "
                                         "tolerance fails. Timing and the margins that moved most are reported "
                                         "only; new cells are listed."),
                       epilog="exit codes: 0 no regression, 1 regression, 2 a missing or foreign file")
    g.add_argument("--baseline", type=Path, default=Path("reports/baseline.json"), help="the committed baseline")
    g.add_argument("--results", type=Path, required=True, help="results.json of a fresh run")
    g.add_argument("--require", type=_concerns, default=None, metavar="CONCERNS",
                   help="gate only the rows and verdicts of these concerns (as run --require); default: every one")
    g.add_argument("--drift", "--factor", dest="drift", type=float, default=None,
                   help="how far a declared departure's size may move between machines (default 4, "
                        "audit/gate.py: DRIFT)")

    b = sub.add_parser("baseline", help="write a baseline from a results.json (on purpose: it moves the gate)",
                       formatter_class=_Help, epilog="exit codes: 0 written, 2 a missing or foreign results file")
    b.add_argument("--results", type=Path, default=Path("reports/results.json"), help="results.json to freeze")
    b.add_argument("--out", type=Path, default=Path("reports/baseline.json"), help="baseline file to write")

    m = sub.add_parser("mutants", help="audit the mutant corpus and add the kill table to DIR/SUMMARY.md",
                       formatter_class=_Help,
                       epilog="exit codes: 0 every mutant killed, 1 a mutant survived, 2 a missing corpus folder or a "
                              "results.json in --out that is not an audit's")
    m.add_argument("--out", type=Path, required=True,
                   help="folder for mutants.json (created if needed); when it holds an audit's results.json, its "
                        "SUMMARY.md gets the kill table too (else a later `run --out` there adds it)")
    m.add_argument("--corpus", type=Path, default=None, help="folder of mutant files (default tests/mutants)")
    m.add_argument("--quiet", action="store_true", help="no progress lines")

    s = sub.add_parser("seeds", help="compare the verdicts of the same audit under several seeds",
                       formatter_class=_Help,
                       description="Print a variant x seed table of verdicts.",
                       epilog="exit codes: 0 every verdict conformant or partial and the same under every seed; "
                              "1 otherwise (non-conformant, not audited, missing, or differing); "
                              "2 a missing or foreign file")
    s.add_argument("--results", type=Path, nargs="+", required=True, help="results.json files, one per seed")
    _peft_matrix_parser(sub)
    return p


def _peft_matrix_parser(sub) -> None:
    x = sub.add_parser(
        "peft-matrix", help="audit every peft release as the subject; write DIR/peft-releases.md and .json",
        formatter_class=_Help,
        description=_wrap("Install each peft release into its own folder under --cache (with the transformers it "
                          "imports with), audit it with `run --subject peft`, and render a method x release table "
                          "of verdicts, overall and per concern, with each finding's first and last release. A "
                          "release's summary is cached under a key of the release, the run options and the "
                          "audit's source: a rerun resumes and re-audits only what changed. Options after `--` go "
                          "to every release's `run` (e.g. -- --models mlp,qwen3)."),
        epilog="exit codes: 0 every release audited (or found not to import), 1 a release could not be installed "
               "or its audit crashed, 2 usage error")
    x.add_argument("--releases", default=None, metavar="LIST",
                   help="comma-separated releases (e.g. 0.10.0,0.15.2) or all: every final release on the package "
                        "index from 0.10.0 on (default)")
    x.add_argument("--out", type=Path, default=Path("reports"), help="folder for peft-releases.md/.json (or a shard file)")
    x.add_argument("--cache", type=Path, default=Path(".peft-matrix"),
                   help="folder for each release's install, results and summary (reused across runs)")
    x.add_argument("--jobs", type=int, default=1, help="releases audited at the same time (each gets cores/jobs)")
    x.add_argument("--shard", default=None, metavar="I/N",
                   help="audit only every N-th release starting at the I-th and write DIR/peft-releases.shard-I-of-N.json "
                        "(a CI job matrix: one shard per job, then --merge)")
    x.add_argument("--merge", type=Path, nargs="+", default=None, metavar="SHARD",
                   help="render shard files into peft-releases.md/.json (audits nothing)")
    x.add_argument("--quiet", action="store_true", help="no progress bar")
    x.add_argument("run_options", nargs=argparse.REMAINDER, help="after --: options for each release's run")
