"""SHiRA whose forward uses positions it keeps on the layer object, re-drawn from the seed when they are missing
(a loaded adapter): the stored positions are saved, but a reload draws the mask again from a fresh generator,
not the running one that drew it at attach, so the trained values land on other weights."""
import torch

from audit.mutants import Mutant
from variants.shira import Shira, random_positions, sparse_delta


class ShiraRedrawnOnLoad(Shira):
    def init(self, layer, cfg, gen):
        super().init(layer, cfg, gen)
        layer.__dict__["_mask"] = layer.adapter_indices.clone()

    def forward(self, layer, x, y):
        mask = layer.__dict__.get("_mask")
        if mask is None:  # "regenerable from the seed"
            d_out, d_in = self.weight(layer).shape
            mask = random_positions(d_in, d_out, layer.adapter_values.shape[0],
                                    torch.Generator().manual_seed(self.cfg.seed)).to(x.device)
            layer.__dict__["_mask"] = mask
        return y + sparse_delta(x, mask, layer.adapter_values, y.shape[-1]).to(y.dtype)


MUTANT = Mutant("shira_mask_regenerated_on_load", "shira", "a mask regenerated at load",
                "the mask is re-drawn from the seed when a checkpoint is loaded (a fresh generator, not the stream "
                "that drew it), so a reloaded adapter puts its trained values at other weights", ("save_load",),
                ShiraRedrawnOnLoad)
