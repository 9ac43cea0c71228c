"""RoAd whose road_2 branch passes the angles as scales and the scales as angles (road_1 is right)."""
from audit.mutants import Mutant
from variants.road import Road, PairRotation, road_columns


class RoadSwapped(Road):
    def forward(self, layer, x, y):
        theta, alpha = layer.adapter_theta, layer.adapter_alpha
        if self.cfg.road_variant == "road_2":
            theta, alpha = alpha, theta
        c, s = road_columns(self.cfg.road_variant, self.cfg.group_size, theta, alpha)
        return PairRotation.apply(y.to(layer.adapter_theta.dtype), c, s, self.cfg.group_size).to(y.dtype)


MUTANT = Mutant("road2_theta_alpha_swapped", "road", "config corner: road_2",
                "road_2 uses θ as the scale and α as the angle (road_1, the main config, is right)",
                ("identity_at_init", "paper_parity"), RoadSwapped, configs=("road_2",), models=("mlp",))
