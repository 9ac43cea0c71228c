"""AdaLoRA paper formula (float64): SVD-form update, its orthogonality regulariser and its budget schedule."""

from __future__ import annotations

import torch

from ._common import InitClaim, f64, linear, normal_pit

EQUATION = "W = W⁽⁰⁾ + s·P Λ Q,  Λ = diag(λ),  s = α/r (r = init_r);  λ = 0 at init;  R(P,Q) = ‖PᵀP − I‖²_F + ‖QQᵀ − I‖²_F"
CITATION = (
    "Zhang et al., AdaLoRA, arXiv:2303.10512, §3.1 eq. (3) (W = W⁽⁰⁾ + PΛQ, Λ = 0 and P, Q Gaussian at init) and "
    "eq. (4) (regulariser R(P, Q), squared Frobenius norms); §3.2 eq. (5)-(10) (importance), §3.3 eq. (12) (budget); "
    "the scale α/r with r the initial rank is the authors' loralib code (ranknum), the paper writes none"
)

INIT_STD = 0.02  # loralib / peft draw P and Q from N(0, 0.02²); the paper says "random Gaussian"


def scaling(cfg: dict) -> float:
    """s = alpha / r with r the initial rank (loralib's ranknum; fixed while λ is masked)."""
    r, alpha = int(cfg["r"]), float(cfg["alpha"])
    if r <= 0:
        raise ValueError(f"r must be positive, got {r}")
    return alpha / r


def delta(state: dict, cfg: dict) -> torch.Tensor:
    """ΔW = s·P diag(λ) Q = s·B diag(E) A (arXiv:2303.10512 §3.1 eq. 3)."""
    P, lam, Q = f64(state["B"]), f64(state["E"]).reshape(-1), f64(state["A"])
    return scaling(cfg) * ((P * lam) @ Q)


def merged(W: torch.Tensor, b: torch.Tensor | None, state: dict, cfg: dict):
    """W_eff = W + s·P Λ Q, b_eff = b (§3.1 eq. 3). state: A = Q (r, d_in), E = λ (r, 1), B = P (d_out, r)."""
    return f64(W) + delta(state, cfg), f64(b)


def forward(x, W, b, state, cfg):
    """y = x W_effᵀ + b_eff in float64."""
    return linear(x, *merged(W, b, state, cfg))


def layout(d_in: int, d_out: int, cfg: dict) -> dict[str, tuple]:
    """The canonical tensors this formula reads and their shapes (references/STATE_LAYOUT.md): A = Q (r, d_in), E = λ (r, 1), B = P (d_out, r)."""
    r = int(cfg["r"])
    return {"A": (r, d_in), "E": (r, 1), "B": (d_out, r)}


def orthogonality_regularizer(P: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
    """R(P, Q) = ‖PᵀP − I‖²_F + ‖QQᵀ − I‖²_F of one layer (§3.1 eq. 4); P = B (d_out, r), Q = A (r, d_in)."""
    P, Q = f64(P), f64(Q)
    eye = torch.eye(P.shape[1], dtype=P.dtype, device=P.device)
    return ((P.T @ P - eye) ** 2).sum() + ((Q @ Q.T - eye) ** 2).sum()


def peft_orthogonality_term(Ps: list, Qs: list) -> torch.Tensor:
    """What peft/loralib add instead (peft/tuners/adalora/model.py:229-257): the mean over all A and B matrices
    of the NON-squared ‖cov − I‖_F (cov = AAᵀ, BᵀB); for comparison with eq. 4 only."""
    terms = [torch.linalg.matrix_norm(f64(Q) @ f64(Q).T - torch.eye(Q.shape[0], dtype=torch.float64)) for Q in Qs]
    terms += [torch.linalg.matrix_norm(f64(P).T @ f64(P) - torch.eye(P.shape[1], dtype=torch.float64)) for P in Ps]
    return torch.stack(terms).mean()


def budget(step: int, init_bgt: int, target_bgt: int, tinit: int, tfinal: int, total_step: int) -> float:
    """b(t) of §3.3 eq. 12 (unrounded): b(0) for t ≤ t_i, b(T) + (b(0) − b(T))(1 − (t − t_i)/(T − t_i − t_f))³
    in between, b(T) for t > T − t_f."""
    if step <= tinit:
        return float(init_bgt)
    if step > total_step - tfinal:
        return float(target_bgt)
    return target_bgt + (init_bgt - target_bgt) * (1 - (step - tinit) / (total_step - tfinal - tinit)) ** 3


# -- init statements (references/paper/_common.py "init statements") ----------------------------------

def init_claims(W, b, state, cfg, inputs=None) -> list[InitClaim]:
    """λ = 0 exactly (so ΔW = 0 at init) and P, Q ~ N(0, 0.02²) (§3.1: "Λ initialized with zero, P and Q
    random Gaussian"; the std is loralib's and peft's)."""
    E = state["E"].detach()
    return [
        InitClaim("E_max_abs", "exact", "§3.1: λ = 0 exactly (Λ = 0, so ΔW = PΛQ = 0)", value=float(E.abs().max())),
        InitClaim("A_gaussian", "distribution", f"§3.1: Q = A ~ N(0, {INIT_STD}²) (loralib/peft's std)",
                  pit=normal_pit(state["A"], 0.0, INIT_STD)),
        InitClaim("B_gaussian", "distribution", f"§3.1: P = B ~ N(0, {INIT_STD}²) (loralib/peft's std)",
                  pit=normal_pit(state["B"], 0.0, INIT_STD)),
    ]
