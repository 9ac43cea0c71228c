"""BOFT: our hook vs the paper formula (m = 1..3, block_size and block_num), peft's layer under the negated
packed-skew layout (with its CUDA block-diagonal kernel emulated for m > 1), peft's silent drop to one factor
without that kernel, our checkpoint in peft, the init statement, and config refusals (float64 toy layers)."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

import variants
from references import peft_bridge as bridge
from references.paper import boft as paper
from references.peft_bridge.boft import fbd_cuda_available

D_IN, D_OUT = 48, 12
# float64 throughout: hook and formula differ in the order of b-term sums, m ≤ 3 products and an LU solve of
# I − Q (normal, cond ≤ √2): they agree to ~10 u64 per factor; 1e-12 leaves room
EXACT = 1e-12
CONFIGS = [dict(block_size=8, n_butterfly_factor=1), dict(block_size=8, n_butterfly_factor=2),
           dict(block_size=4, n_butterfly_factor=3), dict(block_size=6, n_butterfly_factor=2),
           dict(block_size=0, block_num=4, n_butterfly_factor=2)]


class Toy(nn.Module):
    def __init__(self, layer: nn.Module):
        super().__init__()
        self.lin = layer

    def forward(self, x):
        return self.lin(x)


def _toy(kind: str = "linear") -> Toy:
    torch.manual_seed(0)
    layer = nn.Linear(D_IN, D_OUT) if kind == "linear" else Conv1D(D_OUT, D_IN)
    with torch.no_grad():
        layer.bias.uniform_(-0.5, 0.5)
    return Toy(layer).double()


def _w(layer: nn.Module) -> torch.Tensor:
    return layer.weight.t() if isinstance(layer, Conv1D) else layer.weight


def _q(cfg: dict, std: float = 0.2, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(paper.layout(D_IN, D_OUT, cfg)["Q"], generator=g, dtype=torch.float64) * std


def _ours(cfg: dict, q: torch.Tensor | None, kind: str = "linear") -> Toy:
    model = _toy(kind)
    variants.attach(model, variants.config("boft", dtype="float64", target_names=("lin",), **cfg))
    if q is not None:
        with torch.no_grad():
            model.lin.adapter_Q.copy_(q)
    return model


class _EmulatedFbd:
    """peft's fbd_cuda kernel (FastBlockDiag): (N, D, b, b) -> (N, D·b, D·b) block diagonals, in torch."""

    def forward(self, t):
        return [torch.stack([torch.block_diag(*f.unbind(0)) for f in t.unbind(0)])]


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_forward_equals_the_paper_formula(kind, cfg):
    q = _q(cfg)
    model = _ours(cfg, q, kind)
    x = torch.randn(5, D_IN, dtype=torch.float64)
    want = paper.forward(x, _w(model.lin).detach(), model.lin.bias.detach(), {"Q": q}, cfg)
    assert (model(x) - want).abs().max() < EXACT * want.abs().max()


def test_order_of_components_matters():
    """The paper's R = B̃(d, 4)B̃(d, 2) is not B̃(d, 2)B̃(d, 4): a reversed product is a different function."""
    cfg = dict(block_size=8, n_butterfly_factor=2)
    q = _q(cfg)
    r = paper.rotation({"Q": q}, cfg, D_IN)
    r_rev = paper.component(q[0], D_IN, 8, 0) @ paper.component(q[1], D_IN, 8, 1)
    assert torch.allclose(r.T @ r, torch.eye(D_IN, dtype=r.dtype), atol=1e-12)
    assert (r - r_rev).abs().max() > 0.05


