"""properties: the paper's invariants, measured on OUR implementation (not on the formula).

Each card Invariant gets a Probe per adapted layer and returns a number; the worst layer is
compared with the card's tolerance. The probe reads our hooked layer's effective affine map by
feeding it the identity matrix, so the property is checked on what the code computes.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

import variants

from ..cell import Cell, NotApplicable
from ..state import perturb


@dataclass
class Probe:
    name: str
    module: torch.nn.Module
    cfg: dict
    original_weight: torch.Tensor  # the untouched base weight, float64
    variant: variants.Variant

    @cached_property
    def state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().to(torch.float64) for k, v in variants.adapter_tensors(self.module).items()}

    @cached_property
    def weight(self) -> torch.Tensor:
        """The layer's live base weight (W_res for PiSSA/AntiPaSTO), float64."""
        return self.module.weight.detach().to(torch.float64)

    @cached_property
    def effective(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(W_eff, b_eff) of our hooked layer: y(I) − y(0) and y(0), float64."""
        m = self.module
        dt = m.weight.dtype
        with torch.no_grad():
            eye = torch.eye(m.in_features, dtype=dt, device=m.weight.device)
            y_eye = m(eye).to(torch.float64)
            y0 = m(torch.zeros(1, m.in_features, dtype=dt, device=m.weight.device)).to(torch.float64)
        return (y_eye - y0).t(), y0[0]

    @cached_property
    def input_map(self) -> torch.Tensor:
        """For input-hook variants: the matrix M with x' = x M, from our forward_input."""
        m = self.module
        with torch.no_grad():
            eye = torch.eye(m.in_features, dtype=m.weight.dtype, device=m.weight.device)
            return self.variant.forward_input(m, eye).to(torch.float64)


def run(cell: Cell) -> None:
    invs = cell.card.invariants
    if not invs:
        raise NotApplicable("the paper states no invariant beyond the merged formula (covered by paper_parity)")
    base = cell.fresh_model()
    originals = {n: m.weight.detach().to(torch.float64).clone() for n, m in base.named_modules() if hasattr(m, "weight")}
    model = cell.attach(base)
    st = variants.state_of(model)
    cfg = cell.cfg().to_dict()

    def measure(inv) -> tuple[float, str]:
        probes = [Probe(n, m, cfg, originals[n], st.variant) for n, m in st.targets.items()]
        vals = [(float(inv.measure(p)), p.name) for p in probes]
        return max(vals)

    done_perturb = False
    for inv in sorted(invs, key=lambda i: i.at != "init"):
        if inv.at == "perturbed" and not done_perturb:
            perturb(model, cell.seed, cell.card.perturb)
            done_perturb = True
        val, where = measure(inv)
        tol = inv.tolerance.get(cell.dtype_name, inv.tolerance.get("*"))
        cell.row(inv.name, val, tol, reference="paper",
                 message=f"{inv.description} (at {inv.at} state; worst layer {where})")
