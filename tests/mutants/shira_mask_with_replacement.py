"""SHiRA with the mask's positions drawn WITH replacement (torch.randint instead of a permutation): some of the
K positions repeat, so fewer than K distinct weights train, though the count of values looks right."""
import torch

from audit.mutants import Mutant
from variants.shira import Shira


class ShiraWithReplacement(Shira):
    def init(self, layer, cfg, gen):
        d_out, d_in = self.weight(layer).shape
        idx = layer.adapter_indices
        flat = torch.randint(0, d_in * d_out, (idx.shape[1],), generator=gen).sort().values
        idx.copy_(torch.stack((flat // d_in, flat % d_in)))
        layer.adapter_values.zero_()


MUTANT = Mutant("shira_mask_with_replacement", "shira", "repeated positions in a random mask",
                "the K mask positions are drawn with replacement: about K²/(2·d_in·d_out) of them repeat (identity, "
                "forward and gradients intact, fewer distinct weights train)", ("init", "properties"),
                ShiraWithReplacement)
