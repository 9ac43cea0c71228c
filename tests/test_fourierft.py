"""FourierFT (arXiv 2405.03003): our variant, the paper formula, the peft bridge and the init statement."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import variants
from references import paper
from references import peft_bridge as bridge
from variants.fourierft import delta_weight, entries

ref = paper.get("fourierft")


class Toy(nn.Module):
    """Two layers of odd, non-square sizes (9→14→5): rows and columns, odd and even lengths, both differ."""

    def __init__(self, conv1d: bool = False):
        super().__init__()
        if conv1d:
            from transformers.pytorch_utils import Conv1D
            self.up, self.down = Conv1D(14, 9), Conv1D(5, 14)  # Conv1D(nf = d_out, nx = d_in)
            for m in (self.up, self.down):
                nn.init.normal_(m.weight, std=0.2)
                nn.init.normal_(m.bias, std=0.1)
        else:
            self.up, self.down = nn.Linear(9, 14), nn.Linear(14, 5)

    def forward(self, x):
        return self.down(self.up(x))


def _canonical_w(mod):
    return mod.weight.t() if type(mod).__name__ == "Conv1D" else mod.weight


def _attach(conv1d=False, **kw):
    torch.manual_seed(0)
    model = Toy(conv1d).double()
    cfg = variants.config("fourierft", **{"n_frequency": 30, "scaling": 20.0, "random_loc_seed": 4,
                                          "target_names": ("up", "down"), "dtype": "float64", **kw})
    variants.attach(model, cfg)
    return model, cfg


@pytest.mark.parametrize("conv1d", [False, True])
def test_forward_and_gradient_match_the_paper_formula(conv1d):
    model, cfg = _attach(conv1d)
    with torch.no_grad():
        for m in (model.up, model.down):
            m.adapter_spectrum.normal_(0, 1.0)
    x = torch.randn(7, 9, dtype=torch.float64)
    y = model.up(x)
    st = {"spectrum": model.up.adapter_spectrum}
    y_ref = ref.forward(x, _canonical_w(model.up).detach(), model.up.bias.detach(), st, cfg.to_dict())
    assert torch.allclose(y, y_ref, rtol=0, atol=1e-12)
    assert (y_ref - model.up.bias - x @ _canonical_w(model.up).t()).abs().max() > 1e-2  # non-identity
    g = torch.randn_like(y)
    got, = torch.autograd.grad((y * g).sum(), model.up.adapter_spectrum)
    c = model.up.adapter_spectrum.detach().clone().requires_grad_(True)
    want, = torch.autograd.grad((ref.forward(x, _canonical_w(model.up).detach(), model.up.bias.detach(),
                                             {"spectrum": c}, cfg.to_dict()) * g).sum(), c)
    assert torch.allclose(got, want, rtol=0, atol=1e-11)


@pytest.mark.parametrize("shape", [(14, 9), (5, 14), (8, 8), (6, 10), (1, 7)])
def test_delta_weight_is_the_real_part_of_the_normalised_inverse_dft(shape):
    """The irfft2-of-the-Hermitian-half route equals Re(ifft2(S)) · α, odd and even sizes alike."""
    d_out, d_in = shape
    n = min(20, d_out * d_in)
    c = torch.randn(n, dtype=torch.float64)
    e = entries(d_out, d_in, n, 11)
    s = torch.zeros(d_out, d_in, dtype=torch.float64).index_put((e[0], e[1]), c)
    want = 3.0 * torch.fft.ifft2(s).real
    assert torch.allclose(delta_weight(c, d_out, d_in, 11, 3.0), want, rtol=0, atol=1e-13)
    # the 1/(d_out·d_in) factor: one coefficient at the DC entry gives the constant c·α/(d_out·d_in)
    dc = torch.zeros(d_out, d_in, dtype=torch.float64)
    dc[0, 0] = 1.0
    assert torch.allclose(torch.fft.ifft2(dc).real, torch.full_like(dc, 1.0 / (d_out * d_in)))


def test_entries_are_pefts_draw():
    """Same seed, same entries as peft's FourierFTLayer.indices (redrawn, never saved)."""
    torch.manual_seed(0)
    base = Toy().float()
    cfg = {"n_frequency": 30, "scaling": 20.0, "random_loc_seed": 4, "init_weights": "zeros"}
    pm = bridge.build_peft_model(base, "fourierft", cfg, ["up", "down"],
                                 {n: {"spectrum": torch.zeros(30)} for n in ("up", "down")})
    for name, (d_out, d_in) in (("up", (14, 9)), ("down", (5, 14))):
        got = bridge.peft_layer(pm, name).indices["default"]
        assert torch.equal(got.cpu(), entries(d_out, d_in, 30, 4))
        assert torch.equal(ref.entry_matrix(d_out, d_in, 30, 4), entries(d_out, d_in, 30, 4))


@pytest.mark.parametrize("conv1d", [False, True])
def test_matches_peft_outputs_and_gradients(conv1d):
    model, cfg = _attach(conv1d, dtype="float32")
    model = model.float()
    with torch.no_grad():
        for m in (model.up, model.down):
            m.adapter_spectrum.normal_(0, 1.0)
    torch.manual_seed(0)
    base = Toy(conv1d).float()
    states = {n: {"spectrum": getattr(model, n).adapter_spectrum.detach().clone()} for n in ("up", "down")}
    pm = bridge.build_peft_model(base, "fourierft", cfg.to_dict(), ["up", "down"], states)
    x = torch.randn(6, 9)
    assert torch.allclose(model(x), pm(x), rtol=1e-5, atol=1e-6)
    model(x).square().sum().backward()
    pm(x).square().sum().backward()
    for n in ("up", "down"):
        g_peft = bridge.peft_layer(pm, n).fourierft_spectrum["default"].grad
        assert torch.allclose(getattr(model, n).adapter_spectrum.grad, g_peft, rtol=1e-4, atol=1e-5)


def test_init_statements():
    model, _ = _attach(init_weights="zeros")
    assert model.up.adapter_spectrum.abs().max() == 0
    x = torch.randn(3, 9, dtype=torch.float64)
    with variants.disabled(model):
        base = model(x)
    assert torch.equal(model(x), base)  # exact identity at c = 0
    model, _ = _attach(n_frequency=70)
    c = torch.cat([model.up.adapter_spectrum.detach(), model.down.adapter_spectrum.detach()])
    assert abs(float(c.mean())) < 0.3 and abs(float(c.std()) - 1.0) < 0.2  # N(0, 1), Algorithm 1
    claims = ref.init_claims(None, None, {"spectrum": c}, {"init_weights": "normal"})
    assert claims[0].kind == "distribution" and claims[0].pit.numel() == c.numel()


def test_refuses_more_coefficients_than_entries_naming_the_field():
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="n_frequency"):
        variants.attach(Toy(), variants.config("fourierft", n_frequency=71, target_names=("down",)))  # 5·14 = 70
    with pytest.raises(ValueError, match="n_frequency"):
        variants.config("fourierft", n_frequency=0)
    with pytest.raises(ValueError, match="init_weights"):
        variants.config("fourierft", init_weights="uniform")
    with pytest.raises(TypeError, match="r"):
        variants.config("fourierft", r=4)
