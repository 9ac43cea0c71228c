"""The two references agree where they must: paper formula vs peft's own forward (issue: ground truth).

For every peft-backed variant, one random non-identity adapter state goes through both the float64
paper formula (references/paper) and peft (via references/peft_bridge); they agree to ~1e-10 in
float64 and ~1e-6 in float32. Documented peft deviations are asserted to still be present, so this
fails when one vanishes and the cards' declarations must be updated.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from references import paper
from references import peft_bridge as bridge

D_IN, D_OUT, R = 12, 16, 4
NAME = "block.up_proj"


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = nn.ModuleDict({"up_proj": nn.Linear(D_IN, D_OUT)})

    def forward(self, x):
        return self.block["up_proj"](x)


def rand(*shape, seed, scale=1.0, shift=0.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale + shift


def _positions(d_in: int, d_out: int, k: int) -> torch.Tensor:
    flat = torch.randperm(d_in * d_out, generator=torch.Generator().manual_seed(13))[:k].sort().values
    return torch.stack((flat // d_in, flat % d_in))


def state_for(variant: str, w: torch.Tensor, road_variant: str = "road_1") -> tuple[dict, dict]:
    cfg = {"r": R, "alpha": 8.0, "use_rslora": False, "road_variant": road_variant, "group_size": 8,
           "lambda0": 3.0, "init_style": "peft", "rho": 1.0,
           # OFT: blocks of 4; peft's Cayley–Neumann branch has the paper's sign (its exact branch is the
           # declared transposed rotation, tests/test_oft.py)
           "block_size": 4, "use_cayley_neumann": True, "num_neumann_terms": 5, "d_initial": 0.1,
           "n_frequency": 40, "scaling": 150.0, "random_loc_seed": 5,
           # VB-LoRA: sub-vectors of 4 tile 12 in and 16 out; a bank of 6, top-2
           "num_vectors": 6, "vector_length": 4, "topk": 2}
    lowrank = {"A": rand(R, D_IN, seed=1, scale=0.3), "B": rand(D_OUT, R, seed=2, scale=0.3)}
    states = {
        "lora": lowrank, "pissa": lowrank, "eva": lowrank,
        "dora": {**lowrank, "m": rand(D_OUT, seed=3, scale=0.2, shift=1.0)},
        "ia3": {"l": rand(D_OUT, seed=4, scale=0.3, shift=1.0)},
        "ia3_ff": {"l": rand(D_IN, seed=5, scale=0.3, shift=1.0)},
        "hra": {"u": rand(R, D_IN, seed=6)},
        "delora": {**lowrank, "lam": torch.tensor([3.0], dtype=torch.float64), "w_norm": w.norm(dim=0)},
        # 12 = 3·4 in, 16 = 4·4 out, r = 4 ≥ 4/2: both factors full (γ = 1; the bridge sets peft's alpha = r)
        "lokr": {"w1": rand(4, 3, seed=10, scale=0.5), "w2": rand(4, 4, seed=11, scale=0.5)},
        "loha": {k: rand(*shape, seed=10 + i, scale=0.5) for i, (k, shape) in enumerate(
            (("w1_a", (D_OUT, R)), ("w1_b", (R, D_IN)), ("w2_a", (D_OUT, R)), ("w2_b", (R, D_IN))))},
        "oft": {"Q": rand(D_IN // 4, 6, seed=10, scale=0.1)},
        # BOFT with one butterfly component (peft builds m > 1 only with its CUDA kernel, tests/test_boft.py)
        "boft": {"Q": rand(1, D_IN // 4, 6, seed=12, scale=0.1)},
        "vera": {**lowrank, "lambda_b": rand(D_OUT, seed=10, scale=0.5), "lambda_d": rand(R, seed=11, scale=0.5)},
        "olora": lowrank,
        "vblora": {"bank": rand(6, 4, seed=12, scale=0.5), "logits_A": rand(R, D_IN // 4, 6, seed=13),
                   "logits_B": rand(D_OUT // 4, R, 6, seed=14)},
        # RandLoRA: m = 12, n = 3 bases of rank 4; the shared bases exactly the layer's size (one layer)
        "randlora": {"A": rand(R, 1, D_IN, seed=12), "B": rand(D_OUT, 3, R, seed=13),
                     "lambda": rand(R, 3, seed=14, scale=0.5), "gamma": rand(3, D_IN, seed=15, scale=0.5)},
        "olora": lowrank, "corda": lowrank, "loraga": lowrank,
        "adalora": {**lowrank, "E": rand(R, 1, seed=11)},
        "miss": {"D": rand(R, D_OUT, seed=12, scale=0.5)},
        "hira": lowrank,
        "fourierft": {"spectrum": rand(40, seed=12, scale=0.5)},
        "c3a": {"kernel": rand(D_OUT // 4, D_IN // 4, 4, seed=13)},
        # K = R·(D_IN + D_OUT) distinct positions of the (D_OUT, D_IN) weight, row-major order
        "shira": {"indices": _positions(D_IN, D_OUT, R * (D_IN + D_OUT)), "values": rand(R * (D_IN + D_OUT), seed=12)},
    }
    if variant == "road":
        n = {"road_1": D_OUT // 2, "road_2": D_OUT, "road_4": 2 * D_OUT}[road_variant]
        return {"theta": rand(n, seed=7, scale=0.5), "alpha": rand(n, seed=8, scale=0.2, shift=1.0)}, cfg
    return states[variant], cfg


CASES = [(v, "road_1") for v in bridge.PEFT_VARIANTS] + [("road", "road_2"), ("road", "road_4")]


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-6)])
@pytest.mark.parametrize("variant,road_variant", CASES)
def test_paper_and_peft_agree(variant, road_variant, dtype, tol):
    torch.manual_seed(0)
    base = Toy().to(dtype)
    lin = base.block["up_proj"]
    w64, b64 = lin.weight.detach().double(), lin.bias.detach().double()
    state, cfg = state_for(variant, w64, road_variant)
    cfg["dtype"] = "float32" if dtype == torch.float32 else None
    pm = bridge.build_peft_model(base, variant, cfg, [NAME], {NAME: {k: v.to(dtype) if v.is_floating_point() else v
                                                                     for k, v in state.items()}})
    x = rand(5, D_IN, seed=9)
    with torch.no_grad():
        y_peft = pm(x.to(dtype)).double()
    # the paper formula sees the same (rounded) tensors peft holds
    y_ref = paper.get(variant).forward(x.to(dtype).double(), w64, b64,
                                       {k: v.to(dtype).double() if v.is_floating_point() else v
                                        for k, v in state.items()}, cfg)
    err = float((y_peft - y_ref).norm() / y_ref.norm())
    if variant in ("fourierft", "c3a") and dtype == torch.float64:
        # peft computes these in float32 whatever the adapter's dtype (fourierft get_delta_weight: torch.zeros'
        # default dtype, then ifft2; c3a forward: x and the kernel cast to float32): a float64 run gets float32's
        # rounding, a few u₃₂ = 6e-8 relative
        tol = 8 * 2.0 ** -24
    assert err <= tol, f"{variant}/{road_variant} {dtype}: paper vs peft rel err {err:.3g} > {tol}"
    assert float((y_ref - x @ w64.t() - b64).norm()) > 1e-3, "the state must be non-identity"


def test_deviation_dora_norm_is_detached_in_peft():
    """Declared deviation dora-detached-norm: peft's gradients follow the detached-norm formula
    (paper §4.3), not the fully differentiated one. Fails if peft stops detaching."""
    torch.manual_seed(0)
    base = Toy().double()
    lin = base.block["up_proj"]
    w, b = lin.weight.detach().double(), lin.bias.detach().double()
    state, cfg = state_for("dora", w)
    cfg["dtype"] = None
    pm = bridge.build_peft_model(base, "dora", cfg, [NAME], {NAME: state})
    x, t = rand(5, D_IN, seed=9), rand(5, D_OUT, seed=10)
    (pm(x) * t).sum().backward()
    layer = bridge.peft_layer(pm, NAME)
    g_peft = layer.lora_A["default"].weight.grad
    ref = paper.get("dora")
    grads = {}
    for detach in (True, False):
        a = state["A"].clone().requires_grad_(True)
        (ref.forward(x, w, b, {**state, "A": a}, {**cfg, "detach_norm": detach}) * t).sum().backward()
        grads[detach] = a.grad
    assert float((g_peft - grads[True]).norm() / grads[True].norm()) < 1e-10
    assert float((g_peft - grads[False]).norm() / grads[False].norm()) > 1e-3


def test_deviation_delora_paper_init_not_representable_in_peft():
    """peft has no frozen-copy term: the paper config (init_style paper) cannot be built in peft (the peft
    subject's rows under that config are n/a, saying so)."""
    torch.manual_seed(0)
    base = Toy()
    w = base.block["up_proj"].weight.detach().double()
    state, cfg = state_for("delora", w)
    cfg.update(init_style="paper", dtype="float32")
    state = {**state, "C": state["A"].clone(), "D": state["B"].clone()}
    with pytest.raises(bridge.BridgeUnsupported):
        bridge.build_peft_model(base, "delora", cfg, [NAME], {NAME: {k: v.float() for k, v in state.items()}})


def test_deviation_peft_ia3_qwen_default_targets_q():
    """Declared deviation peft-ia3-qwen-targets-q: peft's IA3 defaults for qwen use q_proj, not k_proj."""
    from peft.utils import constants
    for model_type in ("qwen2", "qwen3"):
        targets = constants.TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING[model_type]
        assert "q_proj" in targets and "k_proj" not in targets
    assert "k_proj" in constants.TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING["llama"]
