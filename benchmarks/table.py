"""Print the ours-vs-peft table from a pytest-benchmark JSON file (medians, ms; ratio ours/peft)."""
from __future__ import annotations

import json
import sys
from pathlib import Path


def table(path: Path) -> str:
    doc = json.loads(Path(path).read_text())
    med: dict[tuple[str, str, str], float] = {}
    for b in doc["benchmarks"]:
        p = b["params"]
        who, name = (p.get("who", "base"), p.get("name", "base"))
        med[(name, who, p["mode"])] = b["stats"]["median"] * 1e3
    names = sorted({n for n, _, _ in med if n != "base"})
    lines = [f"bench: {doc['machine_info'].get('cpu', {}).get('brand_raw', '?')}, "
             f"{doc.get('commit_info', {}).get('id', '')[:10]}",
             f"base: fwd {med[('base', 'base', 'fwd')]:.1f} ms, fwd+bwd {med[('base', 'base', 'fwd_bwd')]:.1f} ms",
             "", "| variant | fwd ours | fwd peft | fwd ratio | fwd+bwd ours | fwd+bwd peft | fwd+bwd ratio |",
             "|---|---|---|---|---|---|---|"]
    for n in names:
        row = [n]
        for mode in ("fwd", "fwd_bwd"):
            o, p = med.get((n, "ours", mode)), med.get((n, "peft", mode))
            row += [f"{o:.1f}", "-" if p is None else f"{p:.1f}", "-" if p is None else f"{o / p:.3f}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(Path(sys.argv[1])))