def test_component_pairs_sub_blocks_half_a_chunk_apart():
    """§4 eq. 1: B̃(d, k) couples sub-block j with j + k/2 inside each chunk of k sub-blocks of b/2."""
    idx = paper.block_indices(16, 4, 1)  # k = 4, sub-blocks of 2: chunk 0 = coords 0..7
    assert idx[0].tolist() == [0, 1, 4, 5] and idx[1].tolist() == [2, 3, 6, 7] and idx[2].tolist() == [8, 9, 12, 13]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_peft_layer_computes_the_paper_formula_under_the_mapped_layout(cfg, monkeypatch):
    """peft's boft_R holds the skew blocks of −Q (its Cayley map is the paper's of −S) and its butterfly
    permutations put factor i on the paper's B̃(d, 2^{i+1}): with the CUDA block-diagonal kernel emulated
    (m > 1 needs it) peft's layer is the paper formula."""
    from peft.tuners.boft import layer as boft_layer
    monkeypatch.setattr(boft_layer, "_FBD_CUDA", _EmulatedFbd() if cfg["n_butterfly_factor"] > 1 else None)
    base, q = _toy(), _q(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = bridge.build_peft_model(base, "boft", {**cfg, "dtype": "float32"}, ["lin"], {"lin": {"Q": q}})
    assert torch.allclose(bridge.peft_state(pm, "boft", ["lin"])["lin"]["Q"], q, atol=1e-15, rtol=0)
    x = torch.randn(4, D_IN, dtype=torch.float64)
    with torch.no_grad():
        y = pm(x)
    w, b = base.lin.weight.detach(), base.lin.bias.detach()
    same, flipped = paper.forward(x, w, b, {"Q": q}, cfg), paper.forward(x, w, b, {"Q": -q}, cfg)
    assert (y - same).abs().max() < EXACT * same.abs().max()
    assert (y - flipped).abs().max() > 0.05 * same.abs().max()


def test_peft_drops_the_butterfly_without_its_cuda_kernel():
    """The declared departure: without fbd_cuda peft builds one component for n_butterfly_factor = 2."""
    from peft import BOFTConfig, get_peft_model
    if fbd_cuda_available():
        pytest.skip("peft's fbd_cuda extension builds here")
    with pytest.warns(UserWarning, match="boft_n_butterfly_factor to 1"):
        pm = get_peft_model(Toy(nn.Linear(D_IN, 8)), BOFTConfig(boft_block_size=8, boft_n_butterfly_factor=2,
                                                                target_modules=["lin"]))
    assert tuple(bridge.peft_layer(pm, "lin").boft_R["default"].shape) == (1, D_IN // 8, 8, 8)
    with pytest.raises(bridge.BridgeUnsupported, match="fbd_cuda"):
        bridge.build_peft_model(_toy(), "boft", {"block_size": 8, "n_butterfly_factor": 2}, ["lin"],
                                {"lin": {"Q": _q(dict(block_size=8, n_butterfly_factor=2))}})


def test_our_checkpoint_loads_in_peft_and_back(tmp_path):
    from peft import PeftModel
    cfg = dict(block_size=8, n_butterfly_factor=1)
    q = _q(cfg)
    model = _ours(cfg, q)
    x = torch.randn(3, D_IN, dtype=torch.float64)
    with torch.no_grad():
        want = model(x)
    variants.save_peft(model, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = PeftModel.from_pretrained(_toy(), tmp_path).eval()
    with torch.no_grad():
        assert (pm(x) - want).abs().max() < EXACT * want.abs().max()  # boft_s absent: peft's init 1
    back = variants.load_peft(_toy(), tmp_path)
    assert torch.allclose(back.lin.adapter_Q, q, atol=1e-15, rtol=0)


def test_a_peft_checkpoint_with_its_output_scale_is_refused(tmp_path):
    from peft import BOFTConfig, get_peft_model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = get_peft_model(_toy(), BOFTConfig(boft_block_size=8, target_modules=["lin"]))
    pm.save_pretrained(tmp_path)
    with pytest.raises(KeyError, match="boft_s"):
        variants.load_peft(_toy(), tmp_path)


def test_init_claims_hold_for_our_init_and_fail_for_a_wrong_one():
    cfg = dict(block_size=8, n_butterfly_factor=2)
    model = _ours(cfg, None)
    w, b = model.lin.weight.detach(), model.lin.bias.detach()
    (claim,) = paper.init_claims(w, b, {"Q": model.lin.adapter_Q.detach()}, cfg)
    assert claim.kind == "exact" and claim.value == 0.0
    x = torch.randn(3, D_IN, dtype=torch.float64)
    assert torch.equal(model(x), _toy()(x))  # R = I exactly
    (bad,) = paper.init_claims(w, b, {"Q": _q(cfg, 0.01)}, cfg)
    assert bad.value > 0


@pytest.mark.parametrize("fields, field", [({"block_size": 1}, "block_size"),
                                           ({"block_size": 0, "block_num": 0}, "block_size"),
                                           ({"block_size": 8, "block_num": 4}, "block_size"),
                                           ({"n_butterfly_factor": 0}, "n_butterfly_factor")])
def test_bad_configs_are_refused_naming_the_field(fields, field):
    with pytest.raises(ValueError, match=field):
        variants.config("boft", **fields)


@pytest.mark.parametrize("fields, field", [({"block_size": 5}, "block_size"), ({"block_size": 0, "block_num": 5}, "block_num"),
                                           ({"block_size": 8, "n_butterfly_factor": 4}, "n_butterfly_factor"),
                                           ({"block_size": 3, "n_butterfly_factor": 2}, "n_butterfly_factor")])
def test_a_shape_that_does_not_fit_is_refused_at_attach(fields, field):
    with pytest.raises(ValueError, match=field):
        variants.attach(_toy(), variants.config("boft", target_names=("lin",), **fields))
