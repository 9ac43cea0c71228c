"""reports/peft-releases.md and .json: the peft release × method matrix of verdicts (overall and per
concern), each cell linking the findings that decided it, and each finding with the first and last
release that shows it. A release's results.json is summarised here (``summarise``) so the cache and the
shards carry a few kilobytes per release, not every row."""
from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

from packaging.version import Version

from .results import atomic_write
from .verdict import CONCERNS, concern_of

SYMBOL = {"conformant": "✓", "partial": "~", "non-conformant": "✗", "not audited": "?", "absent": "–"}
UNDECLARED = ("fail", "xpass", "error")


def _finding_key(method: str, r: dict) -> str:
    """What makes two rows the same finding across releases: method, check, metric family, and whether it
    was a declared departure (which one) or not."""
    if r["metric"] == "subject_raised":  # one crash, whichever checks met it, whatever line it moved to
        raised = re.sub(r"^.*? raised in ", "raised in ", r["message"])
        return f"{method} · subject_raised · {re.sub(r' [(][^()]*:[0-9]+[)]$', '', raised)[:160]}"
    family = re.sub(r"\[.*\]$", "", r["metric"]) if r["check"] != "layout" else r["metric"]
    kind = f"declared {r['deviation']}" if r["status"] == "xfail" else r["status"]
    return f"{method} · {r['check']} · {family} · {kind}"


def _what(r: dict) -> str:
    """A finding's row in a line: the metric, where, what was measured against what, the message."""
    # results.json writes non-finite values as strings ("nan", "inf"): read them back as floats
    value = "—" if r["value"] is None else f"{float(r['value']):.3g}"
    bound = "" if r["tolerance"] is None else f" ({r['op']} {r['tolerance']:.3g})"
    text = " ".join(r["message"].split())
    return f"{r['metric']} on {r['model']}/{r['dtype']}@{r['config']}: {value}{bound}; {text}"[:300]


def summarise(results: dict) -> dict:
    """One release's results.json as the matrix needs it: per method its verdict, concern verdicts,
    coverage (configs, models and dtypes with a judged row) and findings."""
    rows = defaultdict(list)
    for r in results["rows"]:
        if r.get("about") != "reference":
            rows[r["variant"]].append(r)
    methods, findings = {}, {}
    for method, v in sorted(results["verdicts"].items()):
        rs = rows[method]
        judged = [r for r in rs if r["status"] not in ("n/a", "error")]
        if not judged and not any(r["status"] == "error" for r in rs):
            why = next((r["message"] for r in rs if r["message"]), "nothing was judged")
            # "peft 0.13.2 has no oft (...)" is absent; "OFTConfig has no oft_block_size" is a refusal (not audited)
            absent = re.search(rf"has no '?{re.escape(method)}'?(?!\w)", why) is not None
            methods[method] = {"verdict": "absent" if absent else "not audited", "why": why, "concerns": {},
                               "coverage": {}, "findings": []}
            continue
        keys = []
        for r in rs:
            if r["status"] in UNDECLARED + ("xfail",):
                key = _finding_key(method, r)
                f = findings.setdefault(key, {"method": method, "check": r["check"], "status": r["status"],
                                              "deviation": r["deviation"], "message": _what(r), "where": set(),
                                              "checks": set(), "concerns": set()})
                f["where"].add(f"{r['model']}/{r['dtype']}")
                f["checks"].add(r["check"])
                f["concerns"].add(concern_of(r["check"]))
                keys.append(key)
        methods[method] = {
            "verdict": v["verdict"], "headline": v["headline"],
            "concerns": {c: d["verdict"] for c, d in v["concerns"].items()},
            "coverage": {what: sorted({r[field] for r in judged}) for what, field in
                         (("configs", "config"), ("models", "model"), ("dtypes", "dtype"))},
            "findings": sorted(set(keys))}
    gaps = results["meta"].get("subject", {}).get("option_gaps", {})
    for method, cell in methods.items():
        if cell["verdict"] != "absent" and method in gaps:
            cell["option_gaps"] = gaps[method]
    versions = results["meta"]["versions"]
    return {"transformers": versions.get("transformers"), "torch": versions.get("torch"),
            "audit_commit": results["meta"].get("git_commit"), "argv": results["meta"].get("argv", [])[2:],
            "methods": methods,
            "findings": {k: {**f, **{s: sorted(f[s]) for s in ("where", "checks", "concerns")}}
                         for k, f in sorted(findings.items())}}


