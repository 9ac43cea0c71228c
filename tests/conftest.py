"""Shared fixtures for the variants test-suite: per-case configs valid on the tiny zoo and an attach helper.

The tiny decoders (qwen3/qwen2/llama) have d_in in {64, 96} and d_out in {32, 64, 96}; the toy MLP has
48/80. r=4 fits every layer; RoAd needs group_size=8 (an even divisor of every d_out).
"""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import variants  # noqa: E402
from audit import models  # noqa: E402

# Tiny models: intra-op threads only add spin-wait overhead (and thrash when the cores are shared).
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]


def committed_report(relpath: str) -> dict:
    """A JSON file of reports/ as committed (``git show HEAD:<path>``), never as a local ``nox -s audit``
    left it in the working tree: that run is this machine's, the committed files are the baseline
    machine's pair. Outside a git checkout (an unpacked release, no git) the file as shipped."""
    try:
        shown = subprocess.run(["git", "show", f"HEAD:{relpath}"], cwd=REPO, capture_output=True, timeout=60)
    except OSError:  # no git on this machine
        return json.loads((REPO / relpath).read_text())
    if shown.returncode == 0:
        return json.loads(shown.stdout)
    if b"not a git repository" in shown.stderr:
        return json.loads((REPO / relpath).read_text())
    raise AssertionError(f"{relpath} is not committed at HEAD: {shown.stderr.decode().strip()}")


# case name -> (variant name, config kwargs, calibrate?)
_CASES: dict[str, tuple[str, dict, bool]] = {
    "lora": ("lora", dict(r=4, alpha=8.0), False),
    "lora+rslora": ("lora", dict(r=4, alpha=8.0, use_rslora=True), False),
    "lora+bias": ("lora", dict(r=4, alpha=8.0, lora_bias=True), False),
    "pissa": ("pissa", dict(r=4, alpha=4.0), False),
    "dora": ("dora", dict(r=4, alpha=8.0), False),
    "ia3": ("ia3", dict(), False),
    "ia3_ff": ("ia3_ff", dict(), False),
    "hra": ("hra", dict(r=4), False),
    "hra_gs": ("hra", dict(r=4, apply_gs=True), False),
    "delora": ("delora", dict(r=4), False),
    "delora_peft": ("delora", dict(r=4, init_style="peft"), False),
    "eva": ("eva", dict(r=4, alpha=8.0), True),
    "eva_rho2": ("eva", dict(r=4, alpha=8.0, rho=2.0), True),
    "road": ("road", dict(group_size=8), False),
    "road_2": ("road", dict(group_size=8, road_variant="road_2"), False),
    "road_4": ("road", dict(group_size=8, road_variant="road_4"), False),
    "antipasto": ("antipasto", dict(r=4), False),
    "antipasto_U": ("antipasto", dict(r=4, rotate_basis="U"), False),
    "antipasto_calib": ("antipasto", dict(r=4), True),  # exercises the calibration-driven selection
    "oft": ("oft", dict(block_size=8), False),
    "oft_neumann": ("oft", dict(block_size=8, use_cayley_neumann=True), False),
    "oft_share": ("oft", dict(block_size=8, block_share=True), False),
    "oft_coft": ("oft", dict(block_size=8, coft=True, eps=0.1), False),
    "boft": ("boft", dict(block_size=8, n_butterfly_factor=2), False),
    "boft_m1": ("boft", dict(block_size=8, n_butterfly_factor=1), False),
    "lokr": ("lokr", dict(r=2, alpha=4.0), False),
    "loha": ("loha", dict(r=4, alpha=8.0), False),
    "vera": ("vera", dict(r=4), False),
    "vblora": ("vblora", dict(r=4, num_vectors=8, vector_length=16), False),
    "randlora": ("randlora", dict(r=8, alpha=16.0), False),
    "adalora": ("adalora", dict(r=4, alpha=8.0, target_r=2), False),
    "olora": ("olora", dict(r=4, alpha=8.0), False),
    "miss": ("miss", dict(r=8), False),
    "miss_bat": ("miss", dict(r=8, mode="bat"), False),
    "miss_mini": ("miss", dict(r=8, mode="mini", mini_r=16), False),
    "hira": ("hira", dict(r=4), False),
    "fourierft": ("fourierft", dict(n_frequency=64, scaling=150.0), False),
    "fourierft_zeros": ("fourierft", dict(n_frequency=64, init_weights="zeros"), False),
    "c3a": ("c3a", dict(block_size=16), False),
    "c3a_zeros": ("c3a", dict(block_size=16, init_weights="zeros"), False),
    "shira": ("shira", dict(r=2), False),
    "corda": ("corda", dict(r=4, alpha=4.0), True),
    "corda_kpm": ("corda", dict(r=4, alpha=8.0, corda_method="kpm"), True),
    "loraga": ("loraga", dict(r=4, alpha=8.0, use_rslora=True), True),
}

VARIANT_CONFIGS: dict[str, dict] = {case: dict(kw) for case, (_, kw, _) in _CASES.items()}
CASE_NAMES = list(_CASES)
ARCHS = ("qwen3", "qwen2")


def variant_of(case: str) -> str:
    return _CASES[case][0]


def config_of(case: str, **over) -> variants.AdapterConfig:
    name, kw, _ = _CASES[case]
    return variants.config(name, **{**kw, **over})


def calibration_batches(model, n: int = 3) -> list[torch.Tensor]:
    """A few batches of token ids, each from a different seed (none equal to the eval inputs' seed 0)."""
    return [models.example_inputs(model, seed=100 + i) for i in range(n)]


def all_adapter_tensors(model) -> dict[str, torch.Tensor]:
    """{'<module>.<tensor>': tensor} of every adapter tensor on the model, parameters and buffers."""
    st = variants.state_of(model)
    return {f"{name}.{t}": v for name, mod in st.targets.items() for t, v in variants.adapter_tensors(mod).items()}


def attach(model, case: str, **over):
    """Attach ``case`` to ``model`` (passing calibration data where the case wants it); returns model."""
    cfg = config_of(case, **over)
    data = calibration_batches(model) if _CASES[case][2] else None
    return variants.attach(model, cfg, calibration_data=data)


def build(arch: str, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """``models.build(arch, seed=0, n_layers=2)``: deterministic, with non-zero biases (the zoo redraws
    the zeros transformers puts there, so bias bugs are visible; the test below guards that property).
    Two decoder layers, where the audit's zoo has one: the library's tests cover the multi-layer path
    (layer selection, an adapted layer feeding the next) on every architecture."""
    return models.build(arch, seed=0, dtype=dtype, n_layers=2)



_PRISTINE: dict[tuple[str, torch.dtype], torch.nn.Module] = {}


def fresh(arch: str, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A fresh copy of ``build(arch)``; built once per session, then deep-copied."""
    key = (arch, dtype)
    if key not in _PRISTINE:
        _PRISTINE[key] = build(arch, dtype)
    return copy.deepcopy(_PRISTINE[key])


@pytest.fixture(scope="session", name="VARIANT_CONFIGS")
def variant_configs_fixture() -> dict[str, dict]:
    return {k: dict(v) for k, v in VARIANT_CONFIGS.items()}


@pytest.fixture(scope="session", name="attach")
def attach_fixture():
    return attach


@pytest.fixture(scope="session", name="fresh")
def fresh_fixture():
    return fresh
