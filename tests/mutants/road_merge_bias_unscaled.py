"""RoAd whose merge rotates the bias without its scale α: W_eff right, b_eff = R(θ) b instead of α·R(θ) b
(peft's history: a bias merged without its scale). The forward is untouched, so only a merge shows it."""
import torch

from audit.mutants import Mutant
from variants.road import PairRotation, Road, road_columns


class RoadMergeBiasUnscaled(Road):
    def merged_weights(self, layer):
        w_eff, b_eff = super().merged_weights(layer)
        if b_eff is None:
            return w_eff, None
        theta = layer.adapter_theta
        c, s = road_columns(self.cfg.road_variant, self.cfg.group_size, theta, torch.ones_like(layer.adapter_alpha))
        b = layer.bias.detach().to(theta.dtype)
        return w_eff, PairRotation.apply(b[None], c, s, self.cfg.group_size)[0].to(layer.bias.dtype)


MUTANT = Mutant("road_merge_bias_unscaled", "road", "merge: bias merged without its scale",
                "the merged bias is rotated by R(θ) but not scaled by α (the forward, the weight merge and "
                "unmerge are right): merged outputs differ from unmerged ones on every biased layer", ("merge",),
                RoadMergeBiasUnscaled)