def _deciding(cell: dict, findings: dict) -> list[str]:
    """The findings that decided a cell: the undeclared ones when it is non-conformant, else the declared."""
    keys = cell.get("findings", [])
    if cell["verdict"] == "non-conformant":
        return [k for k in keys if findings[k]["status"] in UNDECLARED]
    return [k for k in keys if findings[k]["status"] == "xfail"] if cell["verdict"] == "partial" else []


def matrix(records: list[dict]) -> dict:
    """The document behind both files: releases oldest first, every finding with its first and last
    release and a stable id (F1... in order of first appearance)."""
    records = sorted(records, key=lambda r: Version(r["release"]))
    seen: dict[str, dict] = {}
    for rec in records:
        for key, f in rec.get("findings", {}).items():
            entry = seen.setdefault(key, {**f, "key": key, "releases": []})
            entry["releases"].append(rec["release"])
            for field in ("checks", "concerns"):  # a crash may meet other checks in another release
                entry[field] = sorted(set(entry[field]) | set(f[field]))
    order = sorted(seen, key=lambda k: (Version(seen[k]["releases"][0]), seen[k]["method"], k))
    for i, key in enumerate(order, 1):
        seen[key].update(id=f"F{i}", first=seen[key]["releases"][0], last=seen[key]["releases"][-1])
    methods = sorted({m for rec in records for m in rec.get("methods", {})})
    # each release keeps its cells (which name their findings by key); the findings themselves are listed once
    slim = [{k: v for k, v in rec.items() if k not in ("findings", "key")} for rec in records]
    return {"releases": slim, "methods": methods, "findings": [seen[k] for k in order]}


def _cell(rec: dict, method: str, ids: dict, findings: dict, concern: str | None = None) -> str:
    cell = rec.get("methods", {}).get(method)
    if cell is None:
        return "–"
    if concern is not None:
        if cell["verdict"] == "absent":
            return "–"
        verdict = cell["concerns"].get(concern, "not audited")
        links = [k for k in _deciding({**cell, "verdict": verdict}, findings) if concern in findings[k]["concerns"]]
    else:
        verdict, links = cell["verdict"], _deciding(cell, findings)
    return " ".join([SYMBOL[verdict]] + [f"[{ids[k]}](#{ids[k].lower()})" for k in links])


def _coverage(cell: dict) -> str:
    cov = cell.get("coverage") or {}
    return "/".join(str(len(cov.get(k, []))) for k in ("configs", "models", "dtypes")) if cov else "0"


