"""Print the ours-vs-peft table from the pytest-benchmark JSON written by `nox -s bench`."""
from __future__ import annotations

import json
import sys
from pathlib import Path


def table(path: Path) -> str:
    doc = json.loads(Path(path).read_text())
    rows: dict[str, dict[str, dict]] = {}
    for b in doc["benchmarks"]:
        info = b["extra_info"]
        rows.setdefault(info["name"], {})[info["mode"]] = {"ours": b["stats"]["median"] * 1e3,
                                                           "peft": info.get("peft_median", 0) * 1e3 or None}
    base = rows.pop("base")
    ms = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
    lines = [f"machine: {doc['machine_info'].get('cpu', {}).get('brand_raw', '?')}; medians in ms, "
             f"ours and peft interleaved round by round",
             f"base model: fwd {ms(base['fwd']['ours'])}, fwd+bwd {ms(base['fwd_bwd']['ours'])}", "",
             "| variant | fwd ours | fwd peft | fwd ours/peft | fwd+bwd ours | fwd+bwd peft | fwd+bwd ours/peft | fwd+bwd ours/base |",
             "|---|---|---|---|---|---|---|---|"]
    for name in sorted(rows):
        cells = [name]
        for mode in ("fwd", "fwd_bwd"):
            o, p = rows[name][mode]["ours"], rows[name][mode]["peft"]
            cells += [ms(o), ms(p), "-" if p is None else f"{o / p:.3f}"]
        cells.append(f"{rows[name]['fwd_bwd']['ours'] / base['fwd_bwd']['ours']:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(Path(sys.argv[1])))
