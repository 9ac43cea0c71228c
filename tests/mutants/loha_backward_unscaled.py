"""LoHa whose custom backward forgets the scale: ∂L/∂P = G ⊙ Q instead of s·G ⊙ Q (and likewise for Q).

The forward (which multiplies by s) stays exact, so identity, init, outputs and logits all agree; only
the gradients are off by the factor 1/s, and Adam's step is nearly scale-invariant, so training looks
normal. It lives in the materialised-ΔW path (every training forward), audited under the main config
(s = 2) on the toy MLP; at the defaults (s = 1) it would hide.
"""
from torch.autograd.function import once_differentiable

from audit.mutants import Mutant
from variants.loha import HadamardDelta, Loha


class UnscaledBackward(HadamardDelta):
    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        w1_a, w1_b, w2_a, w2_b = ctx.saved_tensors
        gp = grad * (w2_a @ w2_b)  # the scale s is never applied to the incoming gradient
        gq = grad * (w1_a @ w1_b)
        return gp @ w1_b.t(), w1_a.t() @ gp, gq @ w2_b.t(), w2_a.t() @ gq, None


class LohaUnscaledBackward(Loha):
    delta = UnscaledBackward


MUTANT = Mutant("loha_backward_unscaled", "loha", "custom backward drops the scale (forward exact)",
                "HadamardDelta.backward returns ∂L/∂factors without the factor s = alpha/r: outputs exact, "
                "gradients off by 1/s (s = 1 at the defaults hides it)",
                ("paper_parity",), LohaUnscaledBackward, models=("mlp",))
