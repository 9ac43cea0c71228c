"""Tests of the float64 paper formulas (references/paper) and the antipasto3 port."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from references import antipasto3
from references.paper import VARIANTS, get

ROOT = Path(__file__).resolve().parents[1]
D_IN, D_OUT, R, G = 12, 16, 4, 8
F64 = torch.float64


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn(*shape, generator=gen(seed), dtype=F64)


@pytest.fixture
def W():
    return randn(D_OUT, D_IN, seed=1)


@pytest.fixture
def b():
    return randn(D_OUT, seed=2)


def maxdiff(a, c) -> float:
    return float((a - c).abs().max())


def svd_parts(W, r=R):
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    U, S, Vh = U[:, :r], S[:r], Vh[:r]
    return U, S, Vh, W - (U * S) @ Vh


def antipasto_state(W, seed, bs=2, scale_T=0.5, scale_d=0.1, r=R):
    U, S, Vh, W_res = svd_parts(W, r)
    n_blocks, k = r // bs, bs * (bs - 1) // 2
    state = {"U": U, "S": S, "Vh": Vh, "delta": randn(r, seed=seed, scale=scale_d),
             "T": randn(n_blocks, k, seed=seed + 1, scale=scale_T)}
    return state, W_res


# (a) ------------------------------------------------------------------------------------------------------

def test_references_never_import_variants():
    code = (
        "import importlib, pkgutil, sys\n"
        "import references\n"
        "names = [m.name for m in pkgutil.walk_packages(references.__path__, 'references.')]\n"
        "for n in names: importlib.import_module(n)\n"
        "bad = sorted(m for m in sys.modules if m == 'variants' or m.startswith('variants.'))\n"
        "assert 'references.paper.antipasto' in names and 'references.antipasto3' in names, names\n"
        "assert not bad, bad\n"
        "print(len(names))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert int(res.stdout.strip()) >= len(VARIANTS) + 3


def test_registry_and_metadata():
    for name in VARIANTS:
        mod = get(name)
        assert callable(mod.merged) and callable(mod.forward)
        assert isinstance(mod.EQUATION, str) and "\n" not in mod.EQUATION and mod.EQUATION
        assert "arXiv:" in mod.CITATION or "OpenReview" in mod.CITATION, name  # HiRA (ICLR 2025) has no arXiv id
    with pytest.raises(ValueError):
        get("nope")


# (b) identity states ---------------------------------------------------------------------------------------

def _positions(k):
    flat = torch.randperm(D_IN * D_OUT, generator=torch.Generator().manual_seed(10))[:k]
    return torch.stack((flat // D_IN, flat % D_IN))


def identity_cases(W):
    U, S, Vh, W_res = svd_parts(W)
    s = 16.0 / R
    A, B = randn(R, D_IN, seed=3), randn(D_OUT, R, seed=4)
    u_half = randn(R // 2, D_IN, seed=5)
    return {
        "lora": (W, {"A": A, "B": torch.zeros(D_OUT, R, dtype=F64)}, {"r": R, "alpha": 16.0, "use_rslora": True}),
        "pissa": (W - s * B @ A, {"A": A, "B": B}, {"r": R, "alpha": 16.0}),
        "dora": (W, {"A": A, "B": torch.zeros(D_OUT, R, dtype=F64), "m": torch.linalg.vector_norm(W, dim=1)},
                 {"r": R, "alpha": 16.0}),
        "ia3": (W, {"l": torch.ones(D_OUT, dtype=F64)}, {}),
        "ia3_ff": (W, {"l": torch.ones(D_IN, dtype=F64)}, {}),
        "hra": (W, {"u": u_half.repeat_interleave(2, dim=0)}, {"r": R}),
        "delora": (W, {"A": A, "B": torch.zeros(D_OUT, R, dtype=F64), "lam": torch.tensor([15.0], dtype=F64),
                       "w_norm": torch.linalg.vector_norm(W, dim=0)}, {"r": R, "lambda0": 15.0, "init_style": "peft"}),
        "delora_paper": (W, {"A": A, "B": B, "C": A.clone(), "D": B.clone(), "lam": torch.tensor([15.0], dtype=F64),
                             "w_norm": torch.linalg.vector_norm(W, dim=0)}, {"r": R, "init_style": "paper"}),
        "eva": (W, {"A": randn(3, D_IN, seed=6), "B": torch.zeros(D_OUT, 3, dtype=F64)}, {"r": R, "alpha": 8.0}),
        "road": (W, {"theta": torch.zeros(D_OUT // 2, dtype=F64), "alpha": torch.ones(D_OUT // 2, dtype=F64)},
                 {"road_variant": "road_1", "group_size": G}),
        # 12 = 3·4 in, 16 = 4·4 out, r = 4: both factors full (γ = 1); W₂ = 0 (LyCORIS init)
        "lokr": (W, {"w1": randn(4, 3, seed=9), "w2": torch.zeros(4, 4, dtype=F64)}, {"r": R, "alpha": 16.0}),
        "loha": (W, {"w1_a": randn(D_OUT, R, seed=12), "w1_b": randn(R, D_IN, seed=13), "w2_a": randn(D_OUT, R, seed=14),
                     "w2_b": torch.zeros(R, D_IN, dtype=F64)}, {"r": R, "alpha": 8.0}),
        "oft": (W, {"Q": torch.zeros(D_IN // 4, 6, dtype=F64)}, {"block_size": 4, "use_cayley_neumann": False}),
        "boft": (W, {"Q": torch.zeros(2, D_IN // 2, 1, dtype=F64)}, {"block_size": 2, "n_butterfly_factor": 2}),
        "vera": (W, {"A": A, "B": B, "lambda_b": torch.zeros(D_OUT, dtype=F64), "lambda_d": torch.full((R,), 0.1, dtype=F64)},
                 {"r": R, "d_initial": 0.1}),
        "olora": (W - s * B @ A, {"A": A, "B": B}, {"r": R, "alpha": 16.0}),
        # VB-LoRA has no identity init (variants/vblora.py); a zero bank is its identity state
        "vblora": (W, {"bank": torch.zeros(6, 4, dtype=F64), "logits_A": randn(R, D_IN // 4, 6, seed=15),
                       "logits_B": randn(D_OUT // 4, R, 6, seed=16)},
                   {"r": R, "num_vectors": 6, "vector_length": 4, "topk": 2}),
        # RandLoRA at init: λ = 0 (peft's zero side), γ = 1/m; bases of the layer's size, n = ⌈min/R⌉
        "randlora": (W, {"A": randn(R, 1, min(D_IN, D_OUT), seed=17),
                         "B": randn(max(D_IN, D_OUT), -(-min(D_IN, D_OUT) // R), R, seed=18),
                         "lambda": torch.zeros(R, -(-min(D_IN, D_OUT) // R), dtype=F64),
                         "gamma": torch.full((-(-min(D_IN, D_OUT) // R), min(D_IN, D_OUT)), 1 / min(D_IN, D_OUT),
                                             dtype=F64)}, {"r": R, "alpha": 16.0}),
        "corda": (W - s * B @ A, {"A": A, "B": B}, {"r": R, "alpha": 16.0}),
        "loraga": (W - 8.0 * B @ A, {"A": A, "B": B}, {"r": R, "alpha": 16.0, "use_rslora": True}),
        "adalora": (W, {"A": A, "E": torch.zeros(R, 1, dtype=F64), "B": B}, {"r": R, "alpha": 16.0}),
        "fourierft": (W, {"spectrum": torch.zeros(10, dtype=F64)}, {"n_frequency": 10, "scaling": 150.0,
                                                                   "random_loc_seed": 2}),
        "c3a": (W, {"kernel": torch.zeros(D_OUT // 4, D_IN // 4, 4, dtype=F64)}, {"block_size": 4}),
        "antipasto": (W_res, {"U": U, "S": S, "Vh": Vh, "delta": torch.zeros(R, dtype=F64),
                              "T": torch.zeros(R // 2, 1, dtype=F64)},
                      {"r": R, "block_size": 2, "max_rotation_angle": 0.5, "rotate_basis": "V"}),
        "miss": (W, {"D": torch.zeros(R, D_OUT, dtype=F64)}, {"r": R}),
        "hira": (W, {"A": A, "B": torch.zeros(D_OUT, R, dtype=F64)}, {"r": R}),
        # positions: the first R·(D_IN + D_OUT) entries of a fixed permutation; values 0 (S = 0)
        "shira": (W, {"indices": _positions(R * (D_IN + D_OUT)),
                      "values": torch.zeros(R * (D_IN + D_OUT), dtype=F64)}, {"r": R}),
    }


@pytest.mark.parametrize("case", list(VARIANTS) + ["delora_paper"])
def test_identity_state_returns_W(case, W, b):
    W_in, state, cfg = identity_cases(W)[case]
    mod = get(case.split("_paper")[0])
    W_eff, b_eff = mod.merged(W_in, b, state, cfg)
    assert W_eff.dtype == F64 and W_eff.shape == W.shape
    assert maxdiff(W_eff, W) < 1e-12, maxdiff(W_eff, W)
    assert maxdiff(b_eff, b) < 1e-12
    assert mod.merged(W_in, None, state, cfg)[1] is None
    x = randn(5, D_IN, seed=7)
    assert maxdiff(mod.forward(x, W_in, b, state, cfg), x @ W.T + b) < 1e-11


def test_non_identity_state_moves_W(W, b):
    """The formulas are not trivially the identity: perturbing each state changes W_eff."""
    for case, (W_in, state, cfg) in identity_cases(W).items():
        mod = get(case.split("_paper")[0])
        key = {"lora": "B", "pissa": "B", "dora": "B", "ia3": "l", "ia3_ff": "l", "hra": "u", "delora": "B",
               "delora_paper": "B", "eva": "B", "road": "theta", "antipasto": "T", "lokr": "w2",
               "loha": "w2_b", "oft": "Q", "boft": "Q", "vera": "lambda_b", "olora": "B", "adalora": "E",
               "fourierft": "spectrum", "c3a": "kernel", "shira": "values", "vblora": "bank", "corda": "B",
               "loraga": "B", "miss": "D", "hira": "B", "randlora": "lambda"}[case]
        moved = dict(state, **{key: state[key] + randn(*state[key].shape, seed=8, scale=0.3)})
        assert maxdiff(mod.merged(W_in, b, moved, cfg)[0], W) > 1e-3, case


def test_bias_conventions(W, b):
    l = randn(D_OUT, seed=9)
    assert maxdiff(get("ia3").merged(W, b, {"l": l}, {})[1], l * b) < 1e-15
    A, B = randn(R, D_IN, seed=3), randn(D_OUT, R, seed=4)
    dora_b = get("dora").merged(W, b, {"A": A, "B": B, "m": randn(D_OUT, seed=5)}, {"r": R, "alpha": 8.0})[1]
    assert maxdiff(dora_b, b) == 0.0
    s = {"theta": randn(D_OUT // 2, seed=10), "alpha": 1 + randn(D_OUT // 2, seed=11, scale=0.1)}
    cfg = {"road_variant": "road_1", "group_size": G}
    R_ = get("road").rotation_matrix(s, cfg, D_OUT)
    assert maxdiff(get("road").merged(W, b, s, cfg)[1], R_ @ b) < 1e-14


def test_lora_rslora_scaling(W):
    A, B = randn(R, D_IN, seed=3), randn(D_OUT, R, seed=4)
    lora = get("lora")
    plain = lora.merged(W, None, {"A": A, "B": B}, {"r": R, "alpha": 8.0})[0]
    rs = lora.merged(W, None, {"A": A, "B": B}, {"r": R, "alpha": 8.0, "use_rslora": True})[0]
    assert maxdiff(plain, W + 2.0 * B @ A) < 1e-13
    assert maxdiff(rs, W + 4.0 * B @ A) < 1e-13
    eva = get("eva").merged(W, None, {"A": A[:3], "B": B[:, :3]}, {"r": R, "alpha": 8.0})[0]
    assert maxdiff(eva, W + 2.0 * B[:, :3] @ A[:3]) < 1e-13  # alpha/r with the config r


def test_gradients_flow_through_state(W):
    A = randn(R, D_IN, seed=3).requires_grad_()
    B = randn(D_OUT, R, seed=4).requires_grad_()
    lam = torch.tensor([2.0], dtype=F64, requires_grad=True)
    state = {"A": A, "B": B, "lam": lam, "w_norm": torch.linalg.vector_norm(W, dim=0)}
    t = randn(5, D_OUT, seed=12)
    y = get("delora").forward(randn(5, D_IN, seed=7), W, None, state, {"r": R, "init_style": "peft"})
    ((y - t) ** 2).sum().backward()
    for p in (A, B, lam):
        assert p.grad is not None and float(p.grad.abs().max()) > 0


# (c) invariants --------------------------------------------------------------------------------------------

def test_hra_orthogonal_for_random_u():
    err = get("hra").orthogonality_error(randn(R, D_IN, seed=13))
    assert err < 1e-12, err


def test_dora_row_norm_equals_m(W):
    state = {"A": randn(R, D_IN, seed=3), "B": randn(D_OUT, R, seed=4), "m": randn(D_OUT, seed=14).abs() + 0.5}
    dora = get("dora")
    err = dora.magnitude_error(W, state, {"r": R, "alpha": 8.0})
    assert err < 1e-12, err
    # the measurement is sensitive: a rescaled m does not match
    wrong = dict(state, m=state["m"] * 1.1)
    W_eff = dora.merged(W, None, wrong, {"r": R, "alpha": 8.0})[0]
    assert maxdiff(torch.linalg.vector_norm(W_eff, dim=1), state["m"]) > 1e-3


def test_dora_detach_norm_changes_gradient_not_value(W):
    A = randn(R, D_IN, seed=3).requires_grad_()
    state = {"A": A, "B": randn(D_OUT, R, seed=4), "m": randn(D_OUT, seed=14).abs() + 0.5}
    cfg, t = {"r": R, "alpha": 8.0}, randn(D_OUT, D_IN, seed=15)
    grads, vals = [], []
    for detach in (True, False):
        W_eff = get("dora").merged(W, None, state, {**cfg, "detach_norm": detach})[0]
        vals.append(W_eff.detach())
        (g,) = torch.autograd.grad(((W_eff - t) ** 2).sum(), A)
        grads.append(g)
    assert maxdiff(*vals) == 0.0
    assert maxdiff(*grads) > 1e-6


def test_delora_norm_bound_holds():
    delora = get("delora")
    for seed in range(5):
        state = {"A": randn(R, D_IN, seed=20 + seed), "B": randn(D_OUT, R, seed=30 + seed),
                 "lam": torch.tensor([3.0 + seed], dtype=F64)}
        excess = delora.norm_bound_excess(state, {"r": R})
        assert excess <= 1e-12, excess
    # equality when all rank-1 terms are parallel: B = b·1ᵀ, A = 1·aᵀ
    a, bb = randn(D_IN, seed=40), randn(D_OUT, seed=41)
    par = {"A": a.expand(R, D_IN), "B": bb.unsqueeze(1).expand(D_OUT, R), "lam": torch.tensor([5.0], dtype=F64)}
    assert abs(delora.norm_bound_excess(par, {"r": R})) < 1e-12


def test_pissa_reconstruction(W):
    A, B = randn(R, D_IN, seed=3), randn(D_OUT, R, seed=4)
    cfg = {"r": R, "alpha": 8.0}
    pissa = get("pissa")
    assert pissa.reconstruction_error(W, W - 2.0 * B @ A, {"A": A, "B": B}, cfg) < 1e-14
    assert pissa.reconstruction_error(W, W - B @ A, {"A": A, "B": B}, cfg) > 1e-2  # wrong scale is caught


def test_antipasto_rotation_properties():
    ap = get("antipasto")
    T = randn(3, 6, seed=50, scale=2.0)
    cfg = {"block_size": 4, "max_rotation_angle": 0.5}
    assert ap.rotation_orthogonality_error(T, cfg) < 1e-12
    Rp, Rm = ap.rotation_blocks(T, cfg), ap.rotation_blocks(-T, cfg)
    assert maxdiff(Rm, Rp.transpose(1, 2)) < 1e-12
    assert maxdiff(Rp, Rp.transpose(1, 2)) > 1e-2  # not trivially symmetric
    # small T: R ≈ I + A
    eps = randn(1, 1, seed=51, scale=1e-6)
    R2 = ap.rotation_blocks(eps, {"block_size": 2, "max_rotation_angle": 0.5})[0]
    assert abs(float(R2[0, 1] - eps[0, 0] / 2)) < 1e-15


def test_antipasto_angle_bound_exact_only_for_bs2():
    ap = get("antipasto")
    theta_max = 0.5
    big2 = randn(8, 1, seed=52, scale=50.0)
    a2 = ap.max_rotation_angle(big2, {"block_size": 2, "max_rotation_angle": theta_max})
    assert a2 <= theta_max + 1e-12, f"bs=2 measured max angle {a2} > {theta_max}"
    assert a2 > 0.9 * theta_max, a2  # saturation reached (the bound is tight)
    big4 = randn(8, 6, seed=53, scale=50.0)
    a4 = ap.max_rotation_angle(big4, {"block_size": 4, "max_rotation_angle": theta_max})
    assert a4 > theta_max + 0.1, f"bs=4 measured max angle {a4:.4f} rad vs max_rotation_angle {theta_max}"
    # without saturation, angles are not bounded by theta_max
    a_free = ap.max_rotation_angle(big2, {"block_size": 2, "max_rotation_angle": None})
    assert a_free > theta_max + 1.0, a_free


# (d) antipasto3 port vs torch formulation -------------------------------------------------------------------

@pytest.mark.parametrize("basis", ["V", "U", "none"])
@pytest.mark.parametrize("bs", [2, 4])
def test_antipasto3_port_matches_torch_formula(W, basis, bs):
    state, W_res = antipasto_state(W, seed=60, bs=bs)
    cfg = {"r": R, "block_size": bs, "max_rotation_angle": 0.5, "rotate_basis": basis}
    ref, _ = get("antipasto").merged(W_res, None, state, cfg)
    params, hp = antipasto3.from_torch_state(state, cfg, W_res)
    port = antipasto3.to_torch_weight(params, hp, coeff=1.0)
    assert maxdiff(port, ref) < 1e-12, maxdiff(port, ref)
    assert maxdiff(ref, W) > 1e-3  # a non-trivial state
    if basis != "none":
        # without the chirality flip (T_a3 = +T) the two disagree
        key = "T_U" if basis == "V" else "T_V"
        wrong = dict(params, **{key: -params[key]})
        assert maxdiff(antipasto3.to_torch_weight(wrong, hp), ref) > 1e-3


def test_antipasto3_cayley_and_decompose(W):
    T = randn(2, 6, seed=70, scale=1.0)
    Rp = antipasto3.cayley(T, 4, 0.5, coeff=0.7)
    assert maxdiff(Rp.T @ Rp, torch.eye(8, dtype=F64)) < 1e-12
    assert maxdiff(antipasto3.cayley(T, 4, 0.5, coeff=-0.7), Rp.T) < 1e-12
    assert maxdiff(antipasto3.cayley(-T, 4, 0.5, coeff=0.7), Rp.T) < 1e-12
    assert maxdiff(antipasto3.cayley(T, 4, 0.5, coeff=0.0), torch.eye(8, dtype=F64)) == 0.0
    # block diagonal: no coupling between blocks
    assert float(Rp[:4, 4:].abs().max()) == 0.0
    f = antipasto3.decompose(W, r=5, block_size=2)
    assert f["U"].shape == (D_IN, 4) and f["Vh"].shape == (4, D_OUT)
    assert maxdiff(f["K_res"] + (f["U"] * f["S"]) @ f["Vh"], W.T) < 1e-12
    # coeff = 0 with delta: identity up to nothing (S(0) = S)
    params = dict(f, delta=randn(4, seed=71), T_U=randn(2, 1, seed=72))
    hp = {"block_size": 2, "max_angle": 0.5, "rotate_U": True, "rotate_V": False}
    assert maxdiff(antipasto3.to_torch_weight(params, hp, coeff=0.0), W) < 1e-12
    assert maxdiff(antipasto3.to_torch_weight(params, hp, coeff=1.0), W) > 1e-3


# (e) HRA order ---------------------------------------------------------------------------------------------

def test_hra_reflection_order_matters(W):
    hra = get("hra")
    u = randn(R, D_IN, seed=80)
    fwd, rev = hra.householder_product(u), hra.householder_product(u, reverse=True)
    assert maxdiff(fwd, rev) > 1e-3
    # index order means H_0 is the leftmost factor
    H = [torch.eye(D_IN, dtype=F64) - 2 * torch.outer(v, v) / (v @ v) for v in u]
    assert maxdiff(fwd, H[0] @ H[1] @ H[2] @ H[3]) < 1e-13
    assert maxdiff(hra.merged(W, None, {"u": u}, {"r": R})[0], W @ fwd) < 1e-13


# (f) RoAd dense R vs the elementwise peft-layout formula ----------------------------------------------------

def road_elementwise(y, theta, alpha, variant, g):
    """y'_j = c_j p − s_j q, y'_{j+g/2} = c_{j+g/2} q + s_{j+g/2} p, written position by position."""
    d = y.shape[-1]
    h = g // 2
    out = torch.empty_like(y)
    for gi in range(d // g):
        for j in range(g):
            k = gi * g + j
            if variant == "road_1":
                idx = gi * h + (j % h)
                c_k = alpha[idx] * math.cos(theta[idx])
                s_k = alpha[idx] * math.sin(theta[idx])
            elif variant == "road_2":
                c_k, s_k = alpha[k] * math.cos(theta[k]), alpha[k] * math.sin(theta[k])
            else:  # road_4: per group [g cos-column values, g sin-column values]
                base = gi * 2 * g
                c_k = alpha[base + j] * math.cos(theta[base + j])
                s_k = alpha[base + g + j] * math.sin(theta[base + g + j])
            if j < h:
                p, q = y[..., k], y[..., k + h]
                out[..., k] = c_k * p - s_k * q
            else:
                p, q = y[..., k - h], y[..., k]
                out[..., k] = c_k * q + s_k * p
    return out


@pytest.mark.parametrize("variant,size", [("road_1", D_OUT // 2), ("road_2", D_OUT), ("road_4", 2 * D_OUT)])
def test_road_dense_matches_elementwise(variant, size, W, b):
    theta, alpha = randn(size, seed=90), 1 + randn(size, seed=91, scale=0.3)
    state, cfg = {"theta": theta, "alpha": alpha}, {"road_variant": variant, "group_size": G}
    road = get("road")
    Rm = road.rotation_matrix(state, cfg, D_OUT)
    y = randn(6, D_OUT, seed=92)
    expect = road_elementwise(y, theta.tolist(), alpha.tolist(), variant, G)
    assert maxdiff(y @ Rm.T, expect) < 1e-13
    x = randn(6, D_IN, seed=93)
    assert maxdiff(road.forward(x, W, b, state, cfg), road_elementwise(x @ W.T + b, theta.tolist(),
                                                                       alpha.tolist(), variant, G)) < 1e-12
    # the adjacent (paper) pairing is a different matrix
    assert maxdiff(Rm, Rm[[i ^ 1 for i in range(D_OUT)]][:, [i ^ 1 for i in range(D_OUT)]]) > 1e-3


@pytest.mark.parametrize("variant,size", [("road_1", D_OUT // 2), ("road_2", D_OUT), ("road_4", 2 * D_OUT)])
def test_road_dense_matches_peft_functions(variant, size):
    import peft.tuners.road.layer as layer  # peft is a hard dependency of the test suite
    theta, alpha = randn(size, seed=94), 1 + randn(size, seed=95, scale=0.3)
    Rm = get("road").rotation_matrix({"theta": theta, "alpha": alpha},
                                     {"road_variant": variant, "group_size": G}, D_OUT)
    y = randn(6, D_OUT, seed=96)
    assert maxdiff(y @ Rm.T, layer._apply_road(variant, G, theta, alpha, y)) < 1e-13
    assert maxdiff(Rm, layer._get_delta_weight(variant, G, theta, alpha)) < 1e-13
