"""DoRA dividing by the norm of the frozen W alone (as if it were cached at attach), not ‖W + sBA‖."""
from audit.mutants import Mutant
from variants.dora import Dora
from variants.lora import add_lowrank


class DoraStaleNorm(Dora):
    def forward(self, layer, x, y):
        a, b, m = layer.adapter_A, layer.adapter_B, layer.adapter_m
        s = self.scale(self.cfg, layer.adapter_rank)
        n = self.weight(layer).to(a.dtype).norm(dim=1).detach()  # the bug: ‖W‖, blind to s·BA
        mag = m / n
        h = (x.to(a.dtype) @ a.t()) * s
        base = (y if layer.bias is None else y - layer.bias).to(a.dtype)
        v = add_lowrank(base, h, b)
        return y + (v * mag - base).to(y.dtype)


MUTANT = Mutant("dora_stale_norm", "dora", "a normaliser computed once and never updated",
                "divides by ‖W‖_row instead of ‖W + sBA‖_row: exact at init (B = 0), so identity and init pass; once "
                "B moves the direction is no longer unit-norm and the output is off", ("paper_parity",), DoraStaleNorm)
