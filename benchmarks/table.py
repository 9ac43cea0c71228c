"""Print the ours-vs-peft table from the pytest-benchmark JSON written by `nox -s bench`."""
from __future__ import annotations

import json
import sys
from pathlib import Path


def verdict(lo: float, hi: float) -> str:
    """From the 95% interval of the median paired ratio ours/peft."""
    return "faster" if hi < 1 else "slower" if lo > 1 else "parity (interval spans 1)"


def table(path: Path) -> str:
    doc = json.loads(Path(path).read_text())
    rows: dict[str, dict[str, dict]] = {}
    for b in doc["benchmarks"]:
        info = b["extra_info"]
        rows.setdefault(info["name"], {})[info["mode"]] = {"ours": b["stats"]["median"], **info}
    base = rows.pop("base", None)
    if not rows:
        raise SystemExit(f"{path}: no variant benchmarks in it")
    first = doc["benchmarks"][0]["extra_info"]  # every benchmark carries the config and timer
    ms = lambda v: "-" if v is None else f"{v * 1e3:.1f}"  # noqa: E731
    mb = lambda v: "-" if v is None else f"{v / 2**20:.0f}"  # noqa: E731

    def ratio(info, who):
        if f"ratio_vs_{who}" not in info:
            return "-"
        lo, hi = info[f"ratio_vs_{who}_ci"]
        return f"{info[f'ratio_vs_{who}']:.3f} [{lo:.3f}, {hi:.3f}]"

    lines = [f"{first['config']}; timer {first['timer']}; machine {doc['machine_info'].get('cpu', {}).get('brand_raw', '?')}",
             "medians in ms; ours/x = median over rounds of the paired ratio (same round, rotating order), "
             "[95% interval of that median]; verdict from the fwd+bwd interval",
             "" if base is None else "base model alone: " + ", ".join(
                 f"{label} {ms(base.get(mode, {}).get('ours'))}" for label, mode in (("fwd", "fwd"), ("fwd+bwd", "fwd_bwd"))),
             "",
             "| variant | fwd ours | fwd peft | fwd ours/peft | fwd+bwd ours | fwd+bwd peft | fwd+bwd ours/peft | verdict "
             "| fwd ours/base | fwd+bwd ours/base | peak MB base / ours / peft |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in sorted(rows):
        # a mode this run did not benchmark (e.g. `-k fwd_bwd`) is {}: its cells read "-"
        f, fb = rows[name].get("fwd", {}), rows[name].get("fwd_bwd", {})
        cells = [name, ms(f.get("ours")), ms(f.get("peft_median")), ratio(f, "peft"),
                 ms(fb.get("ours")), ms(fb.get("peft_median")), ratio(fb, "peft"),
                 verdict(*fb["ratio_vs_peft_ci"]) if "ratio_vs_peft" in fb else "no peft" if fb else "-",
                 ratio(f, "base"), ratio(fb, "base"),
                 " / ".join(mb(fb.get(f"{k}_peak_mem_bytes")) for k in ("base", "ours", "peft"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(Path(sys.argv[1])))
