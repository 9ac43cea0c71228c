"""AdaLoRA (Zhang et al., arXiv 2303.10512, §3.1 eq. 3): SVD-form update with importance-based rank allocation.

    W = W⁽⁰⁾ + P Λ Q,   y = x Wᵀ + b + s · x (Q ⊙ λ)ᵀ Pᵀ,   s = alpha / r   (r = init_r)

P (d_out, r) = B, Λ = diag(λ) with λ = E (r, 1), Q (r, d_in) = A (peft's names and layouts). The scale
is the authors' loralib / peft one, alpha / ranknum with ranknum = init_r fixed for the whole run (peft
adds 1e-5 to the denominator; we do not). Init (§3.1; loralib/peft's values): λ = 0, P, Q ~ N(0, 0.02²),
so the layer is the base exactly at init and P, Q get an exactly-zero gradient at step 0 (only λ moves).

The rest of the method lives outside the forward: ``orthogonality_regularizer`` (§3.1 eq. 4, the paper's
squared Frobenius form, added to the loss with weight ``orth_reg_weight``) and ``RankAllocator``
(§3.2 eq. 5-10: sensitivity, its EMAs and uncertainty, triplet scores; §3.3 eq. 12: cubic budget; λ of the
least important triplets set to 0), which the training loop calls after ``backward()``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ._base import ParamSpec, Variant
from ._config import AdapterConfig
from ._peft_format import PeftFormat, conv1d_targets, peft_type_is
from ._state import state_of
from ._tensor_init import normal_
from .lora import add_lowrank

TARGET_R = 8  # peft's AdaLoraConfig default target_r (with its default init_r = 12)
INIT_STD = 0.02  # loralib / peft: nn.init.normal_(std=0.02) for P and Q (the paper: "random Gaussian")


@dataclass(frozen=True)
class AdaloraConfig(AdapterConfig):
    """r is the initial rank (peft's init_r) and sets s = alpha / r; target_r the average final rank
    (budget b(T) = target_r · #layers); tinit, tfinal, deltaT, total_step the budget schedule (§3.3);
    beta1, beta2 the EMAs of the sensitivity and its uncertainty (§3.2); orth_reg_weight γ of eq. 4.
    total_step is needed only by ``RankAllocator``."""

    variant = "adalora"
    r: int = 12
    target_r: int | None = None  # None: min(TARGET_R, r), peft's default 8 where it fits under r
    tinit: int = 0
    tfinal: int = 0
    deltaT: int = 1
    beta1: float = 0.85
    beta2: float = 0.85
    orth_reg_weight: float = 0.5
    total_step: int | None = None

    def check(self):
        if self.alpha <= 0:
            raise self.fail("alpha", f"must be > 0 (s = alpha / r), got {self.alpha}")
        if self.target_r is None:  # the budget only shrinks: peft's default follows a smaller r
            object.__setattr__(self, "target_r", min(TARGET_R, self.r))
        if not 0 < self.target_r <= self.r:
            raise self.fail("target_r", f"must be in [1, r = {self.r}] (the budget only shrinks), got {self.target_r}")
        for name in ("beta1", "beta2"):
            v = getattr(self, name)
            if not 0 < v < 1:
                raise self.fail(name, f"must be in (0, 1) (an EMA factor), got {v}")
        if self.orth_reg_weight < 0:
            raise self.fail("orth_reg_weight", f"must be >= 0, got {self.orth_reg_weight}")
        if self.tinit < 0 or self.tfinal < 0:
            raise self.fail("tinit" if self.tinit < 0 else "tfinal", "must be >= 0")
        if self.deltaT < 1:
            raise self.fail("deltaT", f"must be >= 1 (steps between two allocations), got {self.deltaT}")
        if self.total_step is not None:
            if self.total_step <= 0:
                raise self.fail("total_step", f"must be > 0, got {self.total_step}")
            if self.tinit >= self.total_step - self.tfinal:
                raise self.fail("tinit", f"tinit={self.tinit} >= total_step - tfinal = {self.total_step - self.tfinal}: "
                                         "the schedule leaves no budget phase (§3.3)")


_ADALORA_SCHEDULE = ("target_r", "tinit", "tfinal", "deltaT", "beta1", "beta2", "orth_reg_weight", "total_step")


PEFT_EPS = 1e-5  # peft's AdaLoRA divides by ranknum + 1e-5


def _alpha_from_peft(lora_alpha: float, r: int) -> float:
    """Our alpha for peft's lora_alpha: the same scale; rounded to 12 digits so that a value we wrote
    comes back as it was (the rounding is 1e-12 of the scale, far below any adapter dtype's)."""
    return float(f"{lora_alpha * r / (r + PEFT_EPS):.12g}")


def _peft_adalora_config(cfg, st) -> dict:
    if cfg.total_step is None:
        raise ValueError("peft's AdaLoraConfig requires total_step (the budget schedule's length): set total_step "
                         "in the config before variants.save_peft")
    return {"init_r": cfg.r, "lora_alpha": cfg.alpha * (cfg.r + PEFT_EPS) / cfg.r, "lora_dropout": 0.0, "bias": "none", "init_lora_weights": True,
            "fan_in_fan_out": conv1d_targets(st), **{k: getattr(cfg, k) for k in _ADALORA_SCHEDULE}}


class Adalora(Variant):
    name = "adalora"
    Config = AdaloraConfig
    # peft's AdaLoraConfig, lora_A (r, d_in) / lora_E (r, 1) / lora_B (d_out, r) as ours. Its scale is
    # lora_alpha / (ranknum + 1e-5), ranknum = init_r, ours alpha / r: lora_alpha = alpha·(r + 1e-5)/r both ways.
    # A pruned checkpoint (rank_pattern set) is refused: peft rescales each layer by its kept rank on load.
    peft_format = PeftFormat(
        peft_type="ADALORA", tensors={"A": "lora_A", "E": "lora_E", "B": "lora_B"}, claims=peft_type_is("ADALORA"),
        to_config=_peft_adalora_config,
        from_config=lambda pcfg, shapes: {"r": int(pcfg["init_r"]),
                                          "alpha": _alpha_from_peft(float(pcfg["lora_alpha"]), int(pcfg["init_r"])),
                                          **{k: pcfg[k] for k in _ADALORA_SCHEDULE if pcfg.get(k) is not None}},
        reads=("init_r", "lora_alpha") + _ADALORA_SCHEDULE, fixed={"bias": ("none",), "rank_pattern": (None, {})},
        inert=("r", "init_lora_weights", "qalora_group_size", "loftq_config", "eva_config", "corda_config"),
        training_only=("lora_dropout",), conv1d=None)

    def param_specs(self, d_in, d_out, r, cfg):
        return {"A": ParamSpec((r, d_in)), "E": ParamSpec((r, 1)), "B": ParamSpec((d_out, r))}

    @staticmethod
    def scale(cfg, r):
        return cfg.alpha / cfg.r  # ranknum = init_r (loralib/peft), whatever λ the allocator has masked

    def check_layer(self, name, layer, d_in, d_out, cfg):
        if cfg.r > min(d_in, d_out):  # P (d_out, r), Q (r, d_in) cannot have more orthonormal columns/rows
            raise self.rank_error(cfg, name, min(d_in, d_out), "min(d_in, d_out): P and Q cannot be orthogonal")

    def init(self, layer, cfg, gen):
        normal_(layer.adapter_A, INIT_STD, gen)
        normal_(layer.adapter_B, INIT_STD, gen)
        layer.adapter_E.zero_()

    def forward(self, layer, x, y):
        a, e = layer.adapter_A, layer.adapter_E
        h = (x.to(a.dtype) @ a.t()) * (e.t() * self.scale(self.cfg, layer.adapter_rank))
        return add_lowrank(y, h, layer.adapter_B, layer)


# -- the orthogonality regulariser (§3.1 eq. 4) -----------------------------------------------------------

def orthogonality_regularizer(model: nn.Module) -> torch.Tensor:
    """Σ over adapted layers of R(P, Q) = ‖PᵀP − I‖²_F + ‖QQᵀ − I‖²_F (§3.1 eq. 4), in the adapter dtype.

    peft (and loralib) instead add the mean over matrices of the non-squared norm ‖·‖_F."""
    total = None
    for layer in state_of(model).targets.values():
        p, q = layer.adapter_B, layer.adapter_A
        eye = torch.eye(p.shape[1], dtype=p.dtype, device=p.device)
        term = (p.t() @ p - eye).pow(2).sum() + (q @ q.t() - eye).pow(2).sum()
        total = term if total is None else total + term
    return total


def regularized_loss(model: nn.Module, loss: torch.Tensor) -> torch.Tensor:
    """C + γ Σ_k R(P_k, Q_k) (§3.1), γ = the attached config's orth_reg_weight."""
    return loss + state_of(model).cfg.orth_reg_weight * orthogonality_regularizer(model)


# -- importance-based rank allocation (§3.2-3.3) -------------------------------------------------------------

def budget(step: int, init_bgt: int, target_bgt: int, tinit: int, tfinal: int, total_step: int) -> int:
    """b(t) of §3.3 eq. 12: b(0) up to tinit, then the cubic decrease to b(T) at total_step − tfinal, then b(T).

    Rounded down to an integer as loralib/peft do."""
    if step <= tinit:
        return init_bgt
    if step > total_step - tfinal:
        return target_bgt
    frac = 1 - (step - tinit) / (total_step - tfinal - tinit)
    return int((init_bgt - target_bgt) * frac ** 3 + target_bgt)


class RankAllocator:
    """The paper's budget allocation over the adapted layers of ``model`` (§3.2-3.3).

    Call ``update_and_allocate(step)`` after ``backward()`` (gradients present) and before ``zero_grad()``:
    - while step < total_step − tfinal, each entry w of P, λ, Q updates I = |w·∂L/∂w| (eq. 5),
      Ī ← β1 Ī + (1 − β1) I (eq. 8), Ū ← β2 Ū + (1 − β2)|I − Ī| (eq. 9), s = Ī·Ū (eq. 10);
    - in the budget phase (tinit < step < total_step − tfinal, every deltaT steps) and once at
      step = total_step − tfinal, the triplet scores S_k = s(λ_k) + mean_j s(P_jk) + mean_j s(Q_kj) (eq. 7)
      of every layer are ranked together and λ of all but the top b(t) (eq. 12) is set to 0 (eq. 6);
    - afterwards the final mask is applied again at every call (the optimiser may revive a masked λ).
    Returns the budget b(t) and the keep-mask {layer: bool (r,)} when a mask was computed, else None.
    """

    def __init__(self, model: nn.Module, total_step: int | None = None):
        st = state_of(model)
        if not isinstance(st.cfg, AdaloraConfig):
            raise TypeError(f"RankAllocator needs an AdaLoRA adapter, the model has {st.variant.name!r}")
        self.cfg, self.layers = st.cfg, dict(st.targets)
        self.total_step = total_step if total_step is not None else self.cfg.total_step
        if self.total_step is None or self.total_step <= 0:
            raise ValueError("AdaloraConfig.total_step: the budget schedule needs total_step > 0 "
                             "(in the config or as RankAllocator(total_step=...))")
        if self.cfg.tinit >= self.total_step - self.cfg.tfinal:
            raise ValueError(f"AdaloraConfig.tinit: tinit={self.cfg.tinit} >= total_step - tfinal: no budget phase")
        self.init_bgt = sum(m.adapter_A.shape[0] for m in self.layers.values())
        self.target_bgt = self.cfg.target_r * len(self.layers)
        self.avg: dict[tuple[str, str], torch.Tensor] = {}
        self.unc: dict[tuple[str, str], torch.Tensor] = {}
        self.final_mask: dict[str, torch.Tensor] | None = None

    def budget(self, step: int) -> int:
        c = self.cfg
        return budget(step, self.init_bgt, self.target_bgt, c.tinit, c.tfinal, self.total_step)

    @torch.no_grad()
    def update_importance(self) -> None:
        """Eq. 5, 8, 9 for every entry of A (Q), E (λ), B (P) of every layer."""
        b1, b2 = self.cfg.beta1, self.cfg.beta2
        for n, layer in self.layers.items():
            for k in ("A", "E", "B"):
                p = getattr(layer, "adapter_" + k)
                if p.grad is None:
                    raise RuntimeError(f"RankAllocator: {n}.adapter_{k} has no gradient; call update_and_allocate "
                                       "after backward() and before zero_grad()")
                sens = (p * p.grad).abs()
                avg = self.avg.get((n, k), torch.zeros_like(p))
                unc = self.unc.get((n, k), torch.zeros_like(p))
                avg = b1 * avg + (1 - b1) * sens
                self.unc[(n, k)] = b2 * unc + (1 - b2) * (sens - avg).abs()
                self.avg[(n, k)] = avg

    def scores(self) -> dict[str, torch.Tensor]:
        """{layer: S (r,)} the triplet scores of eq. 7 from the smoothed s = Ī·Ū of eq. 10."""
        s = {key: self.avg[key] * self.unc[key] for key in self.avg}
        return {n: s[(n, "E")].reshape(-1) + s[(n, "B")].mean(dim=0) + s[(n, "A")].mean(dim=1)
                for n in self.layers}

    @torch.no_grad()
    def mask_to_budget(self, b: int) -> dict[str, torch.Tensor]:
        """Keep λ of the top-b triplets over all layers (eq. 6), zero the rest; returns the keep masks."""
        scores = self.scores()
        flat = torch.cat([scores[n] for n in self.layers])
        keep = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
        if b > 0:
            keep[torch.topk(flat, min(b, flat.numel())).indices] = True
        masks, start = {}, 0
        for n, layer in self.layers.items():
            r = scores[n].numel()
            masks[n] = keep[start:start + r]
            start += r
            layer.adapter_E.masked_fill_(~masks[n].unsqueeze(1), 0.0)
        return masks

    @torch.no_grad()
    def apply_mask(self, masks: dict[str, torch.Tensor]) -> None:
        for n, layer in self.layers.items():
            layer.adapter_E.masked_fill_(~masks[n].unsqueeze(1), 0.0)

    def update_and_allocate(self, step: int):
        c = self.cfg
        end = self.total_step - c.tfinal
        if step > end:
            if self.final_mask is not None:
                self.apply_mask(self.final_mask)
            return self.target_bgt, None
        if step < end:
            self.update_importance()
        b = self.budget(step)
        if step == end or (step > c.tinit and step % c.deltaT == 0):
            masks = self.mask_to_budget(b)
            if step == end:
                self.final_mask = masks
            return b, masks
        return b, None
