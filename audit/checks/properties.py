"""properties: the paper's invariants, measured on the subject's code (not on the formula).

Each card Invariant gets a Probe per adapted layer and returns a number; the worst layer is
compared with the card's tolerance. The probe reads the subject's adapted layer's effective affine
map by feeding it the identity matrix (and, for input-side maps, swapping in identity blocks as the
base weight), so the property is checked on what the code computes, whatever its layout.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from ..cell import Cell, NotApplicable
from ..choices import formula_cfg
from ..state import modules_named, perturb
from ..subjects import Adapted, canonical_weight


@dataclass
class Probe:
    name: str
    adapted: Adapted
    cfg: dict
    original_weight: torch.Tensor  # the untouched base weight, float64

    @property
    def module(self) -> torch.nn.Module:
        return self.adapted.layers[self.name]

    @cached_property
    def state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().to(torch.float64) for k, v in self.adapted.tensors(self.name).items()}

    @cached_property
    def weight(self) -> torch.Tensor:
        """The layer's live base weight (W_res for PiSSA/AntiPaSTO), float64, canonical layout."""
        return self.adapted.weight(self.name).detach().to(torch.float64)

    def _response(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(y(I) − y(0), y(0)) of the adapted layer, float64."""
        w = self.adapted.weight(self.name)
        d_in = self.adapted.dims(self.name)[0]
        with torch.no_grad():
            eye = torch.eye(d_in, dtype=w.dtype, device=w.device)
            y_eye = self.module(eye).to(torch.float64)
            y0 = self.module(torch.zeros(1, d_in, dtype=w.dtype, device=w.device)).to(torch.float64)
        return y_eye - y0, y0[0]

    @cached_property
    def effective(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(W_eff, b_eff) of the subject's adapted layer: y(I) − y(0) and y(0), float64."""
        delta, y0 = self._response()
        return delta.t(), y0

    @cached_property
    def input_map(self) -> torch.Tensor:
        """For methods that transform the layer input (y = x M Wᵀ + b): M (d_in × d_in), read off the
        subject's layer by setting its live base weight to blocks of rows of the identity (and its
        bias to zero, so nothing is added to M's entries before they are read), d_out columns of M at
        a time, then restoring both."""
        w, b = self.adapted.weight(self.name), self.adapted.bias(self.name)
        d_out, d_in = w.shape
        saved, saved_b = w.detach().clone(), None if b is None else b.detach().clone()
        cols = []
        try:
            if b is not None:
                with torch.no_grad():
                    b.zero_()
            for start in range(0, d_in, d_out):
                block = torch.zeros(d_out, d_in, dtype=w.dtype, device=w.device)
                idx = torch.arange(start, min(start + d_out, d_in))
                block[torch.arange(len(idx)), idx] = 1
                with torch.no_grad():
                    w.copy_(block)
                cols.append(self._response()[0][:, :len(idx)])
        finally:
            with torch.no_grad():
                w.copy_(saved)
                if b is not None:
                    b.copy_(saved_b)
        return torch.cat(cols, dim=1)


def run(cell: Cell) -> None:
    invs = cell.card.invariants
    if not invs:
        raise NotApplicable("the paper states no invariant beyond the merged formula (covered by paper_parity)")
    with cell.shared() as adapted:
        _run(cell, adapted)


def _run(cell: Cell, adapted) -> None:
    invs = cell.card.invariants
    originals = {n: canonical_weight(m).detach().to(torch.float64).clone()
                 for n, m in modules_named(cell.base(), adapted.names).items()}

    cfg, choice = formula_cfg(cell, adapted)  # an invariant may depend on the subject's open choices

    def measure(inv) -> tuple[float, str]:
        probes = [Probe(n, adapted, cfg, originals[n]) for n in adapted.names]
        return max((float(inv.measure(p)), p.name) for p in probes)

    done_perturb = False
    for inv in sorted(invs, key=lambda i: i.at != "init"):
        if inv.at == "perturbed" and not done_perturb:
            perturb(adapted, cell.seed, cell.card.perturb)
            done_perturb = True
        val, where = measure(inv)
        tol = inv.tolerance.get(cell.dtype_name, inv.tolerance.get("*"))
        cell.row(inv.name, val, tol, reference="paper", choice=choice,
                 message=f"{inv.description} (at {inv.at} state; worst layer {where})")

