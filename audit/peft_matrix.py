"""Every peft release audited as the subject (``python -m audit peft-matrix``, ``nox -s peft-matrix``).

Each release goes with ``--no-deps`` into its own folder under the cache, which shadows the environment's
peft (PYTHONPATH), together with the transformers it needs where the installed one does not import it
(``PINS``); ``python -m audit run --subject peft`` audits it there. A release's summary is cached next to
its folder under a key of the release, its pins, the run options and the audit's own source, so a rerun
resumes where the last stopped and audits again only what changed. ``--jobs`` audits releases in
parallel; ``--shard i/n`` audits every n-th release into a shard file, and ``--merge`` renders shards
from several machines (audit/peft_matrix_report.py renders reports/peft-releases.md and .json)."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from packaging.version import InvalidVersion, Version

from .peft_matrix_report import summarise
from .results import atomic_write

REPO = Path(__file__).resolve().parents[1]
OLDEST = "0.10.0"  # the first release with the layouts the bridge maps (DoRA arrived in 0.10.0)
# peft 0.16.x/0.17.x import transformers' HybridCache, which transformers 5 removed; transformers 4.57 then
# needs an older hub client and tokenizers (all pure-Python or prebuilt wheels, installed with --no-deps)
_TRANSFORMERS_4 = ("transformers==4.57.6", "huggingface_hub==0.36.2", "tokenizers==0.22.1", "requests",
                   "urllib3", "charset_normalizer", "certifi")
PINS = {"0.16.": _TRANSFORMERS_4, "0.17.": _TRANSFORMERS_4}
RUN_OWNED = ("--out", "--subject", "--impl", "--card", "--quiet")  # the matrix sets these itself


class MatrixError(ValueError):
    """A matrix option that cannot be used; the CLI turns it into exit 2."""


def pins_for(release: str) -> tuple[str, ...]:
    return next((p for prefix, p in PINS.items() if release.startswith(prefix)), ())


def parse_releases(spec: str | None) -> list[str]:
    """"0.10.0,0.15.2" -> those (validated, oldest first); None or "all" -> every final release on the
    package index from OLDEST on."""
    if spec is None or spec.strip() == "all":
        return available_releases()
    out = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        try:
            Version(part)
        except InvalidVersion:
            raise MatrixError(f"--releases: {part!r} is not a release number (e.g. 0.10.0,0.15.2 or all)") from None
        out.append(part)
    if not out:
        raise MatrixError("--releases names no release")
    return sorted(dict.fromkeys(out), key=Version)


def available_releases(oldest: str = OLDEST) -> list[str]:
    """The final peft releases the package index offers, from ``oldest`` on, oldest first."""
    proc = subprocess.run([sys.executable, "-m", "pip", "index", "versions", "peft"], capture_output=True,
                          text=True, timeout=300)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("Available versions:")), None)
    if proc.returncode or line is None:
        raise MatrixError("cannot list peft's releases from the package index (pip index versions peft: "
                          f"{(proc.stderr or proc.stdout).strip().splitlines()[-1:] or 'no output'}); "
                          "name them with --releases")
    found = [Version(v.strip()) for v in line.split(":", 1)[1].split(",") if v.strip()]
    return [str(v) for v in sorted(v for v in found if not v.is_prerelease and v >= Version(oldest))]


def parse_shard(spec: str | None) -> tuple[int, int] | None:
    """"2/3" -> (2, 3): the second of three shards."""
    if spec is None:
        return None
    i, _, n = spec.partition("/")
    try:
        i, n = int(i), int(n)
    except ValueError:
        raise MatrixError(f"--shard must look like 1/3, got {spec!r}") from None
    if not 1 <= i <= n:
        raise MatrixError(f"--shard {spec}: the shard number must be between 1 and {max(n, 1)}")
    return i, n


def shard_of(releases: list[str], shard: tuple[int, int] | None) -> list[str]:
    return releases if shard is None else releases[shard[0] - 1::shard[1]]


def check_run_options(options: list[str]) -> list[str]:
    """The options passed on to every release's ``run`` (after ``--``), validated by run's own parser."""
    from .cli_args import build_parser
    options = options[1:] if options[:1] == ["--"] else list(options)
    owned = [o for o in options if o.split("=", 1)[0] in RUN_OWNED]
    if owned:
        raise MatrixError(f"the matrix sets {', '.join(owned)} itself; pass only audit options such as --models")
    try:
        build_parser().parse_args(["run", "--out", "unused", *options])
    except SystemExit:
        raise MatrixError(f"options for run not understood: {' '.join(options)}") from None
    return options


def source_key() -> str:
    """A digest of the audit's own code (audit/, references/, variants/): a change re-audits every release."""
    h = hashlib.sha256()
    for folder in ("audit", "references", "variants"):
        for path in sorted((REPO / folder).rglob("*")):
            if path.suffix in (".py", ".j2") and "__pycache__" not in path.parts \
                    and not path.name.startswith("peft_matrix"):  # rendering alone does not change a result
                h.update(str(path.relative_to(REPO)).encode())
                h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _install(release: str, site: Path) -> None:
    if (site / f"peft-{release}.dist-info").is_dir():
        return
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
           "--upgrade", "--target", str(site), f"peft=={release}", *pins_for(release)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if proc.returncode:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"pip could not install peft {release}: {tail[0]}")


