"""RoAd pairing neighbouring outputs (j, j+1) where the layout pairs j with j + g/2."""
import torch

from audit.mutants import Mutant
from variants.road import Road, road_columns


class RoadAdjacent(Road):
    def forward(self, layer, x, y):
        theta, alpha = layer.adapter_theta, layer.adapter_alpha
        c, s = road_columns(self.cfg.road_variant, self.cfg.group_size, theta, alpha)
        h = y.to(theta.dtype)
        pairs = h.reshape(*h.shape[:-1], -1, 2)
        swapped = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).reshape(h.shape)
        return (h * c + swapped * s).to(y.dtype)


MUTANT = Mutant("road_adjacent_pairing", "road", "ROAD's output pairing wrong",
                "outputs paired (j, j+1) instead of (j, j + g/2)", ("paper_parity",), RoadAdjacent)
