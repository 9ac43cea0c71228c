"""audit.measure (peak memory, median intervals) and the bench table built on them."""
from __future__ import annotations

import json
import math
import random
import sys
from pathlib import Path

import pytest
import torch

from audit.measure import median_ci, peak_memory_bytes

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import table  # noqa: E402


def test_peak_memory_counts_what_the_call_holds_at_once():
    n = 1 << 20  # float32 elements: 4 MiB per tensor

    def two_alive():
        a = torch.ones(n)
        b = torch.ones(n) * 2  # a, the ones and b alive at once: 12 MiB
        return float((a + b)[0])  # the sum is a fourth tensor while a and b are alive

    def one_at_a_time():
        for _ in range(4):
            torch.ones(n).sum()

    peak_two, peak_one = peak_memory_bytes(two_alive, "cpu"), peak_memory_bytes(one_at_a_time, "cpu")
    assert 3 * 4 * n <= peak_two <= 4 * 4 * n + 65536
    assert 4 * n <= peak_one < 2 * 4 * n


def test_median_ci_order_statistics():
    assert median_ci(list(range(15))) == (3, 11)  # x(4), x(12): P(Bin(15, 1/2) <= 3) = 0.018
    assert median_ci(list(range(6))) == (0, 5)
    with pytest.raises(ValueError, match="too few"):
        median_ci([1.0] * 5)


def test_median_ci_covers_the_median_about_95_percent():
    rng, hits, n = random.Random(0), 0, 21
    for _ in range(2000):
        lo, hi = median_ci([rng.gauss(0, 1) for _ in range(n)])
        hits += lo <= 0 <= hi
    assert 0.93 <= hits / 2000 <= 0.99


def _bench_json(tmp_path, ratios_ci: dict[str, tuple[float, float]], modes=("fwd", "fwd_bwd")) -> Path:
    def entry(name, mode, extra):
        return {"stats": {"median": 0.1}, "extra_info": {"name": name, "mode": mode, "config": "cfg",
                                                           "timer": "process_time", **extra}}
    benches = [entry("base", m, {}) for m in modes]
    for name, (lo, hi) in ratios_ci.items():
        for mode in modes:
            benches.append(entry(name, mode, {"peft_median": 0.1, "ratio_vs_peft": (lo + hi) / 2,
                                              "ratio_vs_peft_ci": [lo, hi], "base_median": 0.05,
                                              "ratio_vs_base": 2.0, "ratio_vs_base_ci": [1.9, 2.1]}))
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"machine_info": {"cpu": {"brand_raw": "cpu"}}, "benchmarks": benches}))
    return path


def test_bench_table_verdicts(tmp_path):
    text = table.table(_bench_json(tmp_path, {"fast": (0.9, 0.95), "tie": (0.99, 1.01), "slow": (1.02, 1.1)}))
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ") and "variant" not in line}
    assert "| faster |" in rows["fast"] and "0.925 [0.900, 0.950]" in rows["fast"]
    assert "| parity (interval spans 1) |" in rows["tie"]
    assert "| slower |" in rows["slow"]
    assert math.isclose(float(rows["fast"].split("|")[2]), 100.0)


@pytest.mark.parametrize("mode", ["fwd", "fwd_bwd"])
def test_bench_table_of_a_run_with_one_mode_shows_the_other_as_missing(tmp_path, mode):
    """`nox -s bench -- -k fwd_bwd` benchmarks one mode: the table prints it and "-" for the other."""
    text = table.table(_bench_json(tmp_path, {"slow": (1.02, 1.1)}, modes=(mode,)))
    cells = [c.strip() for c in next(ln for ln in text.splitlines() if ln.startswith("| slow")).split("|")[1:-1]]
    shown, absent = (cells[1:4], cells[4:8]) if mode == "fwd" else (cells[4:8], cells[1:4])
    assert shown[0] == "100.0" and "1.060 [1.020, 1.100]" in shown and set(absent) == {"-"}
    assert "base model alone: fwd " + ("100.0, fwd+bwd -" if mode == "fwd" else "-, fwd+bwd 100.0") in text