def render_markdown(doc: dict) -> str:
    recs, methods = doc["releases"], doc["methods"]
    findings = {f["key"]: f for f in doc["findings"]}
    ids = {f["key"]: f["id"] for f in doc["findings"]}
    audited = [r for r in recs if r["status"] == "audited"]
    head = "| release | transformers | " + " | ".join(methods) + " |\n|" + "---|" * (len(methods) + 2) + "\n"
    out = ["# peft releases against the papers", "",
           f"{len(audited)} of {len(recs)} peft releases ({recs[0]['release']} to {recs[-1]['release']}) audited "
           "as the subject (`python -m audit peft-matrix`; each in its own folder with the transformers it "
           "imports with), every method each release has. Generated; do not edit.", "",
           "Legend: ✓ conformant · ~ partial (only declared, sourced departures) · ✗ non-conformant · "
           "? not audited (nothing compared) · – the release has no such method (or did not run). A cell links "
           "the findings that decided it; [Findings](#findings) gives each one's first and last release. "
           "Coverage (configs/models/dtypes judged) is under [Releases](#releases).", "",
           "## Overall", "", head.rstrip("\n")]
    for r in recs:
        out.append(f"| {r['release']} | {r.get('transformers') or '–'} | "
                   + " | ".join(_cell(r, m, ids, findings) for m in methods) + " |")
    out += ["", "## By concern", ""]
    for concern in CONCERNS:
        out += [f"### {concern}", "", "| release | " + " | ".join(methods) + " |", "|" + "---|" * (len(methods) + 1)]
        for r in recs:
            out.append(f"| {r['release']} | " + " | ".join(_cell(r, m, ids, findings, concern) for m in methods) + " |")
        out.append("")
    out += ["## Findings", "", "| id | method | concern | check · metric · kind | first | last | releases | "
            "what (as first seen) |", "|---|---|---|---|---|---|---|---|"]
    for f in doc["findings"]:
        what = f["message"].replace("|", "\\|")
        out.append(f"| <a id=\"{f['id'].lower()}\"></a>{f['id']} | {f['method']} | {', '.join(f['concerns'])} | "
                   f"{f['key'].split(' · ', 1)[1]} | {f['first']} | {f['last']} | {len(f['releases'])} | {what} |")
    out += ["", "## Options not audited", "",
            "Options of a release's peft config that the audit does not vary: *unnamed* (the bridge's mapping does "
            "not classify them: an option newer than the mapping, or one since removed) and *unaudited* (they change "
            "the function and are held at one value). Every other option is a config axis of the card or named "
            "with why it cannot change the function (references/peft_bridge/_core.py EFFECTS).", ""]
    gaps = _option_gaps(recs)
    out += (["| method | option | kind | releases |", "|---|---|---|---|"]
            + [f"| {m} | `{f}` | {kind} | {_ranges(rels, [r['release'] for r in recs])} |"
               for (m, f, kind), rels in sorted(gaps.items())] if gaps else ["None: in every audited release, every "
                                                                            "option is an axis or named."])
    out += ["", "## Releases", "", "| release | status | transformers | seconds | coverage per method "
            "(configs/models/dtypes judged) |", "|---|---|---|---|---|"]
    for r in recs:
        cov = ", ".join(f"{m} {_coverage(c)}" for m, c in r.get("methods", {}).items() if c["verdict"] != "absent")
        note = r.get("message", "") if r["status"] != "audited" else cov
        out.append(f"| {r['release']} | {r['status']} | {r.get('transformers') or '–'} | {r.get('seconds', 0):.0f} | "
                   f"{note.replace('|', '/')} |")
    return "\n".join(out) + "\n"


def _option_gaps(recs: list[dict]) -> dict[tuple, list[str]]:
    """{(method, option, kind): [releases]} over the releases' cells."""
    out: dict[tuple, list[str]] = {}
    for r in recs:
        for m, cell in r.get("methods", {}).items():
            for kind, fields in (cell.get("option_gaps") or {}).items():
                for f in fields:
                    out.setdefault((m, f, kind), []).append(r["release"])
    return out


def _ranges(rels: list[str], order: list[str]) -> str:
    """"0.10.0–0.13.2, 0.15.0" from releases in ``order``'s (oldest first) order: consecutive runs joined."""
    runs, idx = [], [order.index(x) for x in rels]
    for i, k in enumerate(idx):
        if i and k == idx[i - 1] + 1:
            runs[-1][1] = order[k]
        else:
            runs.append([order[k], order[k]])
    return ", ".join(a if a == b else f"{a}–{b}" for a, b in runs)


def write(records: list[dict], out: Path) -> tuple[Path, Path]:
    """reports/peft-releases.json and .md from the release summaries (atomically)."""
    doc = matrix(records)
    md, js = Path(out) / "peft-releases.md", Path(out) / "peft-releases.json"
    atomic_write(js, json.dumps(doc, indent=1) + "\n")
    atomic_write(md, render_markdown(doc))
    return md, js


def read_shards(paths: list[Path]) -> list[dict]:
    """The release summaries of shard files (``--shard i/n`` output); a release in two shards is an error."""
    records: dict[str, dict] = {}
    for p in paths:
        try:
            doc = json.loads(Path(p).read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"--merge: cannot read {p}: {e}") from None
        if not isinstance(doc, dict) or doc.get("kind") != "peft-matrix-shard":
            raise ValueError(f"--merge: {p} is not a peft-matrix shard file")
        for rec in doc["releases"]:
            if rec["release"] in records:
                raise ValueError(f"--merge: release {rec['release']} is in two shards")
            records[rec["release"]] = rec
    return list(records.values())
