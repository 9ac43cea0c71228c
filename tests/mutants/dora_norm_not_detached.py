"""DoRA keeping the weight norm in the graph, where the paper (§4.3) and peft detach it."""
from audit.mutants import Mutant
from variants.dora import Dora


class DoraAttachedNorm(Dora):
    def forward(self, layer, x, y):
        a, b, m = layer.adapter_A, layer.adapter_B, layer.adapter_m
        s = self.scale(self.cfg, layer.adapter_rank)
        n = (layer.weight.to(a.dtype) + s * (b @ a)).norm(dim=1)
        mag = m / n
        base = y if layer.bias is None else y - layer.bias
        delta = (mag - 1) * base.to(a.dtype) + mag * (s * ((x.to(a.dtype) @ a.t()) @ b.t()))
        return y + delta.to(y.dtype)


MUTANT = Mutant("dora_norm_not_detached", "dora", "a term kept in the graph that the reference detaches",
                "‖W + sBA‖_row not detached: A and B get the fully differentiated gradient",
                ("paper_parity", "peft_parity"), DoraAttachedNorm)
