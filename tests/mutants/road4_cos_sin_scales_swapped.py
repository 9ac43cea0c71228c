"""RoAd whose road_4 branch scales cos by the sin-part α and sin by the cos-part α.

α = 1 everywhere at init, so identity holds; once the scales move apart the rotation is wrong."""
from audit.mutants import Mutant
from variants.road import PairRotation, Road, road_columns


class RoadRoad4Swapped(Road):
    def forward(self, layer, x, y):
        theta, alpha = layer.adapter_theta, layer.adapter_alpha
        g = self.cfg.group_size
        if self.cfg.road_variant == "road_4":
            alpha = alpha.reshape(-1, 2, g).flip(1).reshape(alpha.shape)
        c, s = road_columns(self.cfg.road_variant, g, theta, alpha)
        return PairRotation.apply(y.to(theta.dtype), c, s, g).to(y.dtype)


MUTANT = Mutant("road4_cos_sin_scales_swapped", "road", "config corner: road_4",
                "road_4 multiplies cos θ₁ by α₂ and sin θ₂ by α₁ (identity at init still holds)",
                ("paper_parity",), RoadRoad4Swapped, configs=("road_4",), models=("mlp",))
