"""VB-LoRA assembling B's columns from the (d_out/b, r, b) sub-vectors by a plain reshape (no transpose of the
rank and length axes): each column of B is no longer the concatenation of its own sub-vectors."""
from audit.mutants import Mutant
from variants import vblora
from variants.lora import add_lowrank


class VBLoRABTilesUnpermuted(vblora.VBLoRA):
    def forward(self, layer, x, y):
        la, lb, bank, k = layer.adapter_logits_A, layer.adapter_logits_B, layer.adapter_bank, self.cfg.topk
        r = la.shape[0]
        a = vblora.compose(la, bank, k).reshape(r, -1)
        b = vblora.compose(lb, bank, k).reshape(-1, r)  # should be .permute(0, 2, 1) first
        return add_lowrank(y, x.to(a.dtype) @ a.t(), b, layer)


MUTANT = Mutant("vblora_b_tiles_unpermuted", "vblora", "a reshape in the wrong memory order",
                "B's sub-vectors concatenated in the wrong order (a reshape of (d_out/b, r, b) to (d_out, r) without "
                "moving the rank axis last): shapes and init law intact, ΔW wrong", ("paper_parity",),
                VBLoRABTilesUnpermuted)
