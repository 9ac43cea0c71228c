"""LoHa whose custom backward forgets the scale: ∂L/∂P = G ⊙ Q instead of s·G ⊙ Q (and likewise for Q).

The forward (which multiplies by s) stays exact, so identity, init, outputs and logits all agree; only
the gradients are off by the factor 1/s, and Adam's step is nearly scale-invariant, so training looks
normal. It lives in the materialised-ΔW path (ours uses it where r²(d_in + d_out) > d_in·d_out), audited
with s = 0.5 by the alpha4-r8 corner on the toy MLP.
"""
from torch.autograd.function import once_differentiable

from audit.mutants import Mutant
from variants.loha import HadamardDelta, Loha, factored, khatri_rao_factors
from variants.lora import add_lowrank


class UnscaledBackward(HadamardDelta):
    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        w1_a, w1_b, w2_a, w2_b = ctx.saved_tensors
        gp = grad * (w2_a @ w2_b)  # the scale s is never applied to the incoming gradient
        gq = grad * (w1_a @ w1_b)
        return gp @ w1_b.t(), w1_a.t() @ gp, gq @ w2_b.t(), w2_a.t() @ gq, None


class LohaUnscaledBackward(Loha):
    def forward(self, layer, x, y):
        w1_a, w1_b = layer.adapter_w1_a, layer.adapter_w1_b
        w2_a, w2_b = layer.adapter_w2_a, layer.adapter_w2_b
        s = self.scale(self.cfg, layer.adapter_rank)
        d_out, r = w1_a.shape
        xa = x.to(w1_a.dtype)
        if factored(w1_b.shape[1], d_out, r):
            u, v = khatri_rao_factors(w1_a, w1_b, w2_a, w2_b)
            return add_lowrank(y, xa @ (v * s).t(), u, layer)
        return add_lowrank(y, xa, UnscaledBackward.apply(w1_a, w1_b, w2_a, w2_b, s), layer)


MUTANT = Mutant("loha_backward_unscaled", "loha", "custom backward drops the scale (forward exact)",
                "HadamardDelta.backward returns ∂L/∂factors without the factor s = alpha/r: outputs exact, "
                "gradients off by 1/s (s = 1 at the defaults hides it)",
                ("paper_parity",), LohaUnscaledBackward, models=("mlp",), configs=("alpha4-r8",))