def audit_release(release: str, cache: Path, options: list[str], jobs_each: int, key: str) -> dict:
    """One release's summary: from the cache when its key matches, else installed and audited now."""
    folder = cache / release
    record_path = folder / "record.json"
    want = {"release": release, "pins": list(pins_for(release)), "options": options, "source": key}
    if record_path.is_file():
        record = json.loads(record_path.read_text())
        if record.get("key") == want and record.get("status") != "crashed":
            return {**record, "cached": True}
    t0 = time.perf_counter()
    base = {"release": release, "key": want, "pins": list(pins_for(release))}
    try:
        _install(release, folder / "site")
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        return {**base, "status": "not installed", "message": str(e), "seconds": 0.0, "methods": {}}
    out = folder / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(folder / "site"), str(REPO),
                                                                   os.environ.get("PYTHONPATH", "")) if p)}
    cmd = [sys.executable, "-m", "audit", "run", "--subject", "peft", "--out", str(out), "--quiet",
           "--jobs", str(jobs_each), *options]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode == 2:  # a usage error: this release does not import (run_plan.check_peft_imports)
        last = proc.stderr.strip().splitlines()[-1:] or ["no message"]
        record = {**base, "status": "does not import", "message": last[0].split("error: ", 1)[-1],
                  "seconds": seconds, "methods": {}}
    elif proc.returncode not in (0, 1) or not (out / "results.json").is_file():
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        return {**base, "status": "crashed", "message": f"exit {proc.returncode}: {tail}", "seconds": seconds,
                "methods": {}}  # not cached: a rerun tries again
    else:
        ran = json.loads((out / "results.json").read_text())["meta"]["versions"].get("peft")
        if ran != release:
            return {**base, "status": "crashed", "seconds": seconds, "methods": {},
                    "message": f"the audit ran peft {ran}, not {release}: the folder did not shadow it"}
        record = {**base, "status": "audited", "seconds": seconds}
    atomic_write(record_path, json.dumps(record, indent=1) + "\n")
    return record


def with_summary(record: dict, cache: Path) -> dict:
    """The record with its release's results summarised (audit/peft_matrix_report.py), read afresh from the
    cached results.json, so a change to the summary needs no new audit."""
    path = cache / record["release"] / "out" / "results.json"
    if record["status"] != "audited" or not path.is_file():
        return {**record, "methods": record.get("methods", {})}
    return {**record, **summarise(json.loads(path.read_text()))}


def run_matrix(releases: list[str], cache: Path, options: list[str], jobs: int, progress: bool = True) -> list[dict]:
    """Every release's summary, oldest first; ``jobs`` releases at a time (each audit gets the cores left)."""
    from tqdm import tqdm
    key = source_key()
    jobs_each = max(1, (os.cpu_count() or 1) // max(jobs, 1))
    records: dict[str, dict] = {}
    bar = tqdm(total=len(releases), unit="release", file=sys.stderr, disable=not progress)
    with ThreadPoolExecutor(max_workers=max(jobs, 1)) as pool:
        todo = {pool.submit(audit_release, r, cache, options, jobs_each, key): r for r in releases}
        for done in as_completed(todo):
            rec = with_summary(done.result(), cache)
            records[rec["release"]] = rec
            bar.set_postfix_str(f"{rec['release']}: {rec['status']}{' (cached)' if rec.get('cached') else ''}")
            bar.update(1)
    bar.close()
    return [records[r] for r in sorted(records, key=Version)]
